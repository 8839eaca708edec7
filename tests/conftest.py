"""Session fixtures shared by every test file.

``RLPRUNE_CACHE`` points at one temporary directory for the whole session, so no test writes to the
user's cache and the digits base model is trained exactly once (``digits_task``).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlprune.tasks import DigitsTask


@pytest.fixture(scope="session", autouse=True)
def rlprune_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session's cache directory, exported as ``RLPRUNE_CACHE``."""
    path = tmp_path_factory.mktemp("rlprune_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RLPRUNE_CACHE", str(path))
        yield path


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One torch thread in this process and (``OMP_NUM_THREADS``) in every process it starts.

    The suite runs the test process, its subprocesses and Ray workers side by side on two cores; with two threads
    each, torch's threads spin-wait whenever anything else wants a core, and the same training has been measured
    10-30x slower. The models here are small enough that a second thread buys little even on an idle core.
    """
    from rlprune.spn.nets import one_thread

    with one_thread(), pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield


@pytest.fixture(scope="session")
def digits_task(rlprune_cache: Path) -> DigitsTask:
    """The default digits task (seed 0) with its base model trained and cached (~10-30 s, once)."""
    task = DigitsTask()
    task.base_model()
    return task


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray instance (2 CPUs) for the whole session; shut down at the end."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def quick(tmp_path_factory: pytest.TempPathFactory, digits_task: DigitsTask):
    """``name -> (results folder, finished process)``: each benchmark's quick run, once per session (on digits,
    whose base model ``digits_task`` has cached for the subprocesses)."""
    from tests.bench_helpers import quick_runs

    return quick_runs(tmp_path_factory.mktemp)


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch):
    """Import a benchmark script as a module (the scripts import their siblings, such as ``common``)."""
    from tests.bench_helpers import BENCH

    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module
