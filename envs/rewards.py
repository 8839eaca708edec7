"""Reward sources: where the env's accuracy-drop term comes from.

A source answers one question: *how many accuracy points does pruning with these ratios cost?* The env
adds the exact cost terms itself (:func:`team_reward`), so every source is scored on the same budget::

    source(achieved_ratios, info) -> (acc_drop, std)      # points; std is NaN when unknown

    CallableSource   any user function (ratios, info) -> acc_drop           cheap, no SPN needed
    SPNSource        a local SPN copy, weights pushed by the world model     cheap (~1 ms)
    RealSource       prune + BN recalibration + calibration-split accuracy   slow (the AMC-style baseline)

``cheap`` sources are also asked about partial vectors in sequential mode (the "acc_drop so far" part of
the observation); the real one is not, since that would multiply the number of real evaluations by the
number of groups.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from rlprune.envs.config import LayerPruningEnvConfig, SpaceView
from rlprune.errors import ConfigError


def team_reward(acc_drop: float, budget_ratio: float, cfg: LayerPruningEnvConfig,
                target: float | None = None) -> tuple[float, float]:
    """The shared reward of one finished episode (formula in :class:`LayerPruningEnvConfig`).

    ``w_acc * (-acc_drop) + w_cost * (1 - max(budget_ratio, target)) - w_violation * violation``: flat in
    ``budget_ratio`` below the target, falling above it.

    Args:
        acc_drop: accuracy lost, in percentage points (negative if pruning helped).
        budget_ratio: pruned / original MACs (or params, per ``cfg.budget``).
        cfg: supplies the weights (and ``target`` when it is fixed).
        target: the episode's target; required when ``cfg.target`` is a range.

    Returns:
        ``(reward, violation)`` where ``violation = max(0, budget_ratio - target)``.

    Raises:
        ConfigError: no ``target`` given while ``cfg.target`` is a range.
    """
    if target is None:
        if cfg.conditioned:
            raise ConfigError(f"team_reward needs the episode's target: the config's target is the range "
                              f"{list(cfg.target)}; pass target=...")
        target = cfg.target_range[0]
    violation = max(0.0, budget_ratio - target)
    # Compression counts up to the target and no further: a vector pruned past it scores as if it sat on
    # the target, so the only thing extra pruning changes is the accuracy term (it can only lose). Flat
    # below, ``w_cost + w_violation`` per unit above; ``target=1`` leaves no pruning pressure at all.
    cost = cfg.w_cost * (1.0 - max(budget_ratio, target))
    reward = cfg.w_acc * (-acc_drop) + cost - cfg.w_violation * violation
    return float(reward), float(violation)


class AccDropSource:
    """Protocol of a reward source (subclass and implement ``__call__``).

    Attributes:
        cheap: whether the env may also query partial ratio vectors (sequential observations).
        version: version of the predictor's weights (None for sources without weights).
    """

    cheap: bool = True
    version: int | None = None

    def __call__(self, ratios: np.ndarray, info: dict[str, Any]) -> tuple[float, float]:
        """Predict or measure the accuracy drop.

        Args:
            ratios: ``(n_groups,)`` achieved ratios (after the wall and channel rounding).
            info: what the env knows about the vector: ``ratios`` (as enforced, before rounding),
                ``macs_ratio``, ``params_ratio``, ``target``, ``budget``, ``partial`` (True for the choices
                so far in sequential mode, undecided groups at 0).

        Returns:
            ``(acc_drop, std)`` in points; ``std`` is NaN when the source has no uncertainty.
        """
        raise NotImplementedError


class CallableSource(AccDropSource):
    """Wraps a user function ``fn(ratios, info) -> acc_drop`` (points): the env adds the cost terms."""

    def __init__(self, fn: Callable[[np.ndarray, dict], float]):
        self.fn = fn

    def __call__(self, ratios, info):
        value = self.fn(ratios, info)
        try:
            value = float(value)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"reward callable {_name(self.fn)} returned {value!r}; it must return the "
                              "predicted accuracy drop in points as a float") from e
        if not math.isfinite(value):
            raise ConfigError(f"reward callable {_name(self.fn)} returned {value}; return a finite accuracy drop")
        return value, math.nan


class SPNSource(AccDropSource):
    """A local copy of the SPN world model (``rlprune.spn.local.LocalSPN``), updated by pushed weights.

    Args:
        spn: checkpoint path, ``SPN``, ``SPN.state()`` dict, or ``LocalSPN``.
        view: the pruned model's space; its features register the model with the SPN when the SPN has not
            seen it (zero-shot, transformer SPNs only).
    """

    def __init__(self, spn, view: SpaceView):
        from rlprune.spn.local import LocalSPN  # deferred: only this source needs the SPN code

        self.local = spn if isinstance(spn, LocalSPN) else LocalSPN(spn)
        self.view = view
        self.fingerprint = self._register()

    @property
    def version(self) -> int:
        return self.local.version

    def _register(self) -> str:
        spn = self.local.spn
        fp = self.view.fingerprint
        if fp is None:
            if len(spn.known) != 1:
                raise ConfigError(f"the space has no fingerprint and the SPN knows {len(spn.known)} models; give "
                                  "a 'space' record with a 'fingerprint' or a 'task'")
            fp = spn.known[0]
        if fp not in spn.known:
            spn.add_model(fp, self.view.features)
        if spn.n_groups(fp) != len(self.view.features):
            raise ConfigError(f"the SPN's model {fp} has {spn.n_groups(fp)} groups but the env's space has "
                              f"{len(self.view.features)}; use the space the SPN was trained on")
        return fp

    def set_state(self, state: dict, version: int) -> bool:
        """Adopt newer SPN weights (``SPN.state()``); older or equal versions are ignored.

        Returns:
            True if the weights were replaced.
        """
        if not self.local.set_weights(state, version):
            return False
        self._register()  # a fresh SPN may not know a zero-shot model yet
        return True

    def __call__(self, ratios, info):
        mean, std = spn_predict(self.local, ratios, self.fingerprint)
        return mean, std


def spn_predict(local, ratios: np.ndarray, fingerprint: str) -> tuple[float, float]:
    """Adapter to the SPN API: one vector of achieved ratios -> (acc_drop mean, ensemble std) in points.

    Kept apart so a change of ``rlprune.spn.local.LocalSPN.predict`` touches one function.
    """
    mean, std = local.predict(np.asarray(ratios, dtype=np.float32)[None, :], fingerprint, "acc_drop")
    return float(mean[0]), float(std[0])


class RealSource(AccDropSource):
    """Really prune a copy of the base model, recalibrate BatchNorm and score the calibration split.

    One call takes ~0.1 s on digits and seconds on ResNet-56: this is the AMC-style baseline the SPN
    is measured against, not something to train a policy with for long. Each call's full sample row
    (``rlprune.samples.store.SAMPLE_COLUMNS``) is left in ``info["sample"]`` so a search can store it.

    Args:
        view: the space, with ``task`` and ``pruning_space`` set.
        cfg: supplies ``measure``, the run's ``MeasureSpec`` (the same one the samples were measured with).
    """

    cheap = False

    def __init__(self, view: SpaceView, cfg: LayerPruningEnvConfig):
        if view.task is None or view.pruning_space is None:
            raise ConfigError("reward='real' needs a task; set 'task' in env_config")
        self.view = view
        self.spec = cfg.measure
        self._baseline = None  # measured on first use: building an env should stay cheap

    def __call__(self, ratios, info):
        from rlprune.measure.recipe import evaluate_ratios, measure_baseline  # deferred: pulls in pandas/pyarrow

        task, space = self.view.task, self.view.pruning_space
        if self._baseline is None:
            self._baseline = measure_baseline(task, space.model, self.spec)
        # The enforced (pre-rounding) ratios: evaluate_ratios rounds them itself and stores both.
        row = evaluate_ratios(task, space, info["ratios"], self._baseline, self.spec, sampler="env", worker="env")
        info["sample"] = row
        return float(row["acc_drop"]), math.nan


def make_source(cfg: LayerPruningEnvConfig, view: SpaceView) -> AccDropSource:
    """Build the reward source named by ``cfg.reward``.

    Raises:
        ConfigError: an unloadable ``module:callable`` spec, or ``real`` without a task.
        CheckpointError: a missing or unusable SPN checkpoint.
    """
    if callable(cfg.reward):
        return CallableSource(cfg.reward)
    if ":" in cfg.reward:
        from rlprune.tasks import load_callable  # deferred: the task registry imports torch

        return CallableSource(load_callable(cfg.reward))
    if cfg.reward == "spn":
        return SPNSource(cfg.spn, view)
    return RealSource(view, cfg)


def _name(fn) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)
