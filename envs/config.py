"""``LayerPruningEnvConfig``: the env's settings, parsed once from RLlib's ``env_config`` dict.

    cfg = LayerPruningEnvConfig.from_dict({"model": "tests.arch_zoo:PlainFlatten",
                                           "input_shape": [3, 32, 32], "reward": my_fn})

Exactly one of ``task``, ``model`` (with ``input_shape``) or ``space`` says what is pruned. ``space`` is a
space record (``rlprune.samples.spaces.space_record``: ``features`` + ``cost_model``), so env copies on Ray
workers never re-trace a model. Everything is checked here; the env never calls ``config.get``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rlprune.errors import ConfigError
from rlprune.measure.spec import MeasureSpec

REWARD_SOURCES = ("spn", "real")
"""Named reward sources; any callable ``(ratios, info) -> acc_drop`` is accepted too."""
BUDGETS = ("macs", "params")
ENFORCEMENTS = ("wall", "penalty")
MODES = ("simultaneous", "sequential")


@dataclass(frozen=True)
class LayerPruningEnvConfig:
    """Settings of one :class:`~rlprune.envs.LayerPruningEnv`.

    The team reward of an episode is
    ``w_acc * (-acc_drop) + w_cost * (1 - max(budget_ratio, target)) - w_violation * max(0, budget_ratio - target)``
    with ``acc_drop`` in percentage points and ``budget_ratio`` = pruned / original MACs (or params).
    Compression past the target earns nothing: the cost terms are flat below the target (a vector pruned
    further competes on accuracy alone with one on the target) and fall by ``w_cost + w_violation`` per
    unit above it. So under the wall, which never misses, they are the constant ``w_cost * (1 - target)``;
    with ``enforce="penalty"`` and the defaults, missing the target by 0.01 costs 1.1 points of accuracy.
    ``target=1`` asks for no compression: the cost terms are 0 for every vector, only accuracy counts.
    With a target range every episode uses its own target in all of this.
    """

    task: Any = None
    """Task name or ``"package.module:callable"`` spec (or a ``Task`` instance): the base model to prune,
    and the data ``reward="real"`` evaluates on."""
    task_kwargs: Mapping[str, Any] | None = None
    """Keyword arguments for the task factory (e.g. ``{"data_dir": "~/data/cifar10", "arch": "resnet56"}``)."""
    model: Any = None
    """``"package.module:callable"`` returning an ``nn.Module`` (or the module itself, or a zero-argument
    callable): an arbitrary model to prune; needs ``input_shape``. Not usable with ``reward="real"``."""
    input_shape: tuple[int, ...] | None = None
    """``[C, H, W]`` of one example of ``model`` (the batch dimension is added)."""
    space: Any = None
    """A space record dict (``features``, ``cost_model``, optional ``group_ids`` and ``fingerprint``) or a
    ``PruningSpace``: what env copies use so they need not trace the model again."""
    reward: Any = "spn"
    """``"spn"`` (the SPN checkpoint in ``spn``), ``"real"`` (prune + BN recalibration + calibration-split
    accuracy: slow), or a callable ``(ratios, info) -> acc_drop`` in points (the env adds the cost terms),
    given as a Python object or, e.g. from YAML, as a ``"package.module:callable"`` spec."""
    spn: Any = None
    """SPN checkpoint path (or an ``SPN``, its ``state()`` dict, or a ``LocalSPN``); needed by ``"spn"``."""
    target: float | tuple[float, float] = 0.5
    """Wanted pruned/original ratio of ``budget``, in (0, 1]; or a range ``[lo, hi]`` (``lo < hi``): each episode
    then draws its target uniformly from it with the env's seeded RNG, and the target in every observation
    lets one policy learn every budget in the range."""
    budget: str = "macs"
    """What ``target`` constrains: ``"macs"`` or ``"params"``."""
    enforce: str = "wall"
    """``"wall"``: actions are raised (AMC-style) until the target is met, never overshooting it by more
    than channel rounding forces; ``"penalty"``: no clipping, the reward pays ``w_violation`` per unit of
    excess ratio."""
    mode: str = "simultaneous"
    """``"simultaneous"``: every agent acts in one step; ``"sequential"``: one agent per step, in forward
    order, each seeing the choices before it."""
    w_acc: float = 1.0
    """Reward per point of accuracy lost (negated)."""
    w_cost: float = 10.0
    """Reward per unit of compression ``1 - max(budget_ratio, target)``: nothing past the target, so under the
    wall (which never exceeds the target) the term is a constant and only penalty mode feels it."""
    w_violation: float = 100.0
    """Penalty per unit of ``budget_ratio`` above ``target``."""
    seed: int = 0
    """Seeds ``reset`` (when no seed is passed) and ``importance="random"`` in real evaluation."""
    max_ratio: float | None = None
    """Largest ratio an agent may choose, in (0, 1). ``None``: 0.9 when tracing, the space record's
    ``max_ratio`` otherwise (a given value must not exceed the record's)."""
    round_to: int | None = None
    """Kept channels are rounded down to a multiple of this when tracing (``None``: 1, or the record's)."""
    obs_all_groups: bool = False
    """Append every group's features and current ratio, plus a one-hot of the agent's own position, to
    each observation (what ``rlprune.policies.AttentionPPOModule`` attends over)."""
    measure: Any = None
    """How ``reward="real"`` measures a vector and how a model is traced: a ``MeasureSpec`` or its dict
    (None: the defaults). ``max_ratio``/``round_to`` above, when set, override the spec's."""

    # ------------------------------------------------------------------ parsing
    @classmethod
    def from_dict(cls, env_config: Mapping[str, Any] | LayerPruningEnvConfig | None) -> LayerPruningEnvConfig:
        """Parse RLlib's ``env_config`` (a dict or an ``EnvContext``).

        Args:
            env_config: keys named like this class's fields; an instance is returned unchanged.

        Returns:
            The validated config.

        Raises:
            ConfigError: an unknown key (the message lists the valid ones) or an invalid value.
        """
        if isinstance(env_config, cls):
            return env_config
        if env_config is None:
            env_config = {}
        if not isinstance(env_config, Mapping):
            raise ConfigError(f"env_config must be a dict, got {type(env_config).__name__}; pass e.g. "
                              "{'task': 'digits', 'spn': 'spn.pt'}")
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(env_config) - set(valid))
        if unknown:
            raise ConfigError(f"env_config key(s) {', '.join(map(repr, unknown))} unknown; valid keys: "
                              f"{', '.join(valid)}")
        kwargs = dict(env_config)
        if kwargs.get("input_shape") is not None:
            shape = kwargs["input_shape"]
            try:
                kwargs["input_shape"] = tuple(int(v) for v in shape)
            except (TypeError, ValueError) as e:
                raise ConfigError(f"input_shape={shape!r} is not a list of integers; pass [C, H, W], "
                                  "e.g. [3, 32, 32]") from e
        if isinstance(kwargs.get("target"), (list, tuple)):
            kwargs["target"] = tuple(kwargs["target"])  # YAML and JSON give a list
        return cls(**kwargs)

    @property
    def target_range(self) -> tuple[float, float]:
        """``(lo, hi)`` of the targets episodes use; ``(t, t)`` for a fixed target."""
        if isinstance(self.target, tuple):
            return float(self.target[0]), float(self.target[1])
        return float(self.target), float(self.target)

    @property
    def conditioned(self) -> bool:
        """Whether episodes draw their target from a range (a target-conditioned policy)."""
        lo, hi = self.target_range
        return hi > lo

    # ------------------------------------------------------------------ validation
    def __post_init__(self):
        sources = [k for k in ("task", "model", "space") if getattr(self, k) is not None]
        if len(sources) != 1:
            raise ConfigError(f"env_config names {sources or 'none'} of task/model/space; give exactly one: "
                              "'task' (e.g. 'digits'), 'model' with 'input_shape', or a 'space' record")
        if self.model is not None:
            if self.input_shape is None:
                raise ConfigError("input_shape=None but 'model' is given; pass the example shape [C, H, W], "
                                  "e.g. [3, 32, 32]")
            if not (isinstance(self.model, str) or callable(self.model)):
                raise ConfigError(f"model={self.model!r} must be a 'package.module:callable' spec or an "
                                  "nn.Module")
        if self.task_kwargs is not None and (self.task is None or not isinstance(self.task_kwargs, Mapping)):
            raise ConfigError(f"task_kwargs={self.task_kwargs!r} needs 'task' and must be a dict, e.g. "
                              "{'data_dir': '~/data/cifar10'}")
        if self.input_shape is not None and (not self.input_shape or min(self.input_shape) < 1):
            raise ConfigError(f"input_shape={list(self.input_shape)} must be positive sizes, e.g. [3, 32, 32]")
        if self.space is not None and isinstance(self.space, Mapping):
            missing = [k for k in ("features", "cost_model") if k not in self.space]
            if missing:
                raise ConfigError(f"space record lacks {', '.join(missing)}; build it with "
                                  "rlprune.samples.spaces.space_record or read it with "
                                  "rlprune.samples.spaces.read_spaces")
        self._check_reward()
        self._check_target()
        _check_choice("budget", self.budget, BUDGETS)
        _check_choice("enforce", self.enforce, ENFORCEMENTS)
        _check_choice("mode", self.mode, MODES)
        for name in ("w_acc", "w_cost", "w_violation"):
            _check_float(name, getattr(self, name), 0.0, math.inf, "a non-negative weight")
        if self.max_ratio is not None:
            _check_float("max_ratio", self.max_ratio, 0.0, 1.0, "e.g. 0.9", lo_open=True, hi_open=True)
        _check_int("seed", self.seed, 0)
        if self.round_to is not None:
            _check_int("round_to", self.round_to, 1)
        if not isinstance(self.obs_all_groups, bool):
            raise ConfigError(f"obs_all_groups={self.obs_all_groups!r} must be true or false")
        object.__setattr__(self, "measure", MeasureSpec.from_dict(self.measure))

    def _check_target(self):
        if isinstance(self.target, list):
            object.__setattr__(self, "target", tuple(self.target))
        if not isinstance(self.target, tuple):
            _check_float("target", self.target, 0.0, 1.0, "a pruned/original ratio such as 0.5, or a range "
                         "[lo, hi] such as [0.3, 0.8]", lo_open=True)
            return
        if len(self.target) != 2:
            raise ConfigError(f"target={list(self.target)!r} must be one ratio or a range [lo, hi], e.g. [0.3, 0.8]")
        for end, value in zip(("lo", "hi"), self.target, strict=True):
            _check_float(f"target {end}", value, 0.0, 1.0, "a pruned/original ratio such as 0.3", lo_open=True)
        if not self.target[0] < self.target[1]:
            raise ConfigError(f"target={list(self.target)!r} is an empty range; give [lo, hi] with lo < hi, or "
                              "one number for a fixed target")
        object.__setattr__(self, "target", (float(self.target[0]), float(self.target[1])))

    def _check_reward(self):
        if callable(self.reward) or (isinstance(self.reward, str) and ":" in self.reward):
            return
        if self.reward not in REWARD_SOURCES:
            raise ConfigError(f"reward={self.reward!r} is unknown; use 'spn', 'real', or a callable "
                              "(ratios, info) -> acc_drop (a Python object or a 'package.module:callable' spec)")
        if self.reward == "spn" and self.spn is None:
            raise ConfigError("spn=None but reward='spn'; pass the SPN checkpoint path as 'spn' (train one with "
                              "`rlprune spn train`), or set reward to 'real' or a callable")
        if self.reward == "real" and self.task is None:
            raise ConfigError("reward='real' needs data: set 'task' (e.g. 'digits' or 'pkg.mod:make_task') "
                              "instead of 'model'/'space'")


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is unknown; use one of {', '.join(map(repr, choices))}")


def _check_float(name: str, value, lo: float, hi: float, hint: str, lo_open=False, hi_open=False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ConfigError(f"{name}={value!r} must lie in {interval}: {hint}")


def _check_int(name: str, value, lo: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        raise ConfigError(f"{name}={value!r} must be an integer >= {lo}")


def resolve_model(spec: Any) -> Callable[[], Any]:
    """Turn the ``model`` setting into a zero-argument factory (import only when called).

    Args:
        spec: ``"package.module:callable"``, an ``nn.Module``, or a zero-argument callable.

    Returns:
        A callable returning the ``nn.Module``.

    Raises:
        ConfigError: the spec cannot be imported (from ``rlprune.tasks.load_callable``).
    """
    if isinstance(spec, str):
        from rlprune.tasks import load_callable  # deferred: pulls in torch and the task registry

        return load_callable(spec)
    if hasattr(spec, "named_modules"):  # an nn.Module instance (checked structurally: torch stays unimported)
        return lambda: spec
    return spec


@dataclass(frozen=True)
class SpaceView:
    """What the env needs of the model being pruned, however it was described.

    Attributes:
        features: ``(n_groups, n_features)`` float32 group features (``rlprune.space.pruning.FEATURE_NAMES``).
        cost_model: the exact ``rlprune.space.costmodel.CostModel``.
        group_ids: agent ids, ``group_00`` ... in forward order.
        fingerprint: the base model's ``rlprune.io.model_fingerprint`` (the SPN's key), if known.
        pruning_space: the traced ``PruningSpace`` (None when built from a record).
        task: the ``Task`` (only when ``task`` was configured).
    """

    features: Any
    cost_model: Any
    group_ids: tuple[str, ...]
    fingerprint: str | None = None
    pruning_space: Any = None
    task: Any = None


def resolve_space(cfg: LayerPruningEnvConfig) -> SpaceView:
    """Trace the configured model (or read the record) into a :class:`SpaceView`.

    A ``task`` uses its trained base model (trained and cached on first use), so the fingerprint matches
    the sample store and the SPN.

    Raises:
        ConfigError: an unloadable task/model, a record that does not parse, or ``max_ratio``/``round_to``
            that contradict the record's cost model.
        TraceError: torch-pruning cannot trace the model.
    """
    import numpy as np  # deferred with the rest: the config itself needs neither numpy nor torch

    from rlprune.space.costmodel import CostModel

    if cfg.space is not None and isinstance(cfg.space, Mapping):
        try:
            cm = CostModel.from_dict(cfg.space["cost_model"])
            features = np.asarray(cfg.space["features"], dtype=np.float32)
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"space record does not parse ({type(e).__name__}: {e}); build it with "
                              "rlprune.samples.spaces.space_record") from e
        if features.ndim != 2 or features.shape[0] != cm.n_groups:
            raise ConfigError(f"space record has features of shape {features.shape} for {cm.n_groups} groups; "
                              "rebuild it with rlprune.samples.spaces.space_record")
        _check_given_space(cfg, cm)
        ids = tuple(cfg.space.get("group_ids") or _default_ids(cm.n_groups))
        return SpaceView(features, cm, ids, cfg.space.get("fingerprint"))

    from rlprune.io import model_fingerprint
    from rlprune.space.pruning import PruningSpace

    task = None
    if cfg.space is not None:
        space = cfg.space
        if not isinstance(space, PruningSpace):
            raise ConfigError(f"space={type(space).__name__} must be a space record dict or a PruningSpace")
        _check_given_space(cfg, space.cost_model)
    else:
        if cfg.task is not None:
            from rlprune.tasks import Task, get_task

            task = cfg.task if isinstance(cfg.task, Task) else get_task(cfg.task, **(cfg.task_kwargs or {}))
            model, example = task.base_model(), task.example_input()
        else:
            import torch

            model = resolve_model(cfg.model)()
            if not isinstance(model, torch.nn.Module):
                raise ConfigError(f"model={cfg.model!r} returned a {type(model).__name__}, not an nn.Module")
            example = torch.zeros(1, *cfg.input_shape)
        spec = dataclasses.replace(cfg.measure, round_to=cfg.round_to or cfg.measure.round_to,
                                   max_ratio=cfg.max_ratio or cfg.measure.max_ratio)
        space = spec.space_of(model, example)
    ids = tuple(g.id for g in space.groups)
    return SpaceView(space.features(), space.cost_model, ids, model_fingerprint(space.model), space, task)


def _default_ids(n: int) -> list[str]:
    return [f"group_{i:02d}" for i in range(n)]


def _check_given_space(cfg: LayerPruningEnvConfig, cm) -> None:
    """A space built elsewhere fixes ``round_to`` and caps ``max_ratio``; contradicting settings are errors."""
    if cfg.max_ratio is not None and cfg.max_ratio > cm.max_ratio + 1e-12:
        raise ConfigError(f"max_ratio={cfg.max_ratio} exceeds the given space's {cm.max_ratio}; use a value "
                          f"<= {cm.max_ratio} or re-trace the model")
    if cfg.round_to is not None and cfg.round_to != cm.round_to:
        raise ConfigError(f"round_to={cfg.round_to} differs from the given space's {cm.round_to}; drop "
                          "'round_to' or re-trace the model")
