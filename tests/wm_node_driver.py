"""A driver for tests/test_cluster.py: the world-model actor on a node that then dies.

Run against a cluster (``RAY_ADDRESS``): starts the actor on ``--node`` (soft affinity, so a restart may land
elsewhere), gives it real samples and one fine-tune, then SIGKILLs that node's raylet (``--raylet-pid``)
and calls it again. Prints one JSON line: where the actor ran before and after, and what it answered.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from rlprune.samples.store import read_samples
from rlprune.spn.world_model import start_world_model


def main() -> None:
    p = argparse.ArgumentParser()
    for flag in ("--spn", "--store", "--workdir", "--node"):
        p.add_argument(flag, required=True)
    p.add_argument("--raylet-pid", type=int, required=True)
    args = p.parse_args()
    ray.init(log_to_driver=False, logging_level="ERROR")
    df = read_samples(args.store, task="digits").iloc[:40]
    rows, fp, R = df.to_dict("records"), df["model_fingerprint"].iloc[0], np.stack(df["ratios"])
    # One CPU: a zero-CPU actor is placed on the driver's node whatever a soft affinity says.
    wm = start_world_model(args.spn, args.store, args.workdir, max_restarts=2, num_cpus=1,
                           scheduling_strategy=NodeAffinitySchedulingStrategy(args.node, soft=True))

    def node() -> str:
        return ray.get(wm.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()))

    node_before = node()
    ray.get(wm.add_samples.remote(rows[:30]))
    version = ray.get(wm.finetune.remote(30))["version"]
    pending = ray.get(wm.add_samples.remote(rows[30:]))  # queued, not trained: must survive too
    before, _ = ray.get(wm.predict.remote(R, fp))
    os.kill(args.raylet_pid, signal.SIGKILL)
    t0 = time.monotonic()
    while True:  # the first calls after the kill may still reach the old process, or fail over
        stats = ray.get(wm.stats.remote())
        if stats["restored"] or time.monotonic() - t0 > 120:
            break
        time.sleep(0.5)
    after, _ = ray.get(wm.predict.remote(R, fp))
    print("RESULT", json.dumps({"node_before": node_before, "node_after": node(), "version_before": version,
                      "pending_before": pending, "stats": {k: stats[k] for k in ("restored", "version", "n_pending")},
                      "same_predictions": bool(np.array_equal(before, after)), "restart_s": time.monotonic() - t0}))


if __name__ == "__main__":
    main()
