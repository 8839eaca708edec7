"""Black-box searches on the world model: random search and the cross-entropy method (no Ray).

Both propose ratio vectors, project every one onto the budget (``CostModel.project_to_budget`` with
``relax=True``, the projection every method shares) and rank them: vectors that meet the target first, then
by predicted accuracy drop. They spend a counted number of predictor calls.

Online, they get what RL's online rounds get: the calls are spent in ``rounds`` chunks; after each chunk the
most promising vectors not yet evaluated are handed to ``learn``, which evaluates them for real, fine-tunes
the world model on them and returns the new predictor; the kept candidates are then re-scored with it
(those calls count too). So at equal ``n_calls`` and equal real evaluations the comparison with RL is one
of search strategies, not of budgets.

    ratios, extra = blackbox_search("cem", predict, cm, target=0.5, n_calls=4096, rounds=2, n_real=8,
                                    learn=learn)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from rlprune.errors import ConfigError
from rlprune.search.candidates import TOP_KEPT, Kept, key
from rlprune.space.costmodel import CostModel, meets_target

Predictor = Callable[[np.ndarray], np.ndarray]  # (N, G) ratios -> (N,) predicted accuracy drop (points)
Learn = Callable[[list[np.ndarray]], tuple[list[float], Predictor]]  # vectors -> (real drops, new predictor)

SEARCHES = ("random_search", "cem")


class _Random:
    """Uniform random ratio vectors."""

    batch = 512

    def __init__(self, cm: CostModel, rng: np.random.Generator):
        self.cm, self.rng = cm, rng

    def ask(self, n: int) -> np.ndarray:
        return self.rng.uniform(0, self.cm.max_ratio, (n, self.cm.n_groups))

    def tell(self, R: np.ndarray, order: np.ndarray) -> None:
        pass


class _CEM:
    """Cross-entropy method over ratio vectors (a diagonal Gaussian refitted on each population's elite)."""

    def __init__(self, cm: CostModel, rng: np.random.Generator, population: int = 128, elite_frac: float = 0.1):
        if population < 4 or not 0 < elite_frac < 1:
            raise ConfigError(f"cem needs population >= 4 and 0 < elite_frac < 1, got {population}, {elite_frac}")
        self.cm, self.rng, self.batch = cm, rng, population
        self.mean = np.full(cm.n_groups, cm.max_ratio / 2)
        self.std = np.full(cm.n_groups, cm.max_ratio / 3)
        self.n_elite = max(2, int(population * elite_frac))

    def ask(self, n: int) -> np.ndarray:
        return np.clip(self.mean + self.std * self.rng.standard_normal((n, self.cm.n_groups)), 0.0, self.cm.max_ratio)

    def tell(self, R: np.ndarray, order: np.ndarray) -> None:
        elite = R[order[: min(self.n_elite, len(R))]]
        # Smoothed updates keep the distribution from collapsing on one lucky batch.
        self.mean = 0.7 * elite.mean(axis=0) + 0.3 * self.mean
        self.std = np.maximum(0.7 * elite.std(axis=0) + 0.3 * self.std, 0.01)


def scored(predict: Predictor, cm: CostModel, R: np.ndarray, target: float,
           budget: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Project a search's candidates onto the target and rank them.

    Returns:
        ``(R, miss, drop, order)``: the projected candidates, whether each misses the target, its predicted
        drop, and the candidate indices best first (those meeting the target first, then by predicted drop).
    """
    R = cm.project_to_budget(R, target, budget, relax=True)
    drop = np.asarray(predict(R), dtype=np.float64)
    miss = ~meets_target(cm.budget_ratio(R, budget, validate=False), target)
    return R, miss, drop, np.lexsort((drop, miss))


def blackbox_search(method: str, predict: Predictor, cm: CostModel, target: float, budget: str = "macs",
                    n_calls: int = 2048, seed: int = 0, *, rounds: int = 1, n_real: int = 0,
                    learn: Learn | None = None) -> tuple[np.ndarray, dict]:
    """Run ``method`` against the world model, optionally with online real evaluations.

    Args:
        method: ``"random_search"`` or ``"cem"``.
        predict: the world model's accuracy-drop predictor.
        cm: cost model of the model being pruned.
        target, budget: the budget every candidate is projected onto.
        n_calls: predictor calls to spend, re-scoring included (never more, unless a round's share is smaller
            than the re-scoring it must pay for).
        seed: seeds the proposals.
        rounds: chunks the calls are spent in; an online round follows each.
        n_real: real evaluations in total, spread over the rounds (0: offline, ``learn`` unused).
        learn: ``(vectors) -> (real drops, new predictor)``; required when ``n_real > 0``.

    Returns:
        ``(ratios, extra)``: the best kept vector (achieved ratios) and ``predicted_acc_drop``,
        ``predictor_calls``, ``real_evals`` (counted), ``real_acc_drop`` of the chosen vector when it was
        evaluated, ``online_rounds`` (per round: the vectors' predicted and real drops).

    Raises:
        ConfigError: unknown method, bad counts, or ``n_real > 0`` without ``learn``.
    """
    if method not in SEARCHES:
        raise ConfigError(f"search {method!r} is unknown; use one of {', '.join(SEARCHES)}")
    if n_calls < 1 or rounds < 1 or n_real < 0 or (n_real and learn is None):
        raise ConfigError(f"{method} needs n_calls >= 1, rounds >= 1, n_real >= 0 and a learn callable for "
                          f"real evaluations; got n_calls={n_calls}, rounds={rounds}, n_real={n_real}")
    rng = np.random.default_rng(seed)
    proposer = _Random(cm, rng) if method == "random_search" else _CEM(cm, rng)
    kept, real, report, calls = Kept(), {}, [], 0
    # Each online round's re-scoring (at most the kept candidates) is paid from the same calls, up front, so
    # the total never passes n_calls.
    reserve = TOP_KEPT if n_real else 0
    for r in range(rounds):
        quota = max(n_calls * (r + 1) // rounds - reserve, calls + 1)
        while calls < quota:
            R, miss, drop, order = scored(predict, cm, proposer.ask(min(proposer.batch, quota - calls)),
                                          target, budget)
            calls += len(R)
            proposer.tell(R, order)
            kept.add(R, drop, miss)
        chosen = kept.take(n_real * (r + 1) // rounds - len(real))
        if chosen:
            drops, predict = learn([v[0] for v in chosen])
            real.update({key(v[0]): float(d) for v, d in zip(chosen, drops, strict=True)})
            report.append({"round": r + 1, "n_real": len(chosen), "predicted_before": [v[2] for v in chosen],
                           "real_acc_drop": [float(d) for d in drops]})
            calls += kept.rescore(predict)  # the new world model re-ranks what was found, as RL's pool does
    best = kept.best()
    extra = {"predicted_acc_drop": best[2], "predictor_calls": calls, "real_evals": len(real),
             "online_rounds": report}
    if key(best[0]) in real:
        extra["real_acc_drop"] = real[key(best[0])]
    return cm.achieved(best[0]), extra


def random_search(predict: Predictor, cm: CostModel, target: float, budget: str = "macs",
                  n_calls: int = 2048, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Offline random search (:func:`blackbox_search` with no real evaluations)."""
    return blackbox_search("random_search", predict, cm, target, budget, n_calls, seed)


def cem(predict: Predictor, cm: CostModel, target: float, budget: str = "macs", n_calls: int = 2048,
        seed: int = 0) -> tuple[np.ndarray, dict]:
    """Offline cross-entropy method (:func:`blackbox_search` with no real evaluations)."""
    return blackbox_search("cem", predict, cm, target, budget, n_calls, seed)


__all__ = ["SEARCHES", "blackbox_search", "cem", "random_search", "scored"]
