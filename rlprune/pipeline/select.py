"""Every choice ``rlprune run`` makes, and the split it makes it on.

- Which sweep trials' vectors go to validation (:func:`rank_rl`): by their real drop on the calibration
  split where an online round measured it, else by their SPN prediction. Search-time numbers only: the
  validation split has not been touched yet.
- Which validated candidate is the output model (:func:`pick_winner`), which RL strategy and which baseline
  are compared (:func:`comparison`): by accuracy on the VALIDATION split.
- The test split chooses nothing: it only fills the final table, its bootstrap intervals and the paired
  RL-vs-best-baseline difference.

A candidate is eligible when it does not exceed the target (:func:`feasible`); whether it also reached the
target from below within ``rlprune.space.costmodel.TARGET_SLACK`` is reported per row (``meets_target``),
never silently used to drop a method from the table.
"""

from __future__ import annotations

from rlprune.errors import ConfigError
from rlprune.measure.stats import paired_difference, unpack_correct
from rlprune.space.costmodel import meets_target

SELECTION_SPLIT = "validation"
"""The split every choice after the search is made on (recorded in ``summary.json``)."""
_FIT_TOL = 1e-9  # a cost ratio is a quotient of exact counts: only float rounding may exceed the target


def feasible(row: dict, target: float, budget: str) -> bool:
    """True when a candidate's ``<budget>_ratio`` does not exceed ``target``."""
    return row[f"{budget}_ratio"] <= target + _FIT_TOL


def within_slack(row: dict, target: float, budget: str) -> bool:
    """True when a candidate reached ``target`` from below within the slack every method is held to."""
    return bool(meets_target(row[f"{budget}_ratio"], target))


def rank_rl(trials: list[dict], target: float, budget: str) -> list[dict]:
    """Sweep trials whose best vector is feasible, most promising first.

    Rank by the real (calibration-split) drop where an online round measured the vector, else by the
    trial's own final SPN prediction: the trials' SPNs were fine-tuned on different samples, so measured
    drops are the fairer comparison when they exist.
    """
    ok = [t for t in trials if feasible(t, target, budget)]

    def score(t):
        return t["real_acc_drop"] if t.get("real_acc_drop") is not None else t["predicted_acc_drop"]

    return sorted(ok, key=score)


def _best(rows: list[dict]) -> dict:
    # Validation accuracy first; on a tie the smaller model, then the name, so the choice is reproducible.
    return max(rows, key=lambda r: (r["val_acc"], -r["params_ratio"], r["method"]))


def pick_winner(rows: list[dict], target: float, budget: str) -> dict:
    """The validated candidate with the best validation accuracy among the feasible ones.

    Raises:
        ConfigError: no candidate is feasible.
    """
    ok = [r for r in rows if feasible(r, target, budget)]
    if not ok:
        raise ConfigError(f"no validated candidate meets the {budget} target {target}")
    return _best(ok)


def comparison(rows: list[dict], target: float, budget: str) -> dict | None:
    """RL against the best baseline, both chosen on validation, compared on the same test images.

    Returns:
        ``{"rl", "best_baseline", "selection_split", "diff", "diff_ci", "p_value", "real", "n", "a_only",
        "b_only", "acc_a", "acc_b", "level"}`` (``rlprune.measure.stats.paired_difference`` of RL minus the
        baseline, in test points of the task's metric), or None when either side has no feasible candidate;
        ``diff_ci`` and ``p_value`` are None (and ``real`` False) for a metric without per-example scores.
    """
    ok = [r for r in rows if feasible(r, target, budget)]
    rl = [r for r in ok if r.get("source") == "rl"]
    base = [r for r in ok if r.get("source") == "baseline"]
    if not rl or not base:
        return None
    a, b = _best(rl), _best(base)
    if a.get("test_correct") is None or b.get("test_correct") is None:
        # A metric that returns one number per split: the difference has no interval, so it is never "real".
        return {"rl": a["method"], "best_baseline": b["method"], "selection_split": SELECTION_SPLIT,
                "diff": a["acc"] - b["acc"], "diff_ci": None, "p_value": None, "real": False,
                "note": "the task's metric gives no per-example scores, so there is no interval"}
    diff = paired_difference(unpack_correct(a["test_correct"]), unpack_correct(b["test_correct"]))
    return {"rl": a["method"], "best_baseline": b["method"], "selection_split": SELECTION_SPLIT, **diff}


__all__ = ["SELECTION_SPLIT", "comparison", "feasible", "pick_winner", "rank_rl", "within_slack"]
