"""Sample-generation throughput: real pruning samples per second with 1 and 2 Ray Tune workers.

How to run:
    python benchmarks/sample_throughput.py --quick     # ~1-2 min: 12 samples per setting
    python benchmarks/sample_throughput.py             # ~3-5 min: 64 samples per setting

What to expect (digits, 2 CPU cores): roughly 2-4 samples/s per worker (prune ~0.03 s, BN recalibration and
scoring 359 calibration images ~0.2-0.4 s); 2 workers should approach 2x one worker when the cores are idle.
``samples_per_s`` counts only the time the workers spend evaluating (Ray start-up and each worker's model
load are excluded and shown separately as ``wall_s``), so it is the rate a long run settles at.

Writes ``benchmarks/results/sample_throughput.csv`` and ``.md`` and prints the table.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import tempfile
import time
from pathlib import Path

from rlprune.sample_tune import run_sampling
from rlprune.tasks import get_task

RESULTS = Path(__file__).resolve().parent / "results"


def measure(task: str, n: int, workers: int, eval_batches: int | None) -> dict:
    """One fresh store, ``n`` samples with ``workers`` trials; returns the row of the table."""
    with tempfile.TemporaryDirectory() as tmp:
        res = run_sampling(task, n, workers, Path(tmp) / "samples", eval_batches=eval_batches, progress=False)
    return {"workers": workers, "n": res["n_new"], "samples_per_s": round(res["samples_per_s"], 3),
            "wall_s": round(res["wall_s"], 1)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="12 samples per setting instead of 64")
    p.add_argument("--task", default="digits", help="task name (default digits)")
    p.add_argument("--eval-batches", type=int, default=None, help="calibration batches scored (default all)")
    args = p.parse_args(argv)
    n = 12 if args.quick else 64

    get_task(args.task).base_model()  # train/cache once, outside the timings
    rows = [measure(args.task, n, w, args.eval_batches) for w in (1, 2)]
    one = rows[0]["samples_per_s"]
    for r in rows:
        r["speedup_vs_1"] = round(r["samples_per_s"] / one, 2) if one else float("nan")

    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "sample_throughput.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        f"# Sample throughput ({args.task}, {'quick' if args.quick else 'full'})",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, 1-min load average at the end {load:.1f} (the cores are shared); "
        f"eval_batches={args.eval_batches or 'all'}.",
        "",
        "| workers | samples | samples/s (evaluating) | wall s (incl. Ray start) | speedup vs 1 |",
        "|---:|---:|---:|---:|---:|",
        *[f"| {r['workers']} | {r['n']} | {r['samples_per_s']:.2f} | {r['wall_s']:.1f} | {r['speedup_vs_1']:.2f} |"
          for r in rows],
    ]
    (RESULTS / "sample_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
