"""Online rounds of the bits searches: measure the most promising vectors for real, refine the world model.

    learner = BitsLearner(world_model, B, drops, measure=lambda C: measure_drops(task, model, C))
    kept = Kept(TOP_KEPT)                              # rlprune.search.candidates: the black-box searches' pool
    kept.add(B_played, predicted)                      # what a search has scored so far
    chosen = kept_bits(kept.take(2))                   # the best it has not measured yet
    drops, world_model = learner(chosen)               # real drops; a refined copy of the world model
    calls += kept.rescore(world_model.predict)         # re-ranked by the new model: counted calls

As in the pruning search (``rlprune.search.rl``), a search that only trusts its world model picks the
vector the model is most wrong about in its favour; a few real evaluations of its current favourites, fed
back into the model, correct exactly those errors. Each search (RL, random search, CEM) gets a learner of
its own starting from the same samples and the same model, so none sees another's real evaluations, and the
black-box searches spend as many of them, in as many rounds, as the RL search did.

Numpy and the world model only: no Ray (the measuring callable may use it).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from rlprune.errors import ConfigError

TOP_KEPT = 32
"""Distinct vectors a search keeps for online rounds (each re-scoring after a round costs one call apiece)."""

Measure = Callable[[np.ndarray], np.ndarray]
"""``(N, n_layers) bits -> (N,) measured drops`` (points), e.g. ``measure_drops`` or a Tune experiment."""


class BitsLearner:
    """One search's online rounds: measure the chosen vectors, refine its own world model on them.

    Args:
        world_model: the model the search starts from (a ``BitsSPN`` or ``BitsWorldModel``; never modified).
        B, drops: the samples it was fitted on (replayed in every refinement).
        measure: real drops of a bit matrix.
        seed: seeds the refinements' minibatches (round ``k`` uses ``seed + k``).
    """

    def __init__(self, world_model, B, drops, measure: Measure, seed: int = 0) -> None:
        self.world_model, self.measure, self.seed = world_model, measure, int(seed)
        self.B = np.atleast_2d(np.asarray(B, dtype=np.int64))
        self.drops = np.asarray(drops, dtype=np.float64).reshape(-1)
        self.rounds: list[dict] = []

    @property
    def real_evals(self) -> int:
        """Real evaluations spent so far."""
        return sum(r["n_real"] for r in self.rounds)

    def __call__(self, chosen) -> tuple[np.ndarray, object]:
        """Measure ``chosen`` for real and refine the world model on them.

        Args:
            chosen: ``(N, n_layers)`` bit vectors (N >= 1).

        Returns:
            ``(drops, world_model)``: the measured drops and the refined model (also kept as
            :attr:`world_model`); the round is recorded in :attr:`rounds` with the model's error on the
            fresh vectors before and after.

        Raises:
            ConfigError: no vectors, or a measurement that is not one finite drop per vector.
        """
        C = np.atleast_2d(np.asarray(chosen, dtype=np.int64))
        if not len(C):
            raise ConfigError("an online round needs at least one bit vector to measure")
        before = self.world_model.predict(C)
        drops = np.asarray(self.measure(C), dtype=np.float64).reshape(-1)
        if drops.shape != (len(C),) or not np.isfinite(drops).all():
            raise ConfigError(f"measuring {len(C)} bit vectors gave {drops.tolist()}; expected one finite drop "
                              "(points) each")
        tuned = self.world_model.refined(C, drops, self.B, self.drops, seed=self.seed + len(self.rounds))
        after = tuned.predict(C)
        self.rounds.append({"round": len(self.rounds) + 1, "n_real": len(C), "bits": C.tolist(),
                            "predicted_before": before.tolist(), "real_drop": drops.tolist(),
                            "mae_before": float(np.abs(before - drops).mean()),
                            "mae_after": float(np.abs(after - drops).mean())})
        self.B, self.drops = np.vstack([self.B, C]), np.concatenate([self.drops, drops])
        self.world_model = tuned
        return drops, tuned


def kept_bits(chosen) -> np.ndarray:
    """The bit matrix of :meth:`rlprune.search.candidates.Kept.take`'s entries."""
    return np.array([v for v, _, _ in chosen], dtype=np.int64).reshape(len(chosen), -1)


def best_bits(kept) -> tuple[list[int], float]:
    """``(bits, predicted drop)`` of the best kept vector."""
    v, _, drop = kept.best()
    return [int(b) for b in v], drop


__all__ = ["TOP_KEPT", "BitsLearner", "Measure", "best_bits", "kept_bits"]
