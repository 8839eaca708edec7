"""What a run reports besides its report: ``summary.json`` (settings, times, every method's row, the comparison)
and ``results.csv`` (one line per validated candidate).

Both are written through atomic renames; a multi-target run adds its per-target part
(``rlprune.pipeline.targets.targets_summary``).
"""

from __future__ import annotations

import json
from pathlib import Path

from rlprune.io import atomic_write_bytes, json_default
from rlprune.pipeline.select import SELECTION_SPLIT, comparison, within_slack


def run_summary(run, timing: dict) -> dict:
    """``summary.json`` of a run: its settings, stage times, base model, SPN metrics, placement, and either the
    single target's winner, methods, comparison and search budget, or every target's (list form).

    Args:
        run: the pipeline's run state (``cfg``, ``done``: every stage's output, ``out``).
        timing: stage name -> ``{"wall_s", ...}``.

    Returns:
        A JSON-ready dict (numpy values converted).
    """
    cfg, d = run.cfg, run.done
    common = {
        "task": cfg.task, "target": cfg.target, "budget": cfg.budget, "preset": cfg.preset, "out": str(run.out),
        # What "acc" means in every row: the task's metric, in points (top-1 accuracy unless the task says).
        "metric": d["base"].get("metric", "accuracy") if "base" in d else None,
        "selection_split": SELECTION_SPLIT,
        "stages": timing, "total_wall_s": sum(t["wall_s"] for t in timing.values()),
        "base": {k: d["base"].get(k) for k in ("acc", "acc_ci", "val_acc", "latency_ms", "params", "macs")}
        if "base" in d else None,
        "spn": d["spn"]["metrics"] if "spn" in d else None,
        # Where each Tune stage's trials ran (node ids) and how often Tune restarted one whose worker or node
        # died, as of the time that stage ran (a reused stage keeps what it recorded then).
        "placement": {s: {k: d[s]["placement"][k] for k in ("nodes", "trials", "retries")}
                      for s in ("samples", "sweep", "validate") if (d.get(s) or {}).get("placement")},
    }
    if cfg.multi_target:
        from rlprune.pipeline.targets import targets_summary

        return json.loads(json.dumps({**common, **targets_summary(run)}, default=json_default))
    rows = d.get("validate", {}).get("rows", [])
    return json.loads(json.dumps({
        **common,
        "winner": d.get("report", {}).get("winner"), "methods": method_rows(rows, cfg.target, cfg.budget),
        "comparison": comparison(rows, cfg.target, cfg.budget) if rows else None,
        # What each search method (RL's sweep in total, random search, CEM) was allowed to spend.
        "search_budget": {k: d["validate"].get(k) for k in ("n_calls", "n_real", "rounds")} if rows else None,
        "pruned_model": d.get("report", {}).get("pruned_model"),
        "quantize": {k: v for k, v in d["quantize"].items() if k not in ("report_md", "report_html", "figures")}
        if "quantize" in d else None,
    }, default=json_default))


def method_rows(rows: list[dict], target: float, budget: str) -> list[dict]:
    """``summary.json``'s ``methods``: each validation row's reported fields and whether it met ``target``.

    Pruning candidates are fp32 (``bits`` None: 32 everywhere), so their stored size over the unpruned model,
    ``size_ratio``, is their params ratio; the second stage's rows are under ``summary["quantize"]``."""
    return [{k: r.get(k) for k in _METHOD_KEYS} | {"meets_target": within_slack(r, target, budget), "bits": None,
                                                     "size_ratio": r.get("params_ratio")} for r in rows]


#: What each method row of ``summary.json`` carries (``test_correct`` stays in the validation rows).
_METHOD_KEYS = ("method", "source", "ratios", "params_ratio", "macs_ratio", "val_acc", "acc", "acc_ci", "acc_drop",
                "latency_ms", "latency_ratio", "predicted_acc_drop", "finetune_steps", "spn_calls", "real_evals",
                "candidates", "search_s")


def results_frame(rows: list[dict]):
    """``results.csv`` as a DataFrame: one line per validated candidate, its interval split into two columns."""
    import pandas as pd

    cols = ["method", "source", "val_acc", "acc", "acc_drop", "params_ratio", "macs_ratio", "latency_ms",
            "latency_ratio", "predicted_acc_drop", "finetune_steps"]
    df = pd.DataFrame([{c: r.get(c) for c in cols} for r in rows])
    df["acc_ci_lo"] = [r["acc_ci"][0] if r.get("acc_ci") else None for r in rows]
    df["acc_ci_hi"] = [r["acc_ci"][1] if r.get("acc_ci") else None for r in rows]
    df["ratios"] = [" ".join(f"{x:.3f}" for x in r["ratios"]) for r in rows]
    return df


def write_csv(df, path: Path) -> None:
    """Write ``df`` as CSV through an atomic rename."""
    atomic_write_bytes(path, df.to_csv(index=False).encode())
