"""Bit-allocation rules at a size budget: uniform bits and a HAQ-style sensitivity rule.

Every rule returns a bit vector whose exact ``size_ratio`` (``rlprune.quant.size``) is at most the target:
bit widths are integers, so "meeting the target" means reaching it from below, as close as whole bits allow.

- ``uniform{8,6,4}``: every layer at ``b`` bits, then :meth:`QuantSpace.fit_to_budget` takes bits away
  one at a time from the widest layers (the largest first) until the vector fits. A uniform vector that
  already fits is kept as it is. At a tight target the three meet in the same near-uniform vector, which
  is the honest uniform answer to that budget.
- ``sensitivity``: a one-shot scan quantizes one layer at a time to ``low_bits`` (every other layer fp32)
  and measures the accuracy drop on the calibration split; then, starting from every layer at 2 bits, a
  greedy loop gives one more bit to the layer where it buys the most expected accuracy per stored bit,
  until no further bit fits (HAQ, Wang et al. 2019, with the scan in place of its RL agent's reward)::

      expected_drop_l(b) = s_l * 4 ** -(b - low_bits)     # one more bit quarters the quantization noise power
      priority_l         = (expected_drop_l(b_l) - expected_drop_l(b_l + 1)) / n_l

  where ``s_l`` is layer ``l``'s scanned drop (clipped at a small positive floor, so measured noise below zero
  still lets the loop spend the budget) and ``n_l`` its weight count.
"""

from __future__ import annotations

import copy

import numpy as np
from torch import nn
from torch.nn.utils import parametrize

from rlprune.errors import ConfigError
from rlprune.quant.fake import WeightFakeQuant, quant_layers
from rlprune.quant.size import MAX_BITS, MIN_BITS, QuantSpace, uniform_bits

UNIFORM_BITS = (8, 6, 4)
"""The uniform baselines' starting widths."""
_FLOOR = 1e-3  # points: the smallest sensitivity a layer is credited with


def uniform_rule(space: QuantSpace, bits: int, target: float) -> np.ndarray:
    """Every layer at ``bits``, fitted to ``target`` (module docstring).

    Args:
        space: the model's quantizable layers.
        bits: 2..8.
        target: the size budget, a reachable ratio in (0, 1].

    Returns:
        An int64 bit vector with ``size_ratio <= target``.

    Raises:
        ConfigError: bad ``bits`` or an unreachable target.
    """
    return space.fit_to_budget(uniform_bits(space.n_layers, bits), target)


def sensitivity_scan(task, model: nn.Module, low_bits: int = MIN_BITS, split: str = "calibration",
                     max_batches: int | None = None) -> np.ndarray:
    """Accuracy drop (points) when only layer ``l`` is quantized to ``low_bits``, for every layer.

    Args:
        task: an ``rlprune.tasks.Task`` (its ``evaluate``).
        model: the fp32 (pruned or base) model; not modified.
        low_bits: the scan's bit width (2..8).
        split: the split measured (calibration: what a search may look at).
        max_batches: evaluate only this many batches of 128 (None: all).

    Returns:
        A float64 array of shape ``(n_layers,)``: reference accuracy minus the one-layer-quantized accuracy.

    Raises:
        ConfigError: ``low_bits`` outside 2..8, or a model without quantizable layers.
    """
    if not isinstance(low_bits, int) or not MIN_BITS <= low_bits <= MAX_BITS:
        raise ConfigError(f"low_bits={low_bits!r} must be an integer in {MIN_BITS}..{MAX_BITS}")
    n = len(quant_layers(model))
    if n == 0:
        raise ConfigError(f"{type(model).__name__} has no conv or linear layer to quantize")
    ref = task.evaluate(model, split, max_batches=max_batches)["acc"]
    drops = np.empty(n)
    for i in range(n):
        probe = copy.deepcopy(model)
        parametrize.register_parametrization(quant_layers(probe)[i][1], "weight", WeightFakeQuant(low_bits))
        drops[i] = ref - task.evaluate(probe, split, max_batches=max_batches)["acc"]
    return drops


def sensitivity_rule(space: QuantSpace, sensitivity, target: float, low_bits: int = MIN_BITS) -> np.ndarray:
    """Greedy HAQ-style allocation from a sensitivity scan (module docstring).

    Args:
        space: the model's quantizable layers.
        sensitivity: :func:`sensitivity_scan`'s drops, one per layer.
        target: the size budget, a reachable ratio in (0, 1].
        low_bits: the width the scan used (sets the reference of the noise model).

    Returns:
        An int64 bit vector with ``size_ratio <= target``.

    Raises:
        ConfigError: a sensitivity vector of the wrong length or with NaN, or an unreachable target.
    """
    t = space.check_target(target)
    s = np.asarray(sensitivity, dtype=np.float64)
    if s.shape != (space.n_layers,) or not np.isfinite(s).all():
        raise ConfigError(f"sensitivity must hold {space.n_layers} finite numbers (one per layer), got {s!r}; "
                          "pass sensitivity_scan()'s result")
    s = np.maximum(s, _FLOOR)
    numel = np.asarray(space.numel, dtype=np.float64)
    b = np.full(space.n_layers, MIN_BITS, dtype=np.int64)

    def expected(bits: np.ndarray) -> np.ndarray:
        return s * 4.0 ** -(bits - low_bits)

    while True:
        up = b < MAX_BITS
        trial = np.where(up[:, None], b[None, :] + np.eye(space.n_layers, dtype=np.int64), b[None, :])
        ok = up & space.fits(trial, t)
        if not ok.any():
            return b
        priority = np.where(ok, (expected(b) - expected(b + 1)) / numel, -np.inf)
        b[int(np.argmax(priority))] += 1


def baseline_bits(space: QuantSpace, target: float, sensitivity=None) -> dict[str, np.ndarray]:
    """Every rule's bit vector at ``target``: ``uniform8``, ``uniform6``, ``uniform4`` and (given a scan)
    ``sensitivity``.

    Raises:
        ConfigError: an unreachable target.
    """
    out = {f"uniform{b}": uniform_rule(space, b, target) for b in UNIFORM_BITS}
    if sensitivity is not None:
        out["sensitivity"] = sensitivity_rule(space, sensitivity, target)
    return out


__all__ = ["UNIFORM_BITS", "baseline_bits", "sensitivity_rule", "sensitivity_scan", "uniform_rule"]
