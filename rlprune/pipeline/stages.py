"""The pipeline's two Ray Tune experiments: the reward-weighting sweep and the validation trials.

Sweep: one trial per combination of ``SweepStage``'s grid axes; each trial is an online RL search
(``rlprune.search.rl``) in its own folder ``sweep_dir/<tag>``, reporting every PPO iteration to Tune. A trial
reserves 1 CPU for PPO plus ``search_workers`` CPUs for its real evaluations (a placement group, so the
evaluation tasks it starts run inside its reservation and trials never starve each other).

Validation: one trial per candidate (RL strategies and baselines at the same budget). Each prunes the base
model for real, fine-tunes it for the same number of steps, scores the validation split (which chooses)
and the test split (which only reports, with each image's outcome kept for paired comparisons), times
batch-1 CPU latency, and writes ``rows/<method>.json`` and ``models/<method>.pt`` through atomic renames.

Both resume at trial granularity: a rerun starts only the trials without a finished output, and a search
trial continues from its own checkpoint. Tune's experiment folders (``<out>/tune/<name>``) hold the per-trial
results (CSV, JSON, TensorBoard events); each stage also writes Tune's ``ResultGrid`` dataframe as CSV.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from rlprune.orchestration import fit_experiment, report

#: Metrics a sweep trial reports each iteration (the history row has more, not all of it scalar).
_ITER_KEYS = ("iteration", "episodes", "reward_mean", "best_reward", "greedy_reward", "train_s", "wall_s")
#: Row fields a validation trial reports to Tune.
_ROW_KEYS = ("params_ratio", "macs_ratio", "val_acc", "acc", "acc_drop", "loss", "latency_ms", "latency_ratio",
             "measure_s")


# ====================================================================== the sweep
def run_reward_sweep(spec: dict, grid: list[dict], sweep_dir: Path, storage: Path, name: str,
                     cpus_per_trial: int, progress: bool = True) -> tuple[list[dict], dict | None]:
    """Run one online RL search per grid point as a Tune experiment; returns their results.

    Args:
        spec: settings shared by every trial: ``task``, ``task_kwargs``, ``target`` (a number, or ``[lo, hi]``:
            each trial then trains one target-conditioned policy over the range), ``budget``, ``spn``,
            ``samples``, ``iters``, ``train_batch``, ``online_every``, ``online_top``, ``online_steps``,
            ``search_workers``, ``seed``, ``measure`` (the run's ``MeasureSpec`` as a dict: the online real
            evaluations must label samples exactly as the sampling stage did), ``cache`` (absolute paths).
        grid: ``SweepStage.grid()`` rows (``tag``, ``mode``, ``enforce``, ``w_acc``, ``w_cost``).
        sweep_dir: parent of the per-trial search folders.
        storage, name: Tune's experiment folder is ``storage/name``.
        cpus_per_trial: CPUs one trial reserves (1 for PPO + the search's evaluation workers).
        progress: show a bar over all trials' iterations.

    Returns:
        ``(results, placement)``: one dict per grid point, in grid order (the grid row plus the search's
        ``result.json``), and where the trials that ran now ran (``fit_experiment``; None if none had to).

    Raises:
        TrialsFailed: a trial failed after its retries (finished searches are kept).
    """
    from ray import tune

    todo = [g for g in grid if not _search_done(sweep_dir / g["tag"], spec["iters"])]
    placement = None
    if todo:
        bar_total = len(todo) * spec["iters"]
        resources = tune.PlacementGroupFactory([{"CPU": 1}] * cpus_per_trial)
        _, placement = fit_experiment(tune.with_resources(_sweep_trial, resources),
             {**spec, "sweep_dir": str(sweep_dir), "point": tune.grid_search(todo)},
             storage, name, max_concurrent=0, total=bar_total, unit="iter", desc="reward sweep",
             count=lambda r: int(r.get("iteration", 0)), progress=progress,
             csv=sweep_dir / "result_grid.csv", dirname=lambda t: t.config["point"]["tag"])
    return [{**g, **json.loads((sweep_dir / g["tag"] / "result.json").read_text())} for g in grid], placement


def _search_done(folder: Path, iters: int) -> bool:
    try:
        return json.loads((folder / "result.json").read_text())["iterations"] >= iters
    except (OSError, ValueError, KeyError):
        return False


def _sweep_trial(config: dict) -> None:
    """Tune function trainable: one online RL search, reported every iteration."""
    os.environ["RLPRUNE_CACHE"] = config["cache"]  # remote nodes do not inherit the driver's environment
    import torch

    from rlprune.search.rl import SearchConfig, run_search

    torch.set_num_threads(1)
    p = config["point"]
    cfg = SearchConfig(
        spn=config["spn"], out=str(Path(config["sweep_dir"]) / p["tag"]), task=config["task"],
        task_kwargs=config["task_kwargs"], target=config["target"], budget=config["budget"], mode=p["mode"],
        enforce=p["enforce"], w_acc=p["w_acc"], w_cost=p["w_cost"], iters=config["iters"],
        train_batch=config["train_batch"], online=True, online_every=config["online_every"],
        online_top=config["online_top"], online_steps=config["online_steps"], workers=config["search_workers"],
        samples=config["samples"], seed=config["seed"], measure=config["measure"])
    result = run_search(cfg, progress=False,
                        on_iteration=lambda row: report({k: row[k] for k in _ITER_KEYS if k in row}))
    if result["conditioned"]:
        # One vector per target bin: report their mean predicted drop (the bins' own are in result.json).
        drops = [b["predicted_acc_drop"] for b in result["per_target"] if b.get("ratios") is not None]
        final = {"predicted_acc_drop": float(sum(drops) / len(drops))} if drops else {}
    else:
        final = {k: result[k] for k in ("predicted_acc_drop", "macs_ratio", "params_ratio")}
    report({"iteration": result["iterations"], **final, "done": 1})


# ====================================================================== baselines
def search_baselines(task, space, measure, spec: dict, val_dir: Path, *, spn: str, store, methods, n_calls: int,
                     n_real: int, rounds: int, workers: int, steps: int, seed: int) -> list[dict]:
    """Every baseline's ratio vector at the run's budget; random search and CEM online, like RL's searches.

    Each black-box search gets its own :class:`~rlprune.spn.world_model.WorldModel` (a plain object in this
    process, starting from ``spn``): after each of its ``rounds`` it evaluates its most promising vectors for
    real on the calibration split (Ray tasks, ``workers`` at once; the rows join the sample store like RL's)
    and fine-tunes that world model on them for ``steps`` steps. The result is saved in
    ``val_dir/baselines.json``; a rerun reuses it (a search killed half-way starts again).

    Args:
        task, space, measure: the run's task, its base model's ``PruningSpace`` and the ``MeasureSpec``.
        spec: the validation spec (``task``, ``task_kwargs``, ``base`` with ``fingerprint``).
        val_dir: the validation folder.
        spn, store: the SPN the sweep started from, and the sample store.
        methods: the baselines to run.
        n_calls, n_real, rounds: each search's SPN calls, real evaluations and online rounds.
        workers, steps, seed: evaluation tasks, fine-tune steps per round, the searches' seed.

    Returns:
        ``BaselineResult.to_dict()`` rows, ``predictor_calls`` renamed ``spn_calls``.
    """
    from rlprune.io import atomic_write_json
    from rlprune.measure.recipe import Baseline, measure_baseline
    from rlprune.search.baselines import run_baselines
    from rlprune.search.rl import evaluate_remote
    from rlprune.spn.local import spn_predictor
    from rlprune.spn.world_model import WorldModel

    saved = val_dir / "baselines.json"
    if saved.is_file():
        return json.loads(saved.read_text())
    fp = spec["base"]["fingerprint"]
    baseline: Baseline | None = None

    def predictor(wm):
        if fp not in wm.spn.known:
            wm.spn.add_model(fp, space.features())
        return lambda R: wm.predict(R, fp)[0]

    def learn(method: str):
        nonlocal baseline
        workdir = val_dir / "world_models" / method
        shutil.rmtree(workdir, ignore_errors=True)  # a search restarts from scratch, so must its world model
        wm = WorldModel(spn, store, workdir, seed=seed)
        if baseline is None:
            baseline = measure_baseline(task, task.base_model(), measure)

        def step(vectors):
            rows = evaluate_remote(spec["task"], spec["task_kwargs"], [list(map(float, r)) for r in vectors],
                                   baseline.to_dict(), measure, workers, method)
            wm.add_samples(rows)
            wm.finetune(steps)
            return [r["acc_drop"] for r in rows], predictor(wm)

        return step

    found = run_baselines(space.cost_model, spec["target"], spec["budget"],
                          scores=space.channel_scores(measure.importance), predict=spn_predictor(spn, space, fp),
                          n_calls=n_calls, seed=seed, rounds=rounds, n_real=n_real, learn=learn, methods=methods)
    rows = []
    for b in found:
        row = b.to_dict()
        row["spn_calls"] = row.pop("predictor_calls")
        rows.append(row)
    atomic_write_json(saved, rows)
    return rows


# ====================================================================== validation
def run_validation(spec: dict, candidates: list[dict], val_dir: Path, storage: Path, name: str,
                   workers: int, progress: bool = True) -> tuple[list[dict], dict | None]:
    """Measure every candidate for real in a Tune experiment; returns the rows in candidate order.

    Args:
        spec: ``task``, ``task_kwargs``, ``base`` (``measure_base`` of the unpruned model), ``measure``
            (the run's ``MeasureSpec`` as a dict), ``code`` (the pipeline's code version, kept in each row),
            ``cache``, ``budget``, ``target``.
        candidates: ``{"method", "ratios", ...}``; extra keys (``predicted_acc_drop``, ``source``) are
            copied into the row.
        val_dir: ``rows/`` and ``models/`` go here.
        storage, name: Tune's experiment folder.
        workers: trials run at once (one CPU each).
        progress: show a bar over the candidates.

    Returns:
        ``(rows, placement)``: the rows in candidate order, and where the trials that ran now ran
        (``fit_experiment``; None if every row was there already).

    Raises:
        TrialsFailed: a trial failed after its retries (finished rows are kept).
    """
    from ray import tune

    names = [c["method"] for c in candidates]
    if len(set(names)) != len(names):
        raise ValueError(f"candidate names must be unique, got {names}")
    todo = [c for c in candidates if not (val_dir / "rows" / f"{c['method']}.json").is_file()]
    placement = None
    if todo:
        _, placement = fit_experiment(tune.with_resources(_validate_trial, {"cpu": 1}),
             {**spec, "val_dir": str(val_dir), "candidate": tune.grid_search(todo)},
             storage, name, max_concurrent=workers, total=len(todo), unit="candidate", desc="validation",
             count=lambda r: 1, progress=progress, csv=val_dir / "result_grid.csv",
             dirname=lambda t: t.config["candidate"]["method"])
    return [json.loads((val_dir / "rows" / f"{m}.json").read_text()) for m in names], placement


def _validate_trial(config: dict) -> None:
    """Tune function trainable: prune one candidate for real, fine-tune, score, save."""
    os.environ["RLPRUNE_CACHE"] = config["cache"]
    import torch

    from rlprune.io import atomic_write_json, save_pruned
    from rlprune.measure.recipe import measure_candidate, pruned_manifest
    from rlprune.measure.spec import MeasureSpec
    from rlprune.tasks import get_task

    torch.set_num_threads(1)  # the same single thread the base model's latency was timed with
    c = config["candidate"]
    spec = MeasureSpec.from_dict(config["measure"])
    task = get_task(config["task"], **config["task_kwargs"])
    space = spec.task_space(task)
    row, pruned = measure_candidate(task, space, c["ratios"], config["base"], spec, method=c["method"])
    row.update({k: v for k, v in c.items() if k not in row}, code=config["code"])
    val_dir = Path(config["val_dir"])
    keep = ("method", "params_ratio", "macs_ratio", "acc", "acc_drop", "latency_ms", "finetune_steps")
    manifest = pruned_manifest(space, row["ratios"], task.example_input(), task=task.name, task_spec=config["task"],
                               metric=task.metric_name, target=config["target"], budget=config["budget"],
                               importance=spec.importance,
                               **{k: row[k] for k in keep})
    save_pruned(pruned, val_dir / "models" / f"{c['method']}.pt", manifest)
    atomic_write_json(val_dir / "rows" / f"{c['method']}.json", row)  # last: a row means the model is saved
    report({k: row[k] for k in _ROW_KEYS})


