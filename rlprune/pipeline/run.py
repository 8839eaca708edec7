"""``rlprune run``: every stage from the trained model to the pruned one, resumable, orchestrated by Ray Tune.

    summary = run_pipeline(RunConfig.preset_config("quick", task="digits", target=0.5, out="runs/demo"))

Stages (``rlprune.pipeline.config.STAGES``): base model -> real samples (Tune, one trial per worker) -> SPN
(held-out metrics saved) -> reward-weighting sweep (Tune, one online RL search per trial) -> validation
trials (Tune: the best RL strategy and every baseline pruned for real, fine-tuned the same, scored on the
validation split, which chooses, and the test split, which reports) -> report (the winner, chosen on
validation, saved as ``pruned_model.pt``; ``results.csv``, ``report.md``/``.html``) -> with ``quantize.target_size``,
weight bits per layer of that model (``rlprune.pipeline.quantize``). Every choice lives in
``rlprune.pipeline.select``. With a list of targets (``target=(0.3, 0.5, 0.7)``) each sweep trial trains one
target-conditioned policy over their range, and validation and the report run once per target, with one
output model each (``rlprune.pipeline.targets``).

Each finished stage writes ``out/stages/<name>.json`` (atomically) with its wall time, its output and a key
hashing the settings it and the stages before it depend on. A rerun skips a stage whose marker matches and
whose files still exist; a stage killed half-way resumes from its own durable state (sample shards, search
checkpoints, validation rows). Changing e.g. the target re-runs only the sweep and what follows it.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rlprune.errors import ConfigError
from rlprune.io import atomic_write_json
from rlprune.measure.spec import source_hash
from rlprune.pipeline.config import STAGES, RunConfig
from rlprune.pipeline.results import results_frame, run_summary, write_csv
from rlprune.pipeline.select import pick_winner, rank_rl

# Fields and sections each stage depends on (besides everything the stages before it depend on).
# The base stage and everything after it depend on the sample-label part of the measurement spec; only
# validation depends on the rest (fine-tune, latency), so changing the fine-tune re-runs validation alone.
_STAGE_FIELDS = {"base": ("task", "task_kwargs", "seed", "measure_label"), "samples": ("sample", "samples"),
                 "spn": ("spn",), "sweep": ("sweep", "target", "budget"), "validate": ("validate", "measure"),
                 "report": (), "quantize": ("quantize",)}


@dataclass
class _Run:
    """What the stages share: the config, the output folder and the outputs of finished stages."""

    cfg: RunConfig
    out: Path
    progress: bool
    address: str | None
    done: dict = field(default_factory=dict)
    ray_started: bool = False

    def key(self, stage: str) -> str:
        """The settings this stage and the ones before it depend on, and the code version, hashed."""
        parts = [f for s in STAGES[: STAGES.index(stage) + 1] for f in _STAGE_FIELDS[s]]
        return hashlib.sha256(f"{self.cfg.key(*parts)}|{code_version()}".encode()).hexdigest()[:12]

    def task_kwargs(self) -> dict:
        return {"seed": self.cfg.seed, **self.cfg.task_kwargs}

    def task(self):
        from rlprune.tasks import get_task

        return get_task(self.cfg.task, **self.task_kwargs())

    def ray(self) -> None:
        """Start (or connect to) Ray once, on the first stage that needs it."""
        from rlprune.orchestration import init_ray

        cpus = max(self.cfg.workers, 1 + self.cfg.sweep.search_workers)
        self.ray_started = init_ray(self.address, cpus) or self.ray_started

    def spec(self) -> dict:
        """Settings every Tune trial needs (absolute paths: trials run in their own folders)."""
        from rlprune.tasks import cache_dir

        return {"task": self.cfg.task, "cache": str(cache_dir().resolve()), "target": self.cfg.target,
                "budget": self.cfg.budget, "seed": self.cfg.seed, "measure": self.cfg.measure.to_dict(),
                "code": code_version()}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def code_version() -> str:
    """Hash of the source of the package, its env and its policies: a stage marker or a validation row
    written by other code is stale, whatever its settings (sample labels carry their own, narrower hash)."""
    from importlib.util import find_spec

    extra = [Path(find_spec(m).origin).parent for m in ("rlprune.envs", "rlprune.policies")]
    return source_hash(".", *extra)


# ====================================================================== stages
def _stage_base(run: _Run) -> dict:
    from rlprune.io import model_fingerprint
    from rlprune.measure.recipe import measure_base
    from rlprune.spn.nets import one_thread

    task = run.task()
    model = task.base_model()
    space = run.cfg.measure.space_of(model, task.example_input())
    with one_thread():  # validation trials time latency on one thread too
        base = measure_base(task, model, run.cfg.measure)
    return {**base, "fingerprint": model_fingerprint(model), "task": task.name, "metric": task.metric_name,
            "params": space.base_params,
            "macs": space.base_macs, "groups": [{"id": g.id, "channels": g.channels} for g in space.groups]}


def _stage_samples(run: _Run) -> dict:
    from rlprune.samples.tune import run_sampling

    s = run.cfg.sample
    run.ray()
    res = run_sampling(run.cfg.task, s.n, run.cfg.workers, run.cfg.sample_dir, run.cfg.measure, s.sampler,
                       address=run.address, flush_every=s.flush_every, seed=run.cfg.seed,
                       task_kwargs=run.task_kwargs(), progress=run.progress)
    df = _samples(run)
    return {**res, "mean_eval_s": float(df["eval_s"].mean())}


def _samples(run: _Run):
    from rlprune.samples.store import read_samples

    base = run.done["base"]
    return read_samples(run.cfg.sample_dir, fingerprint=base["fingerprint"], task=base["task"],
                        measure=run.cfg.measure)


def _stage_spn(run: _Run) -> dict:
    from rlprune.samples.spaces import read_spaces
    from rlprune.spn.frames import predict_frame
    from rlprune.spn.predictor import save_spn
    from rlprune.spn.train import train_heldout

    c = run.cfg.spn
    df = _samples(run)
    spaces = read_spaces(run.cfg.sample_dir, run.cfg.measure)
    spn, m, train_df, test_df = train_heldout(c.arch, df, spaces, c.test_frac,
                                              run.cfg.seed, c.max_steps)
    path = run.out / "spn" / "spn.pt"
    save_spn(spn, path)
    mean, std = predict_frame(spn, test_df)
    held = test_df[["sample_id", "macs_ratio", "params_ratio", "acc_drop"]].assign(predicted=mean, predicted_std=std)
    write_csv(held, run.out / "spn" / "heldout.csv")
    metrics = {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in m.items()}
    log(f"      SPN ({c.arch}) on {len(train_df)} samples; held-out {len(test_df)}: MAE {m['mae']:.2f} points, "
        f"Spearman {m['spearman']:.3f}")
    return {"path": str(path), "arch": c.arch, "n_train": len(train_df), "metrics": metrics,
            "fit_s": spn.meta.get("fit_s"), "heldout": str(run.out / "spn" / "heldout.csv")}


def _stage_sweep(run: _Run) -> dict:
    from rlprune.pipeline.stages import run_reward_sweep

    c, key = run.cfg.sweep, run.key("sweep")
    run.ray()
    spec = {**run.spec(), "task_kwargs": run.cfg.task_kwargs, "spn": run.done["spn"]["path"],
            "samples": str(run.cfg.sample_dir.resolve()), "iters": c.iters, "train_batch": c.train_batch,
            "online_every": c.online_every, "online_top": c.online_top, "online_steps": c.online_steps,
            "search_workers": c.search_workers}
    if run.cfg.multi_target:  # one conditioned search per trial over the whole range, not one per target
        spec["target"] = [min(run.cfg.targets), max(run.cfg.targets)]
    sweep_dir = run.out / "sweep" / key
    trials, placement = run_reward_sweep(spec, c.grid(), sweep_dir, run.out / "tune", f"reward_sweep-{key}",
                                         1 + c.search_workers, run.progress)
    keep = ("tag", "mode", "enforce", "w_acc", "w_cost", "ratios", "predicted_acc_drop", "predicted_acc_drop_std",
            "real_acc_drop", "macs_ratio", "params_ratio", "reward", "iterations", "episodes", "spn_calls",
            "real_evals", "wall_s", "online_rounds") + (("per_target", "policy") if run.cfg.multi_target else ())
    trials = [{k: t.get(k) for k in keep} | {"world_model": str(sweep_dir / t["tag"] / "world_model" /
                                                                 "world_model.pt")} for t in trials]
    return {"dir": str(sweep_dir), "trials": trials, "result_grid": str(sweep_dir / "result_grid.csv"),
            "placement": placement}


def _stage_validate(run: _Run) -> dict:
    from rlprune.pipeline.stages import run_validation, search_baselines

    if run.cfg.multi_target:
        from rlprune.pipeline.targets import validate_targets

        return validate_targets(run)
    cfg, v = run.cfg, run.cfg.validate
    trials = run.done["sweep"]["trials"]
    ranked = rank_rl(trials, cfg.target, cfg.budget)
    if not ranked:
        raise ConfigError(f"no sweep trial met the {cfg.budget} target {cfg.target}; use enforce: [wall] in the "
                          f"sweep or a larger w_violation")
    forward = ranked[: v.rl_top]
    task = run.task()
    space = cfg.measure.task_space(task)
    cm = space.cost_model
    # The wall only keeps RL's vectors under the target; like every baseline's, they go through the one
    # projection that lands them on it from below (within TARGET_SLACK), so nobody validates a smaller model.
    projected = {t["tag"]: cm.achieved(cm.project_to_budget(np.asarray(t["ratios"]), cfg.target, cfg.budget,
                                                            relax=True)) for t in forward}
    # RL's budget is the whole sweep's (the searches that lost the sweep were spent too), counted by each search.
    spent = {"spn_calls": sum(int(t["spn_calls"]) for t in trials),
             "real_evals": sum(int(t["real_evals"] or 0) for t in trials),
             "search_s": float(sum(t["wall_s"] for t in trials)), "candidates": len(forward)}
    cands = [{"method": t["tag"], "ratios": [float(r) for r in projected[t["tag"]]], "searched_ratios": t["ratios"],
              "predicted_acc_drop": t["predicted_acc_drop"], "source": "rl", "sweep_trials": len(trials), **spent}
             for t in forward]
    run.ray()
    key = run.key("validate")
    val_dir = run.out / "validate" / key
    # Random search and CEM get the same SPN calls and real evaluations, in as many online rounds as one RL
    # search had, each from the SPN the sweep started from and with a world model of its own.
    n_calls = v.n_calls or max(64, spent["spn_calls"])
    rounds = max([1] + [len(t.get("online_rounds") or []) for t in trials])
    base = {k: run.done["base"][k] for k in ("acc", "val_acc", "loss", "latency_ms", "fingerprint")}
    spec = {**run.spec(), "task_kwargs": run.task_kwargs(), "base": base}
    found = search_baselines(task, space, cfg.measure, spec, val_dir, spn=run.done["spn"]["path"],
                             store=cfg.sample_dir, methods=v.baselines, n_calls=n_calls,
                             n_real=spent["real_evals"], rounds=rounds, workers=cfg.sweep.search_workers,
                             steps=cfg.sweep.online_steps, seed=cfg.seed)
    cands += [{**b, "source": "baseline", "candidates": 1} for b in found]
    rows, placement = run_validation(spec, cands, val_dir, run.out / "tune", f"validate-{key}", cfg.workers,
                                     run.progress)
    return {"dir": str(val_dir), "rows": rows, "n_calls": n_calls, "n_real": spent["real_evals"], "rounds": rounds,
            "placement": placement}


def _stage_report(run: _Run) -> dict:
    from rlprune.io import load_pruned, save_pruned
    from rlprune.pipeline.report.single import write_report

    if run.cfg.multi_target:
        from rlprune.pipeline.targets import report_targets

        return report_targets(run)
    cfg = run.cfg
    rows = run.done["validate"]["rows"]
    winner = pick_winner(rows, cfg.target, cfg.budget)
    model, manifest = load_pruned(Path(run.done["validate"]["dir"]) / "models" / f"{winner['method']}.pt")
    manifest = {k: v for k, v in manifest.items() if k not in ("weights_file", "weights_sha256", "fingerprint",
                                                                "saved_at", "manifest_version")}
    save_pruned(model, run.out / "pruned_model.pt", {**manifest, "selected_from": [r["method"] for r in rows]})
    write_csv(results_frame(rows), run.out / "results.csv")
    files = write_report(run.out, cfg, run.done, winner)
    return {"winner": winner["method"], "pruned_model": str(run.out / "pruned_model.pt"), **files}


def _stage_quantize(run: _Run) -> dict:
    from rlprune.pipeline.quantize import stage_quantize

    return stage_quantize(run, log)


_STAGE_FNS = {"base": _stage_base, "samples": _stage_samples, "spn": _stage_spn, "sweep": _stage_sweep,
              "validate": _stage_validate, "report": _stage_report, "quantize": _stage_quantize}


# ====================================================================== markers and driver
def _marker(out: Path, stage: str) -> Path:
    return out / "stages" / f"{stage}.json"


def _still_valid(run: _Run, stage: str, marker: dict) -> bool:
    """A stage's recorded output is reused only if its key matches and the files it produced still exist."""
    if marker.get("key") != run.key(stage):
        return False
    o = marker.get("output", {})
    if stage == "samples":
        return len(_samples(run)) >= run.cfg.sample.n
    if "files" in o:  # the list form's stages name every file they produced
        return all(Path(p).exists() for p in o["files"])
    rows = [Path(o.get("dir", "")) / "rows" / f"{r['method']}.json" for r in o.get("rows", [])]
    paths = {"spn": [o.get("path")], "sweep": [o.get("result_grid")], "validate": [o.get("dir"), *rows],
             "report": [o.get(k) for k in ("pruned_model", "report_md", "report_html")],
             "quantize": [o.get(k) for k in ("model", "summary", "report_md")]}.get(stage, [])
    return all(p and Path(p).exists() for p in paths)


def _read_marker(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # missing or torn by an old crash: the stage simply runs again


def run_pipeline(cfg: RunConfig, address: str | None = None, progress: bool = True) -> dict:
    """Run (or resume) every stage up to ``cfg.until``; returns the summary (also ``out/summary.json``).

    Args:
        cfg: the run's settings.
        address: a Ray cluster to run on (``host:port``); None starts a local one (or joins the cluster a
            ``ray job submit`` driver runs in).
        progress: progress bars on stderr.

    Returns:
        ``{"target", "budget", "task", "preset", "stages": {name: {"wall_s", "status"}}, "placement", "methods": [...],
        "winner", ...}``; ``methods`` is empty when the run stops before validation.

    Raises:
        ConfigError: bad settings or an ``out`` that is a file; RlpruneError subclasses from the stages
        (finished work is kept; rerun the same command to resume).
    """
    out = Path(cfg.out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; pass a folder")
    if cfg.task_kwargs.get("data_dir"):
        cfg = _with_abs_data_dir(cfg)
    run = _Run(cfg, out, progress, address)
    run.task()  # an unknown task or missing data fails here, before anything is written
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "run_config.json", cfg.to_dict())
    stages, timing = cfg.stages(), {}
    try:
        for i, stage in enumerate(stages, 1):
            marker = _read_marker(_marker(out, stage))
            if marker and _still_valid(run, stage, marker):
                run.done[stage] = marker["output"]
                timing[stage] = {"wall_s": marker["wall_s"], "status": "reused"}
                log(f"[{i}/{len(stages)}] {stage}: done before ({marker['wall_s']:.1f} s), reused")
                continue
            if marker and marker.get("key") != run.key(stage):
                why = "the code" if marker.get("code") != code_version() else "its settings (or an earlier stage's)"
                log(f"[{i}/{len(stages)}] {stage}: {why} changed since it ran; running it again")
            t0 = time.perf_counter()
            output = _STAGE_FNS[stage](run)
            wall = time.perf_counter() - t0
            run.done[stage] = output
            atomic_write_json(_marker(out, stage), {"stage": stage, "key": run.key(stage), "code": code_version(),
                                                    "wall_s": wall,
                                                    "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                                    "output": output})
            timing[stage] = {"wall_s": wall, "status": "ran"}
            log(f"[{i}/{len(stages)}] {stage}: {wall:.1f} s")
    finally:
        if run.ray_started:
            import ray

            ray.shutdown()
    summary = run_summary(run, timing)
    atomic_write_json(out / "summary.json", summary, sort_keys=False)  # stages stay in pipeline order
    return summary


def _with_abs_data_dir(cfg: RunConfig) -> RunConfig:
    import dataclasses

    kw = dict(cfg.task_kwargs, data_dir=str(Path(cfg.task_kwargs["data_dir"]).expanduser().resolve()))
    return dataclasses.replace(cfg, task_kwargs=kw)
