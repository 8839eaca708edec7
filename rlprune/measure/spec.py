"""``MeasureSpec``: everything that decides what a measured number means, in one frozen place.

A sample's accuracy label, an online round's real evaluation, the AMC-style real reward, a validation
trial and ``rlprune prune`` all measure a ratio vector the same way: prune with ``importance`` (channels
rounded to ``round_to``), recalibrate BatchNorm on ``bn_batches`` calibration batches, fine-tune (a label:
``label_steps``, 0 by default; a validated candidate: ``finetune_steps``), score. Two numbers measured
under different specs are not comparable, so the spec is built once per run, passed down to every stage and
stored with every sample row (``measure_id`` + ``measure``) and in the space record; the sample store reads
back only rows of the spec asked for.

    spec = MeasureSpec(importance="l2", eval_batches=8)
    space = spec.space_of(task.base_model(), task.example_input())   # the one place a space is traced
    spec.label_id()        # what samples of this spec are filed under

Nothing here imports torch or Ray (the space is traced lazily), so configs check before any work starts.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlprune.errors import ConfigError

IMPORTANCES = ("l1", "l2", "taylor", "bn_scale", "random")
"""Channel criteria ``PruningSpace.apply`` knows (kept here so configs check without torch-pruning)."""
MAX_RATIO = 0.9
"""Default cap on any group's ratio: removing every channel of a group disconnects the network, and above
~0.9 a group of 16 channels keeps one, which no fine-tune recovers from."""
LABEL_FIELDS = ("importance", "round_to", "recalibrate", "bn_batches", "eval_batches", "label_steps")
"""The fields a sample label depends on (``finetune_lr`` too while ``label_steps`` > 0; the validation
fine-tune's steps and the latency settings only affect validation)."""
TASK_LABEL_STEPS: dict[str, int] = {"digits": 0, "fashion-mnist": 25}
"""Each built-in task's default ``label_steps``, chosen by issue 15's rule from the task's label-fidelity study
(``benchmarks/label_fidelity.py``; the table is in the README): the cheapest label whose Spearman with the
validated final accuracy is, at every MACs target, >= 0.8 or within 0.1 of the final recipe's own seed-to-seed
agreement there. A run whose default changes measures its samples again (the label is part of their id).
A test recomputes the choice from the committed study rows, so a default cannot drift from its data. Other
tasks and your own models get 0 (adaptive-BN accuracy, the cheapest label) until studied."""
MEASURE_CODE = ("measure/recipe.py", "space", "tasks")
"""The source a sample label depends on besides the spec (pruning, recalibration, data, scoring): a label
measured by other code is another label, so its hash is part of :meth:`MeasureSpec.label`."""


@dataclass(frozen=True)
class MeasureSpec:
    """How a ratio vector is turned into measured numbers, for every stage of a run.

    Raises:
        ConfigError: a field outside its range (the message names the field, the value and the fix).
    """

    importance: str = "l1"
    """Channel criterion: which channels of a group are removed (``l1``, ``l2``, ``taylor``, ``bn_scale``,
    ``random``)."""
    round_to: int = 1
    """Kept channels are rounded down to a multiple of this (hardware-friendly widths)."""
    max_ratio: float = MAX_RATIO
    """Largest ratio any group may take, in (0, 1)."""
    recalibrate: bool = True
    """Re-estimate BatchNorm statistics after pruning (without it un-fine-tuned accuracy is mostly noise)."""
    bn_batches: int = 4
    """Calibration batches the BatchNorm statistics are re-estimated on."""
    eval_batches: int | None = None
    """Calibration batches a sample label or an online/AMC-style evaluation is scored on (None: all)."""
    label_steps: int = 0
    """The label's fidelity (a run or a CLI verb on a built-in task starts from the task's studied default,
    :data:`TASK_LABEL_STEPS`): SGD steps of a short fine-tune of its own (train split, cosine-decayed from
    ``finetune_lr`` to 0 over these steps) that a sample label, an online round's or the AMC-style real
    evaluation gets after BN recalibration and before it is scored on the calibration split. 0 scores right
    after recalibration (adaptive-BN accuracy, the cheapest label); each step costs about one training step,
    so a label of k steps costs about k training steps more. ``benchmarks/label_fidelity.py`` measures which
    k ranks vectors like the accuracy after the validation fine-tune."""
    finetune_steps: int = 100
    """SGD steps on the train split before a validated candidate (or ``rlprune prune``) is scored; the
    same for every compared method."""
    finetune_lr: float = 0.01
    """Initial learning rate of that fine-tune (cosine-decayed to 0)."""
    latency_runs: int = 5
    """Timed batch-1 forwards per latency figure (the median is reported)."""

    def __post_init__(self):
        checks = [
            (self.importance in IMPORTANCES, "importance", f"one of {', '.join(IMPORTANCES)}"),
            (_is_int(self.round_to) and self.round_to >= 1, "round_to", "an integer >= 1"),
            (isinstance(self.max_ratio, int | float) and 0 < self.max_ratio < 1, "max_ratio",
             f"a fraction in (0, 1), e.g. {MAX_RATIO}"),
            (isinstance(self.recalibrate, bool), "recalibrate", "true or false"),
            (_is_int(self.bn_batches) and self.bn_batches >= 1, "bn_batches", "an integer >= 1"),
            (self.eval_batches is None or (_is_int(self.eval_batches) and self.eval_batches >= 1), "eval_batches",
             "an integer >= 1, or null for the whole calibration split"),
            (_is_int(self.label_steps) and self.label_steps >= 0, "label_steps",
             "an integer >= 0 (0: score right after BN recalibration; e.g. 25 for a short fine-tune per label)"),
            (_is_int(self.finetune_steps) and self.finetune_steps >= 0, "finetune_steps", "an integer >= 0"),
            (isinstance(self.finetune_lr, int | float) and self.finetune_lr > 0, "finetune_lr", "a number > 0"),
            (_is_int(self.latency_runs) and self.latency_runs >= 1, "latency_runs", "an integer >= 1"),
        ]
        for ok, name, fix in checks:
            if not ok:
                raise ConfigError(f"measure.{name}={getattr(self, name)!r} is invalid; use {fix}")

    # ------------------------------------------------------------------ identity
    def to_dict(self) -> dict:
        """Every field, JSON-ready (what Ray trials and stage markers carry)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | MeasureSpec | None) -> MeasureSpec:
        """The spec of a :meth:`to_dict` (or a YAML ``measure:`` section); None gives the defaults.

        Raises:
            ConfigError: an unknown key (the valid ones are listed) or an invalid value.
        """
        if isinstance(d, cls):
            return d
        d = dict(d or {})
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise ConfigError(f"unknown measure key(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
        return cls(**d)

    def label(self) -> dict:
        """What a sample label depends on, stored with every sample row: the :data:`LABEL_FIELDS`, the label
        fine-tune's ``finetune_lr`` when it has steps, and ``code``, the hash of the measuring source
        (:data:`MEASURE_CODE`), so a fix to that code never silently reuses labels the old code measured."""
        # The rate joins only with steps: a label of 0 steps never sees it, and must keep its id when the
        # validation fine-tune's rate changes.
        lr = {"finetune_lr": self.finetune_lr} if self.label_steps else {}
        return {**{k: getattr(self, k) for k in LABEL_FIELDS}, **lr, "code": source_hash(*MEASURE_CODE)}

    def label_json(self) -> str:
        """:meth:`label` as canonical JSON (the store's ``measure`` column)."""
        return json.dumps(self.label(), sort_keys=True)

    def label_id(self) -> str:
        """A 12-hex-digit hash of :meth:`label`: samples of one spec share it (the store's ``measure_id``)."""
        return hashlib.sha256(self.label_json().encode()).hexdigest()[:12]

    # ------------------------------------------------------------------ the pruning space
    def space_of(self, model, example_inputs):
        """Trace ``model`` into its ``PruningSpace`` with this spec's ``round_to`` and ``max_ratio``.

        The one place a pruning space is built, so no stage re-traces with other settings.

        Raises:
            TraceError: torch-pruning cannot trace the model.
        """
        from rlprune.space.pruning import PruningSpace  # deferred: torch-pruning is heavy

        return PruningSpace.from_model(model, example_inputs, round_to=self.round_to, max_ratio=self.max_ratio)

    def task_space(self, task):
        """:meth:`space_of` the task's trained base model (trained and cached on first use)."""
        return self.space_of(task.base_model(), task.example_input())


def task_measure_defaults(task) -> dict:
    """The ``MeasureSpec`` fields a task sets unless the user or the config does: a studied task's label.

    Args:
        task: a task name (``digits``), ``package.module:callable``, a ``Task`` or None.

    Returns:
        ``{"label_steps": k}`` for a task in :data:`TASK_LABEL_STEPS`, else ``{}`` (the spec's own defaults).
    """
    name = task if isinstance(task, str) else getattr(task, "name", None)
    return {"label_steps": TASK_LABEL_STEPS[name]} if name in TASK_LABEL_STEPS else {}


@functools.cache
def source_hash(*parts: str | Path) -> str:
    """A 12-hex-digit hash of source files: paths relative to the ``rlprune`` package, or absolute.

    A folder stands for every ``.py`` file below it. Used as the code version of sample labels, stage
    markers and validation rows (hashed once per process).
    """
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for part in parts:
        path = root / part
        for f in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


__all__ = ["IMPORTANCES", "LABEL_FIELDS", "MAX_RATIO", "MEASURE_CODE", "TASK_LABEL_STEPS", "MeasureSpec",
           "source_hash", "task_measure_defaults"]
