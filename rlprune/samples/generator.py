"""A generator of real samples: one worker's loop of propose -> prune and score -> append a shard.

A sample is the ground truth the world model learns from (``rlprune.measure.recipe.evaluate_ratios``
under the run's ``MeasureSpec``)::

    ratios --PruningSpace.apply--> pruned copy --recalibrate BN (calibration batches)--> evaluate
           (calibration split: acc, loss) --> batch-1 latency --> a row of rlprune.samples.store.SAMPLE_COLUMNS

The test split is never touched: the search must not see it. No Ray here; ``rlprune.samples.tune`` runs
one :class:`SampleGenerator` per Tune trial.

    gen = SampleGenerator(get_task("digits"), "runs/samples", MeasureSpec(), worker="w0", seed=1)
    for progress in gen.run(32):     # flushes a shard every `flush_every` samples
        print(progress["n_new"], progress["samples_per_s"])
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator

import numpy as np

from rlprune.errors import ConfigError
from rlprune.measure.recipe import Baseline, evaluate_ratios, measure_baseline
from rlprune.measure.spec import MeasureSpec
from rlprune.samples.samplers import SamplerConfig, draw_labelled
from rlprune.samples.spaces import space_record, write_space
from rlprune.samples.store import append_samples, open_store, sample_id, stored_ids


class SampleGenerator:
    """Generates real samples of one task's base model into a store, a few rows per shard.

    It holds the task, the base model's space and baseline, a seeded sampler, and the ids already in
    the store: proposals whose achieved ratios are already stored are skipped BEFORE the expensive
    evaluation, so a resumed run never re-evaluates what a killed one saved.
    """

    def __init__(self, task, out, spec: MeasureSpec, sampler: SamplerConfig | None = None, flush_every: int = 4,
                 worker: str = "w0", seed: int = 0, base: Baseline | None = None):
        """Load the base model, trace its space, measure (or take) its baseline, record the space.

        Args:
            task: the task.
            out: the sample store folder (created if missing).
            spec: how every sample is measured (and how the space is traced).
            sampler: how ratio vectors are proposed (default: ``SamplerConfig()``, the mixed blend).
            flush_every: rows per shard; a killed worker loses at most this many.
            worker: name stored in each row's ``worker``.
            seed: seeds the sampler.
            base: the baseline if already measured under ``spec`` (skips one evaluation per worker).

        Raises:
            ConfigError: a bad setting (names it).
            SampleStoreError: ``out`` is not a store of this schema.
        """
        if flush_every < 1:
            raise ConfigError(f"flush_every={flush_every} must be >= 1")
        self.out = open_store(out)
        self.task = task
        self.spec = spec
        self.sampler = sampler or SamplerConfig()
        self.flush_every = flush_every
        self.worker = worker
        self.rng = np.random.default_rng(seed)
        model = task.base_model()
        self.space = spec.space_of(model, task.example_input())
        self.features = self.space.features()
        self.base = base or measure_baseline(task, model, spec)
        write_space(self.out, space_record(task.name, self.space, self.base.acc, self.base.loss,
                                           self.base.fingerprint, spec, task.metric_name))
        self.known = stored_ids(self.out)

    def _proposals(self) -> Iterator[tuple[np.ndarray | None, str, str]]:
        """Endless (requested ratios, sampler name, sample_id) triples; ratios are None when already stored."""
        mid = self.spec.label_id()
        while True:
            R, names = draw_labelled(self.sampler, self.flush_every, self.space.cost_model, self.features, self.rng)
            for r, name in zip(R, names, strict=True):
                sid = sample_id(self.base.task, self.base.fingerprint, mid, self.space.achieved(r))
                if sid not in self.known:
                    self.known.add(sid)
                    yield r, name, sid
                else:
                    yield None, name, sid  # lets run() count fruitless draws

    def run(self, n: int, max_draws: int | None = None) -> Iterator[dict]:
        """Evaluate until ``n`` new samples are stored, flushing a shard every ``flush_every`` rows.

        Args:
            n: new unique samples to store.
            max_draws: give up (with a warning) after this many proposals; default ``20 * n + 100``,
                reached only when the sampler keeps proposing stored vectors (a tiny space).

        Yields:
            After each flush, progress: ``n_new`` (stored so far), ``n_evaluated``, ``samples_per_s``,
            ``acc_mean``/``acc_std``/``acc_min``/``acc_max``/``acc_drop_mean`` over evaluated rows, and
            ``t_first``/``t_last`` (epoch seconds around the evaluations, for aggregate throughput).
        """
        max_draws = 20 * n + 100 if max_draws is None else max_draws
        stored, draws, accs, drops, buffer = 0, 0, [], [], []
        t_first = time.time()
        proposals = self._proposals()
        while stored < n and draws < max_draws:
            r, name, _ = next(proposals)
            draws += 1
            if r is not None:
                row = evaluate_ratios(self.task, self.space, r, self.base, self.spec, sampler=name,
                                      worker=self.worker)
                buffer.append(row)
                accs.append(row["acc"])
                drops.append(row["acc_drop"])
            full = len(buffer) >= self.flush_every or stored + len(buffer) >= n
            if buffer and (full or draws >= max_draws):
                stored += append_samples(self.out, buffer)  # another worker may have stored a twin
                buffer = []
                yield {
                    "n_new": stored,
                    "n_evaluated": len(accs),
                    "samples_per_s": len(accs) / max(time.time() - t_first, 1e-9),
                    "acc_mean": float(np.mean(accs)),
                    "acc_std": float(np.std(accs)),
                    "acc_min": float(np.min(accs)),
                    "acc_max": float(np.max(accs)),
                    "acc_drop_mean": float(np.mean(drops)),
                    "t_first": t_first,
                    "t_last": time.time(),
                }
        if stored < n:
            warnings.warn(f"rlprune: worker {self.worker} stored {stored} of {n} samples after {draws} draws: "
                          f"the sampler keeps proposing stored vectors; use a wider sampler", RuntimeWarning,
                          stacklevel=2)

__all__ = ["SampleGenerator"]
