"""How a ratio vector becomes a number: prune a copy for real, recalibrate BatchNorm, fine-tune, score.

Every measured number in rlprune comes from :func:`prune_and_score` under one
:class:`~rlprune.measure.spec.MeasureSpec`: a sample label (calibration split, :func:`evaluate_ratios`),
an online or AMC-style real evaluation, a validation trial (:func:`measure_candidate`: validation split to
choose, test split to report, after the same fine-tune for every method) and ``rlprune prune``::

    ratios --PruningSpace.apply--> pruned copy --recalibrate BN--> [fine-tune] --> evaluate --> latency

    base = measure_base(task, model, spec)
    row, pruned = measure_candidate(task, space, ratios, base, spec)

A label's fine-tune (``label_steps``, 0 by default) and a validated candidate's (``finetune_steps``) are two
separate short fine-tunes, each with its own cosine-decayed rate.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from rlprune.io import model_fingerprint
from rlprune.measure.spec import MeasureSpec
from rlprune.measure.stats import accuracy_ci, pack_correct
from rlprune.samples.store import now_iso, sample_id

if TYPE_CHECKING:
    from rlprune.space.pruning import PruningSpace


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


def measure_baseline(task, model, spec: MeasureSpec) -> Baseline:
    """Score the unpruned base model on the calibration split, as every sample label is scored.

    Args:
        task: the task the model belongs to.
        model: its base model (left in eval mode).
        spec: the run's measurement spec (``eval_batches``).

    Returns:
        A :class:`Baseline`.
    """
    m = task.evaluate(model, "calibration", max_batches=spec.eval_batches)
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


def prune_and_score(task, space: PruningSpace, ratios, spec: MeasureSpec, *, finetune: bool = False,
                    label: bool = False, split: str = "calibration", max_batches: int | None = None):
    """Prune a copy for real, recalibrate BatchNorm, optionally fine-tune, and score it: the one recipe
    behind samples, online and AMC-style evaluations, validation and ``rlprune prune``.

    Both fine-tunes go through ``task.finetune`` (train split, SGD, cosine-decayed from ``finetune_lr`` to 0
    over their own steps), so a label of k steps is a short fine-tune of its own, not the first k steps of the
    validation one.

    Args:
        task: the task (calibration split: BN statistics and ``taylor`` gradients; train split: fine-tuning).
        space: the base model's ``PruningSpace`` (traced with ``spec``).
        ratios: per-group ratios.
        spec: importance, recalibration batches and fine-tune settings.
        finetune: run the validation fine-tune (``finetune_steps`` at ``finetune_lr``) before scoring.
        label: run the label's fine-tune (``label_steps`` at ``finetune_lr``) before scoring: what a sample
            label and every online or AMC-style real evaluation gets.
        split: the split to score on.
        max_batches: batches of 128 to score on (all when None).

    Returns:
        ``(pruned_model, scores)`` with ``scores`` from ``task.evaluate`` (``acc``, ``loss``, ``n``).

    Raises:
        ConfigError: bad ratios.
        TraceError: the pruned model does not run.
        ValueError: both ``finetune`` and ``label``.
    """
    if finetune and label:
        raise ValueError("prune_and_score: pass finetune=True (validation) or label=True (a label), not both")
    data = next(iter(task.loader("calibration", batch_size=128))) if spec.importance == "taylor" else None
    pruned = space.apply(ratios, importance=spec.importance, data=data)
    if spec.recalibrate:
        task.recalibrate_bn(pruned, batches=spec.bn_batches)
    steps = spec.finetune_steps if finetune else spec.label_steps if label else 0
    if steps:
        task.finetune(pruned, steps, lr=spec.finetune_lr)
    return pruned, task.evaluate(pruned, split, max_batches=max_batches)


def evaluate_ratios(task, space: PruningSpace, ratios, base: Baseline, spec: MeasureSpec, sampler: str = "?",
                    worker: str = "?") -> dict:
    """Prune a copy of the base model with ``ratios``, give it the label's fine-tune (``spec.label_steps``,
    none by default) and score it on the calibration split: one sample row.

    ``acc_drop`` is measured from ``base``, the unpruned model as it is (never fine-tuned), so a label with
    fine-tune steps can drop less than 0 points; ``eval_s`` includes the label's fine-tune.

    Args:
        task: the task (its calibration split is used for BN statistics and scoring).
        space: the base model's ``PruningSpace``.
        ratios: requested per-group ratios; the achieved ones (after ``round_to``) are stored and hashed.
        base: the base model's :class:`Baseline` (measured under the same ``spec``).
        spec: the run's measurement spec (stored in the row as ``measure_id`` and ``measure``, the label's
            fine-tune steps included).
        sampler: recorded in the row: which sampler proposed ``ratios``.
        worker: recorded in the row: who evaluated it.

    Returns:
        A dict with exactly ``rlprune.samples.store.SAMPLE_COLUMNS``.

    Raises:
        ConfigError: bad ratios.
        TraceError: the pruned model does not run.
    """
    t0 = time.perf_counter()
    requested = np.asarray(ratios, dtype=np.float64)
    achieved = space.achieved(requested)
    pruned, scores = prune_and_score(task, space, achieved, spec, label=True, max_batches=spec.eval_batches)
    latency = batch1_latency_ms(pruned, task.example_input(), spec.latency_runs)
    params_ratio, macs_ratio = space.cost_model.ratios_of(achieved)
    return {
        "sample_id": sample_id(base.task, base.fingerprint, spec.label_id(), achieved),
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
        "measure_id": spec.label_id(),
        "measure": spec.label_json(),
        "sampler": sampler,
        "worker": worker,
        "created_at": now_iso(),
    }


def measure_base(task, model, spec: MeasureSpec) -> dict:
    """Scores and latency of the unpruned model on the whole validation and test splits.

    Returns:
        ``{"acc", "loss", "n", "acc_ci", "val_acc", "latency_ms"}``: test accuracy (points), loss, test
        examples, the 95% bootstrap interval of the test accuracy, validation accuracy, batch-1 latency.
    """
    val = task.evaluate(model, "validation")
    test = task.evaluate(model, "test", per_example=True)
    return {"acc": float(test["acc"]), "loss": float(test["loss"]), "n": int(test["n"]),
            "acc_ci": _interval(test), "val_acc": float(val["acc"]),
            "latency_ms": batch1_latency_ms(model, task.example_input(), spec.latency_runs)}


def _interval(scores: dict) -> list[float] | None:
    """The 95% bootstrap interval of a test score; None for a metric that gives one number, not per-example."""
    return list(accuracy_ci(scores["correct"])) if "correct" in scores else None


def measure_candidate(task, space: PruningSpace, ratios, base: dict, spec: MeasureSpec, *, method: str = "?"):
    """Prune with ``ratios`` for real, fine-tune as the spec says, and score the whole validation split (which
    chooses) and test split (which only reports).

    Args:
        task: the task (its calibration split recalibrates BatchNorm, its train split fine-tunes).
        space: the base model's ``PruningSpace``.
        ratios: per-group ratios (achieved ratios after channel rounding are used and reported).
        base: :func:`measure_base` of the unpruned model.
        spec: importance, recalibration and the fine-tune every compared method gets.
        method: name recorded in the row.

    Returns:
        ``(row, pruned_model)``; ``row`` has ``method``, ``ratios``, ``params_ratio``, ``macs_ratio``,
        ``val_acc``, ``val_drop``, ``acc`` (test), ``acc_drop`` (points, vs ``base``), ``acc_ci`` (95%
        bootstrap over test images), ``test_correct`` (``rlprune.measure.stats.pack_correct`` of the
        per-image outcomes, for paired comparisons; both None for a metric without per-example scores),
        ``loss``, ``latency_ms``, ``latency_ratio``,
        ``finetune_steps``, ``measure_s``.

    Raises:
        ConfigError: invalid ratios.
    """
    t0 = time.perf_counter()
    achieved = space.achieved(np.asarray(ratios, dtype=np.float64))
    pruned, val = prune_and_score(task, space, achieved, spec, finetune=True, split="validation")
    test = task.evaluate(pruned, "test", per_example=True)
    params_ratio, macs_ratio = space.cost_model.ratios_of(achieved)
    latency = batch1_latency_ms(pruned, task.example_input(), spec.latency_runs)
    row = {
        "method": method,
        "ratios": [round(float(r), 6) for r in achieved],
        "params_ratio": float(params_ratio[0]),
        "macs_ratio": float(macs_ratio[0]),
        "val_acc": float(val["acc"]),
        "val_drop": base["val_acc"] - float(val["acc"]),
        "acc": float(test["acc"]),
        "acc_drop": base["acc"] - float(test["acc"]),
        "acc_ci": _interval(test),
        "test_correct": pack_correct(test["correct"]) if "correct" in test else None,
        "loss": float(test["loss"]),
        "latency_ms": latency,
        "latency_ratio": latency / base["latency_ms"],
        "finetune_steps": int(spec.finetune_steps),
        "measure_s": time.perf_counter() - t0,
    }
    return row, pruned


def pruned_manifest(space: PruningSpace, ratios, example, **fields) -> dict:
    """What ``save_pruned`` records about a pruned model, the same for every command that saves one.

    Args:
        space: the base model's ``PruningSpace``.
        ratios: the achieved per-group ratios the model was pruned with.
        example: an input batch (its per-example shape is recorded to rebuild inputs).
        **fields: anything else to record (``acc``, ``task``, ``importance``, ``finetune_steps``, ``method``...).

    Returns:
        ``ratios``, ``group_ids``, ``base_fingerprint``, exact ``params`` and ``macs``, ``input_shape`` and
        ``fields``.
    """
    params, macs = space.cost(ratios)
    return {"ratios": [round(float(r), 6) for r in ratios], "group_ids": [g.id for g in space.groups],
            "base_fingerprint": model_fingerprint(space.model), "params": params, "macs": macs,
            "input_shape": list(example.shape[1:]), **fields}


__all__ = ["Baseline", "batch1_latency_ms", "evaluate_ratios", "measure_base", "measure_baseline",
           "measure_candidate", "prune_and_score", "pruned_manifest"]
