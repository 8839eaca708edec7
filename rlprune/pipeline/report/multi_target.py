"""The report of a run with several targets (``rlprune run --target-macs 0.3,0.5,0.7``).

Built from the same blocks as the single-target report (:mod:`rlprune.pipeline.report.single`) and rendered to the same
two formats: per target, the output model and RL against the best baseline (both chosen on validation,
compared on the same test images); the figure ``acc_vs_targets.png`` (every method's test score against its
achieved cost, one line per method across the targets, 95% bootstrap intervals as error bars); per-target
result tables; the SPN's predicted against real drop; the sweep's conditioned searches; the stage times.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rlprune.measure.stats import describe
from rlprune.pipeline.report.document import ci_cell, figure_dir, fmt, publish, stage_blocks, stage_times
from rlprune.pipeline.report.figures import describe_spn_vs_final, fig_spn, save_figure, spn_vs_final
from rlprune.pipeline.select import comparison
from rlprune.pipeline.targets import target_dir

RL_LABEL = "RL (conditioned policy)"


def write_targets_report(out: Path, cfg, done: dict, winners: dict) -> dict:
    """Render the report of a finished list-form run.

    Args:
        out: the run folder.
        cfg: its ``RunConfig`` (``cfg.targets`` holds the targets).
        done: every stage's output; ``done["validate"]["targets"]`` holds each target's rows.
        winners: target folder name (``t0.4``) -> the method chosen as that target's output model.

    Returns:
        ``{"report_md", "report_html", "figures"}`` paths.
    """
    figdir = figure_dir(out)
    per = done["validate"]["targets"]
    final = _spn_vs_final(per)
    figs = {"targets": fig_acc_vs_targets(per, done["base"], cfg, figdir / "acc_vs_targets.png"),
            "spn": fig_spn(done, figdir / "spn_predicted_vs_real.png", final)}
    blocks = _blocks(cfg, done, winners, per, figs, stage_times(out), final)
    return publish(out, blocks, f"rlprune report: {done['base'].get('task', cfg.task)}", figs)


def method_series(per: list[dict]) -> dict[str, list[dict]]:
    """One series per method across the targets, in target order: each baseline by name, and RL as the
    validated RL strategy with the best validation score at each target (``RL_LABEL``)."""
    series: dict[str, list[dict]] = {}
    for p in per:
        rl = [r for r in p["rows"] if r.get("source") == "rl"]
        if rl:
            series.setdefault(RL_LABEL, []).append(max(rl, key=lambda r: r["val_acc"]))
        for r in p["rows"]:
            if r.get("source") != "rl":
                series.setdefault(r["method"], []).append(r)
    return series


def fig_acc_vs_targets(per: list[dict], base: dict, cfg, path: Path) -> Path:
    """Test score against the achieved ``budget`` ratio, one line per method across the targets, with each
    point's 95% bootstrap interval as its error bar; dotted lines mark the targets."""
    import matplotlib.pyplot as plt

    what = "MACs" if cfg.budget == "macs" else "params"
    fig, ax = plt.subplots(figsize=(7.4, 4.8))
    markers = iter(["o", "s", "^", "v", "D", "P", "X", "<", ">"])
    others = iter(["C0", "C1", "C2", "C4", "C5", "C6", "C7", "C8", "C9"])  # C3 (red) is kept for RL
    for name, rows in method_series(per).items():
        x = np.array([r[f"{cfg.budget}_ratio"] for r in rows])
        y = np.array([r["acc"] for r in rows])
        ci = np.array([r.get("acc_ci") or [r["acc"], r["acc"]] for r in rows], dtype=float)
        rl = name == RL_LABEL
        ax.errorbar(x, y, yerr=[y - ci[:, 0], ci[:, 1] - y], label=name, capsize=3,
                    marker="*" if rl else next(markers), ms=11 if rl else 5, lw=2.2 if rl else 1,
                    color="C3" if rl else next(others), zorder=3 if rl else 2)
    for t in cfg.targets:
        ax.axvline(t, color="k", ls=":", lw=0.8)
    ax.axhline(base["acc"], color="grey", ls="--", lw=1, label=f"unpruned ({base['acc']:.2f})")
    metric = base.get("metric", "accuracy")
    ax.set_xlabel(f"{what} ratio (pruned / original); dotted: the targets {', '.join(f'{t:g}' for t in cfg.targets)}")
    ax.set_ylabel(f"test {metric} after fine-tune (points)")
    ax.set_title(f"{metric.capitalize()} vs {what} per method across the targets (95% intervals)", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def _spn_vs_final(per: list[dict]) -> dict:
    rows = [r for p in per for r in p["rows"]]
    return spn_vs_final(rows, [p["target"] for p in per for _ in p["rows"]])


def _blocks(cfg, done, winners, per, figs, stage_wall: dict, final: dict) -> list[tuple]:
    base = done["base"]
    what = "MACs" if cfg.budget == "macs" else "params"
    metric = base.get("metric", "accuracy")
    targets = ", ".join(f"{t:g}" for t in cfg.targets)
    val = done["validate"]
    sweep_calls = sum(int(t["spn_calls"]) for t in done["sweep"]["trials"])
    b = [("h1", f"rlprune report: {base.get('task', cfg.task)}, {what} targets {targets}"),
         ("p", f"Unpruned model: {base['params']:,} params, {base['macs']:,} MACs, test {metric} {base['acc']:.2f}. "
               f"Preset `{cfg.preset}`. One sweep of target-conditioned RL searches over [{min(cfg.targets):g}, "
               f"{max(cfg.targets):g}] served every target (each RL vector is its policy's answer at that target); "
               f"every candidate was pruned for real, fine-tuned {cfg.measure.finetune_steps} steps and scored on "
               f"the validation split (which makes every choice) and the test split (which only reports)."),
         ("p", f"Equal counted budgets: the conditioned sweep spent {sweep_calls} SPN calls and {val['n_real']} "
               f"real evaluations for all K = {len(cfg.targets)} targets together; random search and CEM get, "
               f"{val['rule']} ({val['n_calls']} SPN calls and {val['n_real']} real evaluations over all the "
               f"targets).")]
    b.append(("h2", "Per target"))
    head = ["target", "output model", f"val {metric}", f"test {metric}", "95% CI", what, "RL", "best baseline",
            "RL minus baseline (test)"]
    body = []
    for p in per:
        t, rows = p["target"], p["rows"]
        w = next(r for r in rows if r["method"] == winners.get(target_dir(t)))
        comp = comparison(rows, t, cfg.budget)
        said = "n/a" if comp is None else describe(comp) if comp.get("diff_ci") else f"{comp['diff']:+.2f} points"
        body.append([f"{t:g}", f"{w['method']} ({target_dir(t)}/pruned_model.pt)", f"{w['val_acc']:.2f}",
                     f"{w['acc']:.2f}", ci_cell(w), f"{w[f'{cfg.budget}_ratio']:.3f}", comp["rl"] if comp else "n/a",
                     comp["best_baseline"] if comp else "n/a", said])
    b.append(("table", head, body))
    b.append(("p", "Each target's output model is its best validation score within the target, saved with its "
                   "manifest (load with `rlprune.load_pruned`). RL and the best baseline are both chosen on the "
                   "validation split and compared on the same test images: a difference is real only when its "
                   "paired 95% interval excludes 0."))
    b.append(("img", figs["targets"], f"test {metric} vs {what} per method across the targets, 95% intervals"))
    for p in per:
        b.append(("h2", f"Target {p['target']:g}"))
        b.append(("table", ["method", f"val {metric}", f"test {metric}", "95% CI", "params", "MACs",
                            "SPN predicted drop", "SPN calls", "real evals"],
                  [[r["method"], f"{r['val_acc']:.2f}", f"{r['acc']:.2f}", ci_cell(r), f"{r['params_ratio']:.3f}",
                    f"{r['macs_ratio']:.3f}", fmt(r.get("predicted_acc_drop")), str(r.get("spn_calls", "")),
                    str(r.get("real_evals", ""))] for r in sorted(p["rows"], key=lambda r: -r["val_acc"])]))
        b.append(("p", f"Random search and CEM here: {p['n_calls']} SPN calls and {p['n_real']} real evaluations "
                       f"in {p['rounds']} online round(s); RL rows report the whole sweep's spending, shared by "
                       f"every target."))
    m = done["spn"]["metrics"]
    b.append(("h2", "State predictor network"))
    b.append(("p", f"{done['spn']['arch']} SPN trained on {done['spn']['n_train']} real samples; on {m['n']} "
                   f"held-out samples: MAE {m['mae']:.2f} points, Spearman {fmt(m.get('spearman'), 3)}."))
    b.append(("p", describe_spn_vs_final(final, metric) + " Spearman is taken within each target "
                   "and averaged."))
    b.append(("img", figs["spn"], f"SPN predicted vs real {metric} drop"))
    b.append(("h2", "Conditioned sweep"))
    b.append(("table", ["trial", "episodes", "SPN calls", "real evals", "wall s", "policy"],
              [[t["tag"], str(t["episodes"]), str(t["spn_calls"]), str(t["real_evals"]), f"{t['wall_s']:.0f}",
                str(t.get("policy"))] for t in done["sweep"]["trials"]]))
    return b + stage_blocks(stage_wall)


__all__ = ["RL_LABEL", "fig_acc_vs_targets", "method_series", "write_targets_report"]
