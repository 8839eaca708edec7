"""The sections of a run config, one frozen dataclass per pipeline stage, each checked on creation.

:class:`SampleStage` (real samples for the SPN), :class:`SPNStage` (its training), :class:`SweepStage` (the
reward-weighting sweep of RL searches), :class:`ValidateStage` (every method pruned, fine-tuned and scored for
real) and :class:`QuantizeStage` (the optional second stage). ``rlprune.pipeline.config.RunConfig`` holds one of
each; YAML sections of the same names map onto them. Nothing here imports Ray or torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlprune.errors import ConfigError

BASELINES = ("uniform", "larger_group", "depth", "global_l1", "random_search", "cem")


def check(cls_name: str, checks) -> None:
    """Raise one :class:`ConfigError` for the first failed ``(ok, field, value, fix)`` of ``checks``.

    Raises:
        ConfigError: naming ``cls_name.field``, the value and the fix.
    """
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
        check("sample", [
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
        check("spn", [
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
        check("sweep", [
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
        check("validate", [
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
        check("quantize", [
            (t is None or (isinstance(t, int | float) and not isinstance(t, bool) and 0 < t <= 1), "target_size", t,
             "a size ratio in (0, 1], e.g. 0.125 for about 4 bits per weight, or null to skip the stage"),
            (self.samples >= 8, "samples", self.samples, ">= 8 (a quarter is held out)"),
            (self.rl_iters >= 1, "rl_iters", self.rl_iters, ">= 1"),
            (self.rl_batch >= 1, "rl_batch", self.rl_batch, ">= 1"),
            (self.qat_steps is None or self.qat_steps >= 0, "qat_steps", self.qat_steps, ">= 0 or null"),
            (self.world_model in ("spn", "mlp"), "world_model", self.world_model, "spn or mlp"),
            (self.online_top >= 0, "online_top", self.online_top, ">= 0 (0: offline)"),
        ])
