"""``rlprune quantize``: from an fp32 (base or pruned) model to the best mixed-precision model at a size budget.

    summary = run_quantize(QuantizeConfig(task="digits", target=0.125, out="runs/q"))
    summary["winner"], summary["methods"]["rl"]["bits"], summary["methods"]["rl"]["acc_ci"]

Steps (all on the task's splits, see ``rlprune.tasks.base``):

1. the fp32 model (the task's base model, or ``pruned/pruned_model.pt`` from ``rlprune prune --out`` or
   ``rlprune run``), its validation and test accuracy;
2. the sensitivity scan (calibration) and every rule's vector at the target (``rlprune.quant.baselines``);
3. ``samples`` random vectors with their measured post-training drops (calibration; with ``workers`` >= 1 as
   a Ray Tune experiment into the bits sample store ``out/bits_samples``, resumable, see
   ``rlprune.quant.tune_samples``; with 0 in this process), split into a fitting
   set and a held-out quarter: the bits world model (``world_model``: the SPN's transformer by default, or
   the small MLP) and its held-out Spearman/MAE, with the other kind's on the same split for comparison
   (``rlprune.quant.worldmodel``);
4. the RL search on the bits env against that world model (``rlprune.quant.search``), with ``online_top``
   real evaluations after each iteration that refine its world model (``rlprune.quant.online``), then random
   search and CEM on the same world model with the RL search's counted calls and real evaluations
   (``rlprune.quant.blackbox``), each refining a world model of its own;
5. every candidate fine-tuned the same number of steps with its fake quantizers (QAT), scored on validation
   (which chooses) and test (which reports, with a 95% bootstrap interval) (``rlprune.quant.qat``);
6. the winner exported as ``out/quantized_model.pt`` (``rlprune.load_quantized``) and everything in
   ``out/summary.json``, both written atomically.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from rlprune.errors import ConfigError
from rlprune.io import atomic_write_json
from rlprune.quant.baselines import baseline_bits, sensitivity_scan
from rlprune.quant.blackbox import cem_bits_search, random_bits_search
from rlprune.quant.export import export_quantized
from rlprune.quant.online import BitsLearner
from rlprune.quant.qat import QATSpec, choose, qat_validate
from rlprune.quant.size import QuantSpace, validate_bits
from rlprune.quant.worldmodel import WORLD_MODELS, make_world_model, measure_drops, random_bits


@dataclass(frozen=True)
class QuantizeConfig:
    """Everything ``rlprune quantize`` does, in one place."""

    task: str = "digits"
    """Task name (``rlprune tasks``)."""
    task_kwargs: dict = field(default_factory=dict)
    """The task's other arguments (``arch``, ``data_dir``, or your model's specs); a ``seed`` here fixes the base
    model (a benchmark's ``--model-seed``) while ``seed`` still seeds the samples, the searches and the QAT."""
    target: float = 0.125
    """Size budget: stored size relative to the fp32 model, in (0, 1] (0.125 is about 4 bits per weight)."""
    out: str = "runs/quantize"
    """Folder for ``quantized_model.pt`` and ``summary.json``."""
    pruned: str | None = None
    """A folder holding ``pruned_model.pt`` (``rlprune prune --out`` / ``rlprune run``); None: the base model."""
    seed: int = 0
    """Seeds the task, the samples, the world model, the RL search and the QAT's data order."""
    samples: int = 64
    """Measured (bits -> drop) samples for the world model (a quarter is held out to measure it)."""
    rl_iters: int = 3
    """PPO iterations of the RL search."""
    rl_batch: int = 64
    """Episodes per PPO iteration."""
    qat_steps: int = 100
    """Quantization-aware fine-tune steps, the same for every candidate."""
    bits: tuple[int, ...] | None = None
    """Your own bit vector, validated as one more candidate (``given``); it must fit the target."""
    workers: int = 2
    """Tune trials measuring the samples into ``out/bits_samples`` (one CPU each; a rerun measures only what the
    store lacks); 0 measures them in this process and stores nothing."""
    online_top: int = 2
    """Vectors measured for real after each RL iteration (the best played and not measured yet), on which the
    world model is refined (``rlprune.quant.online``); random search and CEM get as many, in as many rounds.
    0: offline, every search trusts the world model fitted on the samples."""
    world_model: str = "spn"
    """The bits world model the searches use: ``spn`` (the SPN's transformer, one token per layer; held out
    better on digits, see the README) or ``mlp`` (a two-layer net on the layers' noise powers)."""

    def __post_init__(self) -> None:
        t = self.target
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not 0 < t <= 1:
            raise ConfigError(f"target size {t!r} is outside (0, 1]; pass the stored size relative to fp32, "
                              "e.g. --target-size 0.125 for about 4 bits per weight")
        for name, low in (("samples", 8), ("rl_iters", 1), ("rl_batch", 1), ("qat_steps", 0), ("seed", 0),
                          ("workers", 0), ("online_top", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"{name}={v!r} must be an integer >= {low}")
        if self.world_model not in WORLD_MODELS:
            raise ConfigError(f"world_model={self.world_model!r} is unknown; use one of {', '.join(WORLD_MODELS)}")
        if not isinstance(self.task_kwargs, dict):
            raise ConfigError(f"task_kwargs={self.task_kwargs!r} must be a dict of the task's arguments, e.g. "
                              "{'arch': 'resnet20'}")
        if self.pruned is not None and not (Path(self.pruned) / "pruned_model.pt").is_file():
            raise ConfigError(f"--pruned {self.pruned} holds no pruned_model.pt; pass the --out folder of "
                              "`rlprune prune` or `rlprune run`")


def run_quantize(cfg: QuantizeConfig, log=print, progress: bool | None = None) -> dict:
    """Run every step of the module docstring and return the summary (also written to ``out/summary.json``).

    Args:
        cfg: the settings.
        log: called with one line per finished step (``print`` by default; the CLI's ``--json`` passes a no-op).
        progress: the sampling experiment's progress bar (None: when stderr is a terminal).

    Returns:
        ``{"task", "target", "fp32", "winner", "methods": {name: row}, "world_model", "rl", "sensitivity",
        "config", "model"}``; each row has ``bits``, ``size_ratio``, ``meets_target``, ``val_acc``, ``acc``,
        ``acc_ci`` and ``correct``.

    Raises:
        ConfigError: an unreachable target, bad ``bits``, an unknown task.
        CheckpointError: an unreadable pruned model.
    """
    from rlprune.io import load_pruned
    from rlprune.quant.search import rl_bits_search
    from rlprune.tasks import get_task

    started = time.perf_counter()
    task = get_task(cfg.task, **{"seed": cfg.seed, **cfg.task_kwargs})
    # With the base model's seed fixed in task_kwargs, seeds would otherwise share one QAT data order and the
    # same bits vector would score the same under every seed: not a replicate.
    task.finetune_seed = cfg.seed
    model = load_pruned(cfg.pruned)[0] if cfg.pruned else task.base_model()
    space = QuantSpace.from_model(model)
    target = space.check_target(cfg.target)
    given = None
    if cfg.bits is not None:
        given = validate_bits(cfg.bits, space.n_layers)
        if not space.fits(given, target)[0]:
            raise ConfigError(f"--bits {','.join(map(str, given))} has size_ratio {space.size_ratio(given)[0]:.4f} > "
                              f"target {target:g}; lower some layers' bits or raise --target-size")
    fp32 = {"val_acc": task.evaluate(model, "validation")["acc"], "acc": task.evaluate(model, "test")["acc"],
            "params": space.params}
    log(f"fp32 model: {space.n_layers} quantizable layers, {space.params:,} params, "
        f"val {fp32['val_acc']:.2f}%, test {fp32['acc']:.2f}%")

    sens = sensitivity_scan(task, model)
    candidates = {k: v.tolist() for k, v in baseline_bits(space, target, sens).items()}
    log("sensitivity scan (2 bits, calibration drop): " + ", ".join(f"{s:.1f}" for s in sens))

    B = np.vstack([random_bits(space, cfg.samples, seed=cfg.seed), np.array(list(candidates.values()))])
    t0 = time.perf_counter()
    if cfg.workers:
        from rlprune.quant.tune_samples import measure_on_tune

        def measure(C, progress=False) -> dict:
            return measure_on_tune(cfg.task, {"seed": cfg.seed, **cfg.task_kwargs}, cfg.pruned, C,
                                   Path(cfg.out) / "bits_samples", cfg.workers, progress=progress)

        res = measure(B, progress)
        drops = res.pop("drops")
        sampling = {**res, "where": "tune"}
    else:
        def measure(C, progress=False) -> dict:
            return {"drops": measure_drops(task, model, C)}

        drops = measure(B)["drops"]
        sampling = {"n_new": len(B), "wall_s": time.perf_counter() - t0, "where": "in-process"}
    log(f"{len(B)} bits samples ({sampling['n_new']} measured now, {sampling['where']}) in "
        f"{sampling['wall_s']:.1f} s")
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(B))
    held, fit = order[: max(2, len(B) // 4)], order[max(2, len(B) // 4):]
    # Both kinds on the same split, so the report can say how the chosen one compares; the search uses one.
    heldout = {kind: make_world_model(kind, space, cfg.seed).fit(B[fit], drops[fit]).fidelity(B[held], drops[held])
               for kind in WORLD_MODELS}
    fidelity = {"kind": cfg.world_model, **heldout[cfg.world_model]}
    wm = make_world_model(cfg.world_model, space, cfg.seed).fit(B, drops)  # the search gets every sample
    log(f"world model ({cfg.world_model}): held-out Spearman {fidelity['spearman']:.3f}, MAE {fidelity['mae']:.2f} "
        f"points (n={fidelity['n']}); " + ", ".join(f"{k}: Spearman {v['spearman']:.3f}, MAE {v['mae']:.2f}"
                                                    for k, v in heldout.items()))

    # Every search refines a world model of its own on its own real evaluations (rlprune.quant.online).
    learners = {name: BitsLearner(wm, B, drops, lambda C: measure(C)["drops"], seed=cfg.seed)
                for name in ("rl", "random_search", "cem")}
    rl = rl_bits_search(space, wm, target, iters=cfg.rl_iters, train_batch_env_steps=cfg.rl_batch, seed=cfg.seed,
                        online_top=cfg.online_top, learn=learners["rl"])
    candidates["rl"] = rl["bits"]
    log(f"RL search: {rl['episodes']} episodes, {rl['real_evals']} real evaluations in {rl['online_rounds']} online "
        f"rounds, {rl['search_s']:.1f} s; predicted drop {rl['predicted_drop']:.2f} points")
    # The black-box baselines get exactly the world-model calls and the real evaluations the RL search counted.
    budget = {"n_calls": rl["wm_calls"], "seed": cfg.seed, "n_real": rl["real_evals"],
              "rounds": max(1, rl["online_rounds"])}
    searches = {"rl": rl,
                "random_search": random_bits_search(space, wm, target, learn=learners["random_search"], **budget),
                "cem": cem_bits_search(space, wm, target, learn=learners["cem"], **budget)}
    for name in ("random_search", "cem"):
        candidates[name] = searches[name]["bits"]
        log(f"{name}: {searches[name]['wm_calls']} world-model calls, {searches[name]['real_evals']} real "
            f"evaluations in {searches[name]['search_s']:.1f} s; predicted drop "
            f"{searches[name]['predicted_drop']:.2f} points")
    if given is not None:
        candidates["given"] = given.tolist()

    spec = QATSpec(steps=cfg.qat_steps)
    methods, models = {}, {}
    for name, bits in candidates.items():
        row, wrapped = qat_validate(task, model, bits, spec)
        row["meets_target"] = bool(space.fits(bits, target)[0])
        # A search's own (refined) world model's view of its vector; the fitted one's for the rules.
        row["predicted_drop"] = float(searches[name]["predicted_drop"] if name in searches else wm.predict(bits)[0])
        for key, none in (("wm_calls", 0), ("real_evals", 0), ("search_s", 0.0)):
            row[key] = searches[name][key] if name in searches else none
        methods[name], models[name] = row, wrapped
        log(f"validated {name}: val {row['val_acc']:.2f}%, test {row['acc']:.2f}%")
    winner = choose({k: v for k, v in methods.items() if v["meets_target"]})
    out = Path(cfg.out)
    manifest = {"task": cfg.task, "task_kwargs": cfg.task_kwargs, "seed": cfg.seed, "method": winner, "target": target,
                "size_ratio": methods[winner]["size_ratio"], "val_acc": methods[winner]["val_acc"],
                "acc": methods[winner]["acc"], "space": space.to_record(), "pruned": cfg.pruned,
                "activations": "fp32"}
    export_quantized(models[winner], out / "quantized_model.pt", manifest)
    summary = {"task": cfg.task, "target": target, "selection_split": "validation", "activations": "fp32",
               "fp32": fp32, "winner": winner, "methods": methods, "layers": list(space.names),
               "world_model": fidelity, "world_models_heldout": heldout, "samples": sampling, "rl": rl,
               "online": {name: lr.rounds for name, lr in learners.items()},
               "sensitivity": sens.tolist(),
               "config": {**asdict(cfg), "bits": list(cfg.bits) if cfg.bits else None},
               "model": str(out / "quantized_model.pt"), "total_s": round(time.perf_counter() - started, 1)}
    atomic_write_json(out / "summary.json", summary, sort_keys=False)
    return summary


__all__ = ["QuantizeConfig", "run_quantize"]
