"""The report of a run with one target: ``report.md`` and a self-contained ``report.html`` with four figures.

Figures (PNG in ``out/figures``, embedded in the HTML): per-group ratios of the RL strategy against the
handcrafted rules; test accuracy against the budgeted cost (MACs or params) for every validated candidate,
with the Pareto front; the SPN's predicted against the real accuracy drop (held-out samples, and the online
rounds' fresh real evaluations); the measured wall times (every stage, the best search, the whole sweep, each
search method). Only measured times and counted SPN calls and real evaluations appear: nothing is estimated
(an AMC-style search is compared by running one, in ``benchmarks/search_speed.py``).
"""

from __future__ import annotations

from pathlib import Path

from rlprune.measure.stats import describe
from rlprune.pipeline.report.document import (
    ci_cell,
    count,
    figure_dir,
    fmt,
    num,
    plural,
    publish,
    stage_blocks,
    stage_times,
)
from rlprune.pipeline.report.figures import (
    best_rl,
    describe_spn_vs_final,
    fig_pareto,
    fig_ratios,
    fig_spn,
    fig_time,
    spn_vs_final,
)
from rlprune.pipeline.select import comparison


def write_report(out: Path, cfg, done: dict, winner: dict) -> dict:
    """Render the report of a finished run.

    Args:
        out: the run folder.
        cfg: its ``RunConfig``.
        done: every stage's output (``rlprune.pipeline.run``).
        winner: the validated row selected as the output model.

    Returns:
        ``{"report_md", "report_html", "figures"}`` paths.
    """
    rows = done["validate"]["rows"]
    figdir = figure_dir(out)
    stage_wall = stage_times(out)
    timing = search_timing(done, stage_wall)
    final = spn_vs_final(rows)
    figs = {
        "ratios": fig_ratios(rows, done["base"]["groups"], figdir / "ratios.png"),
        "pareto": fig_pareto(rows, done["base"], cfg, figdir / "acc_vs_macs.png"),
        "spn": fig_spn(done, figdir / "spn_predicted_vs_real.png", final),
        "time": fig_time(timing, figdir / "search_time.png"),
    }
    blocks = _blocks(cfg, done, winner, rows, timing, figs, stage_wall, final)
    if done.get("quantize"):  # the second stage re-renders the report with its section before the stage times
        from rlprune.pipeline.quantize import quantize_blocks

        extra, qfigs = quantize_blocks(done, figdir, done["base"].get("metric", "accuracy"))
        blocks[-2:-2] = extra
        figs.update({p.stem: p for p in qfigs})
    return publish(out, blocks, f"rlprune report: {done['base'].get('task', cfg.task)}", figs)


def search_timing(done: dict, stage_wall: dict) -> dict:
    """The run's measured wall times and counted budgets; nothing in it is estimated.

    Args:
        done: every stage's output (``rlprune.pipeline.run``).
        stage_wall: stage name -> measured wall time (s), from the stage markers.

    Returns:
        ``{"stages", "best_tag", "best_wall_s", "best_episodes", "sweep_wall_s", "sweep_episodes",
        "n_trials", "methods"}``: ``stages`` is ``stage_wall``; the best search is the sweep trial of the RL
        strategy with the best validation accuracy; ``methods`` has one ``{"method", "source", "search_s",
        "spn_calls", "real_evals", "candidates"}`` per validated candidate, as each search counted them (None
        where a row does not say).
    """
    trials = done["sweep"]["trials"]
    rows = done["validate"]["rows"]
    rl = best_rl(rows)
    best = next((t for t in trials if rl and t["tag"] == rl["method"]), trials[0])
    methods = [{"method": r["method"], "source": r.get("source"),
                **{k: r.get(k) for k in ("search_s", "spn_calls", "real_evals", "candidates")}} for r in rows]
    return {"stages": dict(stage_wall), "best_tag": best["tag"], "best_wall_s": float(best["wall_s"]),
            "best_episodes": int(best["episodes"]), "sweep_wall_s": float(sum(t["wall_s"] for t in trials)),
            "sweep_episodes": sum(int(t["episodes"]) for t in trials), "n_trials": len(trials), "methods": methods}


def _blocks(cfg, done, winner, rows, timing, figs, stage_wall: dict, final: dict) -> list[tuple]:
    base = done["base"]
    what = "MACs" if cfg.budget == "macs" else "params"
    metric = base.get("metric", "accuracy")  # what every "acc" holds: the task's metric, in points
    b = [("h1", f"rlprune report: {base.get('task', cfg.task)}, {what} target {cfg.target:g}"),
         ("p", f"Unpruned model: {base['params']:,} params, {base['macs']:,} MACs, test {metric} "
               f"{base['acc']:.2f}, batch-1 CPU latency {base['latency_ms']:.2f} ms. Preset `{cfg.preset}`; "
               f"every candidate below was pruned for real, BatchNorm-recalibrated, fine-tuned "
               f"{cfg.measure.finetune_steps} steps and scored on the validation split (which makes every "
               f"choice) and the test split (which only reports).")]
    b.append(("p", f"**Output model: `{winner['method']}`**, the best validation {metric} among the candidates "
                   f"within the target ({winner['val_acc']:.2f} validation, {winner['acc']:.2f} test "
                   f"[95% CI {ci_cell(winner)}], {winner['params_ratio']:.3f} of "
                   f"the params, {winner['macs_ratio']:.3f} of the MACs), saved as `pruned_model.pt` (load with "
                   f"`rlprune.load_pruned`)."))
    comp = comparison(rows, cfg.target, cfg.budget)
    if comp:
        said = describe(comp) if comp.get("diff_ci") else f"{comp['diff']:+.2f} points ({comp['note']})"
        b.append(("p", f"RL (`{comp['rl']}`) minus the best baseline (`{comp['best_baseline']}`), both chosen on "
                       f"the validation split, on the same test images ({metric}): {said}."))
    b.append(("h2", "Results"))
    b.append(("table", ["method", f"val {metric}", f"test {metric}", "95% CI", "drop", "params", "MACs",
                        "latency ms", "SPN predicted drop", "SPN calls", "real evals"],
              [[r["method"], f"{r['val_acc']:.2f}", f"{r['acc']:.2f}", ci_cell(r),
                f"{r['acc_drop']:.2f}", f"{r['params_ratio']:.3f}", f"{r['macs_ratio']:.3f}",
                f"{r['latency_ms']:.2f}", fmt(r.get("predicted_acc_drop")), str(r.get("spn_calls", "")),
                str(r.get("real_evals", ""))]
               for r in sorted(rows, key=lambda r: -r["val_acc"])]))
    resolution = f" The test split holds {base['n']} examples: one example is {100 / base['n']:.2f} points." \
        if base.get("n") else ""
    b.append(("p", "`drop` is measured after the fine-tune on the test split; the SPN predicts the drop "
                   "before any fine-tune on the calibration split, so the two columns measure different things."
              + resolution))
    b.append(("h2", "Per-group ratios"))
    b.append(("img", figs["ratios"], "RL strategy against the handcrafted rules"))
    b.append(("h2", f"{metric.capitalize()} vs {what}"))
    b.append(("img", figs["pareto"], "every validated candidate and the unpruned model, with the Pareto front"))
    m = done["spn"]["metrics"]
    b.append(("h2", "State predictor network"))
    b.append(("p", f"{done['spn']['arch']} SPN trained on {done['spn']['n_train']} real samples; on "
                   f"{m['n']} held-out samples: MAE {m['mae']:.2f} points, Spearman {fmt(m.get('spearman'), 3)}, "
                   f"R^2 {fmt(m.get('r2'), 3)}."))
    b.append(("p", describe_spn_vs_final(final, metric)))
    b.append(("img", figs["spn"], f"SPN predicted vs real {metric} drop"))
    b.append(("h2", "Search time and budgets"))
    b.append(("p", f"Measured: the best search (`{timing['best_tag']}`) took {timing['best_wall_s']:.1f} s for "
                   f"{timing['best_episodes']} episodes; the whole sweep ({plural(timing['n_trials'], 'search')}, "
                   f"{timing['sweep_episodes']} episodes) {timing['sweep_wall_s']:.1f} s of search wall. SPN calls "
                   f"and real evaluations (calibration split) below are counted by each search, and every time was "
                   f"measured: an AMC-style search (a real evaluation every episode) is compared by running one, "
                   f"in `benchmarks/search_speed.py`, not by arithmetic here."))
    b.append(("table", ["method", "search wall s", "SPN calls", "real evals", "candidates"],
              [[m["method"], fmt(num(m["search_s"]), 1), count(m["spn_calls"]), count(m["real_evals"]),
                count(m["candidates"])] for m in timing["methods"]]))
    b.append(("img", figs["time"], "measured wall times"))
    b.append(("h2", "Reward-weighting sweep"))
    trials = done["sweep"]["trials"]
    b.append(("table", ["trial", "predicted drop", "real drop (calibration)", "MACs", "params", "episodes", "wall s"],
              [[t["tag"], fmt(t["predicted_acc_drop"]), fmt(t.get("real_acc_drop")), f"{t['macs_ratio']:.3f}",
                f"{t['params_ratio']:.3f}", str(t["episodes"]), f"{t['wall_s']:.0f}"] for t in trials]))
    return b + stage_blocks(stage_wall)
