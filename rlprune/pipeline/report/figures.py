"""The figures every report shares: per-group ratios, score against cost with the Pareto front, the SPN's
predicted against the real drop (and against what the user gets), the measured wall times.

Every figure is written as a PNG through an atomic rename (:func:`save_figure`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rlprune.io import atomic_write_bytes
from rlprune.measure.ranking import spearman_ci
from rlprune.pipeline.report.document import count, fmt, plural

RULE_METHODS = ("uniform", "larger_group", "depth", "global_l1")


def best_rl(rows: list[dict]) -> dict | None:
    """The validated RL strategy with the best validation accuracy (None if none was validated)."""
    return max((r for r in rows if r["method"].startswith("rl")), key=lambda r: r["val_acc"], default=None)


def save_figure(fig, path: Path) -> Path:
    """Write ``fig`` as a PNG through an atomic rename (a killed run leaves the old figure or the new one) and
    close it.

    Returns:
        ``path``.
    """
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def fig_ratios(rows, groups, path: Path) -> Path:
    """Bars of the best RL strategy's ratios per group beside the handcrafted rules'."""
    import matplotlib.pyplot as plt

    by = {r["method"]: r for r in rows}
    rl = best_rl(rows)
    series = ([rl] if rl else []) + [by[m] for m in RULE_METHODS if m in by]
    G = len(groups)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * G + 3), 3.6))
    width = 0.8 / max(1, len(series))
    others = iter(["C0", "C1", "C2", "C4", "C5", "C6"])  # C3 (red) is kept for the RL strategy
    for i, r in enumerate(series):
        label = f"{r['method']} (RL)" if r is rl else r["method"]
        ax.bar(np.arange(G) + (i - (len(series) - 1) / 2) * width, r["ratios"], width, label=label,
               color="C3" if r is rl else next(others), edgecolor="black" if r is rl else None)
    ax.set_xticks(np.arange(G), [f"{g['id']}\n({g['channels']} ch)" for g in groups], fontsize=8)
    ax.set_ylabel("pruning ratio (channels removed)")
    ax.set_title("Per-group ratios: RL strategy vs handcrafted rules")
    ax.legend(fontsize=8, ncol=min(5, len(series)))
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def pareto_front(points: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats on both axes (lower x = cost, higher y = accuracy), by x."""
    order = np.lexsort((-points[:, 1], points[:, 0]))
    front, best = [], -np.inf
    for i in order:
        if points[i, 1] > best:
            front.append(i)
            best = points[i, 1]
    return np.array(front, dtype=int)


def fig_pareto(rows, base, cfg, path: Path) -> Path:
    """Every validated candidate's test score against its budgeted cost, with the Pareto front."""
    import matplotlib.pyplot as plt

    what = "MACs" if cfg.budget == "macs" else "params"
    pts = np.array([[r[f"{cfg.budget}_ratio"], r["acc"]] for r in rows])
    names = [r["method"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    # Labels alternate sides down the accuracy order: candidates at one budget share almost one x.
    for k, i in enumerate(np.argsort(-pts[:, 1])):
        (x, y), n = pts[i], names[i]
        rl = n.startswith("rl")
        ax.scatter(x, y, color="C3" if rl else "C0", marker="*" if rl else "o", s=110 if rl else 40, zorder=3)
        ax.annotate(n, (x, y), textcoords="offset points", xytext=(7 if k % 2 == 0 else -7, -3), fontsize=7,
                    ha="left" if k % 2 == 0 else "right")
    front = pts[pareto_front(pts)]
    ax.step(front[:, 0], front[:, 1], where="post", color="C2", lw=1.5, label="Pareto front", zorder=2)
    ax.axhline(base["acc"], color="grey", ls="--", lw=1, label=f"unpruned ({base['acc']:.2f}, {what} 1.0)")
    ax.axvline(cfg.target, color="k", ls=":", lw=1, label=f"target {cfg.target:g}")
    lo, hi = float(pts[:, 0].min()), float(pts[:, 0].max())
    pad = max(0.02, (hi - lo) * 0.25)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_xlabel(f"{what} ratio (pruned / original)")
    metric = base.get("metric", "accuracy")
    ax.set_ylabel(f"test {metric} after fine-tune (points)")
    ax.set_title(f"{metric.capitalize()} vs {what}, every validated candidate")
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def spn_vs_final(rows: list[dict], groups: list | None = None) -> dict:
    """How the SPN's prediction ranks what the user gets: every validated candidate that carries a predicted
    drop, against its drop after the fine-tune on the validation split.

    The SPN learns the label (the drop before any fine-tune, calibration split); a search is only as good as
    that label ranks the fine-tuned result, so this is the number that matters, not the held-out fit.

    Args:
        rows: validated candidates (``val_drop``, ``predicted_acc_drop``).
        groups: one label per row (e.g. its target): Spearman within each group, averaged.

    Returns:
        ``{"n", "predicted", "final", "spearman", "ci"}``; ``spearman`` is NaN for fewer than 3 pairs.
    """
    keep = [i for i, r in enumerate(rows) if r.get("predicted_acc_drop") is not None and r.get("val_drop") is not None
            and np.isfinite(float(r["predicted_acc_drop"]))]
    pred = [float(rows[i]["predicted_acc_drop"]) for i in keep]
    final = [float(rows[i]["val_drop"]) for i in keep]
    out = {"n": len(keep), "predicted": pred, "final": final, "spearman": float("nan"), "ci": None}
    if len(keep) >= 3:
        got = spearman_ci(pred, final, groups=None if groups is None else [groups[i] for i in keep], n_boot=1_000)
        out.update(spearman=got["rho"], ci=got.get("ci"))
    return out


def fig_spn(done: dict, path: Path, final: dict) -> Path:
    """Left: the SPN against its label (held-out samples, online rounds); right: against the
    validated, fine-tuned drop (``final``, from :func:`spn_vs_final`)."""
    import matplotlib.pyplot as plt
    import pandas as pd

    held = pd.read_csv(done["spn"]["heldout"])
    online = [(real, pred) for t in done["sweep"]["trials"] for rnd in (t.get("online_rounds") or [])
              for real, pred in zip(rnd.get("real_acc_drop", []), rnd.get("predicted_before", []), strict=False)]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9.6, 4.4))
    ax.scatter(held["acc_drop"], held["predicted"], s=14, alpha=0.7, label=f"held-out samples ({len(held)})")
    if online:
        o = np.array(online)
        ax.scatter(o[:, 0], o[:, 1], s=30, marker="x", color="C3",
                   label=f"search candidates, SPN before its online update ({len(o)})")
    hi = float(max(held["acc_drop"].max(), held["predicted"].max(), 1.0))
    ax.plot([0, hi], [0, hi], "k--", lw=1, label="perfect prediction")
    m = done["spn"]["metrics"]
    ax.set_title(f"SPN vs its label: MAE {m['mae']:.2f} points, Spearman {fmt(m.get('spearman'), 3)}", fontsize=9)
    metric = done["base"].get("metric", "accuracy")
    ax.set_xlabel(f"real {metric} drop, no fine-tune (points, calibration split)")
    ax.set_ylabel(f"predicted {metric} drop (points)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax2.scatter(final["final"], final["predicted"], s=26, color="C2")
    ax2.set_title(f"SPN vs what the user gets: Spearman {fmt(final['spearman'], 3)} "
                  f"({final['n']} validated candidates)", fontsize=9)
    ax2.set_xlabel(f"{metric} drop after the fine-tune (points, validation split)")
    ax2.set_ylabel(f"predicted {metric} drop (points)")
    ax2.grid(alpha=0.3)
    return save_figure(fig, path)


def describe_spn_vs_final(final: dict, metric: str) -> str:
    """One sentence for the reports: the SPN's ranking of the validated, fine-tuned candidates."""
    if not np.isfinite(final["spearman"]):
        return (f"{final['n']} validated candidate(s) carry an SPN prediction: too few (or too alike) to say how the "
                f"SPN ranks the fine-tuned {metric}.")
    ci = f" [95% CI {final['ci'][0]:.2f}, {final['ci'][1]:.2f}]" if np.all(np.isfinite(final["ci"])) else ""
    return (f"Against what the user gets (right panel): over the {final['n']} validated candidates with a "
            f"prediction, the SPN's predicted drop ranks the drop after the fine-tune (validation split) with "
            f"Spearman {final['spearman']:.2f}{ci}. The SPN learns the drop before any fine-tune, so this, not the "
            f"held-out fit, says whether its ranking survives the fine-tune.")


def fig_time(t: dict, path: Path) -> Path:
    """Measured wall times (stages, searches, baseline searches) as bars; ``t`` from ``search_timing``."""
    import matplotlib.pyplot as plt

    # Measured walls only: the stages (C0), the sweep's searches (C1), each search method's own wall (C2).
    bars = [(f"stage: {s}", w, "C0") for s, w in t["stages"].items()]
    bars += [(f"best search {t['best_tag']} ({t['best_episodes']} episodes)", t["best_wall_s"], "C1"),
             (f"whole sweep ({plural(t['n_trials'], 'search')}, {t['sweep_episodes']} episodes)",
              t["sweep_wall_s"], "C1")]
    # The rules take milliseconds; the black-box searches (those that called the SPN) are the ones to compare.
    bars += [(f"{m['method']} ({count(m['spn_calls'])} SPN calls, {count(m['real_evals'])} real evals)",
              float(m["search_s"]), "C2") for m in t["methods"]
             if m["source"] == "baseline" and m.get("search_s") is not None and (m.get("spn_calls") or 0) > 0]
    labels, vals, colors = zip(*bars[::-1], strict=True)
    fig, ax = plt.subplots(figsize=(7.2, 0.9 + 0.3 * len(bars)))
    ax.barh(labels, vals, color=colors)
    for i, v in enumerate(vals):
        ax.text(v, i, f" {v:,.1f} s", va="center", fontsize=8)
    ax.set_xlim(0, max(max(vals), 1e-3) * 1.22)
    ax.set_xlabel("measured wall time (s)")
    ax.set_title("Measured wall times: stages, RL searches, baseline searches", fontsize=10)
    return save_figure(fig, path)
