"""One sample, and a generator of many: real pruning, BN recalibration, scoring on the calibration split.

A sample is the ground truth the world model learns from::

    ratios --PruningSpace.apply--> pruned copy --recalibrate_bn (calibration batches)--> evaluate
           (calibration split: acc, loss) --> batch-1 latency --> a row of rlprune.samples.SAMPLE_COLUMNS

The test split is never touched: the search must not see it. No Ray here; ``rlprune.sample_tune`` runs
one :class:`SampleGenerator` per Tune trial.

    gen = SampleGenerator(get_task("digits"), "runs/samples", worker="w0", seed=1)
    for progress in gen.run(32):     # flushes a shard every `flush_every` samples
        print(progress["n_new"], progress["samples_per_s"])
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch

from rlprune.errors import ConfigError
from rlprune.io import model_fingerprint
from rlprune.pruning import IMPORTANCES, PruningSpace
from rlprune.samplers import SamplerConfig, draw_labelled
from rlprune.samples import append_samples, now_iso, open_store, sample_id, space_record, stored_ids, write_space


@dataclass(frozen=True)
class Baseline:
    """The unpruned model's identity and scores, measured the way every sample is."""

    task: str
    """Task name (the samples' ``task``)."""
    fingerprint: str
    """``rlprune.io.model_fingerprint`` of the base model (the samples' ``model_fingerprint``)."""
    acc: float
    """Accuracy in percent on the calibration split (``acc_drop`` is measured from it)."""
    loss: float
    """Mean cross-entropy on the calibration split."""

    def to_dict(self) -> dict:
        """Plain form (shipped to Ray workers)."""
        return asdict(self)


def measure_baseline(task, model, eval_batches: int | None = None) -> Baseline:
    """Score the unpruned base model on the calibration split.

    Args:
        task: the task the model belongs to.
        model: its base model (left in eval mode).
        eval_batches: batches of 128 to score on (all when None); use the samples' setting.

    Returns:
        A :class:`Baseline`.
    """
    m = task.evaluate(model, "calibration", max_batches=eval_batches)
    return Baseline(task.name, model_fingerprint(model), float(m["acc"]), float(m["loss"]))


def batch1_latency_ms(model, example, runs: int = 5) -> float:
    """Median wall time of a batch-1 forward on the CPU, in milliseconds (one warm-up call first).

    Args:
        model: the model (put in eval mode).
        example: a batch-1 input.
        runs: timed forwards.

    Returns:
        The median in ms.
    """
    model.eval()
    times = []
    with torch.no_grad():
        model(example)
        for _ in range(max(1, runs)):
            t0 = time.perf_counter()
            model(example)
            times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)


def prune_and_score(task, space: PruningSpace, ratios, *, importance: str = "l1", recalibrate: bool = True,
                    calib_batches: int = 10, finetune_steps: int = 0, split: str = "calibration",
                    max_batches: int | None = None):
    """Prune a copy for real, recalibrate BatchNorm, optionally fine-tune, and score it: the one recipe
    behind samples, validation and ``rlprune prune``, so every number is measured the same way.

    Args:
        task: the task (calibration split: BN statistics and ``taylor`` gradients; train split: fine-tuning).
        space: the base model's ``PruningSpace``.
        ratios: per-group ratios.
        importance: channel criterion.
        recalibrate: re-estimate BatchNorm statistics on ``calib_batches`` calibration batches first.
        calib_batches: batches of 128 for recalibration.
        finetune_steps: SGD steps on the train split after recalibration.
        split: the split to score on.
        max_batches: batches of 128 to score on (all when None).

    Returns:
        ``(pruned_model, scores)`` with ``scores`` from ``task.evaluate`` (``acc``, ``loss``, ``n``).

    Raises:
        ConfigError: bad ratios or importance.
        TraceError: the pruned model does not run.
    """
    data = next(iter(task.loader("calibration", batch_size=128))) if importance == "taylor" else None
    pruned = space.apply(ratios, importance=importance, data=data)
    if recalibrate:
        task.recalibrate_bn(pruned, batches=calib_batches)
    if finetune_steps:
        task.finetune(pruned, finetune_steps)
    return pruned, task.evaluate(pruned, split, max_batches=max_batches)


def evaluate_ratios(task, space: PruningSpace, ratios, base: Baseline, importance: str = "l1",
                    recalibrate: bool = True, calib_batches: int = 4, eval_batches: int | None = None,
                    latency_runs: int = 5, sampler: str = "?", worker: str = "?") -> dict:
    """Prune a copy of the base model with ``ratios`` and score it: one sample row.

    Args:
        task: the task (its calibration split is used for BN statistics and scoring).
        space: the base model's ``PruningSpace``.
        ratios: requested per-group ratios; the achieved ones (after ``round_to``) are stored and hashed.
        base: the base model's :class:`Baseline` (same ``eval_batches``).
        importance: channel criterion, one of ``rlprune.pruning.IMPORTANCES``.
        recalibrate: re-estimate BatchNorm statistics on ``calib_batches`` calibration batches first
            (without it un-fine-tuned accuracy after pruning is mostly noise).
        calib_batches: calibration batches of 128 for recalibration.
        eval_batches: calibration batches of 128 to score on (all when None).
        latency_runs: timed batch-1 forwards (the median is stored).
        sampler: recorded in the row: which sampler proposed ``ratios``.
        worker: recorded in the row: who evaluated it.

    Returns:
        A dict with exactly ``rlprune.samples.SAMPLE_COLUMNS``.

    Raises:
        ConfigError: bad ratios or importance.
        TraceError: the pruned model does not run.
    """
    t0 = time.perf_counter()
    requested = np.asarray(ratios, dtype=np.float64)
    achieved = space.achieved(requested)
    pruned, scores = prune_and_score(task, space, achieved, importance=importance, recalibrate=recalibrate,
                                     calib_batches=calib_batches, max_batches=eval_batches)
    latency = batch1_latency_ms(pruned, task.example_input(), latency_runs)
    params_ratio, macs_ratio = space.cost_model.ratios_of(achieved)
    return {
        "sample_id": sample_id(base.task, base.fingerprint, importance, achieved, recalibrate),
        "ratios": [float(r) for r in achieved],
        "requested_ratios": [float(r) for r in requested],
        "params_ratio": float(params_ratio[0]),
        "macs_ratio": float(macs_ratio[0]),
        "acc": float(scores["acc"]),
        "acc_drop": base.acc - float(scores["acc"]),
        "loss": float(scores["loss"]),
        "latency_ms": latency,
        "eval_s": time.perf_counter() - t0,
        "task": base.task,
        "model_fingerprint": base.fingerprint,
        "importance": importance,
        "bn_recalibrated": bool(recalibrate),
        "sampler": sampler,
        "worker": worker,
        "created_at": now_iso(),
    }


class SampleGenerator:
    """Generates real samples of one task's base model into a store, a few rows per shard.

    It holds the task, the base model's space and baseline, a seeded sampler, and the ids already in
    the store: proposals whose achieved ratios are already stored are skipped BEFORE the expensive
    evaluation, so a resumed run never re-evaluates what a killed one saved.
    """

    def __init__(self, task, out, sampler: SamplerConfig | None = None, importance: str = "l1",
                 recalibrate: bool = True, calib_batches: int = 4, eval_batches: int | None = None,
                 flush_every: int = 4, worker: str = "w0", seed: int = 0, round_to: int = 1,
                 max_ratio: float = 0.9, base: Baseline | None = None):
        """Load the base model, trace its space, measure (or take) its baseline, record the space.

        Args:
            task: the task.
            out: the sample store folder (created if missing).
            sampler: how ratio vectors are proposed (default: ``SamplerConfig()``, the mixed blend).
            importance: channel criterion.
            recalibrate: BatchNorm recalibration before scoring.
            calib_batches: calibration batches for recalibration.
            eval_batches: calibration batches to score on (None: all).
            flush_every: rows per shard; a killed worker loses at most this many.
            worker: name stored in each row's ``worker``.
            seed: seeds the sampler.
            round_to: kept channels rounded down to a multiple of this.
            max_ratio: largest ratio of any group.
            base: the baseline if already measured (skips one evaluation per worker).

        Raises:
            ConfigError: a bad setting (names it).
            SampleStoreError: ``out`` is not a store of this schema.
        """
        if importance not in IMPORTANCES:
            raise ConfigError(f"importance {importance!r} is unknown; use one of {', '.join(IMPORTANCES)}")
        if flush_every < 1:
            raise ConfigError(f"flush_every={flush_every} must be >= 1")
        self.out = open_store(out)
        self.task = task
        self.sampler = sampler or SamplerConfig()
        self.eval_kwargs = dict(importance=importance, recalibrate=recalibrate, calib_batches=calib_batches,
                                eval_batches=eval_batches)
        self.flush_every = flush_every
        self.worker = worker
        self.rng = np.random.default_rng(seed)
        model = task.base_model()
        self.space = PruningSpace.from_model(model, task.example_input(), round_to=round_to, max_ratio=max_ratio)
        self.features = self.space.features()
        self.base = base or measure_baseline(task, model, eval_batches)
        write_space(self.out, space_record(task.name, self.space, self.base.acc, self.base.loss,
                                           self.base.fingerprint, importance))
        self.known = stored_ids(self.out)

    def _proposals(self) -> Iterator[tuple[np.ndarray | None, str, str]]:
        """Endless (requested ratios, sampler name, sample_id) triples; ratios are None when already stored."""
        imp, bn = self.eval_kwargs["importance"], self.eval_kwargs["recalibrate"]
        while True:
            R, names = draw_labelled(self.sampler, self.flush_every, self.space.cost_model, self.features, self.rng)
            for r, name in zip(R, names, strict=True):
                sid = sample_id(self.base.task, self.base.fingerprint, imp, self.space.achieved(r), bn)
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
                row = evaluate_ratios(self.task, self.space, r, self.base, sampler=name, worker=self.worker,
                                      **self.eval_kwargs)
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


__all__ = ["Baseline", "SampleGenerator", "batch1_latency_ms", "evaluate_ratios", "measure_baseline", "prune_and_score"]
