"""Real digits samples shared by the SPN and world-model tests (generated once per test session)."""

from __future__ import annotations

from pathlib import Path

from rlprune.measure.spec import MeasureSpec
from rlprune.samples.generator import SampleGenerator
from rlprune.samples.store import read_samples
from rlprune.spn.predictor import one_thread
from rlprune.tasks import cache_dir

N_SAMPLES = 160
"""Enough for a 4-fold comparison of architectures to be decided by more than noise (see test_spn)."""


def real_samples_store(task, n: int = N_SAMPLES) -> Path:
    """A store under the session cache holding at least ``n`` real samples of ``task``'s base model.

    The mixed sampler proposes the ratios; every sample is really pruned, BN-recalibrated and scored on the
    calibration split (~0.2-0.3 s each). The store lives in the session's ``RLPRUNE_CACHE``, so the second
    caller in a session finds the samples already there.
    """
    store = cache_dir() / "test_spn_samples"
    with one_thread():  # several times faster than two threads on a loaded 2-core machine
        gen = SampleGenerator(task, store, MeasureSpec(), worker="tests", seed=7)
        missing = n - len(read_samples(store, fingerprint=gen.base.fingerprint))
        if missing > 0:
            for _ in gen.run(missing):
                pass
    return store
