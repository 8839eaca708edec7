"""The candidate pool of a search: the ratio vectors it found, best predicted reward first (no Ray).

An env episode ends with an ``info`` dict; :func:`candidate` keeps what later stages need from it. The pool
holds the best :data:`TOP_KEPT` distinct vectors and the real accuracy drops measured for some of them,
is re-scored when the world model changes, and picks the vectors worth a real evaluation by an optimistic
score: predicted reward plus ``beta * w_acc`` times the SPN ensemble's spread (a UCB rule: a vector the
ensemble disagrees on may be better than it looks, and evaluating it teaches the SPN the most).

    pool = CandidatePool()
    pool.add([env_info, ...])
    for c in pool.most_promising(4, beta=1.0, w_acc=1.0): ...
    pool.record_real(c["ratios"], measured_drop)

A target-conditioned search (episodes draw their target from a range) keeps one pool per target bin
(:class:`BinnedPool`): rewards at different targets are not comparable (a lower target pays a larger cost
term and loses more accuracy), so each bin ranks only the vectors found for targets inside it.

A black-box search (random search, CEM; of ratios or of bit widths) has no episodes and no reward, only
predicted drops: :class:`Kept` holds its best distinct vectors, lowest (misses the target, drop) first.

    kept = Kept()
    kept.add(R, predicted_drop, miss)
    for vector, _, drop in kept.take(2): ...          # the best not measured yet
    calls += kept.rescore(new_predict)                # re-ranked by a refined world model: counted calls
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from rlprune.errors import ConfigError

TOP_KEPT = 64
"""Candidates remembered across iterations (by predicted reward); enough for several online rounds."""
TARGET_BINS = 5
"""Equal-width target bins of a conditioned search: one per ~0.1 of a 0.3:0.8 range, enough to read the
policy's quality across the range without thinning each bin's candidates to nothing."""
_FIELDS = ("reward", "acc_drop", "acc_drop_std", "macs_ratio", "params_ratio", "budget_ratio", "spn_version",
           "target")


def candidate(info: dict) -> dict:
    """The part of an env episode's final ``info`` that the pool keeps (achieved ratios as ``ratios``).

    NaN (no ensemble spread, e.g. under the real reward) becomes None so the pool stays strict JSON.
    """
    info = {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in info.items()}
    return {k: info.get(k) for k in _FIELDS} | {"ratios": [float(r) for r in info["achieved"]],
                                                "source": info.get("source", "episode")}


def key(ratios) -> str:
    """A vector's identity in the pool (6 decimals, so float noise does not split it)."""
    return ",".join(f"{float(r):.6f}" for r in ratios)


def _finite(x) -> float:
    return float(x) if x is not None and np.isfinite(x) else 0.0


class CandidatePool:
    """The best distinct vectors of a search and the real drops measured for some of them.

    Args:
        items: candidates (``candidate`` dicts) from a saved state, best first.
        evaluated: ``{key(ratios): real acc_drop}`` from a saved state.
        keep: how many candidates to remember.
    """

    def __init__(self, items: list[dict] | None = None, evaluated: dict[str, float] | None = None,
                 keep: int = TOP_KEPT):
        self.items = list(items or [])
        self.evaluated = dict(evaluated or {})
        self.keep = keep

    def add(self, infos: list[dict]) -> None:
        """Merge finished episodes' infos; a vector seen twice keeps its best reward."""
        best: dict[str, dict] = {}
        for c in self.items + [candidate(i) for i in infos]:
            k = key(c["ratios"])
            if k not in best or c["reward"] > best[k]["reward"]:
                best[k] = c
        self.items = sorted(best.values(), key=lambda c: -c["reward"])[: self.keep]

    @property
    def best(self) -> dict:
        """The candidate with the highest predicted reward.

        Raises:
            IndexError: the pool is empty.
        """
        return self.items[0]

    def real_drop(self, ratios) -> float | None:
        """The measured accuracy drop of ``ratios`` (None if it was never evaluated for real)."""
        return self.evaluated.get(key(ratios))

    def most_promising(self, n: int, beta: float, w_acc: float) -> list[dict]:
        """Up to ``n`` candidates not yet evaluated for real, by ``reward + beta * w_acc * acc_drop_std``."""
        pool = [c for c in self.items if key(c["ratios"]) not in self.evaluated]
        pool.sort(key=lambda c: -(c["reward"] + beta * w_acc * _finite(c.get("acc_drop_std"))))
        return pool[:n]

    def record_real(self, ratios, acc_drop: float) -> None:
        """Remember a real evaluation of ``ratios``."""
        self.evaluated[key(ratios)] = float(acc_drop)

    def rescore(self, predict: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
                reward: Callable[[float, float, float | None], float]) -> None:
        """Re-predict every candidate with a new world model and re-rank (older rewards are stale).

        Args:
            predict: ``(N, G) ratios -> (mean drop, std)``.
            reward: ``(acc_drop, budget_ratio, target) -> reward``, the env's team reward at the candidate's
                episode target (None for candidates saved before targets were recorded).
        """
        if not self.items:
            return
        mean, std = predict(np.array([c["ratios"] for c in self.items]))
        for c, m, s in zip(self.items, mean, std, strict=True):
            c["acc_drop"], c["acc_drop_std"] = float(m), float(s)
            c["reward"] = float(reward(float(m), c["budget_ratio"], c.get("target")))
        self.items.sort(key=lambda c: -c["reward"])

    def state(self) -> dict:
        """JSON-ready ``{"candidates", "evaluated"}`` (what :class:`CandidatePool` takes back)."""
        return {"candidates": self.items, "evaluated": self.evaluated}


class BinnedPool:
    """One :class:`CandidatePool` per target bin of a conditioned search, sharing the real evaluations.

    Args:
        lo, hi: the target range; ``bins`` equal-width bins cover it.
        bins: how many bins.
        items: per bin, candidates from a saved state.
        evaluated: ``{key(ratios): real acc_drop}`` from a saved state.
    """

    def __init__(self, lo: float, hi: float, bins: int = TARGET_BINS, items: list[list[dict]] | None = None,
                 evaluated: dict[str, float] | None = None):
        self.lo, self.hi, self.n_bins = float(lo), float(hi), int(bins)
        self.evaluated = dict(evaluated or {})
        keep = max(16, TOP_KEPT // self.n_bins)
        self.bins = [CandidatePool(b, self.evaluated, keep) for b in (items or [[]] * self.n_bins)]
        for b in self.bins:
            b.evaluated = self.evaluated  # one record of real evaluations for every bin

    @property
    def edges(self) -> np.ndarray:
        """``bins + 1`` bin edges from ``lo`` to ``hi``."""
        return np.linspace(self.lo, self.hi, self.n_bins + 1)

    @property
    def centers(self) -> list[float]:
        """Each bin's middle target (where a search plays its greedy policy)."""
        e = self.edges
        return [float(x) for x in (e[:-1] + e[1:]) / 2]

    def bin_of(self, target: float) -> int:
        """The bin holding ``target`` (targets outside the range go to the nearest end bin)."""
        i = int((float(target) - self.lo) / (self.hi - self.lo) * self.n_bins)
        return min(max(i, 0), self.n_bins - 1)

    @property
    def items(self) -> list[dict]:
        """Every bin's candidates, bin by bin."""
        return [c for b in self.bins for c in b.items]

    def add(self, infos: list[dict]) -> None:
        """Merge finished episodes' infos (each carries its episode ``target``) into their bins."""
        per_bin: list[list[dict]] = [[] for _ in self.bins]
        for info in infos:
            per_bin[self.bin_of(info["target"])].append(info)
        for b, got in zip(self.bins, per_bin, strict=True):
            if got:
                b.add(got)

    def best_per_bin(self) -> list[dict | None]:
        """Each bin's best candidate by predicted reward (None for a bin nothing was found in yet)."""
        return [b.items[0] if b.items else None for b in self.bins]

    def real_drop(self, ratios) -> float | None:
        """The measured accuracy drop of ``ratios`` (None if it was never evaluated for real)."""
        return self.evaluated.get(key(ratios))

    def most_promising(self, n: int, beta: float, w_acc: float) -> list[dict]:
        """Up to ``n`` unevaluated candidates, taken from the bins in turn (each bin's by its UCB score), so
        the real evaluations spread over the range instead of piling up where rewards run highest."""
        queues = [b.most_promising(n, beta, w_acc) for b in self.bins]
        out, seen = [], set()
        for rank in range(n):
            for q in queues:
                if rank < len(q) and key(q[rank]["ratios"]) not in seen and len(out) < n:
                    seen.add(key(q[rank]["ratios"]))
                    out.append(q[rank])
        return out

    def record_real(self, ratios, acc_drop: float) -> None:
        """Remember a real evaluation of ``ratios`` (seen by every bin)."""
        self.evaluated[key(ratios)] = float(acc_drop)

    def rescore(self, predict, reward) -> None:
        """:meth:`CandidatePool.rescore` in every bin."""
        for b in self.bins:
            b.rescore(predict, reward)

    def state(self) -> dict:
        """JSON-ready ``{"lo", "hi", "bins", "evaluated"}`` (what :func:`pool_from_state` takes back)."""
        return {"lo": self.lo, "hi": self.hi, "bins": [b.items for b in self.bins], "evaluated": self.evaluated}


class Kept:
    """The best distinct vectors a black-box search has scored: those meeting the target first, then by predicted
    drop (lower is better), a vector seen again taking its newest prediction.

    Args:
        keep: how many are kept (a re-scoring costs one predictor call per kept vector).
    """

    def __init__(self, keep: int = TOP_KEPT) -> None:
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ConfigError(f"keep={keep!r} must be a positive integer")
        self.keep = keep
        self._items: dict[str, list] = {}  # key -> [vector, misses the target, predicted drop]
        self._taken: set[str] = set()

    def __len__(self) -> int:
        return len(self.ranked())

    def add(self, V, drops, miss=None) -> None:
        """Remember scored vectors.

        Args:
            V: ``(N, G)`` vectors.
            drops: ``(N,)`` predicted drops.
            miss: ``(N,)`` whether each misses the target (None: none does).
        """
        V = np.atleast_2d(np.asarray(V))
        drops = np.asarray(drops, dtype=np.float64).reshape(-1)
        miss = np.zeros(len(V), bool) if miss is None else np.asarray(miss, bool).reshape(-1)
        for v, m, d in zip(V, miss, drops, strict=True):
            self._items[key(v)] = [v, bool(m), float(d)]
        if len(self._items) > 4 * self.keep:  # trim now and then, not on every batch
            self._trim(self.keep)

    def _trim(self, n: int) -> None:
        self._items = dict(sorted(self._items.items(), key=lambda kv: (kv[1][1], kv[1][2]))[:n])

    def ranked(self) -> list[tuple[np.ndarray, bool, float]]:
        """The kept ``(vector, misses, predicted drop)``, best first."""
        self._trim(self.keep)
        return [tuple(v) for v in self._items.values()]

    def take(self, k: int) -> list[tuple[np.ndarray, bool, float]]:
        """Up to ``k`` of :meth:`ranked` that meet the target and were not taken before; they count as taken."""
        out = [v for v in self.ranked() if not v[1] and key(v[0]) not in self._taken][: max(0, int(k))]
        self._taken.update(key(v[0]) for v in out)
        return out

    def rescore(self, predict: Callable[[np.ndarray], np.ndarray], limit: int | None = None) -> int:
        """Re-predict the kept vectors with a refined world model.

        Args:
            predict: ``(N, G) vectors -> (N,) predicted drops``.
            limit: the calls that may be spent: only the best ``limit`` (by their old predictions) are kept
                and re-scored (None: every kept one).

        Returns:
            The calls spent.
        """
        self._trim(self.keep if limit is None else min(self.keep, max(0, int(limit))))
        if self._items:
            vals = list(self._items.values())
            for v, d in zip(vals, np.asarray(predict(np.stack([v[0] for v in vals])), np.float64).reshape(-1),
                            strict=True):
                v[2] = float(d)
        return len(self._items)

    def best(self) -> tuple[np.ndarray, bool, float]:
        """The first of :meth:`ranked`.

        Raises:
            ConfigError: nothing was scored.
        """
        ranked = self.ranked()
        if not ranked:
            raise ConfigError("no vector was scored")
        return ranked[0]


def pool_from_state(state: dict) -> CandidatePool | BinnedPool:
    """Rebuild a pool from its ``state()`` (a binned one when the state has ``bins``)."""
    if "bins" in state:
        return BinnedPool(state["lo"], state["hi"], len(state["bins"]), state["bins"], state["evaluated"])
    return CandidatePool(state["candidates"], state["evaluated"])
