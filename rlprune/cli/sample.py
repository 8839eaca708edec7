"""The ``rlprune sample`` verb (the Tune experiment itself lives in ``rlprune.samples.tune``)."""

from __future__ import annotations

import argparse
import dataclasses
import json

from rlprune.cli.common import add_json_arg, add_measure_args, add_task_args, measure_spec, task_kwargs
from rlprune.errors import ConfigError
from rlprune.samples.tune import run_sampling, sampler_config

#: What ``--sampler`` accepts (``around`` needs centers, so it is Python-only).
CLI_SAMPLERS = ("mixed", "uniform", "sobol", "rules", "budget")


EPILOG = """examples:
  rlprune sample --task digits --n 256 --workers 2 --out runs/samples
  rlprune sample --task digits --n 512 --workers 2 --out runs/samples --sampler budget --band 0.3,0.7
  rlprune sample --task digits --n 256 --workers 8 --out /shared/samples --address ray-head:6379 --json
rerunning the same command resumes: only the samples missing to reach --n are generated.
"""


def add_sample_parser(sub) -> None:
    """Add the ``sample`` verb to the CLI's subparsers."""
    p = sub.add_parser(
        "sample", help="generate real pruning samples (parallel, resumable) into a sample store",
        description="Prune the task's base model with sampled ratio vectors, recalibrate BatchNorm, score on the "
                    "calibration split, and store one row per sample. One Ray Tune trial per worker.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_task_args(p)
    p.add_argument("--n", type=int, required=True, help="wanted number of unique samples in --out")
    p.add_argument("--workers", type=int, default=1, help="parallel Tune trials, one CPU each (default 1)")
    p.add_argument("--out", required=True, help="sample store folder (created if missing)")
    p.add_argument("--sampler", default="mixed", choices=CLI_SAMPLERS, help="ratio sampler (default mixed)")
    p.add_argument("--band", help="budget sampler: MACs-ratio band low,high (default 0.3,0.7)")
    p.add_argument("--address", help="existing Ray cluster (host:port); the store must be on a shared path")
    p.add_argument("--flush-every", type=int, default=4, help="rows per shard (default 4)")
    add_measure_args(p, final=False)
    add_json_arg(p, "one JSON object: n_total, n_new, samples_per_s, out")


def cmd_sample(args) -> int:
    """Run ``rlprune sample``; returns the exit status."""
    cfg = sampler_config(args.sampler)
    if args.band:
        try:
            cfg = dataclasses.replace(cfg, band=tuple(float(v) for v in args.band.split(",")))
        except ValueError as e:
            raise ConfigError(f"--band {args.band!r}: {e}; write low,high such as 0.3,0.7") from e
    if args.flush_every < 1:
        raise ConfigError(f"--flush-every {args.flush_every} must be >= 1")
    res = run_sampling(args.task, args.n, args.workers, args.out, measure_spec(args), cfg, address=args.address,
                       flush_every=args.flush_every, seed=args.seed, task_kwargs=task_kwargs(args))
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"{res['n_total']} samples in {res['out']} ({res['n_new']} new, "
              f"{res['samples_per_s']:.2f} samples/s, {res['wall_s']:.1f} s)")
    return 0


__all__ = ["CLI_SAMPLERS", "add_sample_parser", "cmd_sample"]
