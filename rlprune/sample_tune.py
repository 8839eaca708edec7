"""Parallel sample generation as a Ray Tune experiment, and the ``rlprune sample`` command.

One Tune trial per worker, each a function trainable running a ``SampleGenerator`` on its share with its
own seed and reporting, after every flushed shard, ``n_new``, ``samples_per_s`` and running accuracy
statistics (in Tune's results under ``<out>/tune/``). The driver shows a progress bar on total samples.

Nothing is lost to a crash: shards are written atomically, so a SIGKILLed command or worker loses at most
the rows not yet flushed. Rerunning the same command counts the unique rows already stored for this task,
base model, importance and recalibration setting, and generates only what is missing to reach ``--n``.
A trial whose worker process dies is restarted by Tune (``max_failures``) and first counts what it
already stored under its worker name, so it never overshoots its share.

    rlprune sample --task digits --n 256 --workers 2 --out runs/samples
    rlprune sample --task digits --n 256 --workers 8 --out /shared/samples --address ray-head:6379

Ray is imported inside functions only: it costs seconds to import and most ``rlprune`` verbs never use it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time
from pathlib import Path

from rlprune.errors import ConfigError, RlpruneError

#: What ``--sampler`` accepts (``around`` needs centers, so it is Python-only).
CLI_SAMPLERS = ("mixed", "uniform", "sobol", "rules", "budget")


class SamplingError(RlpruneError, RuntimeError):
    """Sample generation stopped early (a trial failed); what was stored is kept."""


EPILOG = """examples:
  rlprune sample --task digits --n 256 --workers 2 --out runs/samples
  rlprune sample --task digits --n 512 --workers 2 --out runs/samples --sampler budget --band 0.3,0.7
  rlprune sample --task digits --n 256 --workers 8 --out /shared/samples --address ray-head:6379 --json
rerunning the same command resumes: only the samples missing to reach --n are generated.
"""


# ---------------------------------------------------------------------------------------- driver
def run_sampling(task_spec: str, n: int, workers: int, out, sampler="mixed",
                 address: str | None = None, importance: str = "l1", recalibrate: bool = True,
                 calib_batches: int = 4, eval_batches: int | None = None, flush_every: int = 4, seed: int = 0,
                 round_to: int = 1, max_ratio: float = 0.9, task_kwargs: dict | None = None,
                 max_failures: int = 2, progress: bool | None = None) -> dict:
    """Generate real samples until ``out`` holds ``n`` unique ones for this task and base model.

    Args:
        task_spec: task name or ``package.module:callable`` (built in every worker with ``task_kwargs``).
        n: wanted number of unique samples (already stored ones count).
        workers: Tune trials, one CPU each.
        out: the sample store folder; must be visible to every node when ``address`` is given.
        sampler: a sampler name or a ``rlprune.samplers.SamplerConfig``.
        address: an existing Ray cluster to run on; None starts a local one with ``workers`` CPUs
            (or reuses the Ray instance this process already initialised).
        importance, recalibrate, calib_batches, eval_batches: how each sample is scored (see
            ``rlprune.sampling.evaluate_ratios``).
        flush_every: rows per shard (at most this many are lost per killed worker).
        seed: base seed; workers and resumed runs derive distinct seeds from it.
        round_to, max_ratio: the pruning space (see ``PruningSpace.from_model``).
        task_kwargs: extra task arguments (e.g. ``{"seed": 0, "data_dir": ...}``).
        max_failures: Tune restarts of a trial whose worker died.
        progress: show a progress bar (None: when stderr is a terminal).

    Returns:
        ``{"n_total", "n_new", "samples_per_s", "wall_s", "out"}``: unique stored samples for this
        task/model, those added now, aggregate throughput while the workers were evaluating (setup
        excluded), the whole call's wall time, and the store path.

    Raises:
        ConfigError: ``n`` or ``workers`` below 1, a bad sampler or task.
        SampleStoreError: ``out`` is a file or a store of another schema (nothing is written).
        SamplingError: a trial failed (stored samples are kept; rerun to resume).
    """
    import numpy as np

    from rlprune.samplers import SamplerConfig
    from rlprune.sampling import SampleGenerator
    from rlprune.tasks import cache_dir, get_task

    t0 = time.perf_counter()
    for name, v in (("n", n), ("workers", workers)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"--{name} {v!r} must be a positive integer")
    cfg = sampler if isinstance(sampler, SamplerConfig) else _sampler_config(sampler)
    task_kwargs = dict(task_kwargs or {})
    if task_kwargs.get("data_dir"):  # trials run in their own directories: pass absolute paths
        task_kwargs["data_dir"] = str(Path(task_kwargs["data_dir"]).expanduser().resolve())
    task = get_task(task_spec, **task_kwargs)
    store = Path(out).expanduser().resolve()
    # Checks the settings, then the store (a file or a foreign store fails here, before any work), then
    # trains/caches the base model once, traces the space, measures the baseline and records the space:
    # the workers then only load the cached model.
    gen = SampleGenerator(task, store, cfg, importance=importance, recalibrate=recalibrate,
                          calib_batches=calib_batches, eval_batches=eval_batches, flush_every=flush_every,
                          worker="driver", seed=seed, round_to=round_to, max_ratio=max_ratio)

    def count() -> int:
        return _count(store, gen.base.task, gen.base.fingerprint, importance, recalibrate)

    n_before = n_total = count()
    spec = {
        "task_spec": task_spec, "task_kwargs": task_kwargs, "cache": str(cache_dir()), "out": str(store),
        "sampler": json.dumps(dataclasses.asdict(cfg)), "base": gen.base.to_dict(), "importance": importance,
        "recalibrate": recalibrate, "calib_batches": calib_batches, "eval_batches": eval_batches,
        "flush_every": flush_every, "round_to": round_to, "max_ratio": max_ratio,
    }
    rates = []
    started_ray = False
    try:
        for round_ in range(3):  # later rounds only replace twins two workers stored at the same moment
            missing = n - n_total
            if missing <= 0:
                break
            started_ray = started_ray or init_ray(address, workers)
            k = min(workers, missing)
            spec.update(shares=[missing // k + (i < missing % k) for i in range(k)], tag=_run_tag(round_),
                        seed=[seed, n_total, round_])
            rates.append(_tune_round(spec, k, store, n_total, n, max_failures, progress))
            n_total = count()
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    return {
        "n_total": n_total,
        "n_new": n_total - n_before,
        "samples_per_s": float(np.mean(rates)) if rates else 0.0,
        "wall_s": time.perf_counter() - t0,
        "out": str(store),
    }


def _count(store, task: str, fingerprint: str, importance: str, recalibrate: bool) -> int:
    from rlprune.samples import read_samples

    df = read_samples(store, fingerprint=fingerprint, task=task)
    return int(((df["importance"] == importance) & (df["bn_recalibrated"] == recalibrate)).sum())


def _sampler_config(name: str):
    from rlprune.samplers import SamplerConfig

    try:
        return SamplerConfig(name=name)
    except ValueError as e:
        raise ConfigError(str(e).replace("SamplerConfig.name", "--sampler")) from e


def _run_tag(round_: int) -> str:
    return time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}-r{round_}"


def init_ray(address: str | None, workers: int) -> bool:
    """Connect to ``address`` or start a local instance; True if this call started it (and should stop it)."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")  # set for drivers started by `ray job submit`
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    else:
        # "local" never attaches to a cluster someone else started with `ray start` on this machine.
        ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
    return True


def _tune_round(spec: dict, k: int, store: Path, n_start: int, n: int, max_failures: int, progress) -> float:
    """Run one Tune experiment of ``k`` trials; returns the aggregate samples/s while evaluating."""
    from ray import tune

    from rlprune.tune_stages import TrialsFailed, fit_experiment

    name = f"sample-{spec['tag']}"
    try:
        grid = fit_experiment(
            tune.with_resources(_sample_trial, {"cpu": 1}),
            {**spec, "worker_index": tune.grid_search(list(range(k)))}, store / "tune", name, max_concurrent=k,
            total=n, initial=n_start, unit="sample", desc="samples", count=lambda r: int(r.get("n_new", 0)),
            progress=progress, csv=store / "tune" / f"{name}.csv", dirname=_trial_dirname, max_failures=max_failures)
    except TrialsFailed as e:
        raise SamplingError(f"{e}; the samples they stored are kept in {store}") from e
    metrics = [r.metrics for r in grid if r.metrics and "t_first" in r.metrics]
    if not metrics:
        return 0.0
    span = max(m["t_last"] for m in metrics) - min(m["t_first"] for m in metrics)
    return sum(m["n_evaluated"] for m in metrics) / max(span, 1e-9)


def _trial_dirname(trial) -> str:
    return f"w{trial.config['worker_index']}-{trial.trial_id}"


# ---------------------------------------------------------------------------------------- worker
def _sample_trial(config: dict) -> None:
    """Tune function trainable: one worker's share of samples, reported after every shard."""
    os.environ["RLPRUNE_CACHE"] = config["cache"]  # remote nodes do not inherit the driver's environment
    import numpy as np
    import torch
    from ray import tune

    from rlprune.samplers import SamplerConfig
    from rlprune.samples import read_samples
    from rlprune.sampling import Baseline, SampleGenerator
    from rlprune.tasks import get_task

    torch.set_num_threads(1)  # one trial = one CPU; more threads only fight the other trials
    i = config["worker_index"]
    worker = f"{config['tag']}/w{i}"
    share = config["shares"][i]
    # After a Tune restart (the worker process died) count what this worker already stored.
    df = read_samples(config["out"])
    done = int((df["worker"] == worker).sum())
    sampler = json.loads(config["sampler"])
    sampler["band"] = tuple(sampler["band"])
    sampler["mix"] = tuple(tuple(m) for m in sampler["mix"])
    gen = SampleGenerator(
        get_task(config["task_spec"], **config["task_kwargs"]), config["out"], SamplerConfig(**sampler),
        config["importance"], config["recalibrate"], config["calib_batches"], config["eval_batches"],
        config["flush_every"], worker=worker, seed=int(np.random.SeedSequence([*config["seed"], i, done])
                                                       .generate_state(1)[0]),
        round_to=config["round_to"], max_ratio=config["max_ratio"], base=Baseline(**config["base"]),
    )
    for p in gen.run(share - done):
        tune.report({**p, "n_new": done + p["n_new"], "share": share})


# ---------------------------------------------------------------------------------------- CLI
def add_sample_parser(sub) -> None:
    """Add the ``sample`` verb to the CLI's subparsers."""
    p = sub.add_parser(
        "sample", help="generate real pruning samples (parallel, resumable) into a sample store",
        description="Prune the task's base model with sampled ratio vectors, recalibrate BatchNorm, score on the "
                    "calibration split, and store one row per sample. One Ray Tune trial per worker.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", required=True, help="task name (see `rlprune tasks`) or package.module:callable")
    p.add_argument("--n", type=int, required=True, help="wanted number of unique samples in --out")
    p.add_argument("--workers", type=int, default=1, help="parallel Tune trials, one CPU each (default 1)")
    p.add_argument("--out", required=True, help="sample store folder (created if missing)")
    p.add_argument("--sampler", default="mixed", choices=CLI_SAMPLERS, help="ratio sampler (default mixed)")
    p.add_argument("--band", help="budget sampler: MACs-ratio band low,high (default 0.3,0.7)")
    p.add_argument("--importance", default="l1", help="channel criterion: l1, l2, taylor, bn_scale, random")
    p.add_argument("--address", help="existing Ray cluster (host:port); the store must be on a shared path")
    p.add_argument("--eval-batches", type=int, help="calibration batches of 128 to score on (default: all)")
    p.add_argument("--calib-batches", type=int, default=4, help="batches for BN recalibration (default 4)")
    p.add_argument("--no-recalibrate", action="store_true", help="score without BatchNorm recalibration")
    p.add_argument("--flush-every", type=int, default=4, help="rows per shard (default 4)")
    p.add_argument("--seed", type=int, default=0, help="task and sampler seed (default 0)")
    p.add_argument("--data-dir", help="data folder for tasks that read local data (cifar10)")
    p.add_argument("--round-to", type=int, default=1, help="round kept channels down to a multiple (default 1)")
    p.add_argument("--max-ratio", type=float, default=0.9, help="largest ratio any group may take (default 0.9)")
    p.add_argument("--json", action="store_true", help="print one JSON object: n_total, n_new, samples_per_s, out")


def cmd_sample(args) -> int:
    """Run ``rlprune sample``; returns the exit status."""
    cfg = _sampler_config(args.sampler)
    if args.band:
        try:
            cfg = dataclasses.replace(cfg, band=tuple(float(v) for v in args.band.split(",")))
        except ValueError as e:
            raise ConfigError(f"--band {args.band!r}: {e}; write low,high such as 0.3,0.7") from e
    for name in ("eval_batches", "calib_batches", "flush_every"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ConfigError(f"--{name.replace('_', '-')} {v} must be >= 1")
    task_kwargs = {"seed": args.seed, **({"data_dir": args.data_dir} if args.data_dir else {})}
    res = run_sampling(args.task, args.n, args.workers, args.out, cfg, address=args.address,
                       importance=args.importance, recalibrate=not args.no_recalibrate,
                       calib_batches=args.calib_batches, eval_batches=args.eval_batches,
                       flush_every=args.flush_every, seed=args.seed, round_to=args.round_to,
                       max_ratio=args.max_ratio, task_kwargs=task_kwargs)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"{res['n_total']} samples in {res['out']} ({res['n_new']} new, "
              f"{res['samples_per_s']:.2f} samples/s, {res['wall_s']:.1f} s)")
    return 0


__all__ = ["SamplingError", "add_sample_parser", "cmd_sample", "run_sampling"]
