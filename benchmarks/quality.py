"""Quality: the RL search against every baseline at one MACs budget, all measured for real on the test split.

How to run:
    python benchmarks/quality.py --quick              # ~3-5 min: 96 samples, 6 RL iterations, target 0.5
    python benchmarks/quality.py                      # ~10-20 min: 256 samples, 30 iterations, targets 0.3 0.5
    python benchmarks/quality.py --targets 0.3 0.5 0.7 --seeds 0 1 2

Pipeline per seed: real samples (mixed sampler) -> transformer SPN -> online RL search (PPO, simultaneous
mode, wall at the target) -> the search's best vector and every baseline (uniform, larger-group and depth
rules, global L1, random search and CEM against the SAME final SPN with as many SPN calls as the RL search
made) are pruned for real, BatchNorm-recalibrated and scored on the test split, without fine-tuning and
after the same short fine-tune. The samples and SPN are shared by all targets of one seed.

What to expect on digits: global L1 is a strong baseline; with a short fine-tune every method recovers most
of its accuracy, so the interesting column is the drop before fine-tuning. Ratios (RL minus the best
baseline) are printed; nothing is asserted.

Writes ``benchmarks/results/quality.csv`` and ``.md`` (``quality_quick.*`` with --quick) and prints the table.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def run_seed(task_name: str, seed: int, targets, n_samples: int, iters: int, train_batch: int,
             finetune_steps: int, work: Path) -> list[dict]:
    """Every method at every target for one seed; returns table rows."""
    from rlprune.pruning import PruningSpace
    from rlprune.sample_tune import run_sampling
    from rlprune.samples import read_samples, read_spaces
    from rlprune.search import SearchConfig, run_search
    from rlprune.spn import save_spn
    from rlprune.spn_train import fit
    from rlprune.tasks import get_task
    from rlprune.validate import measure_base, measure_baselines, measure_candidate

    task = get_task(task_name, seed=seed)
    model = task.base_model()
    space = PruningSpace.from_model(model, task.example_input())
    store = work / f"samples-{seed}"
    t0 = time.perf_counter()
    run_sampling(task_name, n_samples, 2, store, progress=False, seed=seed, task_kwargs={"seed": seed})
    sample_s = time.perf_counter() - t0
    spn = fit("transformer", read_samples(store), read_spaces(store))
    spn_path = work / f"spn-{seed}.pt"
    save_spn(spn, spn_path)
    base = measure_base(task, model)
    rows = []
    for target in targets:
        out = work / f"search-{seed}-{target}"
        t1 = time.perf_counter()
        res = run_search(SearchConfig(spn=str(spn_path), out=str(out), task=task_name, target=target, iters=iters,
                                      train_batch=train_batch, samples=str(store), seed=seed), progress=False)
        search_s = time.perf_counter() - t1
        final_spn = out / "world_model" / "world_model.pt"
        n_calls = iters * train_batch  # one SPN call per simultaneous episode
        for ft in (0, finetune_steps):
            rl_row, _ = measure_candidate(task, space, res["ratios"], base, method="rl", finetune_steps=ft)
            rl_row["predicted_acc_drop"] = res["predicted_acc_drop"]
            found = [rl_row] + measure_baselines(task, space, target, "macs", final_spn if final_spn.exists()
                                                 else spn_path, n_calls=n_calls, finetune_steps=ft, seed=seed)
            for r in found:
                rows.append({"seed": seed, "target": target, "finetune_steps": ft, "method": r["method"],
                             "macs_ratio": round(r["macs_ratio"], 4), "params_ratio": round(r["params_ratio"], 4),
                             "acc": round(r["acc"], 2), "acc_drop": round(r["acc_drop"], 2),
                             "predicted_acc_drop": _round(r.get("predicted_acc_drop")),
                             "latency_ratio": round(r["latency_ratio"], 3),
                             "ratios": " ".join(f"{x:.2f}" for x in r["ratios"]),
                             "search_s": round(search_s, 1) if r["method"] == "rl" else "",
                             "sample_s": round(sample_s, 1) if r["method"] == "rl" else ""})
    return rows


def _round(x):
    return "" if x is None or not np.isfinite(x) else round(float(x), 2)


def summarise(rows: list[dict]) -> list[dict]:
    """Mean/std of accuracy drop per (target, finetune, method) and RL minus the best baseline."""
    out = []
    keys = sorted({(r["target"], r["finetune_steps"]) for r in rows})
    for target, ft in keys:
        sel = [r for r in rows if r["target"] == target and r["finetune_steps"] == ft]
        by = {}
        for r in sel:
            by.setdefault(r["method"], []).append(r)
        means = {m: float(np.mean([x["acc"] for x in v])) for m, v in by.items()}
        best_base = max((m for m in means if m != "rl"), key=lambda m: means[m])
        for m, v in by.items():
            out.append({"target": target, "finetune_steps": ft, "method": m,
                        "acc_mean": round(means[m], 2), "acc_std": round(float(np.std([x["acc"] for x in v])), 2),
                        "params_ratio": round(float(np.mean([x["params_ratio"] for x in v])), 3),
                        "macs_ratio": round(float(np.mean([x["macs_ratio"] for x in v])), 3),
                        "rl_minus_best_baseline": round(means["rl"] - means[best_base], 2) if m == "rl" else "",
                        "best_baseline": best_base if m == "rl" else ""})
    return out


def write(rows, summary, name: str, header: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / f"{name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cols = list(summary[0])
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(s[c]) for c in cols) + " |" for s in summary]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small budgets (minutes); for smoke runs")
    p.add_argument("--task", default="digits")
    p.add_argument("--targets", type=float, nargs="+", default=None, help="MACs targets (default 0.5; full 0.3 0.5)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--finetune-steps", type=int, default=100, help="the same short fine-tune for every method")
    args = p.parse_args(argv)
    targets = args.targets or ([0.5] if args.quick else [0.3, 0.5])
    n_samples, iters, batch = (96, 6, 128) if args.quick else (256, 30, 256)
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            rows += run_seed(args.task, seed, targets, n_samples, iters, batch, args.finetune_steps, Path(tmp))
    name = "quality_quick" if args.quick else "quality"
    header = (f"# Quality ({args.task}, {'quick' if args.quick else 'full'}: {n_samples} samples, {iters} RL "
              f"iterations x {batch} episodes, seeds {args.seeds}, fine-tune {args.finetune_steps} steps)\n\n"
              f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
              f"total {time.perf_counter() - t0:.0f} s. `acc` is test accuracy (%) after BN recalibration "
              f"(finetune_steps 0) or after the fine-tune; every method meets the same MACs target.")
    write(rows, summarise(rows), name, header)


if __name__ == "__main__":
    main()
