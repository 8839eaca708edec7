"""One RL search watched on the validation split after every iteration and stopped by one rule (search_speed.py).

Both methods of ``search_speed.py`` (the SPN pipeline's online RL search and the AMC-style real-reward search)
run through :func:`watched_search`, so they are validated, clocked and stopped the same way: after every PPO
iteration the search's current best vector is pruned for real, BatchNorm-recalibrated and scored on the
validation split (that time is excluded from the wall), and :class:`StopRule` decides whether to go on.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class StopRule:
    """One stop rule for every search: no gain in best validation accuracy for ``patience`` iterations, the
    search's own wall past ``cap_s``, or ``max_iters`` iterations."""

    patience: int
    cap_s: float
    max_iters: int

    def done(self, curve: list[dict], search_s: float) -> bool:
        """Whether a search should stop now.

        Args:
            curve: its curve so far, one row per iteration (``best_val_acc``).
            search_s: its own measured wall so far (validation excluded).

        Returns:
            True when the rule fires.
        """
        if len(curve) >= self.max_iters or search_s >= self.cap_s:
            return True
        return len(curve) > self.patience and curve[-1]["best_val_acc"] <= curve[-1 - self.patience]["best_val_acc"]


class _Stop(Exception):
    """Raised from a search's iteration callback when the stop rule fires (the search is checkpointed)."""


def watched_search(cfg, rule: StopRule, validate, seed: int, method: str, offset_s: float = 0.0,
                   evals0: int = 0) -> dict:
    """Run one search, validating its best vector after every iteration, until ``rule`` stops it.

    Args:
        cfg: the ``SearchConfig`` (``iters`` is raised to ``rule.max_iters``).
        rule: when to stop.
        validate: ``ratios -> validation accuracy`` (its time is excluded from the walls).
        seed, method: recorded in the curve rows.
        offset_s: wall already spent before the search (the SPN pipeline's sampling and SPN training, shared by
            every target of a sweep); the curve's ``wall_s`` includes it and ``shared_s`` records it.
        evals0: real evaluations already spent before the search (the SPN pipeline's samples); the curve's
            ``real_evals`` include them and ``shared_real_evals`` records them.

    Returns:
        ``{"curve", "result", "search_s", "best"}``: the curve rows, the search's result (counted
        ``spn_calls``/``real_evals``), its measured wall, and the vector with the best validation accuracy.
    """
    import dataclasses

    from rlprune.search.rl import Search

    cfg = dataclasses.replace(cfg, iters=rule.max_iters)
    fixed = {"seed": seed, "method": method, "target": cfg.target}
    shared = {"shared_s": round(offset_s, 2), "shared_real_evals": evals0}
    curve: list[dict] = []
    seen: dict[tuple, float] = {}
    state = {"excluded": 0.0, "spn": 0, "real": evals0, "episodes": 0, "best": None}
    t0 = time.perf_counter()
    search = Search(cfg)

    def on_iteration(row: dict) -> None:
        t1 = time.perf_counter()
        search_s = t1 - t0 - state["excluded"]
        ratios = [float(x) for x in search.pool.best["ratios"]]
        key = tuple(round(x, 6) for x in ratios)
        if key not in seen:  # the best vector often stays the same: validate each vector once
            seen[key] = validate(ratios)
        # Counted by the search: reward calls hit the SPN or, for the AMC-style search, a real evaluation.
        calls = int(row.get("reward_calls", 0))
        state["spn" if cfg.reward == "spn" else "real"] += calls
        state["real"] += int((row.get("online") or {}).get("n_real", 0))
        state["episodes"] += int(row["episodes"])
        if state["best"] is None or seen[key] > seen[state["best"]]:
            state["best"] = key
        curve.append({**fixed, "iteration": int(row["iteration"]), "episodes": state["episodes"],
                      "wall_s": round(offset_s + search_s, 2), "val_acc": round(seen[key], 4),
                      "best_val_acc": round(seen[state["best"]], 4), "spn_calls": state["spn"],
                      "real_evals": state["real"], **shared})
        print(f"{method} seed {seed} target {fixed['target']}: iteration {row['iteration']}, "
              f"{offset_s + search_s:.0f} s, best validation {seen[state['best']]:.2f}", file=sys.stderr, flush=True)
        state["excluded"] += time.perf_counter() - t1
        if rule.done(curve, search_s):
            raise _Stop

    try:
        search.run(progress=False, on_iteration=on_iteration)
    except _Stop:
        pass  # the iteration was checkpointed before the callback; run() closed the algorithm
    search_s = curve[-1]["wall_s"] - offset_s
    return {"curve": curve, "result": search.result(), "search_s": search_s, "best": list(state["best"])}
