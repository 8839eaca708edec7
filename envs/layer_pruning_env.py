"""``LayerPruningEnv``: one RLlib agent per prunable group, choosing that group's pruning ratio.

    env = LayerPruningEnv({"model": "tests.arch_zoo:PlainFlatten", "input_shape": [3, 32, 32],
                           "reward": lambda ratios, info: 20 * float(np.mean(ratios) ** 2)})
    obs, infos = env.reset(seed=0)
    obs, rewards, terminateds, truncateds, infos = env.step({a: np.array([0.5]) for a in obs})
    infos["group_00"]["achieved"], infos["group_00"]["macs_ratio"]

    # One policy for every budget: each episode draws its target from [0.3, 0.8] (seeded) ...
    env = LayerPruningEnv({..., "target": [0.3, 0.8]})
    obs, infos = env.reset(options={"target": 0.45})   # ... or is told it

The episode logic lives in ``rlprune.envs.game.PruningGame`` (no Ray), which a saved policy replays without
RLlib (``rlprune.policy``); this class adds RLlib's ``MultiAgentEnv`` base and nothing else.
"""

from __future__ import annotations

from ray.rllib.env.multi_agent_env import MultiAgentEnv

from rlprune.envs.game import PruningGame


class LayerPruningEnv(PruningGame, MultiAgentEnv):
    """Multi-agent pruning: each prunable group of a model is an agent that picks its pruning ratio.

    Agents: ``group_00`` ... one per group of the model's ``PruningSpace``, in forward order; all of them
    stay in ``agents`` for the whole episode.

    Observation: Box float32 (layout in ``rlprune.envs.game``): the agent's group features, the global
    context (the episode's target and which budget it constrains, MACs and params ratios and predicted
    accuracy drop of the choices so far, progress, the agent's AMC bounds), optionally every group's
    features and choice.

    Target: ``env_config["target"]`` is a number, or a range ``[lo, hi]`` from which each episode draws
    its target uniformly with the env's seeded RNG; ``reset(options={"target": t})`` fixes it for one
    episode. The wall, the bounds and the reward all use the episode's target.

    Action: Box ``[0, max_ratio]`` of shape (1,), the fraction of the group's channels to remove;
    out-of-box values are clipped.

    Reward: one team reward for every agent when the episode ends,
    ``w_acc * (-acc_drop) + w_cost * (1 - max(budget_ratio, target)) - w_violation * max(0, budget_ratio -
    target)``: compression past the target earns nothing,
    ``acc_drop`` (points) from the reward source on the achieved ratios; 0 for intermediate steps.

    Termination: ``simultaneous``: after the single step in which all agents act; ``sequential``: after
    ``n_groups`` steps, agent ``t`` acting at step ``t``. Never truncated. The final step returns an
    observation and an info for every agent; each info holds the episode's ``target``, ``requested``,
    ``ratios`` (after the wall) and ``achieved`` (after channel rounding) vectors, ``macs_ratio``,
    ``params_ratio``, ``acc_drop``, ``acc_drop_std`` and ``reward``.

    Args:
        config: an ``env_config`` dict (or ``EnvContext``) or a ``LayerPruningEnvConfig``.

    Raises:
        ConfigError: a bad setting, or a target unreachable even with every group at ``max_ratio``.
    """
