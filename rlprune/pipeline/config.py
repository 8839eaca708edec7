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
from rlprune.pipeline.sections import QuantizeStage, SampleStage, SPNStage, SweepStage, ValidateStage, check

STAGES = ("base", "samples", "spn", "sweep", "validate", "report", "quantize")
"""Pipeline stages in order; each is skipped on rerun when its recorded output is still valid. ``quantize``
runs only when ``quantize.target_size`` is set."""

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
            check("run", [(False, "target", self.target, why)] if (why := _targets_problem(self.target)) else [])
        check("run", [
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
