"""Parallel sample generation as a Ray Tune experiment (the ``rlprune sample`` verb is in ``rlprune.cli``).

One Tune trial per worker, each a function trainable running a ``SampleGenerator`` on its share with its
own seed and reporting, after every flushed shard, ``n_new``, ``samples_per_s`` and running accuracy
statistics (in Tune's results under ``<out>/tune/``). The driver shows a progress bar on total samples.

Nothing is lost to a crash: shards are written atomically, so a SIGKILLed command or worker loses at most
the rows not yet flushed. Rerunning the same command counts the unique rows already stored for this task,
base model and measurement spec, and generates only what is missing to reach ``--n``.
A trial whose worker process dies is restarted by Tune (``max_failures``) and first counts what it
already stored under its worker name, so it never overshoots its share.

    rlprune sample --task digits --n 256 --workers 2 --out runs/samples
    rlprune sample --task digits --n 256 --workers 8 --out /shared/samples --address ray-head:6379

Ray is imported inside functions only: it costs seconds to import and most ``rlprune`` verbs never use it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

from rlprune.errors import ConfigError, RlpruneError
from rlprune.measure.spec import MeasureSpec
from rlprune.orchestration import init_ray, merge_placements, report


class SamplingError(RlpruneError, RuntimeError):
    """Sample generation stopped early (a trial failed); what was stored is kept."""


# ---------------------------------------------------------------------------------------- driver
def run_sampling(task_spec: str, n: int, workers: int, out, spec: MeasureSpec | None = None, sampler="mixed",
                 address: str | None = None, flush_every: int = 4, seed: int = 0, task_kwargs: dict | None = None,
                 max_failures: int = 2, progress: bool | None = None) -> dict:
    """Generate real samples until ``out`` holds ``n`` unique ones for this task, base model and spec.

    Args:
        task_spec: task name or ``package.module:callable`` (built in every worker with ``task_kwargs``).
        n: wanted number of unique samples (already stored ones count).
        workers: Tune trials, one CPU each.
        out: the sample store folder; must be visible to every node when ``address`` is given.
        sampler: a sampler name or a ``rlprune.samples.samplers.SamplerConfig``.
        address: an existing Ray cluster to run on; None starts a local one with ``workers`` CPUs
            (or reuses the Ray instance this process already initialised).
        spec: how each sample is measured and the space traced (default ``MeasureSpec()``).
        flush_every: rows per shard (at most this many are lost per killed worker).
        seed: base seed; workers and resumed runs derive distinct seeds from it.
        task_kwargs: extra task arguments (e.g. ``{"seed": 0, "data_dir": ...}``).
        max_failures: Tune restarts of a trial whose worker died.
        progress: show a progress bar (None: when stderr is a terminal).

    Returns:
        ``{"n_total", "n_new", "samples_per_s", "wall_s", "out", "placement"}``: unique stored samples for
        this task/model, those added now, aggregate throughput while the workers were evaluating (setup
        excluded), the whole call's wall time, the store path, and where the trials ran (node ids, trials,
        Tune's restarts of trials whose worker or node died; see ``rlprune.orchestration.fit_experiment``).

    Raises:
        ConfigError: ``n`` or ``workers`` below 1, a bad sampler or task.
        SampleStoreError: ``out`` is a file or a store of another schema (nothing is written).
        SamplingError: a trial failed (stored samples are kept; rerun to resume).
    """
    import numpy as np

    from rlprune.samples.generator import SampleGenerator
    from rlprune.samples.samplers import SamplerConfig
    from rlprune.tasks import cache_dir, get_task

    t0 = time.perf_counter()
    for name, v in (("n", n), ("workers", workers)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"--{name} {v!r} must be a positive integer")
    cfg = sampler if isinstance(sampler, SamplerConfig) else sampler_config(sampler)
    task_kwargs = dict(task_kwargs or {})
    if task_kwargs.get("data_dir"):  # trials run in their own directories: pass absolute paths
        task_kwargs["data_dir"] = str(Path(task_kwargs["data_dir"]).expanduser().resolve())
    task = get_task(task_spec, **task_kwargs)
    store = Path(out).expanduser().resolve()
    # Checks the settings, then the store (a file or a foreign store fails here, before any work), then
    # trains/caches the base model once, traces the space, measures the baseline and records the space:
    # the workers then only load the cached model.
    spec = spec or MeasureSpec()
    gen = SampleGenerator(task, store, spec, cfg, flush_every=flush_every, worker="driver", seed=seed)

    def count() -> int:
        return _count(store, gen.base.task, gen.base.fingerprint, spec.label_id())

    n_before = n_total = count()
    trial = {
        "task_spec": task_spec, "task_kwargs": task_kwargs, "cache": str(cache_dir()), "out": str(store),
        "sampler": json.dumps(dataclasses.asdict(cfg)), "base": gen.base.to_dict(), "measure": spec.to_dict(),
        "flush_every": flush_every,
    }
    rates, placements = [], []
    started_ray = False
    try:
        for round_ in range(3):  # later rounds only replace twins two workers stored at the same moment
            missing = n - n_total
            if missing <= 0:
                break
            started_ray = started_ray or init_ray(address, workers)
            k = min(workers, missing)
            trial.update(shares=[missing // k + (i < missing % k) for i in range(k)], tag=_run_tag(round_),
                         seed=[seed, n_total, round_])
            rate, placement = _tune_round(trial, k, store, n_total, n, max_failures, progress)
            rates.append(rate)
            placements.append(placement)
            n_total = count()
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    return {
        "n_total": n_total,
        "n_new": n_total - n_before,
        "samples_per_s": float(np.mean(rates)) if rates else 0.0,
        "wall_s": time.perf_counter() - t0,
        "out": str(store),
        "placement": merge_placements(*placements),
    }


def _count(store, task: str, fingerprint: str, measure_id: str) -> int:
    from rlprune.samples.store import read_samples

    df = read_samples(store, fingerprint=fingerprint, task=task)
    return int((df["measure_id"] == measure_id).sum())


def sampler_config(name: str):
    from rlprune.samples.samplers import SamplerConfig

    try:
        return SamplerConfig(name=name)
    except ValueError as e:
        raise ConfigError(str(e).replace("SamplerConfig.name", "--sampler")) from e


def _run_tag(round_: int) -> str:
    return time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}-r{round_}"


def _tune_round(trial: dict, k: int, store: Path, n_start: int, n: int, max_failures: int,
                progress) -> tuple[float, dict]:
    """Run one Tune experiment of ``k`` trials; returns the aggregate samples/s while evaluating, and where
    the trials ran (``fit_experiment``'s placement)."""
    from ray import tune

    from rlprune.orchestration import TrialsFailed, fit_experiment

    name = f"sample-{trial['tag']}"
    try:
        grid, placement = fit_experiment(
            tune.with_resources(_sample_trial, {"cpu": 1}),
            {**trial, "worker_index": tune.grid_search(list(range(k)))}, store / "tune", name, max_concurrent=k,
            total=n, initial=n_start, unit="sample", desc="samples", count=lambda r: int(r.get("n_new", 0)),
            progress=progress, csv=store / "tune" / f"{name}.csv", dirname=_trial_dirname, max_failures=max_failures)
    except TrialsFailed as e:
        raise SamplingError(f"{e}; the samples they stored are kept in {store}") from e
    metrics = [r.metrics for r in grid if r.metrics and "t_first" in r.metrics]
    if not metrics:
        return 0.0, placement
    span = max(m["t_last"] for m in metrics) - min(m["t_first"] for m in metrics)
    return sum(m["n_evaluated"] for m in metrics) / max(span, 1e-9), placement


def _trial_dirname(trial) -> str:
    return f"w{trial.config['worker_index']}-{trial.trial_id}"


# ---------------------------------------------------------------------------------------- worker
def _sample_trial(config: dict) -> None:
    """Tune function trainable: one worker's share of samples, reported after every shard."""
    os.environ["RLPRUNE_CACHE"] = config["cache"]  # remote nodes do not inherit the driver's environment
    import numpy as np
    import torch

    from rlprune.measure.recipe import Baseline
    from rlprune.samples.generator import SampleGenerator
    from rlprune.samples.samplers import SamplerConfig
    from rlprune.samples.store import read_samples
    from rlprune.tasks import get_task

    torch.set_num_threads(1)  # one trial = one CPU; more threads only fight the other trials
    i = config["worker_index"]
    worker = f"{config['tag']}/w{i}"
    share = config["shares"][i]
    # After a Tune restart (the worker process died) count what this worker already stored.
    df = read_samples(config["out"])
    done = int((df["worker"] == worker).sum())
    sampler = json.loads(config["sampler"])
    sampler["band"] = tuple(sampler["band"])
    sampler["mix"] = tuple(tuple(m) for m in sampler["mix"])
    gen = SampleGenerator(
        get_task(config["task_spec"], **config["task_kwargs"]), config["out"], MeasureSpec(**config["measure"]),
        SamplerConfig(**sampler), config["flush_every"], worker=worker,
        seed=int(np.random.SeedSequence([*config["seed"], i, done]).generate_state(1)[0]),
        base=Baseline(**config["base"]),
    )
    for p in gen.run(share - done):
        report({**p, "n_new": done + p["n_new"], "share": share})

__all__ = ["SamplingError", "run_sampling"]
