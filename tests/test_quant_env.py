"""The bits env (``rlprune.envs.bits_env``): RLlib's checker, the wall on ``size_ratio``, the reward, the RL
search on it. The space is the digits ResNet-8's; the world model is fitted to a known drop function so the
tests can say what the reward must be (the real-sample world model is tested in ``test_quant.py``)."""

from __future__ import annotations

import numpy as np
import pytest
from ray.rllib.utils.pre_checks.env import check_multiagent_environments

from rlprune.envs.bits_env import BITS_ENV_NAME, LayerBitsEnv, register_bits_env
from rlprune.envs.bits_game import N_ACTIONS, BitsGame
from rlprune.errors import ConfigError
from rlprune.models import digits_resnet
from rlprune.quant.size import QuantSpace
from rlprune.quant.worldmodel import BitsSPN, BitsWorldModel, random_bits


def _drop(B):
    """A stand-in for measured drops: each layer's noise power, the first layer 10x as sensitive."""
    B = np.atleast_2d(B)
    w = np.ones(B.shape[1])
    w[0] = 10.0
    return (4.0 ** -(B - 2) * w).sum(1) * 3.0


@pytest.fixture(scope="module")
def record():
    space = QuantSpace.from_model(digits_resnet())
    B = random_bits(space, 200, seed=0)
    wm = BitsWorldModel(space.n_layers).fit(B, _drop(B))
    return {"space": space.to_record(), "world_model": wm.state(), "target": 0.125}


def test_rllib_checker_passes_with_the_spn_world_model(record):
    space = QuantSpace.from_record(record["space"])
    B = random_bits(space, 40, seed=1)
    wm = BitsSPN(space, seed=0, max_steps=200).fit(B, _drop(B))
    env = LayerBitsEnv({**record, "world_model": wm.state()})
    check_multiagent_environments(env)
    env.reset(seed=0)
    _, rewards, *_ = env.step({aid: 3 for aid in env.possible_agents})
    played = env.finished[-1]
    assert set(rewards) == set(env.possible_agents)
    assert played["acc_drop"] == pytest.approx(float(wm.predict(played["bits"])[0]), abs=1e-4)


def test_rllib_checker_passes(record):
    env = LayerBitsEnv(record)
    assert env.possible_agents == [f"layer_{i:02d}" for i in range(10)]
    check_multiagent_environments(env)


def test_wall_keeps_every_episode_within_the_budget_and_rewards_the_predicted_drop(record):
    env = LayerBitsEnv(record)
    space = QuantSpace.from_record(record["space"])
    for actions in (N_ACTIONS - 1, 2, 0):  # 8 bits (over budget), 4 bits, 2 bits everywhere
        obs, _ = env.reset(seed=0)
        assert set(obs) == set(env.possible_agents) and obs["layer_00"].shape == env.observation_spaces[
            "layer_00"].shape
        _, rewards, term, trunc, infos = env.step(dict.fromkeys(obs, actions))
        info = infos["layer_03"]
        assert term["__all__"] and not trunc["__all__"]
        assert info["requested"] == [2 + actions] * 10
        assert info["size_ratio"] == space.size_ratio(info["bits"])[0] <= 0.125
        assert all(b <= 2 + actions for b in info["bits"])  # the wall only lowers
        assert rewards["layer_00"] == rewards["layer_09"] == -env.world_model.predict(info["bits"])[0]
    assert info["bits"] == [2] * 10  # under budget: kept as asked
    assert len(env.drain_finished()) == 3 and env.drain_finished() == []


def test_step_errors_and_bad_config(record):
    env = LayerBitsEnv(record)
    with pytest.raises(RuntimeError, match="reset"):
        env.step({})
    obs, _ = env.reset()
    with pytest.raises(ValueError, match="no action for layer_00"):
        env.step({})
    with pytest.raises(ValueError, match=r"0\.\.6"):
        env.step(dict.fromkeys(obs, 7))
    with pytest.raises(ConfigError, match="unknown bits env_config"):
        BitsGame({**record, "targt": 0.1})
    with pytest.raises(ConfigError, match="unreachable"):
        BitsGame({**record, "target": 0.01})
    with pytest.raises(ConfigError, match="target"):
        BitsGame({**record, "target": float("nan")})


def test_register_makes_the_env_by_name(record):
    from ray.tune.registry import ENV_CREATOR, _global_registry

    assert register_bits_env() == BITS_ENV_NAME
    env = _global_registry.get(ENV_CREATOR, BITS_ENV_NAME)(record)
    assert isinstance(env, LayerBitsEnv)


@pytest.mark.slow
def test_rl_search_returns_a_vector_within_budget(record, ray_cluster):
    from rlprune.quant.search import rl_bits_search

    space = QuantSpace.from_record(record["space"])
    wm = BitsWorldModel.from_state(record["world_model"])
    out = rl_bits_search(space, wm, 0.125, iters=2, train_batch_env_steps=32)
    assert out["episodes"] >= 64 and out["wm_calls"] == out["episodes"]
    assert len(out["bits"]) == 10 and all(2 <= b <= 8 for b in out["bits"])
    assert out["size_ratio"] == space.size_ratio(out["bits"])[0] <= 0.125
    assert out["predicted_drop"] == pytest.approx(wm.predict(out["bits"])[0])


def test_a_refined_world_model_rewards_from_the_next_episode(record):
    env = LayerBitsEnv(record)
    space = QuantSpace.from_record(record["space"])
    B = random_bits(space, 50, seed=3)
    refined = BitsWorldModel(space.n_layers, seed=1).fit(B, 2 * _drop(B))
    env.unwrapped.set_world_model(refined.state())
    obs, _ = env.reset(seed=0)
    _, rewards, _, _, infos = env.step(dict.fromkeys(obs, 2))
    assert rewards["layer_00"] == pytest.approx(-refined.predict(infos["layer_00"]["bits"])[0])
    with pytest.raises(ConfigError, match="layers"):
        env.unwrapped.set_world_model(BitsWorldModel(3).fit(random_bits(space, 4)[:, :3], np.ones(4)).state())


@pytest.mark.slow
def test_online_rl_search_refines_its_world_model_between_iterations(record, ray_cluster):
    from rlprune.quant.online import BitsLearner
    from rlprune.quant.search import rl_bits_search

    space = QuantSpace.from_record(record["space"])
    wm = BitsWorldModel.from_state(record["world_model"])
    B = random_bits(space, 200, seed=0)
    learn = BitsLearner(wm, B, _drop(B), _drop, seed=0)
    out = rl_bits_search(space, wm, 0.125, iters=2, train_batch_env_steps=32, online_top=2, learn=learn)
    assert out["online_rounds"] == 2 and out["real_evals"] == learn.real_evals == 4
    assert out["wm_calls"] > out["episodes"]  # the re-scoring after each round is counted too
    assert len({tuple(b) for rd in learn.rounds for b in rd["bits"]}) == 4
    assert out["predicted_drop"] == pytest.approx(learn.world_model.predict(out["bits"])[0])
    assert out["size_ratio"] <= 0.125
