"""The run report: ``report.md`` and a self-contained ``report.html`` with four figures.

Figures (PNG in ``out/figures``, embedded in the HTML): per-group ratios of the RL strategy against the
handcrafted rules; test accuracy against the budgeted cost (MACs or params) for every validated candidate,
with the Pareto front; the SPN's predicted against the real accuracy drop (held-out samples, and the online
rounds' fresh real evaluations); the measured wall times (every stage, the best search, the whole sweep, each
search method). Only measured times and counted SPN calls and real evaluations appear: nothing is estimated
(an AMC-style search is compared by running one, in ``benchmarks/search_speed.py``).

The document is built once as a list of blocks and rendered to both formats, so the two never disagree.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np

from rlprune.io import atomic_write_bytes
from rlprune.measure.ranking import spearman_ci
from rlprune.measure.stats import describe
from rlprune.pipeline.select import comparison

RULE_METHODS = ("uniform", "larger_group", "depth", "global_l1")


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
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    rows = done["validate"]["rows"]
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    stage_wall = _stage_times(out)
    timing = search_timing(done, stage_wall)
    final = spn_vs_final(rows)
    figs = {
        "ratios": _fig_ratios(rows, done["base"]["groups"], figdir / "ratios.png"),
        "pareto": _fig_pareto(rows, done["base"], cfg, figdir / "acc_vs_macs.png"),
        "spn": _fig_spn(done, figdir / "spn_predicted_vs_real.png", final),
        "time": _fig_time(timing, figdir / "search_time.png"),
    }
    blocks = _blocks(cfg, done, winner, rows, timing, figs, stage_wall, final)
    if done.get("quantize"):  # the second stage re-renders the report with its section before the stage times
        from rlprune.pipeline.quantize import quantize_blocks

        extra, qfigs = quantize_blocks(done, figdir, done["base"].get("metric", "accuracy"))
        blocks[-2:-2] = extra
        figs.update({p.stem: p for p in qfigs})
    md, page = _markdown(blocks), _html(blocks, f"rlprune report: {done['base'].get('task', cfg.task)}")
    atomic_write_bytes(out / "report.md", md.encode())
    atomic_write_bytes(out / "report.html", page.encode())
    return {"report_md": str(out / "report.md"), "report_html": str(out / "report.html"),
            "figures": [str(p) for p in figs.values()]}


# ====================================================================== figures
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


def _fig_ratios(rows, groups, path: Path) -> Path:
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


def _fig_pareto(rows, base, cfg, path: Path) -> Path:
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


def _fig_spn(done: dict, path: Path, final: dict) -> Path:
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
    ax.set_title(f"SPN vs its label: MAE {m['mae']:.2f} points, Spearman {_fmt(m.get('spearman'), 3)}", fontsize=9)
    metric = done["base"].get("metric", "accuracy")
    ax.set_xlabel(f"real {metric} drop, no fine-tune (points, calibration split)")
    ax.set_ylabel(f"predicted {metric} drop (points)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax2.scatter(final["final"], final["predicted"], s=26, color="C2")
    ax2.set_title(f"SPN vs what the user gets: Spearman {_fmt(final['spearman'], 3)} "
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


def _fig_time(t: dict, path: Path) -> Path:
    import matplotlib.pyplot as plt

    # Measured walls only: the stages (C0), the sweep's searches (C1), each search method's own wall (C2).
    bars = [(f"stage: {s}", w, "C0") for s, w in t["stages"].items()]
    bars += [(f"best search {t['best_tag']} ({t['best_episodes']} episodes)", t["best_wall_s"], "C1"),
             (f"whole sweep ({_plural(t['n_trials'], 'search')}, {t['sweep_episodes']} episodes)",
              t["sweep_wall_s"], "C1")]
    # The rules take milliseconds; the black-box searches (those that called the SPN) are the ones to compare.
    bars += [(f"{m['method']} ({_count(m['spn_calls'])} SPN calls, {_count(m['real_evals'])} real evals)",
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


# ====================================================================== document
def _fmt(v, digits=2) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _num(v):
    return None if v is None else float(v)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "es" if word.endswith("h") else "s")


def _ci(row: dict) -> str:
    ci = row.get("acc_ci")
    return f"{ci[0]:.2f}-{ci[1]:.2f}" if ci else "n/a (one number per split)"


def _count(v) -> str:
    return "" if v is None else str(int(v))


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
                   f"[95% CI {_ci(winner)}], {winner['params_ratio']:.3f} of "
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
              [[r["method"], f"{r['val_acc']:.2f}", f"{r['acc']:.2f}", _ci(r),
                f"{r['acc_drop']:.2f}", f"{r['params_ratio']:.3f}", f"{r['macs_ratio']:.3f}",
                f"{r['latency_ms']:.2f}", _fmt(r.get("predicted_acc_drop")), str(r.get("spn_calls", "")),
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
                   f"{m['n']} held-out samples: MAE {m['mae']:.2f} points, Spearman {_fmt(m.get('spearman'), 3)}, "
                   f"R^2 {_fmt(m.get('r2'), 3)}."))
    b.append(("p", describe_spn_vs_final(final, metric)))
    b.append(("img", figs["spn"], f"SPN predicted vs real {metric} drop"))
    b.append(("h2", "Search time and budgets"))
    b.append(("p", f"Measured: the best search (`{timing['best_tag']}`) took {timing['best_wall_s']:.1f} s for "
                   f"{timing['best_episodes']} episodes; the whole sweep ({_plural(timing['n_trials'], 'search')}, "
                   f"{timing['sweep_episodes']} episodes) {timing['sweep_wall_s']:.1f} s of search wall. SPN calls "
                   f"and real evaluations (calibration split) below are counted by each search, and every time was "
                   f"measured: an AMC-style search (a real evaluation every episode) is compared by running one, "
                   f"in `benchmarks/search_speed.py`, not by arithmetic here."))
    b.append(("table", ["method", "search wall s", "SPN calls", "real evals", "candidates"],
              [[m["method"], _fmt(_num(m["search_s"]), 1), _count(m["spn_calls"]), _count(m["real_evals"]),
                _count(m["candidates"])] for m in timing["methods"]]))
    b.append(("img", figs["time"], "measured wall times"))
    b.append(("h2", "Reward-weighting sweep"))
    trials = done["sweep"]["trials"]
    b.append(("table", ["trial", "predicted drop", "real drop (calibration)", "MACs", "params", "episodes", "wall s"],
              [[t["tag"], _fmt(t["predicted_acc_drop"]), _fmt(t.get("real_acc_drop")), f"{t['macs_ratio']:.3f}",
                f"{t['params_ratio']:.3f}", str(t["episodes"]), f"{t['wall_s']:.0f}"] for t in trials]))
    b.append(("h2", "Stages"))
    b.append(("table", ["stage", "wall s"], [[s, f"{w:.1f}"] for s, w in stage_wall.items()]))
    return b


def _stage_times(out: Path) -> dict:
    times = {}
    for p in sorted((out / "stages").glob("*.json"), key=lambda p: p.stat().st_mtime):
        try:
            times[p.stem] = float(json.loads(p.read_text())["wall_s"])
        except (OSError, ValueError, KeyError):
            continue
    return times


def _markdown(blocks) -> str:
    lines = []
    for kind, *rest in blocks:
        if kind == "h1":
            lines += [f"# {rest[0]}", ""]
        elif kind == "h2":
            lines += [f"## {rest[0]}", ""]
        elif kind == "p":
            lines += [rest[0], ""]
        elif kind == "table":
            head, body = rest
            lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(r) + " |" for r in body] + [""]
        elif kind == "img":
            lines += [f"![{rest[1]}](figures/{Path(rest[0]).name})", ""]
    return "\n".join(lines)


def _inline(text: str) -> str:
    """Markdown's **bold** and `code` in an HTML-escaped paragraph."""
    out, parts = [], html.escape(text).split("`")
    for i, part in enumerate(parts):
        if i % 2:
            out.append(f"<code>{part}</code>")
        else:
            bits = part.split("**")
            out.append("".join(f"<b>{x}</b>" if j % 2 else x for j, x in enumerate(bits)))
    return "".join(out)


def _html(blocks, title: str) -> str:
    body = []
    for kind, *rest in blocks:
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{html.escape(rest[0])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{_inline(rest[0])}</p>")
        elif kind == "table":
            head, rows = rest
            th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
            trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
            body.append(f"<table><tr>{th}</tr>{trs}</table>")
        elif kind == "img":
            data = base64.b64encode(Path(rest[0]).read_bytes()).decode()
            body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(rest[1])}">'
                        f"<figcaption>{html.escape(rest[1])}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:980px;margin:2em auto;line-height:1.45}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
             "figcaption{color:#555;font-size:90%}code{background:#f3f3f3;padding:0 3px}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")
