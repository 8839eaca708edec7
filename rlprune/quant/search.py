"""RL search for bit widths: RLlib PPO on ``LayerBitsEnv`` (one agent per layer, one shared module).

    result = rl_bits_search(space, world_model, target=0.125, iters=3)
    result["bits"], result["predicted_drop"], result["size_ratio"], result["episodes"]

Each iteration is one ``algo.train()``; the finished episodes' vectors are drained from the env copies and
the one with the best reward (the lowest predicted drop; the wall keeps every one within the budget) is
kept. The PPO settings follow ``rlprune.policies.algorithms.build_ppo_config`` (driver-side sampling, no
discounting for a one-step episode, returns in points). Orchestration: this module imports Ray.
"""

from __future__ import annotations

import time

from rlprune.errors import ConfigError
from rlprune.quant.size import QuantSpace
from rlprune.quant.worldmodel import BitsModel


def build_bits_ppo_config(env_config: dict, *, train_batch_env_steps: int = 64, num_epochs: int = 4,
                          lr: float = 3e-4, hidden: tuple[int, ...] = (64, 64), seed: int = 0):
    """PPO on ``rlprune/LayerBits-v0`` with the shared module of the pruning search.

    Args:
        env_config: ``LayerBitsEnv``'s config (``space``, ``world_model``, ``target``, ``seed``).
        train_batch_env_steps: episodes per iteration (one env step each).
        num_epochs: passes over each batch.
        lr: Adam learning rate.
        hidden: the MLP's hidden sizes.
        seed: seeds RLlib.

    Returns:
        A ``PPOConfig``; ``.build_algo()`` it.

    Raises:
        ConfigError: a batch below 1.
    """
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
    from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from rlprune.envs.bits_env import LayerBitsEnv, register_bits_env
    from rlprune.policies.algorithms import SHARED_POLICY, policy_mapping_fn

    if not isinstance(train_batch_env_steps, int) or train_batch_env_steps < 1:
        raise ConfigError(f"train_batch_env_steps={train_batch_env_steps!r} must be a positive integer")
    name = register_bits_env()
    n_layers = LayerBitsEnv(env_config).n_layers  # validates the config in the driver, before RLlib does
    spec = RLModuleSpec(model_config=DefaultModelConfig(fcnet_hiddens=list(hidden), vf_share_layers=False))
    return (
        PPOConfig()
        .environment(name, env_config=env_config)
        .env_runners(num_env_runners=0, episodes_to_numpy=False)
        .training(train_batch_size_per_learner=train_batch_env_steps,
                  # RLlib compares minibatch rows with env steps; one episode has n_layers rows.
                  minibatch_size=min(train_batch_env_steps, max(32, train_batch_env_steps * n_layers // 4)),
                  num_epochs=num_epochs, lr=lr, gamma=1.0, lambda_=1.0, vf_clip_param=1e4)
        .multi_agent(policies={SHARED_POLICY}, policy_mapping_fn=policy_mapping_fn)
        .rl_module(rl_module_spec=MultiRLModuleSpec(rl_module_specs={SHARED_POLICY: spec}))
        .debugging(seed=seed)
    )


def rl_bits_search(space: QuantSpace, world_model: BitsModel, target: float, iters: int = 3,
                   train_batch_env_steps: int = 64, seed: int = 0) -> dict:
    """Train the shared policy for ``iters`` iterations and return the best bit vector it played.

    Args:
        space: the model's quantizable layers.
        world_model: the reward's (bits -> drop) model.
        target: the size budget.
        iters: PPO iterations.
        train_batch_env_steps: episodes per iteration.
        seed: seeds the env and RLlib.

    Returns:
        ``{"bits", "predicted_drop", "size_ratio", "episodes", "wm_calls", "search_s"}``.

    Raises:
        ConfigError: bad settings or an unreachable target.
    """
    import ray
    import torch

    if not isinstance(iters, int) or iters < 1:
        raise ConfigError(f"iters={iters!r} must be a positive integer, e.g. 3")
    space.check_target(target)
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    env_config = {"space": space.to_record(), "world_model": world_model.state(), "target": float(target),
                  "seed": seed}
    started = time.perf_counter()
    threads = torch.get_num_threads()
    algo = build_bits_ppo_config(env_config, train_batch_env_steps=train_batch_env_steps, seed=seed).build_algo()
    torch.set_num_threads(1)  # tiny forward passes in the driver: extra threads only spin (policies.algorithms)
    best, episodes, calls = None, 0, 0
    try:
        for _ in range(iters):
            algo.train()
            for finished, n_calls in _drain(algo):
                calls += n_calls
                for ep in finished:
                    episodes += 1
                    if best is None or ep["reward"] > best["reward"]:
                        best = ep
    finally:
        algo.stop()
        torch.set_num_threads(threads)
    assert best is not None  # every iteration finishes at least one one-step episode
    return {"bits": best["bits"], "predicted_drop": best["acc_drop"], "size_ratio": best["size_ratio"],
            "episodes": episodes, "wm_calls": calls, "search_s": round(time.perf_counter() - started, 2)}


def _drain(algo) -> list[tuple[list[dict], int]]:
    """``(finished episodes, world-model calls)`` drained from every env copy (local or remote runner)."""
    def take(env) -> tuple[list[dict], int]:
        calls, env.reward_calls = env.reward_calls, 0
        return env.drain_finished(), calls

    def per_runner(runner):
        env = getattr(runner, "env", None)
        return [] if env is None else [take(e.unwrapped) for e in env.envs]

    return [e for es in algo.env_runner_group.foreach_env_runner(per_runner) for e in es]


__all__ = ["build_bits_ppo_config", "rl_bits_search"]
