"""The shared policy's mapping and the RLlib algorithm configs that train it on ``LayerPruningEnv``.

    config = build_ppo_config({"task": "digits", "spn": "spn.pt"}, train_batch_env_steps=500)
    algo = config.build_algo()
    result = algo.train()

Settings that matter here (measured, see DESIGN.md), set once in these builders:

* ``episodes_to_numpy=False``: with RLlib's default, every finished one-step episode is re-converted at
  every sampling step and sampling gets quadratically slow (400 env steps: 103 s instead of ~4 s).
* ``num_env_runners=0``: on 2 cores a remote env runner is slower than sampling in the driver.
* ``train_batch_size_per_learner`` counts *env* steps; PPO's ``minibatch_size`` counts the shared
  module's *rows* (agent steps): a simultaneous episode is 1 env step but ``n_groups`` rows.
* Every agent maps to one module, ``"shared"``: the groups differ only through their observations.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from rlprune.envs import ENV_NAME
from rlprune.errors import ConfigError

SHARED_POLICY = "shared"
"""Module id every agent maps to."""


def policy_mapping_fn(agent_id, episode=None, **kwargs) -> str:
    """Map every agent (group) to the one shared module.

    Args:
        agent_id: ``group_XX``.
        episode: the episode (unused).

    Returns:
        :data:`SHARED_POLICY`.
    """
    return SHARED_POLICY


def _env_setup(env_config: Mapping[str, Any], attention: bool) -> tuple[dict, Any]:
    """Register the env and read its layout (one env is built here, in the driver)."""
    from rlprune.envs import LayerPruningEnv, register_envs  # deferred: building an env traces a model

    env_config = dict(env_config)
    if attention:
        if env_config.get("obs_all_groups") is False:
            raise ConfigError("obs_all_groups=False contradicts attention=True; the attention module needs every "
                              "group in the observation: drop obs_all_groups")
        env_config["obs_all_groups"] = True
    register_envs()
    env = LayerPruningEnv(env_config)
    return env_config, env


def _module_specs(module_spec) -> Any:
    from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec

    return MultiRLModuleSpec(rl_module_specs={SHARED_POLICY: module_spec})


def build_ppo_config(env_config: Mapping[str, Any], *, train_batch_env_steps: int = 500,
                     minibatch_agent_rows: int | None = None, num_epochs: int = 4, lr: float = 3e-4,
                     attention: bool = False, hidden: tuple[int, ...] = (64, 64), entropy_coeff: float = 0.0,
                     torch_threads: int | None = 1, seed: int = 0):
    """PPO on ``rlprune/LayerPruning-v0`` with one shared module.

    Args:
        env_config: the env's ``env_config`` (see ``LayerPruningEnvConfig``); pass a ``space`` record
            rather than a ``model`` to spare env copies a re-trace.
        train_batch_env_steps: env steps per training iteration (a simultaneous episode is one step, a
            sequential one ``n_groups``).
        minibatch_agent_rows: rows of the shared module per SGD minibatch; None: a quarter of the rows one
            iteration collects (at least 32), capped at ``train_batch_env_steps``, since RLlib's validation
            requires ``minibatch_size <= train_batch_size_per_learner`` although the two count different
            things.
        num_epochs: passes over each train batch.
        lr: Adam learning rate.
        attention: use ``AttentionPPOModule`` (sets ``obs_all_groups=True``) instead of RLlib's MLP.
        hidden: hidden sizes of the default MLP (policy and value nets are separate).
        entropy_coeff: PPO's entropy bonus.
        torch_threads: torch intra-op threads of the driver, set when the algorithm is built (see
            :func:`set_torch_threads`); None leaves torch alone.
        seed: seeds RLlib (weights, sampling).

    Returns:
        A ``PPOConfig``; ``.build_algo()`` it.

    Raises:
        ConfigError: a bad env_config, or a batch size below 1.
    """
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    _positive(train_batch_env_steps=train_batch_env_steps, num_epochs=num_epochs)
    env_config, env = _env_setup(env_config, attention)
    rows_per_step = env.n_groups if env.config.mode == "simultaneous" else 1
    if minibatch_agent_rows is None:
        minibatch_agent_rows = min(train_batch_env_steps, max(32, train_batch_env_steps * rows_per_step // 4))
    _positive(minibatch_agent_rows=minibatch_agent_rows)
    if minibatch_agent_rows > train_batch_env_steps:
        # RLlib's validation compares the two although they count different things (rows vs env steps).
        raise ConfigError(f"minibatch_agent_rows={minibatch_agent_rows} exceeds train_batch_env_steps="
                          f"{train_batch_env_steps}, which RLlib rejects; use at most {train_batch_env_steps}")
    if attention:
        from rlprune.policies.attention import AttentionPPOModule

        spec = RLModuleSpec(module_class=AttentionPPOModule, model_config=env.layout.model_config())
    else:
        spec = RLModuleSpec(model_config=DefaultModelConfig(fcnet_hiddens=list(hidden), vf_share_layers=False))
    return (
        PPOConfig()
        .environment(ENV_NAME, env_config=env_config)
        .env_runners(num_env_runners=0, episodes_to_numpy=False)
        .training(
            train_batch_size_per_learner=train_batch_env_steps,
            minibatch_size=minibatch_agent_rows,
            num_epochs=num_epochs,
            lr=lr,
            entropy_coeff=entropy_coeff,
            # Each agent makes one decision per episode, so discounting and GAE have nothing to do.
            gamma=1.0,
            lambda_=1.0,
            # Returns are in accuracy points (tens), not the ~1 scale RLlib's default clip of 10 assumes.
            vf_clip_param=1e4,
        )
        .multi_agent(policies={SHARED_POLICY}, policy_mapping_fn=policy_mapping_fn)
        .rl_module(rl_module_spec=_module_specs(spec))
        .callbacks(on_algorithm_init=_thread_callbacks(torch_threads))
        .debugging(seed=seed)
    )


def greedy_actions(algo_config, module, obs: Mapping[str, Any], action_spaces: Mapping[str, Any]) -> dict:
    """The shared module's deterministic action for each agent, as RLlib's env runners would send it.

    The module's inference distribution is made deterministic (a Gaussian's mean), then mapped into each
    agent's Box exactly as RLlib's ``NormalizeAndClipActions`` connector does, with the same library
    functions and the algorithm's own ``normalize_actions``/``clip_actions`` settings: with the default
    ``normalize_actions=True`` the module acts in [-1, 1], and feeding its raw mean to the env would play a
    different vector than the one the policy was trained to choose.

    Args:
        algo_config: the algorithm's config (``algo.config``).
        module: the shared RLModule.
        obs: ``{agent_id: observation}`` of the agents that act now.
        action_spaces: the env's ``action_spaces``.

    Returns:
        ``{agent_id: action}`` ready for ``env.step``.
    """
    import numpy as np
    import torch
    from ray.rllib.core.columns import Columns
    from ray.rllib.utils.spaces.space_utils import clip_action, unsquash_action

    ids = list(obs)
    with torch.no_grad():
        out = module.forward_inference({Columns.OBS: torch.as_tensor(np.stack([obs[a] for a in ids]))})
        dist = module.get_inference_action_dist_cls().from_logits(out[Columns.ACTION_DIST_INPUTS])
        acts = dist.to_deterministic().sample().numpy()
    if algo_config.normalize_actions:
        return {a: unsquash_action(acts[i], action_spaces[a]) for i, a in enumerate(ids)}
    if algo_config.clip_actions:
        return {a: clip_action(acts[i], action_spaces[a]) for i, a in enumerate(ids)}
    return {a: acts[i] for i, a in enumerate(ids)}


def greedy_episode(algo, env, seed: int | None = None, target: float | None = None) -> dict:
    """Play one episode of ``algo``'s shared policy with :func:`greedy_actions` in ``env``.

    Args:
        algo: a built algorithm whose env runners train on an env like ``env``.
        env: a ``LayerPruningEnv`` (local copy; it is reset here).
        seed: ``reset`` seed.
        target: the episode's target (``reset(options={"target": ...})``); None: the env draws or uses its own.

    Returns:
        The final ``info`` of the episode (``achieved``, ``reward``, ``acc_drop``, ... see the env).
    """
    module = algo.get_module(SHARED_POLICY)
    obs, _ = env.reset(seed=seed, options=None if target is None else {"target": target})
    info: dict = {}
    while obs:
        acting = next(iter(obs))
        obs, _, term, _, infos = env.step(greedy_actions(algo.config, module, obs, env.action_spaces))
        if term["__all__"]:
            info = infos.get(acting) or next(iter(infos.values()))
            break
    return info


def build_sac_config(env_config: Mapping[str, Any], *, train_batch_rows: int = 256, learning_starts: int = 1000,
                     buffer_capacity: int = 100_000, lr: float = 3e-4, hidden: tuple[int, ...] = (64, 64),
                     env_steps_per_update: int = 4, min_env_steps_per_iteration: int = 100,
                     torch_threads: int | None = 1, seed: int = 0):
    """SAC (off-policy, continuous actions) on ``rlprune/LayerPruning-v0`` with one shared module.

    The second algorithm next to PPO. A multi-agent env on RLlib's new stack needs the multi-agent
    episode replay buffer.

    Args:
        env_config: the env's ``env_config``.
        train_batch_rows: rows sampled from the replay buffer per update.
        learning_starts: env steps sampled before the first update.
        buffer_capacity: replay buffer size.
        lr: learning rate of the critic and the temperature (the actor uses a tenth, as RLlib does).
        hidden: hidden sizes of the policy and Q networks.
        env_steps_per_update: env steps sampled between two updates. RLlib's default of 1 replays
            ``train_batch_rows`` rows per ``n_groups`` new ones: far more updates than the data warrants.
        min_env_steps_per_iteration: env steps one ``train()`` call samples at least.
        torch_threads: as in :func:`build_ppo_config`.
        seed: seeds RLlib.

    Returns:
        A ``SACConfig``.

    Raises:
        ConfigError: a bad env_config or a non-positive size.
    """
    from ray.rllib.algorithms.sac import SACConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    _positive(train_batch_rows=train_batch_rows, buffer_capacity=buffer_capacity,
              env_steps_per_update=env_steps_per_update, min_env_steps_per_iteration=min_env_steps_per_iteration)
    env_config, _ = _env_setup(env_config, attention=False)
    spec = RLModuleSpec(model_config=DefaultModelConfig(fcnet_hiddens=list(hidden)))
    return (
        SACConfig()
        .environment(ENV_NAME, env_config=env_config)
        .env_runners(num_env_runners=0, episodes_to_numpy=False, rollout_fragment_length=env_steps_per_update)
        .training(
            train_batch_size_per_learner=train_batch_rows,
            num_steps_sampled_before_learning_starts=learning_starts,
            replay_buffer_config={"type": "MultiAgentEpisodeReplayBuffer", "capacity": buffer_capacity},
            actor_lr=lr / 10,
            critic_lr=lr,
            alpha_lr=lr,
            gamma=1.0,  # one decision per agent and episode
        )
        .reporting(min_sample_timesteps_per_iteration=min_env_steps_per_iteration, min_time_s_per_iteration=0)
        .multi_agent(policies={SHARED_POLICY}, policy_mapping_fn=policy_mapping_fn)
        .rl_module(rl_module_spec=_module_specs(spec))
        .callbacks(on_algorithm_init=_thread_callbacks(torch_threads))
        .debugging(seed=seed)
    )


def set_torch_threads(n: int, **callback_kwargs) -> None:
    """Limit torch's intra-op threads in this process (an ``on_algorithm_init`` callback).

    With ``num_env_runners=0`` the env runner and the learner share the driver, where every forward pass
    is a few rows: extra threads only spin. Measured on the 2-core machine while it was busy: one PPO
    iteration of 500 env steps with the attention module took 33.7 s with torch's default threads and
    3.6 s with one. Remote Ray workers already get ``OMP_NUM_THREADS`` = their CPUs.
    """
    import torch

    torch.set_num_threads(n)


def _thread_callbacks(n: int | None) -> list:
    if n is None:
        return []
    _positive(torch_threads=n)
    return [functools.partial(set_torch_threads, n)]


def _positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name}={value!r} must be a positive integer")
