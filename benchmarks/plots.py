"""Plots of the benchmark results: one PNG next to each results CSV it can draw, for the README.

    python benchmarks/plots.py                          # every plot benchmarks/results/ has the CSVs for
    python benchmarks/plots.py --results-dir DIR        # another results folder (e.g. a quick run's)

Reads the CSVs the benchmark scripts wrote (it measures nothing, so it runs in seconds and can be rerun
after any benchmark) and writes, for each full-run CSV found (``*_quick.csv`` only with ``--quick``):

- ``quality*.png``: test accuracy against the MACs ratio per method, before and after the fine-tune, mean
  over seeds with the 95% interval over all seeds' test images (the interval ``quality.py`` reports);
- ``search_speed_curves*.png``: time to accuracy, best validation accuracy so far against measured wall
  seconds, the SPN pipeline against the AMC-style search, one line per seed;
- ``quantize*.png``: test accuracy per method with its interval and stored size (share of the fp32 model),
  the fp32 model's as a line;
- ``targets*.png``: test accuracy at every MACs target per method, training targets and unseen ones marked
  apart;
- ``label_fidelity*.png``: each label (accuracy after k fine-tune steps) against the final accuracy of the
  validation recipe, vector by vector, coloured by target: what a within-target Spearman summarises;
- ``spn_points*.png`` (when a benchmark wrote per-vector SPN predictions): predicted against real drop,
  overall and within one budget.

Nothing is asserted on a figure.
"""

from __future__ import annotations

import math
import sys
import textwrap
from pathlib import Path

import common
import numpy as np
import pandas as pd

from rlprune.pipeline.report.figures import save_figure

STYLE = {"rl": ("C3", "o"), "conditioned_rl": ("C3", "o"), "per_target_rl": ("C1", "s"), "cem": ("C0", "^"),
         "random_search": ("C2", "v"), "global_l1": ("C4", "D"), "uniform": ("C7", "x"), "larger_group": ("C5", "+"),
         "depth": ("C8", "*"), "sensitivity": ("C4", "D"), "uniform8": ("C7", "x"), "uniform4": ("C5", "+"),
         "fp32": ("k", "*"), "spn_pipeline": ("C3", None), "amc_real": ("C0", None)}
"""Method -> (colour, marker): RL in red everywhere, the same baseline in the same colour in every plot."""


def _style(method: str) -> tuple[str, str | None]:
    return STYLE.get(method, ("C9", "."))


def _records(path: Path) -> list[dict]:
    return pd.read_csv(path).to_dict("records")


def _err(rows: list[dict]) -> np.ndarray | None:
    """Asymmetric error bars from ``acc_ci_lo``/``acc_ci_hi`` (None when a row has no interval)."""
    lo = [r.get("acc_ci_lo") for r in rows]
    hi = [r.get("acc_ci_hi") for r in rows]
    if any(v is None or v == "" or (isinstance(v, float) and math.isnan(v)) for v in lo + hi):
        return None
    acc = np.array([float(r["acc"]) for r in rows])
    return np.vstack([acc - np.array(lo, float), np.array(hi, float) - acc])


def _subplots(n: int, title: str):
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 3.8), squeeze=False)
    # ~13 characters of a 10-point title per inch: a longer line runs off the figure
    fig.suptitle(textwrap.fill(title, width=int(13 * 5.2 * n)), fontsize=10)
    return fig, list(axes[0])


def plot_quality(path: Path, out: Path) -> Path:
    """Accuracy vs MACs ratio per method, one panel per fine-tune (quality.py's per-seed rows)."""
    import quality_tables

    summary = quality_tables.summarise(_records(path))
    fts = sorted({s["finetune_steps"] for s in summary})
    fig, axes = _subplots(len(fts), f"{summary[0]['task']}: test accuracy at each MACs target "
                                    f"(mean over {max(s['seeds'] for s in summary)} seeds, 95% interval)")
    for ax, ft in zip(axes, fts, strict=True):
        for m in dict.fromkeys(s["method"] for s in summary):
            pts = sorted((s for s in summary if s["finetune_steps"] == ft and s["method"] == m),
                         key=lambda s: s["macs_ratio"])
            colour, marker = _style(m)
            ax.errorbar([s["macs_ratio"] for s in pts], [s["acc"] for s in pts], yerr=_err(pts), label=m,
                        color=colour, marker=marker, capsize=3, lw=1.5 if m == "rl" else 1)
        ax.set(xlabel="MACs ratio (kept)", ylabel="test accuracy (%)",
               title="BN recalibrated, no fine-tune" if ft == 0 else f"after {ft} fine-tune steps")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7)
    return save_figure(fig, out)


def plot_curves(path: Path, out: Path) -> Path:
    """Best validation accuracy so far against wall seconds, per method and seed, one panel per MACs target
    (search_speed.py; a sweep's SPN-pipeline curves include the shared sampling and SPN training)."""
    df = pd.read_csv(path)
    targets = sorted(df["target"].unique()) if "target" in df else [None]  # curves from before the sweep: one
    fig, axes = _subplots(len(targets), "Time to accuracy: SPN pipeline (samples + SPN + search) vs AMC-style "
                                        "real-reward search")
    for ax, t in zip(axes, targets, strict=True):
        for (method, seed), g in (df if t is None else df[df["target"] == t]).groupby(["method", "seed"]):
            g = g.sort_values("wall_s")
            ax.step(g["wall_s"], g["best_val_acc"], where="post", color=_style(method)[0],
                    ls=["-", "--", ":", "-."][int(seed) % 4], label=f"{method} seed {seed}")
        ax.set(xlabel="measured wall (s)", ylabel="best validation accuracy so far (%)",
               title=None if t is None else f"MACs target {t:g}")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7)
    return save_figure(fig, out)


def plot_quantize(path: Path, out: Path) -> Path:
    """Test accuracy per method with its interval and stored size (quantize.py's per-seed rows): the methods
    meet one size budget, so a dot plot shows them apart where a size axis would stack them."""
    import quantize

    rows = _records(path)
    summary = [s for s in quantize.summarise(rows) if s["method"] != "fp32"]
    fp32 = [float(r["acc"]) for r in rows if r["method"] == "fp32"]
    fig, axes = _subplots(1, f"{rows[0]['task']}: weight bits at one size budget (mean over seeds, 95% interval)")
    ax = axes[0]
    for i, s in enumerate(summary):
        colour, marker = _style(s["method"])
        err = _err([s])
        ax.errorbar([s["acc"]], [i], xerr=err, color=colour, marker=marker or "o", capsize=3, ls="none")
    ax.set_yticks(range(len(summary)), [f"{s['method']} ({100 * s['size_ratio']:.1f}% of fp32)" for s in summary],
                  fontsize=8)
    if fp32:
        ax.axvline(float(np.mean(fp32)), color="k", lw=0.8, ls="--", label=f"fp32 {np.mean(fp32):.2f}")
        ax.legend(fontsize=7)
    ax.set(xlabel="test accuracy (%)")
    ax.grid(alpha=0.3)
    return save_figure(fig, out)


def plot_targets(path: Path, out: Path) -> Path:
    """Accuracy at every target per method, training (filled) and unseen (open) targets (targets.py)."""
    df = pd.read_csv(path)
    df = df[df["kind"] != "train"]
    fig, axes = _subplots(1, f"{df['task'].iloc[0]}: one conditioned policy vs per-target searches "
                             "(mean over seeds; open markers: targets never trained on)")
    ax = axes[0]
    for method, g in df.groupby("method", sort=False):
        colour, marker = _style(method)
        m = g.groupby(["target", "kind"], as_index=False)["acc"].mean().sort_values("target")
        ax.plot(m["target"], m["acc"], color=colour, lw=1, label=method)
        for kind, fill in (("trained", colour), ("unseen", "none")):
            k = m[m["kind"] == kind]
            ax.scatter(k["target"], k["acc"], marker=marker or "o", facecolors=fill, edgecolors=colour)
    ax.set(xlabel="MACs target", ylabel="test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, out)


def plot_label_fidelity(path: Path, out: Path) -> Path:
    """Each label k against the final accuracy, vector by vector, coloured by target (label_fidelity.py)."""
    df = pd.read_csv(path)
    ks = sorted(int(c[5:]) for c in df.columns if c.startswith("acc_k"))
    fig, axes = _subplots(len(ks), f"{df['task'].iloc[0]}: sample label (k fine-tune steps) vs final accuracy "
                                   f"({int(df['final_steps'].iloc[0])}-step recipe, validation)")
    for ax, k in zip(axes, ks, strict=True):
        for i, (t, g) in enumerate(df.groupby("target")):
            ax.scatter(g[f"acc_k{k}"], g["final_acc"], s=12, color=f"C{i}", label=f"target {t:g}")
        ax.set(xlabel=f"label: accuracy after k={k} (%)", ylabel="final accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return save_figure(fig, out)


def plot_spn_points(path: Path, out: Path) -> Path:
    """Predicted vs real drop, overall and within the most populated budget bin (``spn_points`` CSVs)."""
    df = pd.read_csv(path)
    fig, axes = _subplots(2, "SPN: predicted vs real accuracy drop on held-out vectors")
    bins = (df["macs_ratio"] * 10).round() / 10
    busiest = bins.value_counts().idxmax()
    for ax, (name, g) in zip(axes, (("all budgets", df), (f"MACs ratio {busiest:g} +- 0.05", df[bins == busiest])),
                             strict=True):
        ax.scatter(g["real_drop"], g["predicted_drop"], s=10, alpha=0.7)
        lo, hi = float(min(g["real_drop"].min(), g["predicted_drop"].min())), float(
            max(g["real_drop"].max(), g["predicted_drop"].max()))
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.8)
        ax.set(xlabel="real drop (points)", ylabel="predicted drop (points)", title=f"{name} ({len(g)} vectors)")
        ax.grid(alpha=0.3)
    return save_figure(fig, out)


PLOTS = {"quality": plot_quality, "search_speed_curves": plot_curves, "quantize": plot_quantize,
         "targets": plot_targets, "label_fidelity": plot_label_fidelity, "spn_points": plot_spn_points}
"""CSV name prefix -> its plot."""


def plot_all(results_dir: Path, quick: bool = False) -> list[Path]:
    """Every plot ``results_dir`` has a CSV for.

    Args:
        results_dir: the benchmarks' results folder.
        quick: draw the ``*_quick.csv`` smoke results instead of the full ones.

    Returns:
        The PNGs written.
    """
    written = []
    for path in sorted(Path(results_dir).glob("*.csv")):
        if path.stem.endswith("_quick") != quick:
            continue
        # Not "search_speed" (no plot: its curves are the other CSV) nor a label-fidelity run's "..._spn" table.
        name = max((n for n in PLOTS if path.stem.startswith(n)), key=len, default=None)
        if name is None or path.stem.removesuffix("_quick").endswith("_spn"):
            continue
        written.append(PLOTS[name](path, path.with_suffix(".png")))
        print(written[-1], file=sys.stderr)
    return written


def main(argv=None) -> None:
    """Draw every plot the results folder has the CSVs for."""
    args = common.parser(__doc__).parse_args(argv)
    if not plot_all(args.results_dir, args.quick):
        raise SystemExit(f"no results CSV to plot in {args.results_dir}; run a benchmark first")


if __name__ == "__main__":
    common.main_guard(main)
