"""RL search for bit widths: RLlib PPO on ``LayerBitsEnv`` (one agent per layer, one shared module).

    result = rl_bits_search(space, world_model, target=0.125, iters=3)
    result["bits"], result["predicted_drop"], result["size_ratio"], result["episodes"]

Each iteration is one ``algo.train()``; the finished episodes' vectors are drained from the env copies and
the best distinct ones (the lowest predicted drops; the wall keeps every one within the budget) are kept.
Online, each iteration ends with a round of ``rlprune.quant.online``: the best kept vectors not yet measured
are measured for real, the world model is refined on them, every env copy rewards with the refined model
from then on and the kept vectors are re-scored by it; the best of them at the end is the result.
The PPO settings follow ``rlprune.policies.algorithms.build_ppo_config`` (driver-side sampling, no
discounting for a one-step episode, returns in points). Orchestration: this module imports Ray.
"""

from __future__ import annotations

import time

from rlprune.errors import ConfigError
from rlprune.quant.online import TOP_KEPT, BitsLearner, best_bits, kept_bits
from rlprune.quant.size import QuantSpace
from rlprune.quant.worldmodel import BitsModel
from rlprune.search.candidates import Kept


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
                   train_batch_env_steps: int = 64, seed: int = 0, *, online_top: int = 0,
                   learn: BitsLearner | None = None) -> dict:
    """Train the shared policy for ``iters`` iterations and return the best bit vector it played.

    Args:
        space: the model's quantizable layers.
        world_model: the reward's (bits -> drop) model.
        target: the size budget.
        iters: PPO iterations.
        train_batch_env_steps: episodes per iteration.
        seed: seeds the env and RLlib.
        online_top: after every iteration, this many of the best vectors played and not yet measured are
            measured for real by ``learn``; the env copies then reward with its refined model and what was
            played is re-scored by it (0: offline).
        learn: the online rounds' learner (``rlprune.quant.online.BitsLearner``); needed when ``online_top``.

    Returns:
        ``{"bits", "predicted_drop", "size_ratio", "episodes", "wm_calls", "real_evals", "online_rounds",
        "search_s"}``; ``wm_calls`` counts every reward and every re-scoring, ``online_rounds`` how many ran.

    Raises:
        ConfigError: bad settings or an unreachable target.
    """
    import torch

    from rlprune.orchestration import init_ray

    if not isinstance(iters, int) or iters < 1:
        raise ConfigError(f"iters={iters!r} must be a positive integer, e.g. 3")
    if not isinstance(online_top, int) or online_top < 0 or (online_top and learn is None):
        raise ConfigError(f"online_top={online_top!r} must be an integer >= 0, with a learner when above 0")
    space.check_target(target)
    init_ray(None, 2)  # the running instance, $RAY_ADDRESS (a submitted job), or a local one
    env_config = {"space": space.to_record(), "world_model": world_model.state(), "target": float(target),
                  "seed": seed}
    started = time.perf_counter()
    threads = torch.get_num_threads()
    algo = build_bits_ppo_config(env_config, train_batch_env_steps=train_batch_env_steps, seed=seed).build_algo()
    torch.set_num_threads(1)  # tiny forward passes in the driver: extra threads only spin (policies.algorithms)
    kept, episodes, calls, rounds, real = Kept(TOP_KEPT), 0, 0, 0, 0
    try:
        for _ in range(iters):
            algo.train()
            for finished, n_calls in _drain(algo):
                calls += n_calls
                episodes += len(finished)
                if finished:
                    kept.add([ep["bits"] for ep in finished], [ep["acc_drop"] for ep in finished])
            chosen = kept_bits(kept.take(online_top)) if online_top else None
            if chosen is not None and len(chosen):
                world_model = learn(chosen)[1]
                rounds, real = rounds + 1, real + len(chosen)
                state = world_model.state()
                algo.env_runner_group.foreach_env_runner(
                    lambda runner, state=state: [e.unwrapped.set_world_model(state)
                                                 for e in getattr(getattr(runner, "env", None), "envs", [])])
                calls += kept.rescore(world_model.predict)
    finally:
        algo.stop()
        torch.set_num_threads(threads)
    bits, drop = best_bits(kept)  # every iteration finishes at least one one-step episode
    return {"bits": bits, "predicted_drop": drop, "size_ratio": float(space.size_ratio(bits)[0]),
            "episodes": episodes, "wm_calls": calls, "real_evals": real, "online_rounds": rounds,
            "search_s": round(time.perf_counter() - started, 2)}


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
