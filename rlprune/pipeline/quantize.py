"""The pipeline's second stage: weight bits per layer of the output model (``rlprune run --quantize``).

After the report stage has saved the pruned winner as ``out/pruned_model.pt``, this stage runs
``rlprune.quant.pipeline.run_quantize`` on it (sensitivity rules, the bits world model, the RL bits search,
random search and CEM at the RL search's counted calls, the same quantization-aware fine-tune for every
candidate, validation chooses, test reports) into ``out/quantize/`` and re-renders the run's report with a
second-stage section: the bits-per-layer chart (RL against the rules) and stored size against test accuracy
for every validated candidate of both stages, with the Pareto front.

Two size ratios, both exact (``rlprune.quant.size``): ``size_ratio`` is a quantized candidate's stored size
over its input, the pruned fp32 model (what ``quantize.target_size`` bounds); ``size_ratio_base`` is the same
size over the unpruned fp32 model, the axis both stages share (an fp32 pruning candidate's is its params
ratio: every parameter stays at 32 bits).

The Pareto front is drawn through the candidates no other candidate beats on size and *validation* accuracy,
so the test split still chooses nothing; the dots show test accuracy with 95% intervals.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rlprune.measure.stats import describe, paired_difference, unpack_correct
from rlprune.pipeline.select import SELECTION_SPLIT

#: Per-method fields the stage keeps (the packed per-image test outcomes stay in ``quantize/summary.json``).
_ROW_KEYS = ("bits", "size_ratio", "val_acc", "acc", "acc_ci", "meets_target", "predicted_drop",
             "wm_calls", "real_evals", "search_s", "qat_steps")


def stage_quantize(run, log) -> dict:
    """Quantize the run's output model and add the second stage to its report.

    Args:
        run: the pipeline's state (``rlprune.pipeline.run._Run``) with the report stage done.
        log: called with each line of progress.

    Returns:
        The stage output: ``dir``, ``summary`` and ``model`` paths, ``target_size``, ``winner``, ``fp32`` (the
        pruned input), ``base_params``, ``layers``, ``world_model`` (held-out fidelity), ``comparison`` and
        ``methods`` (one row per candidate, :data:`_ROW_KEYS`).

    Raises:
        ConfigError: a target below the smallest reachable size (named, with that size).
    """
    from rlprune.pipeline.report.single import write_report
    from rlprune.quant.pipeline import QuantizeConfig, run_quantize

    cfg, q = run.cfg, run.cfg.quantize
    run.ray()  # the bits search is an RLlib algorithm
    qcfg = QuantizeConfig(task=cfg.task, task_kwargs=cfg.task_kwargs, target=q.target_size,
                          out=str(run.out / "quantize"), pruned=str(run.out), seed=cfg.seed, samples=q.samples,
                          rl_iters=q.rl_iters, rl_batch=q.rl_batch, world_model=q.world_model, workers=cfg.workers,
                          online_top=q.online_top,
                          qat_steps=cfg.measure.finetune_steps if q.qat_steps is None else q.qat_steps)
    summary = run_quantize(qcfg, log=lambda line: log(f"      {line}"), progress=run.progress)
    base_params = sum(p.numel() for p in run.task().base_model().parameters())
    shrink = summary["fp32"]["params"] / base_params  # fp32 size of the pruned input over the unpruned one
    methods = [{"method": name, **{k: row.get(k) for k in _ROW_KEYS},
                "size_ratio_base": row["size_ratio"] * shrink} for name, row in summary["methods"].items()]
    out = {"dir": str(run.out / "quantize"), "summary": str(run.out / "quantize" / "summary.json"),
           "model": summary["model"], "target_size": summary["target"], "winner": summary["winner"],
           "fp32": {**summary["fp32"], "size_ratio_base": shrink}, "base_params": base_params,
           "layers": summary["layers"], "world_model": summary["world_model"],
           "comparison": comparison(summary["methods"]), "methods": methods}
    return {**out, **write_report(run.out, cfg, {**run.done, "quantize": out}, _pruning_winner(run))}


def _pruning_winner(run) -> dict:
    name = run.done["report"]["winner"]
    return next(r for r in run.done["validate"]["rows"] if r["method"] == name)


def comparison(methods: dict) -> dict | None:
    """The RL bit vector against the best rule or black-box search, both chosen on validation within the size
    target, on the same test images (``rlprune.measure.stats.paired_difference``).

    Args:
        methods: ``{name: row}`` of ``run_quantize`` (rows with ``val_acc``, ``size_ratio``, ``meets_target``,
            ``correct``).

    Returns:
        ``{"rl", "best_baseline", "selection_split", **paired_difference}``, or None when RL or every baseline
        missed the target or a row has no per-image outcomes.
    """
    ok = {k: v for k, v in methods.items() if v["meets_target"] and v.get("correct")}
    if "rl" not in ok:
        return None
    others = {k: v for k, v in ok.items() if k not in ("rl", "given")}
    if not others:
        return None
    best = max(others, key=lambda k: (others[k]["val_acc"], -others[k]["size_ratio"], k))
    diff = paired_difference(unpack_correct(ok["rl"]["correct"]), unpack_correct(others[best]["correct"]))
    return {"rl": "rl", "best_baseline": best, "selection_split": SELECTION_SPLIT, **diff}


# ====================================================================== report
def quantize_blocks(done: dict, figdir: Path, metric: str) -> tuple[list[tuple], list[Path]]:
    """The report's second-stage section and its two figures.

    Args:
        done: every stage's output, ``quantize`` included.
        figdir: where the figures go.
        metric: the task's metric name.

    Returns:
        ``(blocks, figure paths)``; blocks in ``rlprune.pipeline.report.document``'s format.
    """
    qd = done["quantize"]
    rows = qd["methods"]
    figs = [_fig_bits(rows, qd["layers"], figdir / "bits_per_layer.png"),
            _fig_size(done["validate"]["rows"], rows, done["base"], figdir / "size_vs_acc.png", metric)]
    fp32, win = qd["fp32"], next(r for r in rows if r["method"] == qd["winner"])
    b = [("h2", "Second stage: weight bits"),
         ("p", f"The output model ({fp32['params']:,} params, test {metric} {fp32['acc']:.2f}) quantized to at most "
               f"{qd['target_size']:g} of its fp32 size: one weight bit width (2..8) per conv/linear layer, "
               f"per-output-channel symmetric, activations fp32. Every candidate got the same "
               f"{win['qat_steps']}-step quantization-aware fine-tune; validation chose, test reports. "
               f"**Output: `{qd['winner']}`** ({win['val_acc']:.2f} validation, {win['acc']:.2f} test [95% CI "
               f"{_ci(win)}], {win['size_ratio']:.4f} of the pruned model, {win['size_ratio_base']:.4f} of the "
               f"unpruned fp32 model), saved as `quantize/quantized_model.pt` (`rlprune.load_quantized`).")]
    c = qd.get("comparison")
    if c:
        b.append(("p", f"RL bits minus the best baseline (`{c['best_baseline']}`), both chosen on validation, on "
                       f"the same test images ({metric}): {describe(c)}."))
    wm = qd["world_model"]
    b.append(("p", f"Bits world model (`{wm['kind']}`) on {wm['n']} held-out measured samples: Spearman "
                   f"{wm['spearman']:.3f}, MAE {wm['mae']:.2f} points (post-training drop, calibration split). "
                   f"Each search measured its favourites for real during the search (the counted real "
                   f"evaluations below) and refined a world model of its own on them."))
    b.append(("table", ["method", "size (pruned)", "size (unpruned)", f"val {metric}", f"test {metric}", "95% CI",
                        "world-model calls", "real evaluations", "mean bits"],
              [[r["method"], f"{r['size_ratio']:.4f}", f"{r['size_ratio_base']:.4f}", f"{r['val_acc']:.2f}",
                f"{r['acc']:.2f}", _ci(r), str(r.get("wm_calls") or 0), str(r.get("real_evals") or 0),
                f"{np.mean(r['bits']):.2f}"]
               for r in sorted(rows, key=lambda r: -r["val_acc"])]))
    b.append(("img", figs[0], "bits per layer: the RL search against the rules"))
    b.append(("img", figs[1], "size against test accuracy, every validated candidate of both stages; the front "
                              "is drawn on validation accuracy"))
    return b, figs


def _ci(row: dict) -> str:
    ci = row.get("acc_ci")
    return f"{ci[0]:.2f}-{ci[1]:.2f}" if ci else "n/a"


def _fig_bits(rows: list[dict], layers: list[str], path: Path) -> Path:
    import matplotlib.pyplot as plt

    from rlprune.pipeline.report.figures import save_figure

    by = {r["method"]: r for r in rows}
    series = [m for m in ("rl", "sensitivity", "uniform8", "uniform6", "uniform4") if m in by]
    n = len(layers)
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * n + 3), 3.6))
    width = 0.8 / max(1, len(series))
    others = iter(["C0", "C1", "C2", "C4", "C5"])  # C3 (red) is the RL search's, as in the pruning chart
    for i, m in enumerate(series):
        ax.bar(np.arange(n) + (i - (len(series) - 1) / 2) * width, by[m]["bits"], width,
               label="rl (RL)" if m == "rl" else m, color="C3" if m == "rl" else next(others),
               edgecolor="black" if m == "rl" else None)
    ax.set_xticks(np.arange(n), [name.replace(".", "\n", 1) for name in layers], fontsize=6, rotation=90)
    ax.set_ylabel("weight bits")
    ax.set_ylim(0, 8.8)
    ax.set_title("Bits per layer: RL search vs rules")
    ax.legend(fontsize=8, ncol=min(5, len(series)))
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def size_points(prune_rows: list[dict], quant_rows: list[dict]) -> list[dict]:
    """Every validated candidate of both stages on one size axis (over the unpruned fp32 model).

    Returns:
        ``[{"name", "stage", "size", "val_acc", "acc", "acc_ci"}]``; a pruning candidate's size is its params ratio.
    """
    pts = [{"name": r["method"], "stage": "prune", "size": r["params_ratio"], "val_acc": r["val_acc"],
            "acc": r["acc"], "acc_ci": r.get("acc_ci")} for r in prune_rows]
    return pts + [{"name": f"q:{r['method']}", "stage": "quantize", "size": r["size_ratio_base"],
                   "val_acc": r["val_acc"], "acc": r["acc"], "acc_ci": r.get("acc_ci")} for r in quant_rows]


def _fig_size(prune_rows, quant_rows, base: dict, path: Path, metric: str) -> Path:
    import matplotlib.pyplot as plt

    from rlprune.pipeline.report.figures import pareto_front, save_figure

    pts = size_points(prune_rows, quant_rows)
    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    for stage, color, marker in (("prune", "C0", "o"), ("quantize", "C1", "s")):
        sel = [p for p in pts if p["stage"] == stage]
        x, y = np.array([p["size"] for p in sel]), np.array([p["acc"] for p in sel])
        err = np.array([[p["acc"] - p["acc_ci"][0], p["acc_ci"][1] - p["acc"]] if p["acc_ci"] else [0, 0]
                        for p in sel]).T
        ax.errorbar(x, y, yerr=err, fmt=marker, color=color, ms=5, capsize=2, lw=0.8,
                    label="pruned, fp32" if stage == "prune" else "pruned + quantized")
        for p in sel:
            if p["name"] == "q:rl" or p["name"].startswith("rl"):
                ax.scatter(p["size"], p["acc"], marker="*", s=140, color="C3", zorder=4)
    val = np.array([[p["size"], p["val_acc"]] for p in pts])
    front = sorted((pts[i] for i in pareto_front(val)), key=lambda p: p["size"])
    ax.step([p["size"] for p in front], [p["acc"] for p in front], where="post", color="C2", lw=1.4,
            label="Pareto front (chosen on validation)", zorder=2)
    ax.axhline(base["acc"], color="grey", ls="--", lw=1, label=f"unpruned fp32 ({base['acc']:.2f})")
    ax.set_xscale("log")
    ax.set_xlabel("stored size / unpruned fp32 size (log)")
    ax.set_ylabel(f"test {metric} after fine-tune (points)")
    ax.set_title(f"Size vs {metric}: both stages (RL: red stars)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3, which="both")
    return save_figure(fig, path)


__all__ = ["comparison", "quantize_blocks", "size_points", "stage_quantize"]
