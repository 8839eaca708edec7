"""Quantize: per-layer weight bits by RL against every baseline at one size budget, all measured for real.

How to run:
    python benchmarks/quantize.py --quick                   # ~2 min: digits, 16 samples, 1 RL iteration, 10 QAT steps
    python benchmarks/quantize.py                           # digits, seeds 0 1 2, size_ratio <= 0.125
    python benchmarks/quantize.py --task fashion-mnist --arch resnet20 \
        --pruned benchmarks/inputs/fashion-mnist-resnet20-macs0.5 --work ~/bench/qz-fm20   # the committed input

Per seed, ``rlprune quantize`` end to end (``rlprune.quant.pipeline``) on the base model or a pruned one
(``--pruned``, the same folder for every seed; ``benchmarks/inputs/manifest.json`` says how the committed one
was made): the sensitivity scan, measured (bits -> drop) samples and the bits world model, the RL search with
its online rounds, and at the same counted world-model calls and real evaluations random search and CEM; the rules
uniform 8/6/4 (fitted down to the budget) and HAQ-style sensitivity. Every method's vector is within the
budget and gets the same quantization-aware fine-tune (``--qat-steps``), then is scored on validation (which
chooses) and test (which only reports). The fp32 model is the reference row.

Statistics, as in quality.py: per seed the best baseline is the one with the best validation accuracy; RL minus
it on the same test images with a paired bootstrap interval and McNemar p-value, per seed and over all seeds'
test images together (called real only when the interval excludes 0); every accuracy has a 95% interval over
all seeds' test images. Nothing is asserted. Each finished seed is written to ``--work`` and read back on a
rerun.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import common
import numpy as np
import record
from quality_tables import comparisons, rounded

FIELDS = ["task", "seed", "target", "finetune_steps", "method", "source", "size_ratio", "params_ratio", "val_acc",
          "acc", "acc_ci_lo", "acc_ci_hi", "acc_drop", "predicted_drop", "wm_calls", "real_evals", "search_s", "bits",
          "world_model", "heldout_spearman_spn", "heldout_mae_spn", "heldout_spearman_mlp", "heldout_mae_mlp",
          "test_correct"]
BASELINES = ("uniform8", "uniform6", "uniform4", "sensitivity", "random_search", "cem")


def run_seed(args, kw: dict, label: str, seed: int, work: Path) -> list[dict]:
    """Every method's row for one seed (read back from ``work`` when that seed finished before).

    Returns:
        One row per method (and ``fp32``, the reference): the ``FIELDS``.
    """
    from rlprune.io import atomic_write_json
    from rlprune.quant.pipeline import QuantizeConfig, run_quantize

    done = (Path(work) / f"{label.replace('/', '-')}-{seed}" /
            f"rows-size{args.target_size:g}-qat{args.qat_steps}-{args.world_model}-online{args.online_top}.json")
    if done.is_file():
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    cfg = QuantizeConfig(task=args.task, task_kwargs=kw, target=args.target_size, out=str(done.parent / "out"),
                         pruned=args.pruned, seed=seed, samples=args.samples, rl_iters=args.rl_iters,
                         rl_batch=args.rl_batch, qat_steps=args.qat_steps, world_model=args.world_model,
                         online_top=args.online_top)
    s = run_quantize(cfg, log=lambda line: None)
    fp32 = s["fp32"]
    # Both world-model kinds were fitted on the same samples and scored on the same held-out quarter.
    held = {f"heldout_{m}_{k}": round(v[m], 4) for k, v in s["world_models_heldout"].items()
            for m in ("spearman", "mae")}
    common_fields = {"task": label, "seed": seed, "target": s["target"], "finetune_steps": args.qat_steps,
                     "world_model": args.world_model, **held}
    rows = [{**common_fields, "method": "fp32", "source": "reference", "size_ratio": 1.0, "params_ratio": 1.0,
             "val_acc": round(fp32["val_acc"], 4), "acc": round(fp32["acc"], 4), "acc_ci_lo": "", "acc_ci_hi": "",
             "acc_drop": 0.0, "predicted_drop": "", "wm_calls": 0, "real_evals": 0, "search_s": 0.0, "bits": "",
             "test_correct": ""}]
    for name in ("rl", *BASELINES):
        r = s["methods"][name]
        lo, hi = r.get("acc_ci") or ("", "")
        rows.append({**common_fields, "method": name, "source": "rl" if name == "rl" else "baseline",
                     "size_ratio": round(r["size_ratio"], 5),
                     "params_ratio": 1.0,  # one fp32 model for every method: the tie-break sees no difference
                     "val_acc": round(r["val_acc"], 4), "acc": round(r["acc"], 4), "acc_ci_lo": rounded(lo),
                     "acc_ci_hi": rounded(hi), "acc_drop": round(fp32["acc"] - r["acc"], 4),
                     "predicted_drop": rounded(r.get("predicted_drop")), "wm_calls": int(r.get("wm_calls", 0)),
                     "real_evals": int(r.get("real_evals", 0)),
                     "search_s": round(float(r.get("search_s", 0.0)), 2), "bits": " ".join(map(str, r["bits"])),
                     "test_correct": r.get("correct", "")})
    rows = record.stamped(rows)  # measured now: a resumed run keeps this date, commit and load
    atomic_write_json(done, rows)
    print(f"{label} seed {seed}: done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Per method over seeds: mean size ratio, validation and test accuracy, the test accuracy's 95% interval
    over all seeds' test images together, std over seeds, world-model calls and search wall."""
    from rlprune.measure.stats import accuracy_ci, unpack_correct

    out = []
    for m in dict.fromkeys(r["method"] for r in rows):
        v = [r for r in rows if r["method"] == m]
        packed = [r["test_correct"] for r in v]
        lo = hi = ""
        if all(isinstance(p, str) and p for p in packed):
            lo, hi = accuracy_ci(np.concatenate([unpack_correct(p) for p in packed]))
        acc = [float(r["acc"]) for r in v]
        out.append({"method": m, "seeds": len(v), "size_ratio": round(float(np.mean([float(r["size_ratio"])
                                                                                     for r in v])), 4),
                    "val_acc": round(float(np.mean([float(r["val_acc"]) for r in v])), 2),
                    "acc": round(float(np.mean(acc)), 2), "acc_ci_lo": rounded(lo),
                    "acc_ci_hi": rounded(hi),
                    "acc_std": round(float(np.std(acc, ddof=1)), 2) if len(acc) > 1 else 0.0,
                    "wm_calls": round(float(np.mean([float(r["wm_calls"]) for r in v]))),
                    "real_evals": round(float(np.mean([float(r.get("real_evals") or 0) for r in v]))),
                    "search_s": round(float(np.mean([float(r["search_s"]) for r in v])), 2)})
    return out


def headline(rows: list[dict]) -> dict:
    """``rl_minus_best_baseline_acc_at_size<t>`` (pooled over seeds, after QAT) with ``_ci`` and ``_real``; the
    same as ``quant_rl_minus_best_baseline_acc`` (issue 19's name), and ``quant_acc_drop_vs_fp32``: the fp32
    model's test accuracy minus RL's (means over seeds; RL's own interval in ``quant_rl_acc_ci``)."""
    out = {}
    for c in comparisons(rows, budget="size"):
        if c["seed"] == "all":
            k = f"rl_minus_best_baseline_acc_at_size{c['target']:g}"
            out.update({k: c["diff"], f"{k}_ci": [c["diff_ci_lo"], c["diff_ci_hi"]], f"{k}_real": c["real"],
                        f"{k}_best_baseline": c["best_baseline"]})
            out.update({"quant_rl_minus_best_baseline_acc": c["diff"],
                        "quant_rl_minus_best_baseline_acc_ci": [c["diff_ci_lo"], c["diff_ci_hi"]],
                        "quant_rl_minus_best_baseline_acc_real": c["real"], "quant_size_ratio": c["target"]})
    s = {r["method"]: r for r in summarise(rows)}
    if "rl" in s and "fp32" in s:
        out.update({"quant_acc_drop_vs_fp32": round(s["fp32"]["acc"] - s["rl"]["acc"], 3),
                    "quant_rl_acc_ci": [s["rl"]["acc_ci_lo"], s["rl"]["acc_ci_hi"]]})
    return out


def unpruned_reference(task_name: str, kw: dict, pruned: str | None) -> dict:
    """The unpruned fp32 base model (``--model-seed``'s) on validation and test (with its 95% interval) and the
    stored size of the quantized models' fp32 input relative to it; measured once, as nothing in it depends on
    a seed."""
    from rlprune.io import load_pruned
    from rlprune.measure.stats import accuracy_ci

    task = common.task_of(task_name, 0, kw)
    base = task.base_model()
    test = task.evaluate(base, "test", per_example=True)
    n_base = sum(p.numel() for p in base.parameters())
    n_in = sum(p.numel() for p in load_pruned(pruned)[0].parameters()) if pruned else n_base
    return {"val_acc": task.evaluate(base, "validation")["acc"], "acc": test["acc"],
            "acc_ci": list(accuracy_ci(test["correct"])), "input_vs_unpruned": n_in / n_base}


def reference_lines(ref: dict, rows: list[dict]) -> list[str]:
    """The unpruned fp32 model and every method's test accuracy drop from it, on one size axis (over it)."""
    lo, hi = ref["acc_ci"]
    lines = ["## Against the unpruned fp32 model", "",
             f"Unpruned fp32: validation {ref['val_acc']:.2f}, test {ref['acc']:.2f} [{lo:.2f}, {hi:.2f}]; the "
             f"quantized models' fp32 input stores {ref['input_vs_unpruned']:.4f} of it. `size_vs_unpruned` = "
             "size_ratio x that; `drop_vs_unpruned` = unpruned test accuracy minus the method's (mean over seeds).",
             ""]
    table = [{"method": r["method"], "size_vs_unpruned": round(float(r["size_ratio"]) * ref["input_vs_unpruned"], 4),
              "acc": r["acc"], "drop_vs_unpruned": round(ref["acc"] - float(r["acc"]), 2)}
             for r in summarise(rows)]
    return lines + record.md_table(table, ["method", "size_vs_unpruned", "acc", "drop_vs_unpruned"]) + [""]


def markdown(rows: list[dict], header: str, ref: dict | None = None) -> str:
    held = [r for r in rows if r["method"] == "fp32"]
    lines = [header, ""] + (reference_lines(ref, rows) if ref else [])
    lines += ["## Bits world models on each seed's held-out quarter of the samples", ""]
    lines += record.md_table(held, ["seed", "world_model", "heldout_spearman_spn", "heldout_mae_spn",
                                    "heldout_spearman_mlp", "heldout_mae_mlp"])
    lines += ["", "## Per method (means over seeds)", ""]
    lines += record.md_table(summarise(rows), ["method", "seeds", "size_ratio", "val_acc", "acc", "acc_ci_lo",
                                               "acc_ci_hi", "acc_std", "wm_calls", "real_evals", "search_s"])
    comps = comparisons(rows, budget="size")
    lines += ["", "## RL minus the best baseline (chosen on validation), test points", ""]
    lines += record.md_table(comps, ["seed", "best_baseline", "diff", "diff_ci_lo", "diff_ci_hi", "p_value", "real"])
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    """Run every seed and write ``quantize[_<task>_<arch>][_quick].csv/.md``."""
    p = common.parser(__doc__)
    common.add_task_args(p)
    p.add_argument("--pruned", help="a pruned-model folder (`rlprune prune --out` / `rlprune run --out`) quantized "
                                    "for every seed (default: the base model)")
    p.add_argument("--target-size", type=float, default=0.125, help="size_ratio budget (default 0.125)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1 2; quick 0)")
    p.add_argument("--samples", type=int, help="measured samples for the world model (default 64; quick 16)")
    p.add_argument("--rl-iters", type=int, help="PPO iterations (default 3; quick 1)")
    p.add_argument("--rl-batch", type=int, help="episodes per PPO iteration (default 64; quick 16)")
    p.add_argument("--qat-steps", type=int, help="the same QAT for every method (default 100; quick 10)")
    p.add_argument("--world-model", choices=("spn", "mlp"), default="spn",
                   help="the searches' bits world model (default spn; both kinds' held-out fit is reported)")
    p.add_argument("--online-top", type=int, default=2,
                   help="real evaluations after each RL iteration (the black-box searches get as many; default 2)")
    p.add_argument("--work", type=Path, help="keep each finished seed here; rerunning with it resumes")
    common.add_keep_rows_arg(p)
    args = p.parse_args(argv)
    q = args.quick
    for name, full, quick in (("seeds", [0, 1, 2], [0]), ("samples", 64, 16), ("rl_iters", 3, 1),
                              ("rl_batch", 64, 16), ("qat_steps", 100, 10)):
        if getattr(args, name) is None:
            setattr(args, name, quick if q else full)
    kw, label = common.task_choice(args)
    t0 = time.perf_counter()
    rows = common.run_seeds(lambda seed, work: run_seed(args, kw, label, seed, work), args.seeds, args.work,
                            args.keep_rows)
    header = (f"# Quantize ({label}{', pruned ' + args.pruned if args.pruned else ''}, size_ratio <= "
              f"{args.target_size:g}, {'quick' if q else 'full'}: {args.samples} samples, {args.rl_iters} RL "
              f"iterations x {args.rl_batch} episodes, {args.online_top} real evaluations per iteration, QAT "
              f"{args.qat_steps} steps, {args.world_model} world model, "
              f"seeds {args.seeds})\n\n"
              f"{record.stamp()}; total {time.perf_counter() - t0:.0f} s. `val_acc` (validation, which chooses) and "
              "`acc` (test, which only reports) in %, after the same QAT for every method, activations fp32; "
              "`acc_ci_lo`-`acc_ci_hi`: 95% bootstrap interval over all seeds' test images together. Random search "
              "and CEM score exactly the RL search's counted `wm_calls` on the same world model and measure as many "
              "vectors for real (`real_evals`, in as many online rounds), each refining a world model of its own.")
    # Without --pruned the fp32 row is the unpruned model already (on digits, each seed's own).
    ref = unpruned_reference(args.task, kw, args.pruned) if args.pruned else None
    record.write_results(args.results_dir, record.stem(record.result_name("quantize", label), q), rows,
                         markdown(rows, header, ref), FIELDS)
    if not q:
        record.update_summary(args.results_dir, headline(rows), "quantize", label=label)


if __name__ == "__main__":
    common.main_guard(main)
