"""``PruningGame``: the pruning episode itself (agents, observations, the wall, the reward), without RLlib.

``LayerPruningEnv`` is this class plus RLlib's ``MultiAgentEnv`` base; the game alone imports neither Ray
nor RLlib, so a trained policy can be replayed exactly as it was trained (``rlprune.policy``) in a process
that never imports Ray. Everything about an episode lives here, once.

Observation of agent ``g`` (float32, clipped to +-``OBS_BOUND``; :class:`ObsLayout` gives the slices)::

    [ features_g (F) | target, macs_ratio, params_ratio, acc_drop/100, progress, ratio_lower, ratio_upper, budget ]
    + with obs_all_groups:  [ G tokens of (features_j, ratio_j, decided_j) | one-hot of g (G) ]

``target`` is the episode's target (drawn per episode when the config gives a range) and ``budget`` says
what it constrains (0: MACs, 1: params), so one policy can be conditioned on both. The "so far" entries
describe the vector chosen so far with undecided groups at 0: at reset (simultaneous mode) that is the
unpruned model. ``ratio_lower`` is AMC's bound: the smallest ratio of ``g`` that keeps the target reachable
with every undecided group at ``max_ratio``; ``ratio_upper`` the smallest ratio that meets the target alone
(undecided groups at 0), ``max_ratio`` if none does.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from rlprune.envs.config import LayerPruningEnvConfig, resolve_space
from rlprune.envs.rewards import make_source, team_reward
from rlprune.errors import ConfigError

CONTEXT_NAMES = ("target", "macs_ratio", "params_ratio", "acc_drop", "progress", "ratio_lower", "ratio_upper",
                 "budget")
"""The global-context entries of every observation, after the agent's own features."""
TOKEN_EXTRA = ("ratio", "decided")
"""Appended to each group's features in the all-groups block."""
FINISHED_KEPT = 4096
"""Finished-episode summaries an env keeps until :meth:`PruningGame.drain_finished` takes them."""
OBS_BOUND = 10.0
"""Observation box bound; features and context lie in about [-1, 1.2], so clipping never bites in practice."""
_ACC_SCALE = 100.0  # acc_drop is in points: /100 brings it to the scale of the other entries
_FIT_TOL = 1e-12  # float slack when comparing a cost ratio with the target
_BUDGET_CODE = {"macs": 0.0, "params": 1.0}


@dataclass(frozen=True)
class ObsLayout:
    """Where each part of an observation lives (shared by the env and the attention module)."""

    n_groups: int
    n_features: int
    all_groups: bool = False

    @property
    def n_context(self) -> int:
        return len(CONTEXT_NAMES)

    @property
    def token_dim(self) -> int:
        return self.n_features + len(TOKEN_EXTRA)

    @property
    def size(self) -> int:
        base = self.n_features + self.n_context
        return base + (self.n_groups * (self.token_dim + 1) if self.all_groups else 0)

    def model_config(self) -> dict:
        """The layout as ``model_config`` entries for ``rlprune.policies.AttentionPPOModule``."""
        return {"n_groups": self.n_groups, "n_features": self.n_features, "n_context": self.n_context,
                "token_dim": self.token_dim}


class PruningGame(gym.Env):
    """The multi-agent pruning episode; see :class:`~rlprune.envs.LayerPruningEnv` for the whole contract.

    Args:
        config: an ``env_config`` dict (or ``EnvContext``) or a ``LayerPruningEnvConfig``.

    Raises:
        ConfigError: a bad setting, or a target (the low end of a range) unreachable even with every group
            at ``max_ratio``.
    """

    metadata = {"render_modes": []}

    def __init__(self, config=None):
        super().__init__()
        self.config = cfg = LayerPruningEnvConfig.from_dict(config)
        self.view = resolve_space(cfg)
        self.cost_model = self.view.cost_model
        self.features = np.asarray(self.view.features, dtype=np.float32)
        self.n_groups = len(self.features)
        self.max_ratio = float(cfg.max_ratio or self.cost_model.max_ratio)
        self.possible_agents = list(self.view.group_ids)
        self.agents = list(self.possible_agents)
        self._index = {aid: i for i, aid in enumerate(self.possible_agents)}
        self._top = np.full(self.n_groups, self.max_ratio)
        self.target_range = cfg.target_range
        self.target = self.target_range[0]  # the episode's target; a range draws a new one at each reset
        self._check_reachable(self.target_range[0], "target")
        self._candidates = [np.arange(math.floor(self.max_ratio * c + 1e-9) + 1) / c
                            for c in np.asarray(self.cost_model.channels, dtype=np.float64)]
        self.layout = ObsLayout(self.n_groups, self.features.shape[1], cfg.obs_all_groups)
        box = gym.spaces.Box(-OBS_BOUND, OBS_BOUND, (self.layout.size,), np.float32)
        act = gym.spaces.Box(0.0, self.max_ratio, (1,), np.float32)
        self.observation_spaces = {aid: box for aid in self.possible_agents}
        self.action_spaces = {aid: act for aid in self.possible_agents}
        self.source = make_source(cfg, self.view)
        self._all = np.arange(self.n_groups)
        self._eye = np.eye(self.n_groups, dtype=np.float32)
        # With nothing decided the bounds depend on the target only: cached per target (simultaneous mode).
        self._static: dict[float, np.ndarray] = {}
        self._seeded = False
        self._done = True
        self._ratios = self._requested = np.zeros(self.n_groups)
        self._decided = np.zeros(self.n_groups, dtype=bool)
        self._t = 0
        self._so_far = (1.0, 1.0, 0.0)  # params_ratio, macs_ratio, acc_drop of the choices so far
        self._bounds_now = (0.0, self.max_ratio)
        # Finished episodes' summaries, so a search can read candidates off the env runners (bounded: an
        # undrained env must not grow without limit).
        self.finished: collections.deque[dict] = collections.deque(maxlen=FINISHED_KEPT)
        self.reward_calls = 0  # calls of the reward source (SPN predictions, or real evaluations) not yet drained

    # ------------------------------------------------------------------ gymnasium / RLlib API
    def reset(self, *, seed=None, options=None):
        """Start an episode.

        Args:
            seed: seeds ``self.np_random``; the first reset falls back to ``config.seed``.
            options: ``{"target": t}`` fixes this episode's target (any reachable ratio in (0, 1]); without
                it a fixed target is used as configured and a range draws one uniformly from
                ``self.np_random``.

        Returns:
            ``(obs, infos)``: every agent in simultaneous mode, ``group_00`` only in sequential mode.

        Raises:
            ValueError: an unknown option, or a target that is not a reachable ratio in (0, 1].
        """
        if seed is None and not self._seeded:
            seed = self.config.seed
        super().reset(seed=seed, options=options)
        self._seeded = True
        self.target = self._episode_target(options)
        self._done = False
        self._t = 0
        self._ratios = np.zeros(self.n_groups)
        self._requested = np.zeros(self.n_groups)
        self._decided = np.zeros(self.n_groups, dtype=bool)
        self._so_far = (1.0, 1.0, 0.0)
        if self.config.mode == "simultaneous":
            obs = self._observe(self._all, self._static_bounds())
        else:
            self._bounds_now = self._bounds(0, self._ratios, np.ones(self.n_groups, dtype=bool))
            obs = self._observe([0], [self._bounds_now])
        return obs, {aid: {} for aid in obs}

    def step(self, action_dict):
        """Apply the acting agents' ratios.

        Args:
            action_dict: ``{agent_id: ratio}`` (array of shape (1,) or a scalar) for every agent that got an
                observation from the previous call.

        Returns:
            ``(obs, rewards, terminateds, truncateds, infos)`` dicts with ``"__all__"`` in the two flag dicts.

        Raises:
            RuntimeError: ``step`` before ``reset`` or after the episode ended.
            ValueError: an acting agent's action is missing or not finite.
        """
        if self._done:
            raise RuntimeError(f"{type(self).__name__}.step() called on a finished episode; call reset() first")
        if self.config.mode == "simultaneous":
            requested = np.array([self._action(action_dict, aid) for aid in self.possible_agents])
            return self._finish(requested)
        i = self._t
        aid = self.possible_agents[i]
        self._requested[i] = self._ratios[i] = self._action(action_dict, aid)
        if self.config.enforce == "wall":
            # AMC: never let an agent make the target unreachable for the agents after it.
            self._ratios[i] = max(self._ratios[i], self._bounds_now[0])
        self._decided[i] = True
        self._t += 1
        if self._t == self.n_groups:
            return self._finish(self._requested.copy(), self._ratios.copy())
        self._so_far = self._measure(self._ratios, partial=True)
        nxt = self.possible_agents[self._t]
        self._bounds_now = self._bounds(self._t, self._ratios, ~self._decided)
        obs = self._observe([self._t], [self._bounds_now])
        return obs, {aid: 0.0}, {"__all__": False}, {"__all__": False}, {nxt: {}}

    # ------------------------------------------------------------------ SPN weights (world-model sync)
    def set_spn_state(self, state: dict, version: int) -> bool:
        """Adopt newer SPN weights pushed by an orchestrator (e.g. via ``foreach_env_runner``).

        Args:
            state: ``rlprune.spn.SPN.state()`` of the world model.
            version: its version; equal or older versions are ignored.

        Returns:
            True if the env's SPN copy was replaced.

        Raises:
            ConfigError: the env's reward source is not ``"spn"``.
        """
        if not hasattr(self.source, "set_state"):
            raise ConfigError(f"set_spn_state needs reward='spn'; this env uses reward={self.config.reward!r}")
        return self.source.set_state(state, version)

    def drain_finished(self) -> list[dict]:
        """Hand over (and forget) the summaries of the episodes finished since the last call.

        Returns:
            One dict per episode: ``achieved`` ratios, ``target``, ``macs_ratio``, ``params_ratio``,
            ``acc_drop``, ``acc_drop_std``, ``reward``, ``spn_version``, ... (the final ``infos`` entry).
        """
        out = list(self.finished)
        self.finished.clear()
        return out

    def drain_reward_calls(self) -> int:
        """Hand over (and reset) how often the reward source was called since the last call: a search's
        budget is counted, not estimated from its episodes (a sequential episode may call it per step)."""
        n, self.reward_calls = self.reward_calls, 0
        return n

    @property
    def spn_version(self) -> int | None:
        """Version of the SPN weights in use (None for other reward sources)."""
        return self.source.version

    # ------------------------------------------------------------------ budget enforcement
    def budget_ratios(self, R) -> np.ndarray:
        """Pruned/original ``budget`` (MACs or params) of each row of an ``(N, n_groups)`` ratio matrix."""
        return self.cost_model.budget_ratio(R, self.config.budget)

    def enforce_wall(self, ratios, target: float | None = None) -> np.ndarray:
        """Raise a vector by the least amount that meets the target (``CostModel.project_to_budget``).

        A vector that already meets the target is returned unchanged; every ratio stays >= its request, and
        no raised group could be one channel step lower, so only channel rounding leaves slack.

        Args:
            ratios: ``(n_groups,)`` requested ratios in ``[0, max_ratio]``.
            target: the target to meet (None: the current episode's).

        Returns:
            The enforced ratios.
        """
        return self.cost_model.project_to_budget(np.asarray(ratios, dtype=np.float64),
                                                 self.target if target is None else target, self.config.budget)

    def _episode_target(self, options) -> float:
        options = dict(options or {})
        unknown = sorted(set(options) - {"target"})
        if unknown:
            raise ValueError(f"reset options {unknown} unknown; the only option is 'target', e.g. "
                             "reset(options={'target': 0.45})")
        lo, hi = self.target_range
        if "target" not in options:
            return float(self.np_random.uniform(lo, hi)) if hi > lo else lo
        t = options["target"]
        if isinstance(t, bool) or not isinstance(t, (int, float, np.floating)) or not 0 < float(t) <= 1:
            raise ValueError(f"reset option target={t!r} must be a ratio in (0, 1], e.g. 0.45")
        self._check_reachable(float(t), "reset option target", error=ValueError)
        return float(t)

    def _static_bounds(self) -> np.ndarray:
        got = self._static.get(self.target)
        if got is None:
            zeros, free = np.zeros(self.n_groups), np.ones(self.n_groups, dtype=bool)
            got = np.array([self._bounds(i, zeros, free) for i in range(self.n_groups)])
            if len(self._static) >= 64:  # a range draws a new target per episode: keep the cache small
                self._static.clear()
            self._static[self.target] = got
        return got

    def _bounds(self, i: int, ratios: np.ndarray, free: np.ndarray) -> tuple[float, float]:
        """AMC bounds of group ``i``'s ratio given the fixed entries of ``ratios`` (``free`` ones vary).

        Returns:
            ``(lower, upper)``: the least ratio keeping the episode's target reachable with the free groups
            at ``max_ratio``, and the least ratio meeting it with them at 0 (``max_ratio`` if none does).
        """
        cand = self._candidates[i]  # exact breakpoints k / C of floor(ratio * C)
        out = []
        for fill in (self._top, np.zeros(self.n_groups)):
            rows = np.where(free, fill, ratios)[None, :].repeat(len(cand), 0)
            rows[:, i] = cand
            fits = self.budget_ratios(rows) <= self.target + _FIT_TOL
            out.append(float(cand[np.argmax(fits)]) if fits.any() else self.max_ratio)
        return out[0], out[1]

    def _check_reachable(self, target: float, name: str, error=ConfigError) -> None:
        floor = self.budget_ratios(self._top)[0]
        if floor > target + _FIT_TOL:
            raise error(f"{name}={target} is unreachable: every group at max_ratio={self.max_ratio:g} keeps "
                        f"{floor:.4f} of the {self.config.budget}; use a target >= {math.ceil(floor * 1e4) / 1e4} "
                        "or a larger max_ratio")

    # ------------------------------------------------------------------ helpers
    def _action(self, action_dict, aid: str) -> float:
        if aid not in action_dict:
            raise ValueError(f"no action for {aid}; this step expects actions for "
                             f"{self.possible_agents if self.config.mode == 'simultaneous' else [aid]}")
        value = float(np.asarray(action_dict[aid], dtype=np.float64).reshape(-1)[0])
        if not math.isfinite(value):
            raise ValueError(f"action {value} for {aid} is not finite")
        return min(max(value, 0.0), self.max_ratio)  # RLlib may sample outside the box

    def _measure(self, ratios: np.ndarray, partial: bool, info: dict | None = None) -> tuple[float, float, float]:
        """(params_ratio, macs_ratio, acc_drop) of a vector; acc_drop of partial vectors only if cheap."""
        params, macs = self.cost_model.cost_batch(ratios[None, :], validate=False)
        p, m = float(params[0] / self.cost_model.base[0]), float(macs[0] / self.cost_model.base[1])
        if partial and not self.source.cheap:
            return p, m, 0.0
        info = info if info is not None else {}
        info.update(ratios=ratios.tolist(), params_ratio=p, macs_ratio=m, target=self.target,
                    budget=self.config.budget, partial=partial)
        info["achieved"] = achieved = self.cost_model.achieved(ratios)
        acc_drop, std = self.source(achieved, info)
        self.reward_calls += 1
        info["acc_drop_std"] = std
        return p, m, acc_drop

    def _observe(self, indices, bounds) -> dict[str, np.ndarray]:
        """Observations of the agents at ``indices``, whose AMC bounds are ``bounds`` (one pair each)."""
        p, m, acc = self._so_far
        progress = self._t / self.n_groups if self.config.mode == "sequential" else float(self._done)
        n = len(indices)
        ctx = np.empty((n, len(CONTEXT_NAMES)), dtype=np.float32)
        ctx[:, :5] = (self.target, m, p, acc / _ACC_SCALE, progress)
        ctx[:, 5:7] = bounds
        ctx[:, 7] = _BUDGET_CODE[self.config.budget]
        parts = [self.features[indices], ctx]
        if self.layout.all_groups:
            tokens = np.concatenate([self.features, self._ratios[:, None], self._decided[:, None]], axis=1)
            parts += [np.broadcast_to(tokens.reshape(1, -1), (n, tokens.size)), self._eye[indices]]
        rows = np.clip(np.concatenate(parts, axis=1), -OBS_BOUND, OBS_BOUND).astype(np.float32, copy=False)
        return {self.possible_agents[i]: row for i, row in zip(indices, rows, strict=True)}

    def _finish(self, requested: np.ndarray, enforced: np.ndarray | None = None):
        """End the episode: enforce the budget, score the vector, reward every agent."""
        if enforced is None:  # simultaneous
            enforced = self.enforce_wall(requested) if self.config.enforce == "wall" else requested
        info = {}
        p, m, acc = self._measure(enforced, partial=False, info=info)
        budget_ratio = p if self.config.budget == "params" else m
        reward, violation = team_reward(acc, budget_ratio, self.config, target=self.target)
        summary = {
            "requested": requested.tolist(),
            "ratios": enforced.tolist(),
            "achieved": info["achieved"].tolist(),
            "target": self.target,
            "macs_ratio": m,
            "params_ratio": p,
            "budget_ratio": budget_ratio,
            "violation": violation,
            "acc_drop": acc,
            "acc_drop_std": info["acc_drop_std"],
            "reward": reward,
            "spn_version": self.source.version,
        }
        if "sample" in info:
            summary["sample"] = info["sample"]
        self.finished.append(summary)
        self._ratios = enforced.copy()
        self._decided[:] = True
        self._so_far = (p, m, acc)
        self._done = True
        self._t = self.n_groups
        obs = self._observe(self._all, np.zeros((self.n_groups, 2)))
        ids = self.possible_agents
        return (obs, dict.fromkeys(ids, reward), {**dict.fromkeys(ids, True), "__all__": True},
                {**dict.fromkeys(ids, False), "__all__": False}, dict.fromkeys(ids, summary))
