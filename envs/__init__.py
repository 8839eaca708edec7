"""``rlprune.envs``: the multi-agent pruning environment for RLlib (source in ``envs/``).

    from rlprune.envs import LayerPruningEnv, register_envs
    register_envs()   # then PPOConfig().environment("rlprune/LayerPruning-v0", env_config={...})

``LayerPruningEnv`` (and with it Ray) is imported on first use: ``rlprune.envs.game``, the config and the
rewards import without Ray, which is what lets ``rlprune.policy`` replay a trained policy in well under a
second.
"""

from __future__ import annotations

import importlib

from rlprune.envs.config import LayerPruningEnvConfig
from rlprune.envs.game import CONTEXT_NAMES, TOKEN_EXTRA, ObsLayout, PruningGame
from rlprune.envs.rewards import AccDropSource, team_reward

ENV_NAME = "rlprune/LayerPruning-v0"
"""The name :func:`register_envs` registers with Ray Tune."""
BITS_ENV_NAME = "rlprune/LayerBits-v0"
"""The mixed-precision env's name, also registered by :func:`register_envs`."""


def make_env(env_config):
    """The env creator registered under :data:`ENV_NAME` (RLlib passes an ``EnvContext``)."""
    from rlprune.envs.layer_pruning_env import LayerPruningEnv

    return LayerPruningEnv(env_config)


def make_bits_env(env_config):
    """The env creator registered under :data:`BITS_ENV_NAME`: the mixed-precision (weight bits) env."""
    from rlprune.envs.bits_env import LayerBitsEnv

    return LayerBitsEnv(env_config)


def register_envs() -> str:
    """Register :data:`ENV_NAME` and :data:`BITS_ENV_NAME` with Ray Tune's registry (idempotent; Ray need not
    be initialised).

    Returns:
        The pruning env's name.
    """
    from ray.tune.registry import register_env  # deferred: the env itself never needs Ray Tune

    register_env(ENV_NAME, make_env)
    register_env(BITS_ENV_NAME, make_bits_env)
    return ENV_NAME


def __getattr__(name):
    if name == "LayerPruningEnv":  # deferred: importing it imports RLlib (seconds)
        return importlib.import_module("rlprune.envs.layer_pruning_env").LayerPruningEnv
    raise AttributeError(f"module 'rlprune.envs' has no attribute {name!r}")


__all__ = [
    "BITS_ENV_NAME",
    "CONTEXT_NAMES",
    "ENV_NAME",
    "TOKEN_EXTRA",
    "AccDropSource",
    "LayerPruningEnv",
    "LayerPruningEnvConfig",
    "ObsLayout",
    "PruningGame",
    "make_bits_env",
    "make_env",
    "register_envs",
    "team_reward",
]
