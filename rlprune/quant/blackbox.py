"""Black-box bit-width searches on the bits world model, at the RL search's counted budget.

    rs = random_bits_search(space, world_model, target=0.125, n_calls=rl["wm_calls"], seed=0)
    cem = cem_bits_search(space, world_model, target=0.125, n_calls=rl["wm_calls"], seed=0)
    rs["bits"], rs["predicted_drop"], rs["wm_calls"]

Both are the baselines the RL search must beat to justify itself: they see the same world model, pay one call
per vector it scores (the RL search counts its env's reward calls the same way) and stop at exactly
``n_calls``. Every vector they score is first fitted under the budget (:meth:`QuantSpace.fit_many`), as the
RL env's wall does, so both return a vector within the target.

- Random search draws vectors as the world model's samples are drawn (:func:`random_bits`: each vector
  uniform within a random band of widths), keeping the lowest predicted drop.
- CEM keeps one categorical distribution over 2..8 bits per layer, starting uniform. Each generation scores
  ``population`` vectors drawn from it, and moves every layer's probabilities toward the bit frequencies of the
  best ``elite`` fraction (smoothing ``alpha``; a floor keeps every width reachable). Like the pruning CEM
  (``rlprune.search.blackbox``) it is the standard cross-entropy method, here on a discrete space.

Numpy and the world model only: no Ray, no torch beyond the world model's forward pass.
"""

from __future__ import annotations

import time

import numpy as np

from rlprune.errors import ConfigError
from rlprune.quant.size import MAX_BITS, MIN_BITS, QuantSpace
from rlprune.quant.worldmodel import BitsModel, random_bits

WIDTHS = np.arange(MIN_BITS, MAX_BITS + 1)
"""The bit widths a layer may get, in order."""
_CHUNK = 512  # vectors scored per world-model call batch: bounded memory, same count


def random_bits_search(space: QuantSpace, world_model: BitsModel, target: float, n_calls: int,
                       seed: int = 0) -> dict:
    """The best of ``n_calls`` random vectors, each fitted under ``target``, by predicted drop.

    Args:
        space: the model's quantizable layers.
        world_model: the (bits -> drop) model the RL search was rewarded by.
        target: the size budget.
        n_calls: vectors to score (the RL search's ``wm_calls``).
        seed: seeds the draw.

    Returns:
        ``{"bits", "predicted_drop", "size_ratio", "wm_calls", "search_s"}``.

    Raises:
        ConfigError: ``n_calls`` below 1 or an unreachable target.
    """
    started, n_calls, target = time.perf_counter(), _check(n_calls), space.check_target(target)
    best = _Best()
    for i, size in enumerate(_chunks(n_calls)):
        B = space.fit_many(random_bits(space, size, seed=seed * 1_000_003 + i), target)
        best.update(B, world_model.predict(B))
    return best.result(space, n_calls, started)


def cem_bits_search(space: QuantSpace, world_model: BitsModel, target: float, n_calls: int, seed: int = 0,
                    population: int = 64, elite: float = 0.125, alpha: float = 0.7, floor: float = 0.01) -> dict:
    """Cross-entropy method over per-layer categorical bit widths (module docstring), ``n_calls`` scored vectors.

    Args:
        space, world_model, target, n_calls, seed: as :func:`random_bits_search`.
        population: vectors per generation (the last generation takes what is left of ``n_calls``).
        elite: the fraction of a generation the distribution moves toward (at least one vector).
        alpha: weight of the elites' frequencies in each update (1 forgets the old distribution).
        floor: the least probability any width keeps, so none becomes unreachable.

    Returns:
        ``{"bits", "predicted_drop", "size_ratio", "wm_calls", "search_s"}``.

    Raises:
        ConfigError: bad settings or an unreachable target.
    """
    started, n_calls, target = time.perf_counter(), _check(n_calls), space.check_target(target)
    if population < 2 or not 0 < elite <= 1 or not 0 < alpha <= 1 or not 0 <= floor < 1 / len(WIDTHS):
        raise ConfigError(f"CEM settings population={population}, elite={elite}, alpha={alpha}, floor={floor} are "
                          f"invalid; use population >= 2, 0 < elite <= 1, 0 < alpha <= 1, 0 <= floor < "
                          f"{1 / len(WIDTHS):.3f}")
    rng = np.random.default_rng(seed)
    probs = np.full((space.n_layers, len(WIDTHS)), 1.0 / len(WIDTHS))
    best, spent = _Best(), 0
    while spent < n_calls:
        size = min(population, n_calls - spent)
        # One inverse-CDF draw per (vector, layer) from that layer's categorical.
        u = rng.random((size, space.n_layers, 1))
        idx = np.minimum((u > np.cumsum(probs, axis=1)[None]).sum(axis=2), len(WIDTHS) - 1)
        B = space.fit_many(WIDTHS[idx], target)
        drops = world_model.predict(B)
        best.update(B, drops)
        spent += size
        top = B[np.argsort(drops, kind="stable")[: max(1, int(round(elite * size)))]] - MIN_BITS
        freq = np.stack([np.bincount(top[:, j], minlength=len(WIDTHS)) for j in range(space.n_layers)]) / len(top)
        probs = np.maximum((1 - alpha) * probs + alpha * freq, floor)
        probs /= probs.sum(axis=1, keepdims=True)
    return best.result(space, n_calls, started)


class _Best:
    """The lowest predicted drop seen so far (the first of equals)."""

    def __init__(self) -> None:
        self.bits: np.ndarray | None = None
        self.drop = np.inf

    def update(self, B: np.ndarray, drops: np.ndarray) -> None:
        i = int(np.argmin(drops))
        if drops[i] < self.drop:
            self.bits, self.drop = B[i].copy(), float(drops[i])

    def result(self, space: QuantSpace, n_calls: int, started: float) -> dict:
        assert self.bits is not None  # n_calls >= 1 scored at least one vector
        return {"bits": self.bits.tolist(), "predicted_drop": self.drop,
                "size_ratio": float(space.size_ratio(self.bits)[0]), "wm_calls": n_calls,
                "search_s": round(time.perf_counter() - started, 3)}


def _check(n_calls) -> int:
    if isinstance(n_calls, bool) or not isinstance(n_calls, (int, np.integer)) or n_calls < 1:
        raise ConfigError(f"n_calls={n_calls!r} must be a positive integer: the RL search's counted wm_calls")
    return int(n_calls)


def _chunks(n: int) -> list[int]:
    return [min(_CHUNK, n - i) for i in range(0, n, _CHUNK)]


__all__ = ["WIDTHS", "cem_bits_search", "random_bits_search"]
