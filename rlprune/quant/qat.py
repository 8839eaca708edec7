"""Quantization-aware fine-tuning and the scores every bit vector is compared by.

Each candidate (a rule's or the RL search's bit vector) gets the same treatment: the fp32 model is wrapped
with the vector (``rlprune.quant.fake.wrap``), fine-tuned for :attr:`QATSpec.steps` steps by the task's own
fine-tune (``Task.finetune``: seeded SGD over the train split, cosine rate; the fake quantizers sit in the
forward pass and ``torch.fake_quantize_per_channel_affine`` passes the gradients straight through to the
fp32 weights), then scored on the validation split (which makes every choice) and the test split (which
only reports: accuracy with a 95% bootstrap interval over its examples, ``rlprune.measure.stats``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from rlprune.errors import ConfigError
from rlprune.measure.stats import accuracy_ci, pack_correct
from rlprune.quant.fake import wrap
from rlprune.quant.size import QuantSpace, validate_bits


@dataclass(frozen=True)
class QATSpec:
    """How every candidate is fine-tuned before it is scored (the same for every method)."""

    steps: int = 100
    """SGD steps of the quantization-aware fine-tune (0: post-training quantization, scored as is)."""
    lr: float = 0.01
    """Initial learning rate (cosine decay to 0 over ``steps``)."""

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ConfigError(f"QATSpec.steps={self.steps!r} must be an integer >= 0, e.g. 100")
        if not isinstance(self.lr, (int, float)) or not np.isfinite(self.lr) or not self.lr > 0:
            raise ConfigError(f"QATSpec.lr={self.lr!r} must be a positive number, e.g. 0.01")


def qat_validate(task, model: nn.Module, bits, spec: QATSpec = QATSpec()) -> tuple[dict[str, Any], nn.Module]:
    """Fine-tune ``model`` quantized to ``bits``, then score it on validation and test.

    Args:
        task: an ``rlprune.tasks.Task`` (``finetune``, ``evaluate``).
        model: the fp32 (pruned or base) model; not modified.
        bits: one integer in 2..8 per quantizable layer.
        spec: the fine-tune every candidate gets.

    Returns:
        ``(row, wrapped)``: ``row`` has ``bits``, ``size_ratio``, ``val_acc``, ``acc`` (test), ``acc_ci``,
        ``correct`` (packed per-example test outcomes, ``rlprune.measure.stats.pack_correct``) and
        ``qat_steps``; ``wrapped`` is the fine-tuned fake-quantized model (for export).

    Raises:
        ConfigError: bad bits.
    """
    space = QuantSpace.from_model(model)
    b = validate_bits(bits, space.n_layers)
    wrapped = task.finetune(wrap(model, b), spec.steps, spec.lr)
    val = task.evaluate(wrapped, "validation")
    test = task.evaluate(wrapped, "test", per_example=True)
    row = {"bits": b.tolist(), "size_ratio": float(space.size_ratio(b)[0]), "val_acc": float(val["acc"]),
           "acc": float(test["acc"]), "qat_steps": spec.steps}
    if "correct" in test:
        row["acc_ci"] = list(accuracy_ci(test["correct"]))
        row["correct"] = pack_correct(test["correct"])
    return row, wrapped


def choose(rows: dict[str, dict]) -> str:
    """The winner among validated candidates: best validation accuracy, then the smaller ``size_ratio``,
    then the name (so the choice is deterministic and never looks at the test split).

    Args:
        rows: ``{method: row}`` with ``val_acc`` and ``size_ratio`` (rows that failed the budget excluded by
            the caller).

    Returns:
        The winning method's name.

    Raises:
        ConfigError: no rows.
    """
    if not rows:
        raise ConfigError("no candidate to choose from; every method failed or none was run")
    return min(rows, key=lambda k: (-rows[k]["val_acc"], rows[k]["size_ratio"], k))


__all__ = ["QATSpec", "choose", "qat_validate"]
