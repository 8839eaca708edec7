"""Quality: the RL search against every baseline at MACs targets 0.3, 0.5 and 0.7, all measured for real.

How to run:
    python benchmarks/quality.py --quick                    # ~1 min: 32 samples, 2 RL iterations, target 0.5
    python benchmarks/quality.py                            # ~15-20 min: targets 0.3 0.5 0.7, seeds 0 1 2
    python benchmarks/quality.py --data-dir ~/data          # adds cifar10 / ResNet-56 (its base model trains
                                                            # on first use: bring a GPU or a cached model)

Pipeline per task and seed: real samples (mixed sampler, 2 Tune workers) -> transformer SPN -> online RL search
(PPO, simultaneous mode, wall at the target) -> the search's best vector and every baseline (uniform,
larger-group and depth rules, torch-pruning-style global L1, random search and CEM against the SAME final SPN
with as many SPN calls as the RL search made) are pruned for real, BatchNorm-recalibrated and scored on the
test split, without fine-tuning and after the same short fine-tune (``--finetune-steps``). The samples and the
SPN are shared by all targets of one seed. Reported per (target, fine-tune, method): test accuracy mean and
std over seeds, params and MACs ratios, batch-1 CPU latency.

Params removed at equal accuracy drop, RL vs the best rule: for each seed and target, RL removes
``1 - params_ratio`` of the parameters with a test-accuracy drop ``d`` (after the fine-tune). Each handcrafted
rule (uniform, larger_group, depth) is a curve through its (drop, params removed) points at the measured
targets, joined by straight lines and anchored at the unpruned model (drop 0, nothing removed); the rule's
figure is the most params removed anywhere on that curve with drop <= ``d``. The best rule is the one that
removes the most; the ratio is RL's params removed / the best rule's (means over seeds). Above 1: RL removes
more parameters for the same accuracy.

Nothing is asserted. Full mode merges ``rl_minus_best_baseline_acc_at_0.5`` and ``_at_0.3`` (points, after the
fine-tune, best of all baselines) and ``params_removed_ratio_vs_best_rule`` (at 0.5) into ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import common
import numpy as np

RULES = ("uniform", "larger_group", "depth")
FIELDS = ["task", "seed", "target", "finetune_steps", "method", "macs_ratio", "params_ratio", "acc", "acc_drop",
          "predicted_acc_drop", "latency_ms", "latency_ratio", "ratios", "search_s", "sample_s"]


def run_seed(task_name: str, task_kwargs: dict, seed: int, targets, n_samples: int, iters: int, train_batch: int,
             finetune_steps: int, work: Path) -> list[dict]:
    """Every method at every target for one task and seed; returns per-method rows."""
    from rlprune.measure.recipe import measure_base, measure_candidate
    from rlprune.measure.spec import MeasureSpec
    from rlprune.search.baselines import measure_baselines
    from rlprune.search.rl import SearchConfig, run_search
    from rlprune.tasks import get_task

    spec = MeasureSpec()
    task = get_task(task_name, seed=seed, **task_kwargs)
    model = task.base_model()
    space = spec.space_of(model, task.example_input())
    work = work / f"{task_name}-{seed}"
    stages = common.samples_and_spn(task_name, n_samples, work, seed, task_kwargs)
    store, spn_path, sample_s = stages["store"], stages["spn"], stages["sample_s"]
    base = measure_base(task, model, spec)
    rows = []
    for target in targets:
        out = work / f"search-{target}"
        t1 = time.perf_counter()
        res = run_search(SearchConfig(spn=str(spn_path), out=str(out), task=task_name, task_kwargs=task_kwargs,
                                      target=target, iters=iters, train_batch=train_batch, samples=str(store),
                                      online_every=min(5, iters), seed=seed), progress=False)
        search_s = time.perf_counter() - t1
        final_spn = out / "world_model" / "world_model.pt"
        n_calls = iters * train_batch  # one SPN call per simultaneous episode
        for ft in sorted({0, finetune_steps}):
            ft_spec = dataclasses.replace(spec, finetune_steps=ft)
            rl_row, _ = measure_candidate(task, space, res["ratios"], base, ft_spec, method="rl")
            rl_row["predicted_acc_drop"] = res["predicted_acc_drop"]
            found = [rl_row] + measure_baselines(task, space, target, ft_spec, "macs", final_spn if final_spn.exists()
                                                 else spn_path, n_calls=n_calls, seed=seed)
            for r in found:
                rows.append({"task": task_name, "seed": seed, "target": target, "finetune_steps": ft,
                             "method": r["method"], "macs_ratio": round(r["macs_ratio"], 4),
                             "params_ratio": round(r["params_ratio"], 4), "acc": round(r["acc"], 2),
                             "acc_drop": round(r["acc_drop"], 2),
                             "predicted_acc_drop": _round(r.get("predicted_acc_drop")),
                             "latency_ms": round(r["latency_ms"], 3), "latency_ratio": round(r["latency_ratio"], 3),
                             "ratios": " ".join(f"{x:.2f}" for x in r["ratios"]),
                             "search_s": round(search_s, 1) if r["method"] == "rl" else "",
                             "sample_s": round(sample_s, 1) if r["method"] == "rl" else ""})
        print(f"{task_name} seed {seed} target {target}: done ({search_s:.0f} s search)", file=sys.stderr, flush=True)
    return rows


def _round(x):
    return "" if x is None or not np.isfinite(x) else round(float(x), 2)


def _sd(xs) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def summarise(rows: list[dict]) -> list[dict]:
    """Mean/std over seeds per (task, target, fine-tune, method), and RL minus the best baseline's mean acc."""
    out = []
    for key in sorted({(r["task"], r["target"], r["finetune_steps"]) for r in rows}):
        by: dict[str, list[dict]] = {}
        for r in rows:
            if (r["task"], r["target"], r["finetune_steps"]) == key:
                by.setdefault(r["method"], []).append(r)
        means = {m: float(np.mean([x["acc"] for x in v])) for m, v in by.items()}
        best = max((m for m in means if m != "rl"), key=lambda m: means[m])
        for m, v in by.items():
            out.append({"task": key[0], "target": key[1], "finetune_steps": key[2], "method": m,
                        "acc_mean": round(means[m], 2), "acc_std": round(_sd([x["acc"] for x in v]), 2),
                        "params_ratio": round(float(np.mean([x["params_ratio"] for x in v])), 3),
                        "macs_ratio": round(float(np.mean([x["macs_ratio"] for x in v])), 3),
                        "latency_ms": round(float(np.mean([x["latency_ms"] for x in v])), 3),
                        "rl_minus_best_baseline": round(means["rl"] - means[best], 2) if m == "rl" else "",
                        "best_baseline": best if m == "rl" else ""})
    return out


def removed_at_drop(points: list[tuple[float, float]], d: float) -> float:
    """Most params removed on a rule's piecewise-linear (drop, removed) curve where the drop is <= ``d``.

    ``points`` are the rule's (acc_drop, params_removed) at its targets, least pruned first; the curve starts at
    the unpruned model (0, 0). Returns 0 when no point of the curve is that accurate.
    """
    curve = [(0.0, 0.0), *points]
    best = 0.0
    for (d0, r0), (d1, r1) in zip(curve, curve[1:], strict=False):
        for dd, rr in ((d0, r0), (d1, r1)):
            if dd <= d:
                best = max(best, rr)
        if (d0 - d) * (d1 - d) < 0:  # the segment crosses drop d: take the crossing point too
            best = max(best, r0 + (d - d0) / (d1 - d0) * (r1 - r0))
    return best


def params_at_equal_drop(rows: list[dict], finetune_steps: int) -> list[dict]:
    """Per (task, target): RL's params removed vs the best rule's at RL's accuracy drop (see the module doc)."""
    out = []
    sel = [r for r in rows if r["finetune_steps"] == finetune_steps]
    for task, target in sorted({(r["task"], r["target"]) for r in sel}):
        per_rule: dict[str, list[float]] = {rule: [] for rule in RULES}
        rl_removed, rl_drop = [], []
        for seed in sorted({r["seed"] for r in sel if r["task"] == task}):
            mine = [r for r in sel if r["task"] == task and r["seed"] == seed]
            rl = next(r for r in mine if r["method"] == "rl" and r["target"] == target)
            rl_removed.append(1 - rl["params_ratio"])
            rl_drop.append(rl["acc_drop"])
            for rule in RULES:
                pts = sorted(((r["target"], r["acc_drop"], 1 - r["params_ratio"]) for r in mine
                              if r["method"] == rule), reverse=True)  # least pruned (largest target) first
                per_rule[rule].append(removed_at_drop([(dd, rr) for _, dd, rr in pts], rl["acc_drop"]))
        means = {rule: float(np.mean(v)) for rule, v in per_rule.items()}
        best = max(means, key=means.get)
        rl_mean = float(np.mean(rl_removed))
        out.append({"task": task, "target": target, "finetune_steps": finetune_steps,
                    "rl_acc_drop": round(float(np.mean(rl_drop)), 2), "rl_params_removed": round(rl_mean, 3),
                    "best_rule": best, "rule_params_removed": round(means[best], 3),
                    "ratio": round(rl_mean / means[best], 3) if means[best] > 0 else None})
    return out


def markdown(summary, equal, header: str) -> str:
    """Both tables as markdown, with how to read them."""
    cols = ["task", "target", "finetune_steps", "method", "acc_mean", "acc_std", "params_ratio", "macs_ratio",
            "latency_ms", "rl_minus_best_baseline", "best_baseline"]
    lines = [header, "", *common.md_table(summary, cols), "",
             "## Params removed at equal accuracy drop, RL vs the best handcrafted rule", "",
             "Each rule's (drop, params removed) points over the targets, joined by straight lines from the "
             "unpruned model; the rule's figure is the most it removes with a drop <= RL's (means over seeds). "
             "ratio > 1: RL removes more parameters for the same accuracy. `n/a`: no rule point is that accurate.",
             "", *common.md_table(equal, list(equal[0]))]
    return "\n".join(lines)


def headline(rows: list[dict]) -> dict:
    """The summary.json figures from the per-seed rows: RL minus the best baseline per target and the params
    ratio at 0.5 (digits, after the fine-tune)."""
    finetune_steps = max(r["finetune_steps"] for r in rows)
    summary, equal = summarise(rows), params_at_equal_drop(rows, finetune_steps)
    out = {}
    for r in summary:
        if r["task"] == "digits" and r["method"] == "rl" and r["finetune_steps"] == finetune_steps:
            out[f"rl_minus_best_baseline_acc_at_{r['target']:g}"] = r["rl_minus_best_baseline"]
    for r in equal:
        if r["task"] == "digits" and r["target"] == 0.5:
            out["params_removed_ratio_vs_best_rule"] = r["ratio"]
    return out


def main(argv=None) -> None:
    """Run every task and seed and write ``quality[_quick].csv/.md`` (and summary.json in full mode)."""
    p = common.parser(__doc__)
    p.add_argument("--targets", type=float, nargs="+", default=None, help="MACs targets (default 0.3 0.5 0.7)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1 2; quick 0)")
    p.add_argument("--finetune-steps", type=int, default=None,
                   help="the same short fine-tune for every method (default 100; quick 20)")
    p.add_argument("--data-dir", help="CIFAR-10 folder: also run cifar10 / ResNet-56")
    args = p.parse_args(argv)
    q = args.quick
    targets = args.targets or ([0.5] if q else [0.3, 0.5, 0.7])
    seeds = args.seeds or ([0] if q else [0, 1, 2])
    ft = args.finetune_steps if args.finetune_steps is not None else (20 if q else 100)
    n_samples, iters, batch = (32, 2, 64) if q else (256, 30, 256)
    tasks = [("digits", {})]
    if args.data_dir:
        from rlprune.tasks import get_task

        kw = {"data_dir": str(Path(args.data_dir).expanduser().resolve()), "arch": "resnet56"}
        get_task("cifar10", **kw)  # a missing or malformed folder fails now, with the task's own message
        tasks.append(("cifar10", kw))
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for task_name, kw in tasks:
            for seed in seeds:
                rows += run_seed(task_name, kw, seed, targets, n_samples, iters, batch, ft, Path(tmp))
    summary, equal = summarise(rows), params_at_equal_drop(rows, ft)
    header = (f"# Quality ({', '.join(t for t, _ in tasks)}, {'quick' if q else 'full'}: {n_samples} samples, "
              f"{iters} RL iterations x {batch} episodes, seeds {seeds}, fine-tune {ft} steps)\n\n"
              f"{common.stamp()}; total {time.perf_counter() - t0:.0f} s. `acc` is test accuracy (%) after BN "
              "recalibration (finetune_steps 0) or after the fine-tune, mean and std over seeds; every method meets "
              "the same MACs target; `latency_ms` is batch-1 CPU latency.")
    common.write_results(args.results_dir, common.stem("quality", q), rows, markdown(summary, equal, header), FIELDS)
    if not q:
        common.update_summary(args.results_dir, headline(rows), "quality")


if __name__ == "__main__":
    common.main_guard(main)
