"""What ``rlprune run`` and ``rlprune tune`` do, as frozen dataclasses, with presets and a YAML mapping.

    cfg = RunConfig.preset_config("quick", task="digits", target=0.5, out="runs/demo")
    cfg = load_yaml("tune_configs/reward_sweep.yaml", out="runs/sweep")   # the same dataclasses

A YAML file's top-level keys are :class:`RunConfig` fields; the sections ``measure``, ``sample``, ``spn``,
``sweep``, ``validate`` and ``quantize`` map onto ``rlprune.measure.spec.MeasureSpec`` (how every number of the
run is measured, passed to every stage), :class:`SampleStage`, :class:`SPNStage`, :class:`SweepStage`,
:class:`ValidateStage` and :class:`QuantizeStage` (the second stage, run only when it has a ``target_size``).
``preset`` (default ``quick``) fills every field the file leaves out; lists in ``sweep`` are grid axes
(every combination is one Tune trial). ``until`` names the last stage to run;
``extends: other.yaml`` starts from another file (sections merge key by key), so a sweep config can reuse
a sampling config's samples.
Nothing here imports Ray or torch: configs are checked before any work starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from rlprune.errors import ConfigError
from rlprune.measure.spec import MeasureSpec, task_measure_defaults

STAGES = ("base", "samples", "spn", "sweep", "validate", "report", "quantize")
"""Pipeline stages in order; each is skipped on rerun when its recorded output is still valid. ``quantize``
runs only when ``quantize.target_size`` is set."""
BASELINES = ("uniform", "larger_group", "depth", "global_l1", "random_search", "cem")


def _check(cls_name: str, checks) -> None:
    for ok, name, value, fix in checks:
        if not ok:
            raise ConfigError(f"{cls_name}.{name}={value!r} is invalid; use {fix}")


@dataclass(frozen=True)
class SampleStage:
    """Real samples: prune, recalibrate BatchNorm, score on the calibration split (one Tune trial per worker)."""

    n: int = 128
    """Unique samples wanted in the store (already stored ones count)."""
    sampler: str = "mixed"
    """Ratio sampler (``rlprune sample --sampler``)."""
    flush_every: int = 4
    """Rows per shard: at most this many are lost per killed worker."""

    def __post_init__(self):
        _check("sample", [
            (self.n >= 8, "n", self.n, "at least 8 samples (the SPN holds some out)"),
            (self.sampler in ("mixed", "uniform", "sobol", "rules", "budget"), "sampler", self.sampler,
             "mixed, uniform, sobol, rules or budget"),
            (self.flush_every >= 1, "flush_every", self.flush_every, ">= 1"),
        ])


@dataclass(frozen=True)
class SPNStage:
    """The state predictor network trained on the samples (held-out metrics are saved with it)."""

    arch: str = "transformer"
    """``transformer``, ``mlp`` or ``linear``."""
    max_steps: int = 4000
    """Upper bound on optimiser steps (early stopping usually ends sooner)."""
    test_frac: float = 0.2
    """Share of the samples held out to measure the SPN."""

    def __post_init__(self):
        _check("spn", [
            (self.arch in ("transformer", "mlp", "linear"), "arch", self.arch, "transformer, mlp or linear"),
            (self.max_steps >= 1, "max_steps", self.max_steps, ">= 1"),
            (0 < self.test_frac < 0.5, "test_frac", self.test_frac, "a fraction in (0, 0.5), e.g. 0.2"),
        ])


@dataclass(frozen=True)
class SweepStage:
    """The reward-weighting sweep: one online RL search per combination of the grid axes."""

    w_cost: tuple[float, ...] = (10.0,)
    """Grid axis: reward weight of the compression (compression past the target earns nothing, so under the
    wall the term is constant: wall-mode trials use the first weight only)."""
    w_acc: tuple[float, ...] = (1.0,)
    """Grid axis: reward weight per accuracy point."""
    mode: tuple[str, ...] = ("simultaneous", "sequential")
    """Grid axis: env mode(s)."""
    enforce: tuple[str, ...] = ("wall",)
    """Grid axis: budget enforcement(s)."""
    iters: int = 12
    """PPO iterations per search."""
    train_batch: int = 256
    """Env steps per iteration."""
    online_every: int = 4
    """Iterations between two rounds of real evaluation + SPN fine-tuning."""
    online_top: int = 4
    """Candidates evaluated for real per round."""
    online_steps: int = 100
    """SPN fine-tuning steps per round."""
    search_workers: int = 1
    """CPUs each search gets for its real evaluations (a trial reserves 1 + this many)."""

    def __post_init__(self):
        for name in ("w_cost", "w_acc", "mode", "enforce"):
            v = getattr(self, name)
            if isinstance(v, str | int | float):  # a scalar in YAML is a one-value axis
                object.__setattr__(self, name, (v,))
            elif not isinstance(v, tuple):
                object.__setattr__(self, name, tuple(v))
        _check("sweep", [
            (len(self.w_cost) > 0 and all(w >= 0 for w in self.w_cost), "w_cost", self.w_cost, "weights >= 0"),
            (len(self.w_acc) > 0 and all(w > 0 for w in self.w_acc), "w_acc", self.w_acc, "weights > 0"),
            (len(self.mode) > 0 and set(self.mode) <= {"simultaneous", "sequential"}, "mode", self.mode,
             "simultaneous and/or sequential"),
            (len(self.enforce) > 0 and set(self.enforce) <= {"wall", "penalty"}, "enforce", self.enforce,
             "wall and/or penalty"),
            (self.iters >= 1, "iters", self.iters, ">= 1"),
            (self.train_batch >= 8, "train_batch", self.train_batch, ">= 8"),
            (self.online_every >= 1, "online_every", self.online_every, ">= 1"),
            (self.online_top >= 1, "online_top", self.online_top, ">= 1"),
            (self.online_steps >= 1, "online_steps", self.online_steps, ">= 1"),
            (self.search_workers >= 1, "search_workers", self.search_workers, ">= 1"),
        ])

    def grid(self) -> list[dict]:
        """Every combination of the axes, as ``SearchConfig`` keyword arguments with a readable ``tag``."""
        out = []
        for mode in self.mode:
            for enforce in self.enforce:
                for w_acc in self.w_acc:
                    # The wall never exceeds the target, where the cost term is flat: one weight is enough.
                    for w_cost in self.w_cost if enforce == "penalty" else self.w_cost[:1]:
                        tag = f"rl-{mode[:3]}-{enforce}-wacc{w_acc:g}-wcost{w_cost:g}"
                        out.append({"tag": tag, "mode": mode, "enforce": enforce, "w_acc": float(w_acc),
                                    "w_cost": float(w_cost)})
        return out


@dataclass(frozen=True)
class ValidateStage:
    """Validation trials: real pruning, the same fine-tune for everyone, validation and test scores."""

    rl_top: int = 1
    """RL strategies validated (the sweep trials ranked first on the calibration split). 1, like every
    baseline: a method with more candidates validated gets more chances on the validation split."""
    baselines: tuple[str, ...] = BASELINES
    """Baselines validated at the same budget."""
    n_calls: int | None = None
    """SPN calls random search and CEM may spend (None, the default: as many as the sweep's RL searches
    made together; they also get as many real evaluations, in as many online rounds as one RL search). With a
    list of K targets this total (and the real evaluations) is split over the targets, 1/K each
    (``rlprune.pipeline.targets``)."""

    def __post_init__(self):
        if not isinstance(self.baselines, tuple):
            object.__setattr__(self, "baselines", tuple(self.baselines))
        unknown = sorted(set(self.baselines) - set(BASELINES))
        _check("validate", [
            (self.rl_top >= 1, "rl_top", self.rl_top, ">= 1"),
            (not unknown, "baselines", unknown, f"names from {', '.join(BASELINES)}"),
            (self.n_calls is None or self.n_calls >= 1, "n_calls", self.n_calls, ">= 1 or null"),
        ])


@dataclass(frozen=True)
class QuantizeStage:
    """The second stage: weight bits per layer of the output model at a size budget (``rlprune.quant``)."""

    target_size: float | None = None
    """Stored size of the quantized model relative to the *pruned* fp32 model, in (0, 1] (0.125 is about 4 bits
    per weight); None (the default) skips the stage."""
    samples: int = 64
    """Measured (bits -> drop) samples for the bits world model."""
    rl_iters: int = 3
    """PPO iterations of the bits search."""
    rl_batch: int = 64
    """Episodes per PPO iteration."""
    qat_steps: int | None = None
    """Quantization-aware fine-tune steps, the same for every candidate (None: ``measure.finetune_steps``, the
    pruning candidates' fine-tune)."""
    world_model: str = "spn"
    """The searches' bits world model: ``spn`` (the SPN's transformer) or ``mlp``."""
    online_top: int = 2
    """Vectors measured for real after each PPO iteration to refine the world model (0: offline)."""

    def __post_init__(self):
        t = self.target_size
        _check("quantize", [
            (t is None or (isinstance(t, int | float) and not isinstance(t, bool) and 0 < t <= 1), "target_size", t,
             "a size ratio in (0, 1], e.g. 0.125 for about 4 bits per weight, or null to skip the stage"),
            (self.samples >= 8, "samples", self.samples, ">= 8 (a quarter is held out)"),
            (self.rl_iters >= 1, "rl_iters", self.rl_iters, ">= 1"),
            (self.rl_batch >= 1, "rl_batch", self.rl_batch, ">= 1"),
            (self.qat_steps is None or self.qat_steps >= 0, "qat_steps", self.qat_steps, ">= 0 or null"),
            (self.world_model in ("spn", "mlp"), "world_model", self.world_model, "spn or mlp"),
            (self.online_top >= 0, "online_top", self.online_top, ">= 0 (0: offline)"),
        ])


_SECTIONS = {"measure": MeasureSpec, "sample": SampleStage, "spn": SPNStage, "sweep": SweepStage,
             "validate": ValidateStage, "quantize": QuantizeStage}

PRESETS: dict[str, dict] = {
    # A smoke run (about a minute): proves an install or a cluster works, finds nothing worth keeping.
    "tiny": {"measure": {"finetune_steps": 10}, "sample": {"n": 24}, "spn": {"max_steps": 300},
             "sweep": {"w_cost": (10.0,), "mode": ("simultaneous",), "iters": 2, "train_batch": 64,
                       "online_every": 2, "online_top": 2, "online_steps": 20},
             "quantize": {"samples": 16, "rl_iters": 1, "rl_batch": 32}},
    # The default: at most 10 minutes on 2 cores for digits.
    "quick": {"measure": {"latency_runs": 20}},
    "standard": {"measure": {"finetune_steps": 300, "latency_runs": 20}, "sample": {"n": 384},
                 "sweep": {"w_cost": (5.0, 10.0, 20.0), "enforce": ("wall", "penalty"), "iters": 30,
                           "online_every": 5}},
    "full": {"measure": {"finetune_steps": 1000, "latency_runs": 20}, "sample": {"n": 512, "sampler": "mixed"},
             "sweep": {"w_cost": (2.5, 5.0, 10.0, 20.0), "mode": ("simultaneous", "sequential"),
                       "enforce": ("wall", "penalty"), "iters": 60, "online_every": 5, "search_workers": 2}},
}


@dataclass(frozen=True)
class RunConfig:
    """One ``rlprune run``: every stage's settings."""

    out: str
    """Folder for every output; rerunning with the same folder resumes."""
    task: str = "digits"
    """Task name or ``package.module:callable``."""
    task_kwargs: dict = field(default_factory=dict)
    """Extra task arguments (``data_dir`` for tasks that read local data)."""
    target: float | tuple[float, ...] = 0.5
    """Pruned/original ``budget`` ratio to reach; or several, increasing (a YAML list): one target-conditioned
    search sweep serves them all, and every method is validated at each (one output model per target)."""
    budget: str = "macs"
    """``macs`` or ``params``."""
    preset: str = "quick"
    """Which defaults filled the sections (recorded; see :data:`PRESETS`)."""
    seed: int = 0
    """Seeds the task, the samplers, the searches and the baselines."""
    workers: int = 2
    """Parallel sampling trials and validation trials (one CPU each)."""
    until: str = STAGES[-1]
    """Last stage to run (``rlprune tune`` configs stop early, e.g. after ``samples``); the default runs every
    stage (``quantize`` only with ``quantize.target_size``)."""
    samples: str | None = None
    """Sample store folder (default ``out/samples``); on a cluster, a path every node sees."""
    measure: MeasureSpec = field(default_factory=MeasureSpec)
    """How every number of the run is measured: samples, online rounds, validation (one spec for all)."""
    sample: SampleStage = field(default_factory=SampleStage)
    spn: SPNStage = field(default_factory=SPNStage)
    sweep: SweepStage = field(default_factory=SweepStage)
    validate: ValidateStage = field(default_factory=ValidateStage)
    quantize: QuantizeStage = field(default_factory=QuantizeStage)

    def __post_init__(self):
        if not isinstance(self.task, str):
            # Tune trials rebuild the task in their own processes from names, never from a pickled object.
            raise ConfigError(f"run task={type(self.task).__name__} must be a name: the pipeline's trials rebuild "
                              f"the task from it; for your own model use task='user', task_kwargs={{'model': "
                              f"'pkg.mod:build', 'data': 'pkg.mod:datasets', 'weights': 'model.pt'}} (the specs "
                              f"rlprune.make_task is built from)")
        if isinstance(self.target, list | tuple):
            object.__setattr__(self, "target", tuple(self.target))
            _check("run", [(False, "target", self.target, why)] if (why := _targets_problem(self.target)) else [])
        _check("run", [
            (bool(str(self.out).strip()), "out", self.out, "a folder path"),
            (self.multi_target or (isinstance(self.target, int | float) and 0 < self.target <= 1), "target",
             self.target, "a ratio in (0, 1], e.g. 0.5, or a list of them, e.g. [0.3, 0.5, 0.7]"),
            (self.budget in ("macs", "params"), "budget", self.budget, "macs or params"),
            (self.preset in PRESETS, "preset", self.preset, " / ".join(PRESETS)),
            (isinstance(self.workers, int) and self.workers >= 1, "workers", self.workers, ">= 1"),
            (self.until in STAGES, "until", self.until, " / ".join(STAGES)),
            (not (self.multi_target and self.quantizes), "quantize.target_size", self.quantize.target_size,
             "one pruning target with it (the second stage quantizes one output model; quantize a list run's "
             "model with `rlprune quantize --pruned OUT/t<target>`), or leave it unset"),
        ])

    @classmethod
    def preset_config(cls, preset: str = "quick", **overrides) -> RunConfig:
        """A config from a preset with top-level fields (and whole sections) overridden.

        Raises:
            ConfigError: an unknown preset or field, or an invalid value.
        """
        return from_mapping({"preset": preset, **overrides})

    @property
    def sample_dir(self) -> Path:
        return Path(self.samples) if self.samples else Path(self.out) / "samples"

    @property
    def multi_target(self) -> bool:
        """Whether ``target`` is a list: one conditioned sweep, every method validated at every target."""
        return isinstance(self.target, tuple)

    @property
    def targets(self) -> tuple[float, ...]:
        """Every target, increasing (one for a single target)."""
        return tuple(float(t) for t in self.target) if self.multi_target else (float(self.target),)

    @property
    def quantizes(self) -> bool:
        """Whether the second stage (weight bits) is asked for."""
        return self.quantize.target_size is not None

    def stages(self) -> tuple[str, ...]:
        """The stages this config runs, in order."""
        return tuple(s for s in STAGES[: STAGES.index(self.until) + 1] if s != "quantize" or self.quantizes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def key(self, *parts: str) -> str:
        """A short hash of the named fields/sections: a stage's output is valid while its key is unchanged."""
        d = {**self.to_dict(), "measure_label": self.measure.label()}  # what sample labels depend on
        blob = json.dumps({p: d[p] for p in parts}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _targets_problem(targets: tuple) -> str | None:
    """What is wrong with a list of targets (None when nothing is), phrased as the fix."""
    example = "e.g. [0.3, 0.5, 0.7]"
    if len(targets) < 2:
        return f"at least 2 targets in a list ({example}), or one plain number such as 0.5"
    bad = [t for t in targets if isinstance(t, bool) or not isinstance(t, int | float) or not 0 < t <= 1]
    if bad:  # NaN fails the range test too
        return f"ratios in (0, 1] only ({bad[0]!r} is not one), {example}"
    if any(b <= a for a, b in zip(targets, targets[1:], strict=False)):
        return f"distinct targets in increasing order, {example}"
    return None


def from_mapping(data: dict) -> RunConfig:
    """Build a :class:`RunConfig` from a plain mapping (YAML or CLI), the preset filling what is missing.

    Raises:
        ConfigError: unknown keys (named, with the valid ones), a wrong type, or an invalid value.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"a run config must be a mapping of fields, got {type(data).__name__}")
    data = dict(data)
    preset = data.get("preset", "quick")
    if preset not in PRESETS:
        raise ConfigError(f"preset {preset!r} is unknown; use one of {', '.join(PRESETS)}")
    top = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(data) - top)
    if unknown:
        raise ConfigError(f"unknown run config key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(top))}")
    for name, cls in _SECTIONS.items():
        given = data.get(name) or {}
        if isinstance(given, cls):
            continue
        if not isinstance(given, dict):
            raise ConfigError(f"section {name!r} must be a mapping of {cls.__name__} fields")
        valid = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(given) - valid)
        if bad:
            raise ConfigError(f"unknown key(s) {', '.join(bad)} in section {name!r}; valid: {', '.join(sorted(valid))}")
        # A built-in task's studied label comes first: the preset and the user's section both override it.
        task_default = task_measure_defaults(data.get("task") or RunConfig.task) if name == "measure" else {}
        merged = {**task_default, **PRESETS[preset].get(name, {}), **given}
        data[name] = _build(cls, name, merged)
    return _build(RunConfig, "run", data)


def _build(cls, name: str, kwargs: dict):
    try:
        return cls(**kwargs)
    except TypeError as e:  # e.g. a list where a number belongs: comparisons fail in __post_init__
        raise ConfigError(f"section {name!r}: {e}; check the value types against {cls.__name__}") from e


def load_yaml(path, **overrides) -> RunConfig:
    """Read a ``tune_configs/*.yaml`` experiment into a :class:`RunConfig`.

    Args:
        path: the YAML file.
        **overrides: top-level fields that replace the file's (``out``, ``task``...), None values ignored.

    Raises:
        ConfigError: a missing or unparsable file, or any invalid key or value (see :func:`from_mapping`).
    """
    import yaml

    p = Path(path)
    data = _read_yaml(p, yaml, seen=())
    data.update({k: v for k, v in overrides.items() if v is not None})
    if "out" not in data:
        raise ConfigError(f"tune config {p} sets no `out` folder; add `out: runs/NAME` or pass --out")
    return from_mapping(data)


def _read_yaml(p: Path, yaml, seen: tuple) -> dict:
    """One YAML mapping, with ``extends: other.yaml`` (relative to it) merged underneath, section by section."""
    if not p.is_file():
        raise ConfigError(f"tune config {p} does not exist; see tune_configs/ for examples")
    if p.resolve() in seen:
        raise ConfigError(f"tune config {p} extends itself (through {' -> '.join(str(s) for s in seen)})")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"tune config {p} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"tune config {p} must be a mapping of run fields, not a {type(data).__name__}")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    merged = _read_yaml(p.parent / str(parent), yaml, (*seen, p.resolve()))
    for k, v in data.items():
        merged[k] = {**merged[k], **v} if k in _SECTIONS and isinstance(merged.get(k), dict) and isinstance(v, dict) \
            else v
    return merged
