"""Quality's tables from its per-seed rows: accuracy per method over seeds, RL against the best baseline chosen
on validation (paired intervals), and params removed at equal accuracy drop against the best rule.

``quality.py`` measures the rows; this module only reads them (so ``plots.py`` and the tests use it without
running anything). The statistics are described in ``quality.py``'s docstring.
"""

from __future__ import annotations

import statistics

import numpy as np
import record

RULES = ("uniform", "larger_group", "depth")
"""The handcrafted rules (the params-at-equal-drop comparison's reference)."""
BUDGET = "macs"


def rounded(x, nd: int = 2):
    return "" if x is None or x == "" or not np.isfinite(float(x)) else round(float(x), nd)


def _sd(rows: list[dict]) -> float:
    return statistics.stdev(float(r["acc"]) for r in rows) if len(rows) > 1 else 0.0


def _groups(rows: list[dict]):
    """``(task, target, finetune_steps) -> rows``, sorted."""
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault((r["task"], float(r["target"]), int(r["finetune_steps"])), []).append(r)
    return sorted(out.items())


def _correct(rows: list[dict]):
    """All ``rows``' test outcomes end to end (None when a row has none)."""
    from rlprune.measure.stats import unpack_correct

    if any(not isinstance(r.get("test_correct"), str) for r in rows):
        return None
    return np.concatenate([unpack_correct(r["test_correct"]) for r in rows])


def summarise(rows: list[dict]) -> list[dict]:
    """Every method's figures over seeds.

    Args:
        rows: the per-seed rows (as written, or read back from the CSV).

    Returns:
        Per (task, target, fine-tune, method): mean validation and test accuracy, the test accuracy's 95%
        interval over all seeds' test images together, std over seeds, cost, and the counted budget.
    """
    from rlprune.measure.stats import accuracy_ci

    out = []
    for (task, target, ft), group in _groups(rows):
        for m in dict.fromkeys(r["method"] for r in group):
            v = sorted((r for r in group if r["method"] == m), key=lambda r: r["seed"])
            correct = _correct(v)
            lo, hi = accuracy_ci(correct) if correct is not None else (None, None)

            def mean(k, v=v):
                return float(np.mean([float(r[k]) for r in v]))

            out.append({"task": task, "target": target, "finetune_steps": ft, "method": m, "seeds": len(v),
                        "val_acc": round(mean("val_acc"), 2), "acc": round(mean("acc"), 2), "acc_ci_lo": rounded(lo),
                        "acc_ci_hi": rounded(hi), "acc_std": round(_sd(v), 2),
                        "params_ratio": round(mean("params_ratio"), 3), "macs_ratio": round(mean("macs_ratio"), 3),
                        "latency_ms": round(mean("latency_ms"), 3), "spn_calls": round(mean("spn_calls")),
                        "real_evals": round(mean("real_evals")), "candidates": round(mean("candidates")),
                        "search_s": round(mean("search_s"), 1)})
    return out


def comparisons(rows: list[dict], budget: str = BUDGET) -> list[dict]:
    """RL minus the best baseline (chosen on validation, per seed) on the same test images.

    Args:
        rows: the per-seed rows, with ``source``, ``val_acc``, ``<budget>_ratio`` and packed ``test_correct``.
        budget: which ratio meets the target (``macs`` here; ``size`` for the bit widths of quantize.py).

    Returns:
        Per (task, target, fine-tune): one row per seed and one with ``seed == "all"`` (every seed's test
        images together; ``spread_lo``/``spread_hi`` the per-seed differences' min and max): ``best_baseline``,
        ``rl_val_acc``, ``baseline_val_acc``, ``diff``, ``diff_ci_lo``, ``diff_ci_hi``, ``p_value``, ``real``.
    """
    from rlprune.measure.stats import paired_difference, unpack_correct
    from rlprune.pipeline.select import comparison

    out = []
    for (task, target, ft), group in _groups(rows):
        a_all, b_all, diffs, chosen = [], [], [], []
        for seed in sorted({r["seed"] for r in group}):
            mine = [r for r in group if r["seed"] == seed]
            comp = comparison(mine, target, budget)
            if comp is None or comp.get("diff_ci") is None:
                continue  # no feasible candidate on one side, or no per-image outcomes: nothing to pair
            by = {r["method"]: r for r in mine}
            rl, bl = by[comp["rl"]], by[comp["best_baseline"]]
            a_all.append(unpack_correct(rl["test_correct"]))
            b_all.append(unpack_correct(bl["test_correct"]))
            diffs.append(comp["diff"])
            chosen.append(comp["best_baseline"])
            out.append(_comp_row(task, target, ft, seed, comp, rl["val_acc"], bl["val_acc"]))
        if diffs:
            pooled = paired_difference(np.concatenate(a_all), np.concatenate(b_all))
            row = _comp_row(task, target, ft, "all", pooled, None, None)
            row.update(best_baseline=", ".join(chosen), spread_lo=round(min(diffs), 2),
                       spread_hi=round(max(diffs), 2))
            out.append(row)
    return out


def _comp_row(task, target, ft, seed, comp: dict, rl_val, bl_val) -> dict:
    return {"task": task, "target": target, "finetune_steps": ft, "seed": seed,
            "best_baseline": comp.get("best_baseline", ""), "rl_val_acc": rounded(rl_val),
            "baseline_val_acc": rounded(bl_val), "diff": round(comp["diff"], 2),
            "diff_ci_lo": round(comp["diff_ci"][0], 2), "diff_ci_hi": round(comp["diff_ci"][1], 2),
            "p_value": round(comp["p_value"], 4), "real": bool(comp["real"]), "spread_lo": "", "spread_hi": ""}


def removed_at_drop(points: list[tuple[float, float]], d: float) -> float:
    """Most params removed on a rule's piecewise-linear (drop, removed) curve where the drop is <= ``d``.

    Args:
        points: the rule's (acc_drop, params_removed) at its targets, least pruned first; the curve starts at
            the unpruned model (0, 0).
        d: the accuracy drop to match.

    Returns:
        The params removed; 0 when no point of the curve is that accurate.
    """
    curve = [(0.0, 0.0), *points]
    best = 0.0
    for (d0, r0), (d1, r1) in zip(curve, curve[1:], strict=False):
        for dd, rr in ((d0, r0), (d1, r1)):
            if dd <= d:
                best = max(best, rr)
        if (d0 - d) * (d1 - d) < 0:  # the segment crosses drop d: take the crossing point too
            best = max(best, r0 + (d - d0) / (d1 - d0) * (r1 - r0))
    return best


def params_at_equal_drop(rows: list[dict], finetune_steps: int) -> list[dict]:
    """RL's params removed vs the best rule's at RL's accuracy drop (see the module doc).

    Args:
        rows: the per-seed rows (with ``val_drop`` and ``acc_drop``).
        finetune_steps: which rows (after this fine-tune).

    Returns:
        One row per (task, target); the rule is chosen on the validation split, its figure read on the test split.
    """
    out = []
    sel = [r for r in rows if int(r["finetune_steps"]) == finetune_steps]
    for task, target in sorted({(r["task"], float(r["target"])) for r in sel}):
        per_rule = {rule: {"val": [], "test": []} for rule in RULES}
        rl_removed, rl_drop = [], []
        for seed in sorted({r["seed"] for r in sel if r["task"] == task}):
            mine = [r for r in sel if r["task"] == task and r["seed"] == seed]
            rl = next(r for r in mine if r["method"] == "rl" and float(r["target"]) == target)
            rl_removed.append(1 - float(rl["params_ratio"]))
            rl_drop.append(float(rl["acc_drop"]))
            for rule in RULES:
                pts = sorted(((float(r["target"]), float(r["val_drop"]), float(r["acc_drop"]),
                               1 - float(r["params_ratio"])) for r in mine if r["method"] == rule), reverse=True)
                for split, col, d in (("val", 1, float(rl["val_drop"])), ("test", 2, float(rl["acc_drop"]))):
                    per_rule[rule][split].append(removed_at_drop([(p[col], p[3]) for p in pts], d))
        best = max(RULES, key=lambda rule: float(np.mean(per_rule[rule]["val"])))
        rule_test = float(np.mean(per_rule[best]["test"]))
        rl_mean = float(np.mean(rl_removed))
        out.append({"task": task, "target": target, "finetune_steps": finetune_steps,
                    "rl_acc_drop": round(float(np.mean(rl_drop)), 2), "rl_params_removed": round(rl_mean, 3),
                    "best_rule_by_val": best, "rule_params_removed": round(rule_test, 3),
                    "ratio": round(rl_mean / rule_test, 3) if rule_test > 0 else None})
    return out


def markdown(summary: list[dict], comps: list[dict], equal: list[dict], header: str) -> str:
    """The three tables as markdown, with how to read them."""
    def table(rows):  # every column, in the order the row builders give them
        return record.md_table(rows, list(rows[0]) if rows else [])

    lines = [header, "", "## Every method (means over seeds)", "", *table(summary), "",
             "## RL minus the best baseline (chosen on validation), test accuracy points", "",
             "Per seed, the baseline with the best validation accuracy within the target; `diff` with its paired "
             "95% bootstrap interval over the same test images and the McNemar p-value. `seed all`: every seed's "
             "test images together; `spread`: the per-seed differences' min and max. `real`: the interval excludes "
             "0.", "", *table(comps), "",
             "## Params removed at equal accuracy drop, RL vs the best handcrafted rule", "",
             "Each rule's (drop, params removed) points over the targets, joined by straight lines from the "
             "unpruned model; the rule's figure is the most it removes with a drop <= RL's (means over seeds). The "
             "rule is chosen at RL's validation drop on validation curves; the figure is read on the test split. "
             "ratio > 1: RL removes more parameters for the same accuracy. `n/a`: no rule point is that accurate.",
             "", *table(equal)]
    return "\n".join(lines)


def headline(rows: list[dict]) -> dict:
    """The summary.json figures from the per-seed rows of one workload (after the fine-tune).

    Returns:
        ``rl_minus_best_baseline_acc_at_<t>`` with ``_ci``, ``_real``, ``_spread`` and ``_best_baseline`` per
        target, ``params_removed_ratio_vs_best_rule`` (at 0.5) and ``quality_selection_split``.

    Raises:
        ValueError: the rows hold more than one workload (their figures would overwrite one another).
    """
    tasks = sorted({r["task"] for r in rows})
    if len(tasks) > 1:
        raise ValueError(f"headline figures need the rows of one workload, got {tasks}: run quality.py per workload")
    finetune_steps = max(int(r["finetune_steps"]) for r in rows)
    out: dict = {"quality_selection_split": "validation"}
    for c in comparisons(rows):
        if c["seed"] == "all" and c["finetune_steps"] == finetune_steps:
            k = f"rl_minus_best_baseline_acc_at_{c['target']:g}"
            out.update({k: c["diff"], f"{k}_ci": [c["diff_ci_lo"], c["diff_ci_hi"]], f"{k}_real": c["real"],
                        f"{k}_spread": [c["spread_lo"], c["spread_hi"]], f"{k}_best_baseline": c["best_baseline"]})
    for r in params_at_equal_drop(rows, finetune_steps):
        if r["target"] == 0.5:
            out["params_removed_ratio_vs_best_rule"] = r["ratio"]
    return out
