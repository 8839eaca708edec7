"""The label-fidelity study's tables: Spearman of every label with the final accuracy, the rule that picks the
default label, the markdown and the summary.json figures (``label_fidelity.py`` measures the rows)."""

from __future__ import annotations

import numpy as np
from fidelity_spn import rho_cell

from rlprune.measure.stats import excludes_zero

METRICS = ("acc", "loss")
RULE_RHO, RULE_GAP = 0.8, 0.1
"""Issue 15's choice of the default label: at every target whose finals rank anything, Spearman >= 0.8 or within
0.1 of the final recipe's own seed-to-seed agreement at that target (:func:`cheapest`, :func:`informative`)."""


def _series(rows, k, metric) -> np.ndarray:
    if k == "final":
        return np.array([r["final_acc_1"] for r in rows], dtype=float)
    sign = -1.0 if metric == "loss" else 1.0  # lower loss ranks higher
    return sign * np.array([r[f"{metric}_k{k}"] for r in rows], dtype=float)


def summarise(rows: list[dict], steps=None) -> list[dict]:
    """Per label (k, metric) and for the final recipe's seed-to-seed agreement: cost and Spearman per scope.

    Args:
        rows: the vectors' rows.
        steps: the k to summarise (default: every ``acc_k<k>`` column).

    Returns:
        One dict per (label, scope): ``label``, ``k`` (or ``"final"``), ``metric``, ``cost_s``, ``scope``
        (``all``, ``within`` or a target), ``rho``, ``lo``, ``hi`` (95% bootstrap interval over vectors), ``n``.
    """
    from rlprune.measure.ranking import spearman_ci

    steps = steps if steps is not None else sorted(int(c[5:]) for c in rows[0] if c.startswith("acc_k"))
    targets = np.array([float(r["target"]) for r in rows])
    final = np.array([r["final_acc"] for r in rows], dtype=float)
    labels = [(k, m, f"s_k{k}") for k in steps for m in METRICS] + [("final", "acc", None)]
    out = []
    for k, metric, cost_col in labels:
        x = _series(rows, k, metric)
        y = np.array([r["final_acc_2"] for r in rows], dtype=float) if k == "final" else final
        cost = np.mean([r[cost_col] for r in rows]) if cost_col else np.mean(
            [(r["final_s_1"] + r["final_s_2"]) / 2 for r in rows])
        name = "final seed 1 vs seed 2" if k == "final" else f"k={k} {metric}"
        scopes = [("all", np.ones(len(rows), bool), None), ("within", np.ones(len(rows), bool), targets)]
        scopes += [(f"{t:g}", targets == t, None) for t in dict.fromkeys(targets.tolist())]
        for scope, mask, groups in scopes:
            s = spearman_ci(x[mask], y[mask], groups=groups)
            out.append({"label": name, "k": k, "metric": metric, "cost_s": round(float(cost), 3), "scope": scope,
                        "rho": s["rho"], "lo": s["ci"][0], "hi": s["ci"][1], "n": s["n"]})
    return out


def informative(final: dict) -> bool:
    """Whether a target's finals rank anything: the final recipe's seed-1-vs-seed-2 Spearman there is real (its 95%
    interval excludes 0). Where it is not (the finals are all equal, or differ by less than the recipe's own
    noise), no label can be judged on that target's finals, and issue 15's rule skips it (:func:`cheapest`).

    Args:
        final: the final's seed-vs-seed row of one target (``rho``, ``lo``, ``hi``).
    """
    if not np.isfinite(final["rho"]):
        return False
    return excludes_zero(final["lo"], final["hi"])


def cheapest(summary: list[dict]) -> dict | None:
    """The cheapest label meeting issue 15's rule at every informative target (see :data:`RULE_RHO` and
    :func:`informative`), or None. With no informative target every label passes: the cheapest is chosen.

    Args:
        summary: :func:`summarise`'s rows (the labels to choose among, and the final's seed-vs-seed rows).

    Returns:
        The chosen label's ``within`` row (its mean within-target Spearman, for the report), or None.
    """
    rows = {(s["k"], s["metric"], s["scope"]): s for s in summary}
    targets = [sc for (k, _, sc) in rows if k == "final" and sc not in ("all", "within")]

    def meets(k, metric, target) -> bool:
        rho, final = rows[(k, metric, target)]["rho"], rows[("final", "acc", target)]
        if not informative(final):
            return True
        return bool(np.isfinite(rho) and (rho >= RULE_RHO or rho >= final["rho"] - RULE_GAP))

    ok = [s for (k, m, sc), s in rows.items() if sc == "within" and k != "final"
          and all(meets(k, m, t) for t in targets)]
    return min(ok, key=lambda s: (s["cost_s"], s["k"]), default=None)


def markdown(rows: list[dict], summary: list[dict], header: str) -> str:
    """The Spearman table, the accuracy levels per target and the cheapest label meeting the rule."""
    scopes = list(dict.fromkeys(s["scope"] for s in summary))
    by = {(s["label"], s["scope"]): s for s in summary}
    names = list(dict.fromkeys(s["label"] for s in summary))
    heads = ["label", "cost s", *("within-target (mean)" if c == "within" else "overall" if c == "all"
                                  else f"target {c}" for c in scopes)]
    lines = [header, "", "## Spearman with the final accuracy (95% bootstrap interval over vectors)", "",
             "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for name in names:
        first = by[(name, scopes[0])]
        cells = " | ".join(rho_cell(by[(name, c)]) for c in scopes)
        lines.append(f"| {name} | {first['cost_s']:.2f} | {cells} |")
    best = cheapest(summary)
    bound = by[(names[-1], "within")]
    skipped = [c for c in scopes if c not in ("all", "within") and not informative(by[(names[-1], c)])]
    lines += ["", f"Cheapest label whose Spearman at every target is >= {RULE_RHO} or within {RULE_GAP} of the "
              f"final recipe's own at that target (seed 1 vs seed 2, last line; within-target {rho_cell(bound)}): "
              + (f"**{best['label']}** ({best['cost_s']:.2f} s, {rho_cell(best)})." if best else "**none**.")
              + (f" Skipped, as their finals rank nothing (seed 1 vs seed 2 not real): target {', '.join(skipped)}."
                 if skipped else ""), "",
              "## Accuracy levels (mean over vectors; min-max of the final)", ""]
    steps = sorted(int(c[5:]) for c in rows[0] if c.startswith("acc_k"))
    heads = ["target", "vectors", "MACs ratio", *(f"label k={k}" for k in steps), "final (validation)"]
    lines += ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for t in dict.fromkeys(r["target"] for r in rows):
        g = [r for r in rows if r["target"] == t]
        fin = [r["final_acc"] for r in g]
        lines.append(f"| {t:g} | {len(g)} | {np.mean([r['macs_ratio'] for r in g]):.3f} | "
                     + " | ".join(f"{np.mean([r[f'acc_k{k}'] for r in g]):.1f}" for k in steps)
                     + f" | {np.mean(fin):.1f} ({min(fin):.1f}-{max(fin):.1f}) |")
    return "\n".join(lines) + "\n"


def headline(rows: list[dict], comparison: list[dict] | None = None) -> dict:
    """The summary.json figures: the final recipe's seed-to-seed and today's label's (k=0 accuracy) within-target
    Spearman with intervals, and the k of the cheapest label meeting the rule (None if none does); with section
    2's ``comparison``, the finals-only, the best single-k and the multi-fidelity SPN's within-target Spearman."""
    summary = summarise(rows)
    within = {(s["k"], s["metric"]): s for s in summary if s["scope"] == "within"}
    slug = str(rows[0]["task"]).replace("/", "_").replace("-", "")
    best = cheapest(summary)
    out = {}
    for name, s in (("final_seed_spearman", within[("final", "acc")]), ("k0_acc_spearman", within.get((0, "acc")))):
        if s is not None:
            out[f"label_fidelity_{slug}_{name}"] = round(s["rho"], 4)
            out[f"label_fidelity_{slug}_{name}_ci"] = [round(s["lo"], 4), round(s["hi"], 4)]
    out[f"label_fidelity_{slug}_cheapest_k"] = None if best is None else int(best["k"])
    out[f"label_fidelity_{slug}_cheapest_metric"] = None if best is None else best["metric"]
    within = {c["arm"]: c for c in comparison or () if c["scope"] == "within"}
    singles = [c for a, c in within.items() if a.startswith("k=") and np.isfinite(c["rho"])]
    best_k = max(singles, key=lambda c: c["rho"], default=None)
    for name, c in (("final", within.get("final")), ("best_k", best_k), ("multi", within.get("multi"))):
        if c is not None:
            out[f"label_fidelity_{slug}_spn_{name}_spearman"] = round(c["rho"], 4)
            out[f"label_fidelity_{slug}_spn_{name}_spearman_ci"] = [round(c["lo"], 4), round(c["hi"], 4)]
    if best_k is not None:
        out[f"label_fidelity_{slug}_spn_best_k"] = int(best_k["arm"][2:])
    return out
