"""Bits samples measured as a Ray Tune experiment, into the bits sample store (``rlprune.quant.samples``).

One Tune trial per worker, each measuring its share of the bit vectors (every k-th of the ones not stored yet)
on the fp32 model: fake-quantized by the vector, scored on the calibration split, no fine-tune. Each trial
flushes a shard every ``flush_every`` rows and reports how many it has stored, so the driver's progress bar
moves and a killed worker loses at most its unflushed rows; Tune restarts a trial whose worker died
(``max_failures``), and the restarted trial skips what is stored. Rerunning with the same store measures only
the vectors it lacks. Orchestration: this module imports Ray (inside functions).

    res = measure_on_tune("digits", {"seed": 0}, None, B, "runs/q/bits_samples", workers=2)
    res["drops"]          # (len(B),) points, in B's order, read back from the store
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from rlprune.errors import ConfigError
from rlprune.orchestration import init_ray, report
from rlprune.quant.samples import append_bits, bits_sample_id, open_bits_store, read_bits
from rlprune.samples.tune import SamplingError


def measure_on_tune(task_spec: str, task_kwargs: dict, pruned: str | None, B, store, workers: int,
                    split: str = "calibration", max_batches: int | None = None, flush_every: int = 4,
                    address: str | None = None, progress: bool | None = None, max_failures: int = 2) -> dict:
    """Measure the post-training drop of every row of ``B`` (stored ones are read back, not measured again).

    Args:
        task_spec: task name or ``package.module:callable`` (rebuilt in every trial with ``task_kwargs``).
        task_kwargs: the task's arguments (``seed``, ``arch``, ``data_dir``...).
        pruned: a folder holding ``pruned_model.pt``, or None for the task's base model.
        B: ``(N, n_layers)`` bit vectors.
        store: the bits sample store folder (every node must see it on a cluster).
        workers: Tune trials, one CPU each.
        split, max_batches: the images scored (``Task.evaluate``).
        flush_every: rows per shard.
        address: a Ray cluster (None: the running instance, or a local one).
        progress: show a progress bar (None: when stderr is a terminal).
        max_failures: Tune restarts of a trial whose worker died.

    Returns:
        ``{"drops", "n_new", "n_total", "wall_s", "placement", "store"}``; ``drops`` in ``B``'s order.

    Raises:
        ConfigError: ``workers`` or ``flush_every`` below 1.
        SampleStoreError: ``store`` is a file or another kind of folder (nothing is written).
        SamplingError: a trial failed, or a vector is still missing afterwards (what was stored is kept).
    """
    from rlprune.io import load_pruned, model_fingerprint
    from rlprune.tasks import get_task

    t0 = time.perf_counter()
    for name, v in (("workers", workers), ("flush_every", flush_every)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{name}={v!r} must be a positive integer")
    if task_kwargs.get("data_dir"):  # trials run in their own directories: pass absolute paths
        task_kwargs = {**task_kwargs, "data_dir": str(Path(task_kwargs["data_dir"]).expanduser().resolve())}
    task = get_task(task_spec, **task_kwargs)
    model = load_pruned(pruned)[0] if pruned else task.base_model()
    fp = model_fingerprint(model)
    store = open_bits_store(Path(store).expanduser().resolve())
    B = np.atleast_2d(np.asarray(B, dtype=np.int64))
    ids = [bits_sample_id(fp, split, max_batches, b) for b in B]
    have = set(read_bits(store, fp)["sample_id"])
    first = {sid: i for i, sid in reversed(list(enumerate(ids)))}  # each distinct vector once, at its first row
    todo = sorted(i for sid, i in first.items() if sid not in have)
    placement = None
    if todo:
        placement = _run(task_spec, task_kwargs, pruned, B, todo, store, workers, split, max_batches, flush_every,
                         address, progress, max_failures, len(first))
    df = read_bits(store, fp).set_index("sample_id")
    lost = [sid for sid in ids if sid not in df.index]
    if lost:
        raise SamplingError(f"{len(lost)} bit vector(s) were not stored in {store} (a shard was unreadable?); "
                            f"rerun to measure them")
    return {"drops": df.loc[ids, "acc_drop"].to_numpy(np.float64), "n_new": len(todo), "n_total": len(df),
            "wall_s": time.perf_counter() - t0, "placement": placement, "store": str(store)}


def _run(task_spec, task_kwargs, pruned, B, todo, store: Path, workers, split, max_batches, flush_every, address,
         progress, max_failures, total) -> dict:
    from ray import tune

    from rlprune.orchestration import TrialsFailed, fit_experiment
    from rlprune.tasks import cache_dir

    k = min(workers, len(todo))
    started = init_ray(address, k)
    name = f"bits-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    config = {"task_spec": task_spec, "task_kwargs": task_kwargs, "cache": str(cache_dir().resolve()),
              "pruned": str(Path(pruned).resolve()) if pruned else None, "B": B.tolist(), "todo": todo, "k": k,
              "store": str(store), "split": split, "max_batches": max_batches, "flush_every": flush_every,
              "tag": name, "worker_index": tune.grid_search(list(range(k)))}
    try:
        _, placement = fit_experiment(
            tune.with_resources(_bits_trial, {"cpu": 1}), config, store / "tune", name, max_concurrent=k,
            total=total, initial=total - len(todo), unit="sample", desc="bits samples",
            count=lambda r: int(r.get("n_new", 0)), progress=progress, csv=store / "tune" / f"{name}.csv",
            dirname=lambda t: f"w{t.config['worker_index']}-{t.trial_id}", max_failures=max_failures)
    except TrialsFailed as e:
        raise SamplingError(f"{e}; the bits samples they stored are kept in {store}") from e
    finally:
        if started:
            import ray

            ray.shutdown()
    return placement


def _bits_trial(config: dict) -> None:
    """Tune function trainable: one worker's share of the bit vectors, reported after every shard."""
    os.environ["RLPRUNE_CACHE"] = config["cache"]  # remote nodes do not inherit the driver's environment
    import torch

    from rlprune.io import load_pruned, model_fingerprint
    from rlprune.quant.fake import wrap
    from rlprune.quant.size import QuantSpace
    from rlprune.samples.store import now_iso
    from rlprune.tasks import get_task

    torch.set_num_threads(1)  # one trial = one CPU
    task = get_task(config["task_spec"], **config["task_kwargs"])
    model = load_pruned(config["pruned"])[0] if config["pruned"] else task.base_model()
    fp, space = model_fingerprint(model), QuantSpace.from_model(model)
    split, mb, store = config["split"], config["max_batches"], config["store"]
    i = config["worker_index"]
    worker = f"{config['tag']}/w{i}"
    mine = config["todo"][i::config["k"]]
    have = set(read_bits(store, fp)["sample_id"])  # a restarted trial skips what it (or anyone) stored
    ref = task.evaluate(model, split, max_batches=mb)["acc"]
    n, buf = 0, []
    for j in mine:
        bits = config["B"][j]
        sid = bits_sample_id(fp, split, mb, bits)
        if sid in have:
            n += 1
            continue
        acc = task.evaluate(wrap(model, bits), split, max_batches=mb)["acc"]
        buf.append({"sample_id": sid, "bits": bits, "size_ratio": float(space.size_ratio(bits)[0]), "acc": acc,
                    "ref_acc": ref, "acc_drop": ref - acc, "model_fingerprint": fp, "split": split,
                    "max_batches": -1 if mb is None else int(mb), "worker": worker, "created_at": now_iso()})
        if len(buf) >= config["flush_every"]:
            n += len(buf)
            append_bits(store, buf)
            buf = []
            report({"n_new": n, "share": len(mine)})
    if buf:
        n += len(buf)
        append_bits(store, buf)
    report({"n_new": n, "share": len(mine), "done": True})


__all__ = ["measure_on_tune"]
