"""LayerPruningEnv: RLlib's contract, both modes, the budget wall, penalties, config errors, reward sources."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import torch
from ray.rllib.utils.pre_checks.env import check_multiagent_environments

from rlprune.envs import CONTEXT_NAMES, ENV_NAME, LayerPruningEnv, LayerPruningEnvConfig, register_envs
from rlprune.envs.rewards import team_reward
from rlprune.errors import ConfigError
from rlprune.measure.spec import MeasureSpec
from rlprune.samples.spaces import space_record
from rlprune.space.pruning import FEATURE_NAMES, PruningSpace
from tests.arch_zoo import PlainFlatten

MODEL = {"model": "tests.arch_zoo:PlainFlatten", "input_shape": [3, 32, 32]}


def quadratic_drop(ratios, info):
    """A stand-in accuracy model: dropping grows with the square of the mean ratio (points)."""
    return 20.0 * float(np.mean(ratios) ** 2)


@functools.cache
def plain_record() -> dict:
    """A space record of PlainFlatten (round_to=4, so rounding matters), built once so tests skip re-tracing."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        space = PruningSpace.from_model(PlainFlatten().eval(), torch.zeros(1, 3, 32, 32), round_to=4)
    return space_record("plain", space, 90.0, 0.3, "fp-plain", MeasureSpec())


@pytest.fixture
def record():
    return plain_record()


def make(record, **kw):
    return LayerPruningEnv({"space": record, "reward": quadratic_drop, **kw})


def run_episode(env, policy, seed=0):
    """Play one episode with ``policy(agent_id) -> ratio``; return the last step's results and obs order."""
    obs, _ = env.reset(seed=seed)
    order, done = [], False
    while not done:
        order.append(sorted(obs))
        obs, rewards, terms, truncs, infos = env.step({a: np.array([policy(a)], np.float32) for a in obs})
        done = terms["__all__"]
        assert not truncs["__all__"]
    return obs, rewards, terms, infos, order


# ------------------------------------------------------------------ contract
@pytest.mark.parametrize("mode", ["simultaneous", "sequential"])
def test_rllib_checker_passes(record, mode):
    env = make(record, mode=mode)
    check_multiagent_environments(env)
    check_multiagent_environments(make(record, mode=mode, obs_all_groups=True, enforce="penalty"))
    assert env.agents == env.possible_agents == [f"group_{i:02d}" for i in range(env.n_groups)]
    for aid in env.possible_agents:
        assert env.action_spaces[aid].shape == (1,)
        assert env.action_spaces[aid].high[0] == pytest.approx(0.9)
        assert env.observation_spaces[aid].shape == (len(FEATURE_NAMES) + len(CONTEXT_NAMES),)


def test_minimal_config_traces_a_model_by_spec():
    env = LayerPruningEnv({**MODEL, "reward": quadratic_drop})
    assert env.n_groups == 4 and env.config.target == 0.5
    obs, _ = env.reset()
    assert set(obs) == set(env.possible_agents)
    # An nn.Module instance works as well (Python callers).
    env2 = LayerPruningEnv({"model": PlainFlatten(), "input_shape": (3, 32, 32), "reward": quadratic_drop})
    np.testing.assert_allclose(env2.features, env.features)


def test_simultaneous_episode(record):
    env = make(record)
    obs, rewards, terms, infos, order = run_episode(env, lambda a: 0.6)
    assert order == [env.possible_agents]  # one step, everyone acts
    assert set(obs) == set(rewards) == set(infos) == set(env.possible_agents)
    assert len(set(rewards.values())) == 1  # one shared team reward
    info = infos["group_00"]
    assert all(terms[a] for a in env.possible_agents)
    assert info["requested"] == pytest.approx([0.6] * env.n_groups)
    assert info["achieved"] == pytest.approx(list(env.cost_model.achieved(info["ratios"])))
    expected = -quadratic_drop(info["achieved"], {}) + 10.0 * (1 - max(info["macs_ratio"], 0.5))  # flat below
    assert rewards["group_00"] == pytest.approx(expected)
    for a, o in obs.items():  # terminal observations are valid too
        assert env.observation_spaces[a].contains(o) and o.dtype == np.float32


def test_sequential_episode_acts_in_forward_order_and_rewards_at_the_end(record):
    env = make(record, mode="sequential", enforce="penalty")
    obs, _ = env.reset(seed=0)
    ctx = len(FEATURE_NAMES)
    assert list(obs) == ["group_00"]
    assert obs["group_00"][ctx + 1] == pytest.approx(1.0)  # MACs ratio so far: nothing pruned yet
    for t, aid in enumerate(env.possible_agents[:-1]):
        assert list(obs) == [aid]
        obs, rewards, terms, truncs, infos = env.step({aid: np.array([0.5], np.float32)})
        assert rewards == {aid: 0.0} and terms == {"__all__": False} and truncs == {"__all__": False}
        nxt = env.possible_agents[t + 1]
        assert list(obs) == [nxt]
        seen = obs[nxt]
        assert seen[ctx + CONTEXT_NAMES.index("progress")] == pytest.approx((t + 1) / env.n_groups)
        assert seen[ctx + 1] < 1.0  # the choices before it shrink the MACs it sees
        assert seen[ctx + 3] > 0.0  # ... and the predicted accuracy drop
    obs, rewards, terms, truncs, infos = env.step({env.possible_agents[-1]: np.array([0.5], np.float32)})
    assert terms["__all__"] and set(rewards) == set(env.possible_agents)
    assert len(set(rewards.values())) == 1
    info = infos["group_03"]  # pruned past the target: the cost term counts the target, not the MACs
    assert info["macs_ratio"] < 0.5 and info["acc_drop"] > 0
    assert rewards["group_00"] == pytest.approx(-info["acc_drop"] + 10.0 * (1 - 0.5))
    assert infos["group_03"]["ratios"] == pytest.approx([0.5] * env.n_groups)


def test_actions_outside_the_box_are_clipped(record):
    env = make(record, enforce="penalty")
    env.reset()
    actions = zip(env.possible_agents, [-1, 2, 0.3, 5], strict=True)
    *_, infos = env.step({a: np.array([v], np.float32) for a, v in actions})
    assert infos["group_00"]["requested"] == pytest.approx([0.0, 0.9, 0.3, 0.9])


def test_step_after_the_end_or_without_an_action_raises(record):
    env = make(record)
    with pytest.raises(RuntimeError, match="reset"):
        env.step({})
    env.reset()
    with pytest.raises(ValueError, match="group_00"):
        env.step({"group_01": np.array([0.1])})


# ------------------------------------------------------------------ budget enforcement
@pytest.mark.parametrize("budget", ["macs", "params"])
@pytest.mark.parametrize("mode", ["simultaneous", "sequential"])
def test_wall_never_overshoots_and_prunes_no_more_than_needed(record, budget, mode):
    target = 0.45
    env = make(record, budget=budget, mode=mode, target=target)
    rng = np.random.default_rng(0)
    below = 0
    for episode in range(60):
        draws = rng.uniform(-0.1, 1.0, size=env.n_groups) * (0.2 if episode % 3 == 0 else 1.0)
        _, rewards, _, infos, _ = run_episode(env, lambda a, d=draws: d[env._index[a]], seed=episode)
        info = infos["group_00"]
        requested, enforced = np.array(info["requested"]), np.array(info["ratios"])
        # Never above the target (exact cost model), never below what an agent asked for.
        assert info["budget_ratio"] <= target + 1e-9
        assert info["violation"] == 0.0
        assert np.all(enforced >= requested - 1e-12)
        if env.budget_ratios(requested)[0] <= target:
            assert np.allclose(enforced, requested)  # a vector that fits is left alone (simultaneous)
        raised = np.flatnonzero(enforced > requested + 1e-12)
        below += bool(len(raised))
        if mode == "simultaneous":
            # Minimal: no raised group could be one channel step lower without breaking the target.
            C = env.cost_model.channels
            for g in raised:
                lower = enforced.copy()
                lower[g] = max(requested[g], (np.floor(enforced[g] * C[g] + 1e-9) - 1) / C[g])
                assert env.budget_ratios(lower)[0] > target, (g, enforced, requested)
        else:
            # AMC wall: a raised agent was lifted to the least ratio keeping the target reachable with the
            # agents after it at max_ratio: one channel less and even their maximum could not make it.
            for g in raised:
                C = env.cost_model.channels[g]
                lower = np.concatenate([enforced[:g + 1], np.full(env.n_groups - g - 1, 0.9)])
                lower[g] = max(requested[g], (np.floor(enforced[g] * C + 1e-9) - 1) / C)
                assert env.budget_ratios(lower)[0] > target, (g, enforced, requested)
    assert below > 10  # the property was exercised on vectors that needed the wall


def test_penalty_mode_penalises_violations(record):
    env = make(record, enforce="penalty", w_violation=100.0)
    *_, rewards, _, infos, _ = run_episode(env, lambda a: 0.05)
    info = infos["group_00"]
    assert info["ratios"] == info["requested"]  # no clipping
    assert info["violation"] == pytest.approx(info["macs_ratio"] - 0.5) and info["violation"] > 0.3
    expected = -info["acc_drop"] + 10.0 * (1 - info["macs_ratio"]) - 100.0 * info["violation"]
    assert rewards["group_00"] == pytest.approx(expected)
    *_, rewards_ok, _, infos_ok, _ = run_episode(env, lambda a: 0.8)
    assert infos_ok["group_00"]["violation"] == 0.0 and rewards_ok["group_00"] > rewards["group_00"]


@pytest.mark.parametrize("target", [0.3, 0.5, 1.0])
def test_team_reward_pays_nothing_for_compression_past_the_target(record, target):
    cfg = LayerPruningEnvConfig.from_dict({"space": record, "reward": quadratic_drop, "target": target})
    below = np.array([team_reward(2.0, b, cfg) for b in np.linspace(0.05, target, 12)])
    # Flat below the target, no violation (target 1: no pruning pressure at all, only accuracy counts).
    np.testing.assert_allclose(below, [[-2.0 + cfg.w_cost * (1 - target), 0.0]] * 12)
    above = [team_reward(2.0, b, cfg)[0] for b in np.linspace(target, 1.0, 12)]
    if target < 1.0:  # falling past it, by w_cost + w_violation per unit
        assert np.all(np.diff(above) < 0)
        assert above[-1] == pytest.approx(above[0] - (cfg.w_cost + cfg.w_violation) * (1.0 - target))


def test_wall_episode_with_the_flat_reward_ends_at_the_target_and_over_pruning_earns_nothing(record):
    env = make(record, target=0.5)
    _, rewards_lo, _, infos_lo, _ = run_episode(env, lambda a: 0.05)  # too little: the wall raises it
    _, rewards_hi, _, infos_hi, _ = run_episode(env, lambda a: 0.85)  # pruned far past the target
    lo, hi = infos_lo["group_00"], infos_hi["group_00"]
    assert lo["budget_ratio"] <= 0.5 + 1e-12 and hi["budget_ratio"] < lo["budget_ratio"]
    for info, rewards in ((lo, rewards_lo), (hi, rewards_hi)):
        assert rewards["group_00"] == pytest.approx(-info["acc_drop"] + 10.0 * (1 - 0.5))
    assert rewards_hi["group_00"] < rewards_lo["group_00"]  # the extra compression only costs accuracy


def test_observation_bounds_match_the_wall(record):
    env = make(record, mode="sequential", target=0.3)
    obs, _ = env.reset()
    base = len(FEATURE_NAMES)
    lo, hi = (obs["group_00"][base + CONTEXT_NAMES.index(k)] for k in ("ratio_lower", "ratio_upper"))
    assert 0.0 <= lo <= hi <= 0.9 + 1e-6
    # Asking for less than the lower bound gets lifted to it.
    obs, *_ = env.step({"group_00": np.array([0.0], np.float32)})
    assert env._ratios[0] == pytest.approx(lo, abs=1e-6)


def test_unreachable_target_is_a_config_error(record):
    with pytest.raises(ConfigError, match="target=0.01 is unreachable"):
        make(record, target=0.01)


# ------------------------------------------------------------------ determinism and config
def test_same_seed_same_episode(record):
    def play(seed):
        env = make(record, mode="sequential")
        rng = np.random.default_rng(seed)
        obs, _ = env.reset(seed=seed)
        trace, done = [], False
        while not done:
            acts = {a: rng.uniform(0, 0.9, size=1).astype(np.float32) for a in obs}
            obs, rewards, terms, _, _ = env.step(acts)
            trace.append((sorted((k, v.tobytes()) for k, v in obs.items()), sorted(rewards.items())))
            done = terms["__all__"]
        return trace

    assert play(3) == play(3)
    assert play(3) != play(4)


@pytest.mark.parametrize("bad, field", [
    ({"targett": 0.5}, "targett"),
    ({"target": 1.5}, "target"),
    ({"budget": "flops"}, "budget"),
    ({"enforce": "soft"}, "enforce"),
    ({"mode": "parallel"}, "mode"),
    ({"w_cost": -1.0}, "w_cost"),
    ({"max_ratio": 1.0}, "max_ratio"),
    ({"reward": "magic"}, "reward"),
    ({"reward": "spn"}, "spn"),
    ({"reward": "real"}, "real"),
    ({"measure": {"importance": "l3"}}, "importance"),
    ({"measure": {"eval_batches": 0}}, "eval_batches"),
    ({"measure": {"bn_batch": 2}}, "bn_batch"),
    ({"input_shape": None}, "input_shape"),
    ({"task_kwargs": {"data_dir": "x"}}, "task_kwargs"),
])
def test_bad_config_names_the_key(bad, field):
    with pytest.raises(ConfigError, match=field):
        LayerPruningEnvConfig.from_dict({**MODEL, "reward": quadratic_drop, **bad})


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="valid keys: task, task_kwargs, model"):
        LayerPruningEnvConfig.from_dict({**MODEL, "reward": quadratic_drop, "lr": 1})


def test_exactly_one_model_source(record):
    with pytest.raises(ConfigError, match="exactly one"):
        LayerPruningEnvConfig.from_dict({"reward": quadratic_drop})
    with pytest.raises(ConfigError, match="exactly one"):
        LayerPruningEnvConfig.from_dict({**MODEL, "space": record, "reward": quadratic_drop})
    with pytest.raises(ConfigError, match="round_to"):
        make(record, round_to=8)
    assert make(record, max_ratio=0.7).action_spaces["group_00"].high[0] == pytest.approx(0.7)


# ------------------------------------------------------------------ reward sources
def test_callable_reward_sees_achieved_ratios_and_context(record):
    calls = []

    def drop(ratios, info):
        calls.append((np.array(ratios), dict(info)))
        return 1.5

    env = LayerPruningEnv({"space": record, "reward": drop, "mode": "sequential"})
    _, rewards, _, infos, _ = run_episode(env, lambda a: 0.3)
    partial = [c for c in calls if c[1]["partial"]]
    final = [c for c in calls if not c[1]["partial"]]
    assert len(partial) == env.n_groups - 1 and len(final) == 1
    ratios, info = final[0]
    np.testing.assert_allclose(ratios, infos["group_00"]["achieved"])
    assert info["budget"] == "macs" and info["target"] == 0.5
    assert infos["group_00"]["acc_drop"] == 1.5
    assert rewards["group_00"] == pytest.approx(-1.5 + 10 * (1 - max(infos["group_00"]["macs_ratio"], 0.5)))


def test_reward_callable_by_spec(record):
    env = LayerPruningEnv({"space": record, "reward": "tests.test_env:quadratic_drop"})
    _, rewards, _, infos, _ = run_episode(env, lambda a: 0.6)
    assert infos["group_00"]["acc_drop"] == pytest.approx(quadratic_drop(infos["group_00"]["achieved"], {}))


def test_callable_reward_must_return_a_number(record):
    env = LayerPruningEnv({"space": record, "reward": lambda r, i: "bad"})
    env.reset()
    with pytest.raises(ConfigError, match="accuracy drop"):
        env.step({a: np.array([0.5]) for a in env.possible_agents})


def test_spn_reward_and_pushed_weights(record, tmp_path):
    from rlprune.spn.predictor import SPN, SPNConfig, save_spn

    G, F = np.asarray(record["features"]).shape
    norm = {"feat_mean": np.zeros(F), "feat_std": np.ones(F), "target_mean": np.array([5.0, 1.0]),
            "target_std": np.array([2.0, 0.5])}
    spn = SPN(SPNConfig(members=2), FEATURE_NAMES, norm, features={"fp-plain": record["features"]}, seed=0)
    path = save_spn(spn, tmp_path / "spn.pt")
    env = LayerPruningEnv({"space": record, "reward": "spn", "spn": str(path)})
    _, _, _, infos, _ = run_episode(env, lambda a: 0.5)
    first = infos["group_00"]
    mean, std = spn.predict(np.array([first["achieved"]]), "fp-plain")
    assert first["acc_drop"] == pytest.approx(float(mean[0]), rel=1e-5)
    assert first["acc_drop_std"] == pytest.approx(float(std[0]), rel=1e-4) and first["spn_version"] == 0
    newer = SPN(SPNConfig(members=2), FEATURE_NAMES, norm, features={"fp-plain": record["features"]}, seed=1)
    assert env.set_spn_state(newer.state(), version=1)
    assert not env.set_spn_state(spn.state(), version=1)  # not newer: ignored
    _, _, _, infos, _ = run_episode(env, lambda a: 0.5)
    assert infos["group_00"]["spn_version"] == 1 and infos["group_00"]["acc_drop"] != first["acc_drop"]


def test_set_spn_state_needs_the_spn_source(record):
    with pytest.raises(ConfigError, match="reward='spn'"):
        make(record).set_spn_state({}, 1)


@pytest.mark.slow
def test_real_reward_prunes_and_evaluates(rlprune_cache):
    env = LayerPruningEnv({"task": "tests.user_plugins:make_tiny_task", "reward": "real", "target": 0.9,
                           "budget": "params", "measure": {"eval_batches": 1, "bn_batches": 1}})
    _, rewards, _, infos, _ = run_episode(env, lambda a: 0.5)
    info = infos["group_00"]
    assert info["sample"]["acc_drop"] == pytest.approx(info["acc_drop"])
    assert info["sample"]["ratios"] == pytest.approx(info["achieved"])
    assert np.isfinite(rewards["group_00"])


def test_register_envs_makes_the_env_by_name(record):
    from ray.tune.registry import ENV_CREATOR, _global_registry

    assert register_envs() == ENV_NAME
    env = _global_registry.get(ENV_CREATOR, ENV_NAME)({"space": record, "reward": quadratic_drop})
    assert isinstance(env, LayerPruningEnv)


def test_obs_all_groups_layout(record):
    env = make(record, obs_all_groups=True, mode="sequential")
    layout = env.layout
    obs, _ = env.reset()
    o = obs["group_00"]
    assert o.shape == (layout.size,) == env.observation_spaces["group_00"].shape and o.dtype == np.float32
    F, C, G, T = layout.n_features, layout.n_context, layout.n_groups, layout.token_dim
    tokens = o[F + C: F + C + G * T].reshape(G, T)
    np.testing.assert_allclose(tokens[:, :F], env.features)
    assert tokens[:, F:].sum() == 0  # nothing chosen or decided yet
    np.testing.assert_array_equal(o[-G:], np.eye(G)[0])
    obs, *_ = env.step({"group_00": np.array([0.4], np.float32)})
    tokens = obs["group_01"][F + C: F + C + G * T].reshape(G, T)
    assert tokens[0, F] == pytest.approx(max(0.4, env._ratios[0])) and tokens[0, F + 1] == 1.0


# ------------------------------------------------------------------ target-conditioned episodes
@pytest.mark.parametrize("mode", ["simultaneous", "sequential"])
def test_rllib_checker_passes_with_a_target_range(record, mode):
    check_multiagent_environments(make(record, mode=mode, target=[0.3, 0.8]))
    check_multiagent_environments(make(record, mode=mode, target=[0.3, 0.8], obs_all_groups=True, budget="params"))


@pytest.mark.parametrize("budget", ["macs", "params"])
def test_a_range_draws_each_episodes_target_and_everything_uses_it(record, budget):
    env = make(record, target=[0.3, 0.8], budget=budget, seed=5)
    ctx = len(FEATURE_NAMES)
    targets = []
    for episode in range(40):
        obs, _ = env.reset()
        t = env.target
        targets.append(t)
        for o in obs.values():  # every agent sees the episode's target and which budget it constrains
            assert o[ctx + CONTEXT_NAMES.index("target")] == pytest.approx(t)
            assert o[ctx + CONTEXT_NAMES.index("budget")] == (1.0 if budget == "params" else 0.0)
        *_, infos = env.step({a: np.array([0.05 * (episode % 5)], np.float32) for a in obs})
        info = infos["group_00"]
        assert info["target"] == t and info["budget_ratio"] <= t + 1e-9  # the wall uses the episode's target
        expected = -info["acc_drop"] + 10.0 * (1 - max(info["budget_ratio"], t))  # so does the reward
        assert info["reward"] == pytest.approx(expected)
    assert min(targets) >= 0.3 and max(targets) <= 0.8 and len(set(targets)) == 40
    assert max(targets) - min(targets) > 0.3  # spread over the range, not stuck at one end

    assert drawn(make(record, target=[0.3, 0.8], budget=budget, seed=5), 40) == targets  # seeded: the same draws
    assert drawn(make(record, target=[0.3, 0.8], budget=budget, seed=6), 5) != targets[:5]


def drawn(env, n: int) -> list[float]:
    """The targets of ``n`` fresh episodes of ``env``."""
    out = []
    for _ in range(n):
        env.reset()
        out.append(env.target)
    return out


@pytest.mark.parametrize("mode", ["simultaneous", "sequential"])
def test_reset_option_fixes_the_target_for_one_episode(record, mode):
    env = make(record, target=[0.3, 0.8], mode=mode)
    ctx = len(FEATURE_NAMES) + CONTEXT_NAMES.index("target")
    obs, _ = env.reset(options={"target": 0.45})
    assert env.target == 0.45 and obs["group_00"][ctx] == pytest.approx(0.45)
    _, _, _, infos, _ = run_episode_from(env, obs, lambda a: 0.0)
    assert infos["group_00"]["target"] == 0.45
    assert 0.45 * 0.9 <= infos["group_00"]["budget_ratio"] <= 0.45 + 1e-9  # the wall raised it to 0.45
    env.reset()
    assert env.target != 0.45  # the next episode draws again
    fixed = make(record, target=0.5)
    fixed.reset(options={"target": 0.7})
    assert fixed.target == 0.7
    fixed.reset()
    assert fixed.target == 0.5
    with pytest.raises(ValueError, match="target=1.5"):
        env.reset(options={"target": 1.5})
    with pytest.raises(ValueError, match="unreachable"):
        env.reset(options={"target": 0.01})
    with pytest.raises(ValueError, match="'target'"):
        env.reset(options={"budget": 0.5})


def run_episode_from(env, obs, policy):
    """Finish an episode already reset (``obs``) with ``policy(agent_id) -> ratio``."""
    done = False
    while not done:
        obs, rewards, terms, truncs, infos = env.step({a: np.array([policy(a)], np.float32) for a in obs})
        done = terms["__all__"]
    return obs, rewards, terms, infos, None


@pytest.mark.parametrize("bad, match", [
    ([0.8, 0.3], "empty range"),
    ([0.5, 0.5], "empty range"),
    ([0.3], "range"),
    ([0.0, 0.5], "target lo"),
    ([0.3, 1.2], "target hi"),
    ("0.5", "target"),
])
def test_bad_target_range_names_the_value(bad, match):
    with pytest.raises(ConfigError, match=match):
        LayerPruningEnvConfig.from_dict({**MODEL, "reward": quadratic_drop, "target": bad})


def test_range_config_and_team_reward(record):
    cfg = LayerPruningEnvConfig.from_dict({"space": record, "reward": quadratic_drop, "target": [0.3, 0.8]})
    assert cfg.target == (0.3, 0.8) and cfg.target_range == (0.3, 0.8) and cfg.conditioned
    assert not LayerPruningEnvConfig.from_dict({"space": record, "reward": quadratic_drop}).conditioned
    assert team_reward(1.0, 0.2, cfg, target=0.4)[0] == pytest.approx(-1.0 + 10.0 * 0.6)
    with pytest.raises(ConfigError, match="episode's target"):
        team_reward(1.0, 0.2, cfg)
    with pytest.raises(ConfigError, match="target=0.01 is unreachable"):
        make(record, target=[0.01, 0.5])


def test_game_and_config_import_without_ray():
    """The episode logic a saved policy replays must not pull in Ray (seconds to import)."""
    import subprocess
    import sys

    code = ("import sys; import rlprune.envs.game, rlprune.envs; "
            "assert not [m for m in sys.modules if m == 'ray' or m.startswith('ray.')], 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
