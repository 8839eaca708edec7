"""Shared policy: mapping, the attention RLModule, and one training iteration of PPO (MLP and attention) and SAC."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns

from rlprune.envs import LayerPruningEnv
from rlprune.errors import ConfigError
from rlprune.policies import SHARED_POLICY, build_ppo_config, build_sac_config, policy_mapping_fn
from rlprune.policies.attention import AttentionPPOModule
from tests.test_env import plain_record, quadratic_drop


@pytest.fixture(scope="module")
def env_config():
    return {"space": plain_record(), "reward": quadratic_drop}


def test_every_agent_maps_to_the_shared_module():
    assert policy_mapping_fn("group_00") == policy_mapping_fn("group_29", episode=None, worker=None) == SHARED_POLICY


def _attention_module(env_config, mode="simultaneous"):
    env = LayerPruningEnv({**env_config, "obs_all_groups": True, "mode": mode})
    aid = env.possible_agents[0]
    module = AttentionPPOModule(observation_space=env.observation_spaces[aid], action_space=env.action_spaces[aid],
                                model_config=env.layout.model_config())
    return env, module


def test_attention_module_outputs_and_attends_to_other_groups(env_config):
    env, module = _attention_module(env_config, mode="sequential")
    obs, _ = env.reset()
    for _ in range(2):  # two groups decided: their tokens now carry a ratio
        obs, *_ = env.step({a: np.array([0.7], np.float32) for a in obs})
    x = torch.from_numpy(np.stack([obs["group_02"]] * 3))
    out = module.forward_train({Columns.OBS: x})
    assert out[Columns.ACTION_DIST_INPUTS].shape == (3, 2)  # mean and log_std of a 1-d Gaussian
    values = module.compute_values({Columns.OBS: x}, embeddings=out[Columns.EMBEDDINGS])
    assert values.shape == (3,)
    torch.testing.assert_close(values, module.compute_values({Columns.OBS: x}))
    dist = module.get_exploration_action_dist_cls().from_logits(out[Columns.ACTION_DIST_INPUTS])
    assert dist.sample().shape == (3, 1)
    # Changing another group's token (its chosen ratio) changes what this agent does.
    layout = env.layout
    ratio_of_group_0 = layout.n_features + layout.n_context + layout.n_features
    x2 = x.clone()
    x2[:, ratio_of_group_0] = 0.0
    with torch.no_grad():
        before = module.forward_inference({Columns.OBS: x})[Columns.ACTION_DIST_INPUTS]
        after = module.forward_inference({Columns.OBS: x2})[Columns.ACTION_DIST_INPUTS]
    assert not torch.allclose(before[:, 0], after[:, 0])


def test_attention_module_rejects_a_layout_mismatch(env_config):
    env = LayerPruningEnv(env_config)  # obs without the all-groups block
    aid = env.possible_agents[0]
    with pytest.raises(ValueError, match="obs_all_groups"):
        AttentionPPOModule(observation_space=env.observation_spaces[aid], action_space=env.action_spaces[aid],
                           model_config={**env.layout.model_config()})
    with pytest.raises(ConfigError, match="obs_all_groups"):
        build_ppo_config({**env_config, "obs_all_groups": False}, attention=True)
    with pytest.raises(ConfigError, match="train_batch_env_steps"):
        build_ppo_config(env_config, train_batch_env_steps=0)


def test_ppo_config_counts_batches_in_env_steps_and_agent_rows(env_config):
    config = build_ppo_config(env_config, train_batch_env_steps=64)
    assert config.train_batch_size_per_learner == 64
    assert config.minibatch_size == 64 * 4 // 4  # 4 groups act per simultaneous env step
    assert config.episodes_to_numpy is False and config.num_env_runners == 0
    assert set(config.policies) == {SHARED_POLICY}


def _train_once(config):
    algo = config.build_algo()
    try:
        result = algo.train()
    finally:
        algo.stop()
    return result


@pytest.mark.slow
@pytest.mark.parametrize("attention", [False, True], ids=["mlp", "attention"])
def test_one_ppo_iteration(ray_cluster, env_config, attention):
    config = build_ppo_config(env_config, train_batch_env_steps=64, num_epochs=2, attention=attention, seed=0)
    result = _train_once(config)
    assert result["env_runners"]["num_env_steps_sampled"] >= 64
    assert np.isfinite(result["env_runners"]["episode_return_mean"])
    assert result["learners"][SHARED_POLICY]["num_module_steps_trained"] > 0


@pytest.mark.slow
def test_one_ppo_iteration_sequential(ray_cluster, env_config):
    config = build_ppo_config({**env_config, "mode": "sequential"}, train_batch_env_steps=64, num_epochs=1)
    result = _train_once(config)
    assert result["env_runners"]["num_env_steps_sampled"] >= 64
    assert result["learners"][SHARED_POLICY]["num_module_steps_trained"] > 0


@pytest.mark.slow
def test_one_sac_iteration(ray_cluster, env_config):
    config = build_sac_config(env_config, train_batch_rows=32, learning_starts=8, env_steps_per_update=16,
                              min_env_steps_per_iteration=32, seed=0)
    result = _train_once(config)
    assert result["env_runners"]["num_env_steps_sampled"] >= 32
    assert result["learners"][SHARED_POLICY]["num_module_steps_trained"] > 0
