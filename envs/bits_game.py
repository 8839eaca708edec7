"""``BitsGame``: the bit-width episode (agents, observations, the size wall, the reward), without RLlib.

``rlprune.envs.bits_env.LayerBitsEnv`` is this class plus RLlib's ``MultiAgentEnv`` base, as
``LayerPruningEnv`` is ``PruningGame`` plus that base; the game imports neither Ray nor RLlib.

Observation of agent ``l`` (float32, ``len(LAYER_FEATURES) + len(BITS_CONTEXT)``)::

    [ features_l (rlprune.quant.size.LAYER_FEATURES) | target, min_ratio, size_ratio, acc_drop/100, done ]

At reset ``size_ratio`` and ``acc_drop`` describe every layer at 8 bits; the final observation describes
the vector after the wall.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, fields

import gymnasium as gym
import numpy as np

from rlprune.errors import ConfigError
from rlprune.quant.size import LAYER_FEATURES, MAX_BITS, MIN_BITS, QuantSpace

BITS_CONTEXT = ("target", "min_ratio", "size_ratio", "acc_drop", "done")
"""The global-context entries of every observation, after the layer's own features."""
N_ACTIONS = MAX_BITS - MIN_BITS + 1
"""Discrete actions: action ``a`` asks for ``MIN_BITS + a`` bits."""
FINISHED_KEPT = 4096
"""Finished-episode summaries an env keeps until :meth:`BitsGame.drain_finished` takes them."""


@dataclass(frozen=True)
class BitsEnvConfig:
    """The bits env's settings, parsed once from an ``env_config`` dict."""

    space: dict
    """``QuantSpace.to_record()`` of the model (its layers and exact size model)."""
    world_model: dict
    """``BitsSPN.state()`` or ``BitsWorldModel.state()``: the (bits -> accuracy drop) model the reward comes from."""
    target: float = 0.125
    """The size budget: stored size relative to the fp32 model, in (0, 1]."""
    seed: int = 0
    """Seeds the first reset."""

    def __post_init__(self) -> None:
        space = QuantSpace.from_record(self.space)  # raises ConfigError naming the problem
        if isinstance(self.target, bool) or not isinstance(self.target, (int, float)) or not math.isfinite(self.target):
            raise ConfigError(f"target={self.target!r} must be a size ratio in (0, 1], e.g. 0.125")
        space.check_target(self.target)
        if not isinstance(self.world_model, dict) or int(self.world_model.get("n_layers", -1)) != space.n_layers:
            raise ConfigError(f"world_model must be BitsSPN.state() or BitsWorldModel.state() for the space's "
                              f"{space.n_layers} layers")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed={self.seed!r} must be a non-negative integer")

    @classmethod
    def from_dict(cls, config) -> BitsEnvConfig:
        """Parse an ``env_config`` (dict or ``EnvContext``; a ``BitsEnvConfig`` is returned as is).

        Raises:
            ConfigError: an unknown key (lists the valid ones), a missing one, or a bad value.
        """
        if isinstance(config, BitsEnvConfig):
            return config
        config = dict(config or {})
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(config) - set(valid))
        if unknown:
            raise ConfigError(f"unknown bits env_config key(s) {unknown}; valid keys: {', '.join(valid)}")
        missing = [k for k in ("space", "world_model") if k not in config]
        if missing:
            raise ConfigError(f"bits env_config needs {missing}: QuantSpace.to_record() and a bits world "
                              "model's state()")
        return cls(**config)


class BitsGame(gym.Env):
    """The multi-agent bit-width episode; see :class:`rlprune.envs.bits_env.LayerBitsEnv` for the contract."""

    metadata = {"render_modes": []}

    def __init__(self, config=None):
        super().__init__()
        from rlprune.quant.worldmodel import world_model_from_state  # torch: only for the reward's model

        self.config = cfg = BitsEnvConfig.from_dict(config)
        self.space = QuantSpace.from_record(cfg.space)
        self.world_model = world_model_from_state(cfg.world_model)
        self.target = float(cfg.target)
        self.n_layers = self.space.n_layers
        self.features = self.space.features()
        self.possible_agents = self.space.layer_ids
        self.agents = list(self.possible_agents)
        size = len(LAYER_FEATURES) + len(BITS_CONTEXT)
        box = gym.spaces.Box(-10.0, 10.0, (size,), np.float32)
        self.observation_spaces = dict.fromkeys(self.possible_agents, box)
        self.action_spaces = {aid: gym.spaces.Discrete(N_ACTIONS) for aid in self.possible_agents}
        self.finished: collections.deque[dict] = collections.deque(maxlen=FINISHED_KEPT)
        self.reward_calls = 0
        self._seeded = False
        self._done = True
        top = np.full(self.n_layers, MAX_BITS)
        self._start = (float(self.space.size_ratio(top, validate=False)[0]), float(self.world_model.predict(top)[0]))

    def reset(self, *, seed=None, options=None):
        """Start an episode (every agent acts at once, in one step).

        Returns:
            ``(obs, infos)`` for every agent.

        Raises:
            ValueError: any option (there are none).
        """
        if options:
            raise ValueError(f"reset options {sorted(options)} unknown; the bits env takes none")
        if seed is None and not self._seeded:
            seed = self.config.seed
        super().reset(seed=seed)
        self._seeded = True
        self._done = False
        return self._observe(*self._start, done=0.0), {aid: {} for aid in self.possible_agents}

    def step(self, action_dict):
        """Apply every agent's bits, enforce the size wall, reward the team.

        Raises:
            RuntimeError: ``step`` before ``reset`` or after the episode ended.
            ValueError: a missing action or one outside ``0 .. N_ACTIONS - 1``.
        """
        if self._done:
            raise RuntimeError(f"{type(self).__name__}.step() called on a finished episode; call reset() first")
        requested = np.array([self._bits(action_dict, aid) for aid in self.possible_agents], dtype=np.int64)
        bits = self.space.fit_to_budget(requested, self.target)
        size_ratio = float(self.space.size_ratio(bits, validate=False)[0])
        acc_drop = float(self.world_model.predict(bits)[0])
        self.reward_calls += 1
        reward = -acc_drop
        summary = {"requested": requested.tolist(), "bits": bits.tolist(), "target": self.target,
                   "size_ratio": size_ratio, "acc_drop": acc_drop, "reward": reward}
        self.finished.append(summary)
        self._done = True
        ids = self.possible_agents
        return (self._observe(size_ratio, acc_drop, done=1.0), dict.fromkeys(ids, reward),
                {**dict.fromkeys(ids, True), "__all__": True}, {**dict.fromkeys(ids, False), "__all__": False},
                dict.fromkeys(ids, summary))

    def set_world_model(self, state) -> None:
        """Reward with a refined world model from now on (an online round's; ``state()`` or the model).

        Raises:
            ConfigError: a state for another number of layers.
        """
        from rlprune.quant.worldmodel import world_model_from_state

        wm = world_model_from_state(state)
        if wm.n_layers != self.n_layers:
            raise ConfigError(f"world model has {wm.n_layers} layers; this env has {self.n_layers}")
        self.world_model = wm
        top = np.full(self.n_layers, MAX_BITS)
        self._start = (self._start[0], float(wm.predict(top)[0]))

    def drain_finished(self) -> list[dict]:
        """Hand over (and forget) the summaries of the episodes finished since the last call."""
        out = list(self.finished)
        self.finished.clear()
        return out

    def _bits(self, action_dict, aid: str) -> int:
        if aid not in action_dict:
            raise ValueError(f"no action for {aid}; every agent acts in the one step: {self.possible_agents}")
        value = np.asarray(action_dict[aid]).reshape(-1)[0]
        if not np.isfinite(value) or value != int(value) or not 0 <= int(value) < N_ACTIONS:
            raise ValueError(f"action {value!r} for {aid} is not an integer in 0..{N_ACTIONS - 1} "
                             f"(action a asks for {MIN_BITS} + a bits)")
        return MIN_BITS + int(value)

    def _observe(self, size_ratio: float, acc_drop: float, done: float) -> dict[str, np.ndarray]:
        ctx = np.array([self.target, self.space.min_ratio, size_ratio, acc_drop / 100.0, done], dtype=np.float32)
        rows = np.concatenate([self.features, np.broadcast_to(ctx, (self.n_layers, ctx.size))], axis=1)
        rows = np.clip(rows, -10.0, 10.0).astype(np.float32)
        return {aid: rows[i] for i, aid in enumerate(self.possible_agents)}


__all__ = ["BITS_CONTEXT", "N_ACTIONS", "BitsEnvConfig", "BitsGame"]
