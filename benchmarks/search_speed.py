"""Search speed, part 1: env steps per second with the SPN reward vs the real-evaluation reward.

How to run:
    python benchmarks/search_speed.py --quick     # ~1 min: 200 SPN episodes, 10 real ones
    python benchmarks/search_speed.py             # ~3 min: 2000 SPN episodes, 40 real ones

The same ``LayerPruningEnv`` (digits, simultaneous mode, wall at 50% MACs, the same random actions) is
stepped with ``reward="spn"`` (a transformer SPN trained on real samples) and with ``reward="real"`` (prune,
BatchNorm recalibration, calibration-split accuracy: what an AMC-style search pays per episode). The ratio
of the two rates is the per-step speedup the SPN buys. The end-to-end comparison at equal validated
accuracy (issue 7's second figure) is not measured here yet.

Writes ``benchmarks/results/search_speed.csv`` and ``.md`` (``search_speed_quick.*`` with --quick).
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


def steps_per_s(env_config: dict, episodes: int, seed: int = 0) -> float:
    """Simultaneous episodes (one env step each) per second with seeded random actions."""
    from rlprune.envs import LayerPruningEnv

    env = LayerPruningEnv(env_config)
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    env.step({a: rng.uniform(0, env.max_ratio, 1) for a in env.possible_agents})  # warm-up
    t0 = time.perf_counter()
    for _ in range(episodes):
        obs, _ = env.reset()
        env.step({a: rng.uniform(0, env.max_ratio, 1) for a in obs})
    return episodes / (time.perf_counter() - t0)


def main(argv=None) -> None:
    from rlprune.sample_tune import run_sampling
    from rlprune.samples import read_samples, read_spaces
    from rlprune.spn import save_spn
    from rlprune.spn_train import fit

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--task", default="digits")
    args = p.parse_args(argv)
    n_spn, n_real, n_samples = (200, 10, 64) if args.quick else (2000, 40, 128)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "samples"
        run_sampling(args.task, n_samples, 2, store, progress=False)
        spn_path = Path(tmp) / "spn.pt"
        save_spn(fit("transformer", read_samples(store), read_spaces(store)), spn_path)
        common = {"task": args.task, "target": 0.5}
        spn_rate = steps_per_s({**common, "reward": "spn", "spn": str(spn_path)}, n_spn)
        real_rate = steps_per_s({**common, "reward": "real"}, n_real)
    rows = [{"reward": "spn", "episodes": n_spn, "env_steps_per_s": round(spn_rate, 2)},
            {"reward": "real", "episodes": n_real, "env_steps_per_s": round(real_rate, 3)}]
    speedup = spn_rate / real_rate
    name = "search_speed_quick" if args.quick else "search_speed"
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / f"{name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [f"# Search speed ({args.task}, {'quick' if args.quick else 'full'})", "",
             f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.machine()}, {os.cpu_count()} CPUs, load {load:.1f}; "
             "simultaneous mode (one env step = one episode of every group), wall at 50% MACs.", "",
             "| reward | episodes | env steps/s |", "|---|---:|---:|"]
    lines += [f"| {r['reward']} | {r['episodes']} | {r['env_steps_per_s']} |" for r in rows]
    lines += ["", f"SPN vs real per-step speedup: {speedup:,.0f}x (target >= 1000x: "
                  f"{'met' if speedup >= 1000 else 'NOT met'})"]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
