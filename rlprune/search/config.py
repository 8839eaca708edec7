"""``SearchConfig``: the settings of one RL search (``rlprune search`` flags map onto it one to one)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from rlprune.errors import ConfigError
from rlprune.measure.spec import MeasureSpec

RESUME_KEYS = ("task", "reward", "target", "budget", "mode", "enforce", "attention", "w_acc", "w_cost",
               "w_violation", "seed", "measure")
"""Settings that must match to resume a search in the same folder; the others (iters, online cadence) may change."""


def _ratio(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and 0 < x <= 1


def _valid_target(t) -> bool:
    if isinstance(t, tuple):
        return len(t) == 2 and all(_ratio(x) for x in t) and t[0] < t[1]
    return _ratio(t)


@dataclass(frozen=True)
class SearchConfig:
    """One RL search (the ``rlprune search`` flags map onto it one to one)."""

    spn: str | None
    """Initial SPN checkpoint (``rlprune spn train``); unused with ``reward="real"``."""
    out: str
    """Folder for the checkpoint, the world model's state and the result."""
    reward: str = "spn"
    """Where the accuracy term comes from: ``"spn"`` (the world model) or ``"real"`` (prune and evaluate
    every episode: the AMC-style search, kept for the speed comparison)."""
    task: str = "digits"
    """Task name or ``package.module:callable``."""
    task_kwargs: dict = field(default_factory=dict)
    """Extra task arguments (e.g. ``data_dir`` for cifar10)."""
    target: float | tuple[float, float] = 0.5
    """Pruned/original ratio of ``budget`` to reach; or a range ``(lo, hi)``: one target-conditioned policy is
    trained for every target in it (each episode draws its own), its candidates are kept per target bin and
    it is saved as a policy folder that answers any target in the range (``rlprune.policy``)."""
    budget: str = "macs"
    """``"macs"`` or ``"params"``."""
    mode: str = "simultaneous"
    """Env mode: ``"simultaneous"`` or ``"sequential"``."""
    enforce: str = "wall"
    """Budget enforcement: ``"wall"`` (AMC-style) or ``"penalty"``."""
    iters: int = 20
    """Training iterations in total (a resumed search runs only the missing ones)."""
    train_batch: int = 256
    """Env steps per iteration."""
    attention: bool = False
    """Use the RLModule whose agents attend over every group's features."""
    w_acc: float = 1.0
    """Reward weight of the (negative) predicted accuracy drop, per point."""
    w_cost: float = 10.0
    """Reward weight of the compression ``1 - budget_ratio``."""
    w_violation: float = 100.0
    """Reward weight of the target violation (penalty mode)."""
    online: bool = True
    """Evaluate top candidates for real and fine-tune the SPN during the search."""
    online_every: int = 5
    """Iterations between two online rounds."""
    online_top: int = 4
    """Candidates evaluated for real per round."""
    online_steps: int = 100
    """SPN fine-tuning steps per round."""
    ucb_beta: float = 1.0
    """Optimism: candidates are ranked by reward + beta x w_acc x predicted std."""
    workers: int = 2
    """Ray tasks evaluating candidates in parallel."""
    samples: str | None = None
    """Sample store for the real evaluations (default ``out/samples``)."""
    measure: MeasureSpec = field(default_factory=MeasureSpec)
    """How real evaluations are measured and the space traced: the run's spec, the one its samples used
    (a dict is converted)."""
    seed: int = 0
    """Seeds the env, the policy and the task."""

    def __post_init__(self):
        object.__setattr__(self, "measure", MeasureSpec.from_dict(self.measure))
        if isinstance(self.target, list):
            object.__setattr__(self, "target", tuple(self.target))
        checks = [
            (_valid_target(self.target), "target", "a ratio in (0, 1], e.g. 0.5, or a range (lo, hi) with "
             "0 < lo < hi <= 1, e.g. (0.3, 0.8)"),
            (self.budget in ("macs", "params"), "budget", "'macs' or 'params'"),
            (self.mode in ("simultaneous", "sequential"), "mode", "'simultaneous' or 'sequential'"),
            (self.enforce in ("wall", "penalty"), "enforce", "'wall' or 'penalty'"),
            (self.iters >= 1, "iters", ">= 1"),
            (self.train_batch >= 8, "train_batch", ">= 8 env steps"),
            (self.online_every >= 1, "online_every", ">= 1"),
            (self.online_top >= 1, "online_top", ">= 1"),
            (self.online_steps >= 1, "online_steps", ">= 1"),
            (self.ucb_beta >= 0, "ucb_beta", ">= 0"),
            (self.workers >= 1, "workers", ">= 1"),
            (self.reward in ("spn", "real"), "reward", "'spn' or 'real'"),
            (self.reward == "real" or bool(self.spn), "spn", "a checkpoint path (rlprune spn train)"),
            (self.reward == "spn" or not self.online, "online", "online=False with reward='real' (nothing to refine)"),
        ]
        for ok, name, fix in checks:
            if not ok:
                raise ConfigError(f"search {name}={getattr(self, name)!r} is invalid; use {fix}")

    @property
    def conditioned(self) -> bool:
        """Whether this search trains one policy over a target range."""
        return isinstance(self.target, tuple)

    @property
    def target_range(self) -> tuple[float, float]:
        """``(lo, hi)``; ``(t, t)`` for a fixed target."""
        return (float(self.target[0]), float(self.target[1])) if self.conditioned else (self.target, self.target)

    @property
    def sample_dir(self) -> Path:
        return Path(self.samples) if self.samples else Path(self.out) / "samples"


__all__ = ["RESUME_KEYS", "SearchConfig"]
