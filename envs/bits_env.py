"""``LayerBitsEnv``: one RLlib agent per quantizable layer, choosing that layer's weight bit width.

    from rlprune.envs.bits_env import BITS_ENV_NAME, LayerBitsEnv, register_bits_env
    env = LayerBitsEnv({"space": space.to_record(), "world_model": wm.state(), "target": 0.125})
    obs, infos = env.reset(seed=0)
    obs, rewards, terminateds, truncateds, infos = env.step({a: 2 for a in obs})   # 4 bits everywhere
    infos["layer_00"]["bits"], infos["layer_00"]["size_ratio"]

    register_bits_env()   # then PPOConfig().environment(BITS_ENV_NAME, env_config={...})

The episode logic lives in ``rlprune.envs.bits_game.BitsGame`` (no Ray); this module adds RLlib's
``MultiAgentEnv`` base and the registration, like ``layer_pruning_env`` and ``register_envs`` do for
pruning. Import it only where Ray is wanted (it imports RLlib).
"""

from __future__ import annotations

from ray.rllib.env.multi_agent_env import MultiAgentEnv

from rlprune.envs import BITS_ENV_NAME, make_bits_env, register_envs
from rlprune.envs.bits_game import BitsGame


class LayerBitsEnv(BitsGame, MultiAgentEnv):
    """Multi-agent mixed precision: each quantizable layer of a model is an agent that picks its weight bits.

    Agents: ``layer_00`` ... one per conv/linear layer (``rlprune.quant.fake.quant_layers`` order); all of
    them stay in ``agents`` for the whole episode, and all map to one shared policy.

    Observation: Box float32: the layer's features (``rlprune.quant.size.LAYER_FEATURES``) and the context
    ``target, min_ratio, size_ratio, acc_drop/100, done`` (``rlprune.envs.bits_game``).

    Action: Discrete(7); action ``a`` asks for ``2 + a`` bits (2..8).

    Wall: the requested vector is lowered, one bit at a time from the widest layers (the largest first),
    until its exact ``size_ratio`` (packed weights + float32 scales + float32 other parameters, relative to
    the fp32 model) is at most the target, so every episode ends within the budget.

    Reward: one team reward for every agent, ``-acc_drop``: the world model's predicted accuracy drop
    (points) of the vector after the wall.

    Termination: after the single step in which all agents act; never truncated. The final infos hold
    ``requested``, ``bits`` (after the wall), ``target``, ``size_ratio``, ``acc_drop`` and ``reward``.

    Args:
        config: an ``env_config`` dict (or ``EnvContext``) or a ``BitsEnvConfig``: ``space``
            (``QuantSpace.to_record()``), ``world_model`` (``BitsSPN.state()`` or ``BitsWorldModel.state()``),
            ``target``, ``seed``.

    Raises:
        ConfigError: a bad setting, or a target below every layer at 2 bits.
    """


def register_bits_env() -> str:
    """Register the envs with Ray Tune's registry (:func:`rlprune.envs.register_envs`; idempotent).

    Returns:
        :data:`BITS_ENV_NAME`.
    """
    register_envs()
    return BITS_ENV_NAME


__all__ = ["BITS_ENV_NAME", "LayerBitsEnv", "make_bits_env", "register_bits_env"]
