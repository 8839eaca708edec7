"""The policy folder: a trained shared module saved with its space, settings and SPN, replayed without Ray.

A tiny PPO training on PlainFlatten against a (randomly initialised, untrained) SPN is enough: what is tested
is that the folder plays exactly what RLlib's env runners would play, meets every target from below, counts
costs exactly, and refuses targets and models it was not trained for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rlprune.errors import CheckpointError, ConfigError
from rlprune.policy import load, save
from rlprune.space.costmodel import meets_target
from rlprune.space.pruning import FEATURE_NAMES
from tests.test_env import plain_record

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def spn_path(tmp_path_factory):
    """An SPN over PlainFlatten (fingerprint ``fp-plain``): untrained but deterministic, which is all we need."""
    from rlprune.spn.predictor import SPN, SPNConfig, save_spn

    record = plain_record()
    G, F = np.asarray(record["features"]).shape
    norm = {"feat_mean": np.zeros(F), "feat_std": np.ones(F), "target_mean": np.array([5.0, 1.0]),
            "target_std": np.array([2.0, 0.5])}
    spn = SPN(SPNConfig(members=2), FEATURE_NAMES, norm, features={"fp-plain": record["features"]}, seed=0)
    return save_spn(spn, tmp_path_factory.mktemp("spn") / "spn.pt")


def _trained(env_config, attention=False):
    from rlprune.policies import build_ppo_config

    algo = build_ppo_config(env_config, train_batch_env_steps=16, num_epochs=1, attention=attention,
                            seed=0).build_algo()
    algo.train()
    return algo


@pytest.mark.slow
@pytest.mark.parametrize("attention, mode", [(False, "simultaneous"), (True, "sequential")],
                         ids=["mlp-simultaneous", "attention-sequential"])
def test_saved_policy_replays_rllibs_greedy_episode_and_meets_every_target(ray_cluster, spn_path, tmp_path,
                                                                            attention, mode):
    from rlprune.envs import LayerPruningEnv
    from rlprune.policies import SHARED_POLICY, greedy_episode
    from rlprune.spn.predictor import load_spn

    env_config = {"space": plain_record(), "reward": "spn", "spn": str(spn_path), "target": [0.3, 0.8],
                  "mode": mode, "budget": "macs"}
    algo = _trained(env_config, attention)
    try:
        path = save(tmp_path / "policy", algo.get_module(SHARED_POLICY), algo.config.env_config, spn_path,
                    normalize_actions=algo.config.normalize_actions, clip_actions=algo.config.clip_actions,
                    meta={"iterations": 1})
        assert sorted(p.name for p in path.iterdir()) == ["actor.pt2", "module.pt", "policy.json", "spn.pt"]
        assert not (tmp_path / "policy.tmp").exists()
        policy = load(path)
        assert policy.target_range == (0.3, 0.8) and policy.budget == "macs" and policy.fingerprint == "fp-plain"
        env = LayerPruningEnv(algo.config.env_config)
        spn = load_spn(spn_path)
        cm = env.cost_model
        for t in (0.3, 0.45, 0.65, 0.8):
            got = policy.apply(t)
            want = greedy_episode(algo, env, seed=0, target=t)
            # The same vector RLlib's env runners would play, through the same box mapping.
            np.testing.assert_allclose(got["policy_ratios"], want["requested"], atol=1e-5)
            # Exact costs of the answer, on the target from below, and the SPN's drop for it.
            params, macs = cm.cost(got["ratios"])
            assert (got["params"], got["macs"]) == (params, macs)
            assert got["macs_ratio"] == pytest.approx(macs / cm.base[1]) and got["budget_ratio"] == got["macs_ratio"]
            # From below always; within 1% where PlainFlatten's coarse channel steps (round_to=4) allow it.
            assert got["macs_ratio"] <= t + 1e-9 and got["meets_target"] == meets_target(got["macs_ratio"], t)
            mean, _ = spn.predict(np.array([got["ratios"]]), "fp-plain")
            assert got["predicted_acc_drop"] == pytest.approx(float(mean[0]), rel=1e-5)
            moved = not np.allclose(cm.achieved(np.array(got["policy_ratios"])), got["ratios"])
            assert got["projected"] == moved and ("projected onto it" in got["note"]) == moved
            assert got["apply_s"] < 1.0
    finally:
        algo.stop()

    with pytest.raises(ConfigError, match=r"target 0.9 lies outside the range .*\[0.3, 0.8\].*--targets 0.3:0.9"):
        policy.apply(0.9)
    with pytest.raises(ConfigError, match="trained for model fp-plain, not for abc"):
        load(path, fingerprint="abc")
    spec = json.loads((path / "policy.json").read_text())
    assert spec["env"]["mode"] == mode and spec["meta"] == {"iterations": 1}


@pytest.mark.slow
def test_policy_cli_answers_without_ray_in_well_under_a_second(ray_cluster, spn_path, tmp_path):
    from rlprune.policies import SHARED_POLICY

    env_config = {"space": plain_record(), "reward": "spn", "spn": str(spn_path), "target": [0.3, 0.8]}
    algo = _trained(env_config)
    try:
        path = save(tmp_path / "policy", algo.get_module(SHARED_POLICY), algo.config.env_config, spn_path,
                    normalize_actions=True, clip_actions=False)
        expected = load(path).apply(0.45)
    finally:
        algo.stop()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # From Python, in a fresh process: no Ray module is ever imported, and the answer is the same.
    code = (f"import sys, json; from rlprune.policy import load; a = load({str(path)!r}).apply(0.45); "
            "assert not [m for m in sys.modules if m == 'ray' or m.startswith('ray.')], 'ray imported'; "
            "print(json.dumps(a))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    fresh = json.loads(r.stdout)
    assert fresh["ratios"] == pytest.approx(expected["ratios"]) and fresh["apply_s"] < 1.0
    # The CLI verb.
    cli = [sys.executable, "-m", "rlprune.cli", "policy", "apply", "--policy", str(path)]
    r = subprocess.run([*cli, "--target", "0.45", "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["ratios"] == pytest.approx(expected["ratios"]) and out["target"] == 0.45 and out["macs_ratio"] <= 0.45
    r = subprocess.run([*cli, "--target", "0.45"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and "ratios:" in r.stdout and "predicted accuracy drop" in r.stdout
    r = subprocess.run([*cli, "--target", "0.95"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "target 0.95 lies outside the range" in r.stderr


def test_not_a_policy_folder_is_one_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match=r"missing policy\.json, actor\.pt2.*rlprune search --targets"):
        load(tmp_path)
    with pytest.raises(ConfigError, match="space"):
        save(tmp_path / "p", None, {"task": "digits", "reward": "spn"}, "x.pt", normalize_actions=True,
             clip_actions=False)
