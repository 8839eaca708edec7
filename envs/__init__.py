"""``rlprune.envs``: the multi-agent pruning environment for RLlib (source in ``envs/``).

    from rlprune.envs import LayerPruningEnv, register_envs
    register_envs()   # then PPOConfig().environment("rlprune/LayerPruning-v0", env_config={...})
"""

from __future__ import annotations

from rlprune.envs.config import LayerPruningEnvConfig
from rlprune.envs.layer_pruning_env import CONTEXT_NAMES, TOKEN_EXTRA, LayerPruningEnv, ObsLayout
from rlprune.envs.rewards import AccDropSource, team_reward

ENV_NAME = "rlprune/LayerPruning-v0"
"""The name :func:`register_envs` registers with Ray Tune."""


def make_env(env_config) -> LayerPruningEnv:
    """The env creator registered under :data:`ENV_NAME` (RLlib passes an ``EnvContext``)."""
    return LayerPruningEnv(env_config)


def register_envs() -> str:
    """Register :data:`ENV_NAME` with Ray Tune's registry (idempotent; Ray need not be initialised).

    Returns:
        The registered name.
    """
    from ray.tune.registry import register_env  # deferred: the env itself never needs Ray Tune

    register_env(ENV_NAME, make_env)
    return ENV_NAME


__all__ = [
    "CONTEXT_NAMES",
    "ENV_NAME",
    "TOKEN_EXTRA",
    "AccDropSource",
    "LayerPruningEnv",
    "LayerPruningEnvConfig",
    "ObsLayout",
    "make_env",
    "register_envs",
    "team_reward",
]
