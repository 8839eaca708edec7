"""Black-box bit-width searches on the bits world model, at the RL search's counted budget.

    rs = random_bits_search(space, world_model, target=0.125, n_calls=rl["wm_calls"], seed=0)
    cem = cem_bits_search(space, world_model, target=0.125, n_calls=rl["wm_calls"], seed=0)
    rs["bits"], rs["predicted_drop"], rs["wm_calls"]

Both are the baselines the RL search must beat to justify itself: they see the same world model, pay one call
per vector it scores (the RL search counts its env's reward calls the same way) and stop at exactly
``n_calls``. Online (``n_real`` > 0, with a ``learn`` of their own: ``rlprune.quant.online``), they measure
as many favourites for real, in as many rounds, as the RL search did, and go on with the refined model.
Every vector they score is first fitted under the budget (:meth:`QuantSpace.fit_many`), as the
RL env's wall does, so both return a vector within the target.

- Random search draws vectors as the world model's samples are drawn (:func:`random_bits`: each vector
  uniform within a random band of widths), keeping the lowest predicted drop.
- CEM keeps one categorical distribution over 2..8 bits per layer, starting uniform. Each generation scores
  ``population`` vectors drawn from it, and moves every layer's probabilities toward the bit frequencies of the
  best ``elite`` fraction (smoothing ``alpha``; a floor keeps every width reachable). Like the pruning CEM
  (``rlprune.search.blackbox``) it is the standard cross-entropy method, here on a discrete space.

Numpy and the world model only: no Ray, no torch beyond the world model (the learner's measure may use both).
"""

from __future__ import annotations

import time

import numpy as np

from rlprune.errors import ConfigError
from rlprune.quant.online import TOP_KEPT, BitsLearner, best_bits, kept_bits
from rlprune.quant.size import MAX_BITS, MIN_BITS, QuantSpace
from rlprune.quant.worldmodel import BitsModel, random_bits
from rlprune.search.candidates import Kept

WIDTHS = np.arange(MIN_BITS, MAX_BITS + 1)
"""The bit widths a layer may get, in order."""
_CHUNK = 512  # vectors scored per world-model call batch: bounded memory, same count


def random_bits_search(space: QuantSpace, world_model: BitsModel, target: float, n_calls: int, seed: int = 0,
                       *, rounds: int = 1, n_real: int = 0, learn: BitsLearner | None = None) -> dict:
    """The best of ``n_calls`` random vectors, each fitted under ``target``, by predicted drop.

    Args:
        space: the model's quantizable layers.
        world_model: the (bits -> drop) model the RL search was rewarded by.
        target: the size budget.
        n_calls: vectors to score, re-scoring after online rounds included (the RL search's ``wm_calls``).
        seed: seeds the draw.
        rounds: online rounds, spread evenly over the calls (the RL search's count).
        n_real: real evaluations over all rounds (the RL search's count; 0: offline).
        learn: measures a round's favourites and refines the world model (``rlprune.quant.online``).

    Returns:
        ``{"bits", "predicted_drop", "size_ratio", "wm_calls", "real_evals", "search_s"}``.

    Raises:
        ConfigError: ``n_calls`` below 1, bad rounds, or an unreachable target.
    """
    started, n_calls, target = time.perf_counter(), _check(n_calls), space.check_target(target)
    return _search(_Random(space, target, seed), space, world_model, n_calls, rounds, n_real, learn, started)


def cem_bits_search(space: QuantSpace, world_model: BitsModel, target: float, n_calls: int, seed: int = 0,
                    population: int = 64, elite: float = 0.125, alpha: float = 0.7, floor: float = 0.01, *,
                    rounds: int = 1, n_real: int = 0, learn: BitsLearner | None = None) -> dict:
    """Cross-entropy method over per-layer categorical bit widths (module docstring), ``n_calls`` scored vectors.

    Args:
        space, world_model, target, n_calls, seed, rounds, n_real, learn: as :func:`random_bits_search`.
        population: vectors per generation (the last generation takes what is left of ``n_calls``).
        elite: the fraction of a generation the distribution moves toward (at least one vector).
        alpha: weight of the elites' frequencies in each update (1 forgets the old distribution).
        floor: the least probability any width keeps, so none becomes unreachable.

    Returns:
        ``{"bits", "predicted_drop", "size_ratio", "wm_calls", "real_evals", "search_s"}``.

    Raises:
        ConfigError: bad settings or an unreachable target.
    """
    started, n_calls, target = time.perf_counter(), _check(n_calls), space.check_target(target)
    if population < 2 or not 0 < elite <= 1 or not 0 < alpha <= 1 or not 0 <= floor < 1 / len(WIDTHS):
        raise ConfigError(f"CEM settings population={population}, elite={elite}, alpha={alpha}, floor={floor} are "
                          f"invalid; use population >= 2, 0 < elite <= 1, 0 < alpha <= 1, 0 <= floor < "
                          f"{1 / len(WIDTHS):.3f}")
    proposer = _CEM(space, target, seed, population, elite, alpha, floor)
    return _search(proposer, space, world_model, n_calls, rounds, n_real, learn, started)


class _Random:
    """Random vectors, drawn like the world model's samples, in chunks of bounded memory."""

    def __init__(self, space: QuantSpace, target: float, seed: int) -> None:
        self.space, self.target, self.seed, self.batch, self.draws = space, target, seed, _CHUNK, 0

    def ask(self, n: int) -> np.ndarray:
        self.draws += 1
        return self.space.fit_many(random_bits(self.space, n, seed=self.seed * 1_000_003 + self.draws - 1),
                                   self.target)

    def tell(self, B: np.ndarray, drops: np.ndarray) -> None:
        pass


class _CEM:
    """One categorical distribution over the widths per layer, moved toward each generation's elites."""

    def __init__(self, space: QuantSpace, target: float, seed: int, population: int, elite: float, alpha: float,
                 floor: float) -> None:
        self.space, self.target, self.batch = space, target, population
        self.elite, self.alpha, self.floor = elite, alpha, floor
        self.rng = np.random.default_rng(seed)
        self.probs = np.full((space.n_layers, len(WIDTHS)), 1.0 / len(WIDTHS))

    def ask(self, n: int) -> np.ndarray:
        # One inverse-CDF draw per (vector, layer) from that layer's categorical.
        u = self.rng.random((n, self.space.n_layers, 1))
        idx = np.minimum((u > np.cumsum(self.probs, axis=1)[None]).sum(axis=2), len(WIDTHS) - 1)
        return self.space.fit_many(WIDTHS[idx], self.target)

    def tell(self, B: np.ndarray, drops: np.ndarray) -> None:
        top = B[np.argsort(drops, kind="stable")[: max(1, int(round(self.elite * len(B))))]] - MIN_BITS
        freq = np.stack([np.bincount(top[:, j], minlength=len(WIDTHS)) for j in range(self.space.n_layers)])
        probs = np.maximum((1 - self.alpha) * self.probs + self.alpha * freq / len(top), self.floor)
        self.probs = probs / probs.sum(axis=1, keepdims=True)


def _search(proposer, space: QuantSpace, world_model: BitsModel, n_calls: int, rounds: int, n_real: int,
            learn: BitsLearner | None, started: float) -> dict:
    """Spend exactly ``n_calls``; with ``n_real``, ``rounds`` online rounds at even shares of the calls, each
    measuring the best vectors not measured yet and re-scoring what was kept with the refined model (paid
    from the same calls, set aside up front, as RL's re-scoring is counted in its ``wm_calls``)."""
    if not isinstance(rounds, int) or rounds < 1 or not isinstance(n_real, int) or n_real < 0 or (
            n_real and learn is None):
        raise ConfigError(f"online rounds need rounds >= 1, n_real >= 0 and a learner for real evaluations; got "
                          f"rounds={rounds!r}, n_real={n_real!r}, learn={'given' if learn else None}")
    kept, calls, spent = Kept(TOP_KEPT), 0, 0
    # Each round's re-scoring is paid from its share of the calls: up to half of a share is set aside for it.
    reserve = min(kept.keep, n_calls // rounds // 2) if n_real else 0

    def spend(until: int) -> int:
        got = 0
        while calls + got < until:
            B = proposer.ask(min(proposer.batch, until - calls - got))
            drops = world_model.predict(B)
            proposer.tell(B, drops)
            kept.add(B, drops)
            got += len(B)
        return got

    for r in range(rounds if n_real else 1):
        share = n_calls * (r + 1) // rounds if n_real else n_calls
        calls += spend(max(share - reserve, calls + 1))
        chosen = kept_bits(kept.take(n_real * (r + 1) // rounds - spent)) if n_real else None
        if chosen is not None and len(chosen):
            world_model = learn(chosen)[1]
            spent += len(chosen)
            calls += kept.rescore(world_model.predict, limit=max(1, share - calls))  # a degenerate budget: one over
    calls += spend(n_calls)  # what the re-scoring did not use (a no-op offline)
    bits, drop = best_bits(kept)
    return {"bits": bits, "predicted_drop": drop, "size_ratio": float(space.size_ratio(bits)[0]), "wm_calls": calls,
            "real_evals": spent, "search_s": round(time.perf_counter() - started, 3)}


def _check(n_calls) -> int:
    if isinstance(n_calls, bool) or not isinstance(n_calls, (int, np.integer)) or n_calls < 1:
        raise ConfigError(f"n_calls={n_calls!r} must be a positive integer: the RL search's counted wm_calls")
    return int(n_calls)


__all__ = ["WIDTHS", "cem_bits_search", "random_bits_search"]
