"""RL search end to end on digits: PPO against a real SPN, online real evaluations, checkpoint and resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rlprune.errors import ConfigError
from rlprune.samples.spaces import read_spaces
from rlprune.samples.store import read_samples
from rlprune.search.rl import SearchConfig, run_search
from rlprune.spn.predictor import load_spn, save_spn
from rlprune.spn.train import FitConfig, fit
from tests.spn_helpers import real_samples_store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def spn_path(digits_task, tmp_path_factory):
    store = real_samples_store(digits_task)
    df = read_samples(store)
    spn = fit("transformer", df, read_spaces(store), FitConfig(max_steps=400))
    path = tmp_path_factory.mktemp("spn") / "spn.pt"
    save_spn(spn, path)
    return path


def _cfg(spn_path, out, **kw):
    base = dict(spn=str(spn_path), out=str(out), iters=2, train_batch=64, online_every=1, online_top=2, workers=1)
    return SearchConfig(**{**base, **kw})


def test_online_search_meets_budget_refines_spn_and_resumes(ray_cluster, spn_path, tmp_path):
    out = tmp_path / "search"
    first = run_search(_cfg(spn_path, out), progress=False)
    assert first["macs_ratio"] <= 0.5 + 1e-9 and len(first["ratios"]) == 6
    assert first["iterations"] == 2 and (out / "checkpoint").is_dir() and (out / "result.json").is_file()
    rounds = first["online_rounds"]
    assert [r["version"] for r in rounds] == [1, 2] and all(r["n_real"] == 2 for r in rounds)
    # The SPN was fine-tuned on the fresh real samples and its checkpoint says so. (That a fine-tune lowers the
    # error on its new rows is tested on fixed data in test_world_model; here, on two rows picked by a PPO run,
    # the SPN can already be right, so a fall is not guaranteed.)
    assert all(r["changed"] and r["n_new"] == 2 and r["mae_after"] != r["mae_before"] for r in rounds)
    online = read_samples(out / "samples")
    assert set(online["sample_id"]) <= set(load_spn(out / "world_model" / "world_model.pt").meta["train_ids"])
    # The report's "before" is what the search believed before the real evaluation (not the tuned SPN's view).
    for r in rounds:
        err = np.abs(np.subtract(r["predicted_before"], r["real_acc_drop"])).mean()
        assert err == pytest.approx(r["mae_before"], abs=1e-3), (r["predicted_before"], r["real_acc_drop"])
    # The real evaluations landed in the sample store, marked as online samples.
    assert len(online) == 4 and (online["sampler"] == "online").all()
    # Budgets are counted: every SPN call (episodes, the greedy episode, re-scoring) and every real evaluation.
    assert first["real_evals"] == 4 and first["spn_calls"] >= first["episodes"] + first["iterations"]

    resumed = run_search(_cfg(spn_path, out, iters=3), progress=False)
    state = json.loads((out / "checkpoint" / "rlprune_search.json").read_text())
    assert resumed["iterations"] == 3 and [h["iteration"] for h in state["history"]] == [1, 2, 3]
    assert [r["version"] for r in resumed["online_rounds"]] == [1, 2, 3]
    # Env copies picked up the world model's new weights.
    assert max(resumed["spn_versions"]) >= 1

    with pytest.raises(ConfigError, match="other settings"):
        run_search(_cfg(spn_path, out, iters=4, target=0.3), progress=False)


def test_sequential_offline_search_on_params(ray_cluster, spn_path, tmp_path):
    r = run_search(_cfg(spn_path, tmp_path / "s", iters=1, mode="sequential", budget="params", target=0.6,
                        online=False), progress=False)
    assert r["params_ratio"] <= 0.6 + 1e-9 and r["online_rounds"] == []


@pytest.mark.parametrize("kw, match", [({"target": 0.0}, "target"), ({"mode": "x"}, "mode"), ({"iters": 0}, "iters")])
def test_bad_search_config(tmp_path, kw, match):
    with pytest.raises(ConfigError, match=match):
        SearchConfig(spn="x.pt", out=str(tmp_path), **kw)


def test_search_cli_missing_spn_is_one_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "rlprune.cli", "search", "--spn", str(tmp_path / "none.pt"),
                        "--target-macs", "0.5", "--out", str(tmp_path / "o")], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 2 and "no SPN checkpoint" in r.stderr and "Traceback" not in r.stderr


def test_amc_style_search_with_real_reward(ray_cluster, digits_task, tmp_path):
    r = run_search(SearchConfig(spn=None, reward="real", online=False, out=str(tmp_path / "amc"), iters=1,
                                train_batch=8, measure={"eval_batches": 1}), progress=False)
    assert r["macs_ratio"] <= 0.5 + 1e-9 and r["predicted_acc_drop_std"] is None
    assert r["spn_versions"] == []
    assert r["spn_calls"] == 0 and r["real_evals"] >= r["episodes"] >= 1  # every episode paid a real evaluation
    with pytest.raises(ConfigError, match="online"):
        SearchConfig(spn=None, reward="real", out=str(tmp_path / "x"))
    with pytest.raises(ConfigError, match="spn"):
        SearchConfig(spn=None, out=str(tmp_path / "x"))


def test_conditioned_search_bins_candidates_saves_a_policy_and_resumes(ray_cluster, spn_path, digits_task, tmp_path):
    from rlprune.io import model_fingerprint
    from rlprune.policy import load

    out = tmp_path / "cond"
    r = run_search(_cfg(spn_path, out, target=(0.3, 0.8)), progress=False)
    assert r["conditioned"] and r["target"] == [0.3, 0.8] and len(r["per_target"]) == 5
    for b in r["per_target"]:  # the greedy policy is played at every bin's centre: no bin is empty
        assert b["ratios"] is not None and len(b["ratios"]) == 6
        assert b["target_lo"] - 1e-9 <= b["episode_target"] <= b["target_hi"] + 1e-9
        assert b["macs_ratio"] <= b["episode_target"] + 1e-9  # the wall used the episode's own target
    assert [x["target_hi"] for x in r["per_target"]] == pytest.approx([0.4, 0.5, 0.6, 0.7, 0.8])
    rounds = r["online_rounds"]
    assert [x["n_real"] for x in rounds] == [2, 2] and r["real_evals"] == 4
    # The policy folder answers any target of the range for this model, and refuses others.
    policy = load(r["policy"], fingerprint=model_fingerprint(digits_task.base_model()))
    assert policy.target_range == (0.3, 0.8) and policy.spec["meta"]["iterations"] == 2
    for t in (0.35, 0.45, 0.65):
        answer = policy.apply(t)
        assert answer["macs_ratio"] <= t + 1e-9 and answer["meets_target"] and answer["apply_s"] < 1.0
    with pytest.raises(ConfigError, match="outside the range"):
        policy.apply(0.2)

    resumed = run_search(_cfg(spn_path, out, target=(0.3, 0.8), iters=3), progress=False)
    state = json.loads((out / "checkpoint" / "rlprune_search.json").read_text())
    assert resumed["iterations"] == 3 and len(state["pool"]["bins"]) == 5
    assert load(resumed["policy"]).spec["meta"]["iterations"] == 3
    with pytest.raises(ConfigError, match="other settings"):
        run_search(_cfg(spn_path, out, target=(0.3, 0.7), iters=4), progress=False)


@pytest.mark.parametrize("argv, match", [
    (["--targets", "0.3:0.8", "--target-macs", "0.5"], "not both"),
    (["--targets", "0.3-0.8"], "LO:HI"),
    (["--targets", "0.8:0.3"], "LO < HI"),
    ([], "give --target-macs"),
])
def test_search_targets_flag(argv, match):
    from rlprune.cli import build_parser
    from rlprune.cli.search import search_target

    args = build_parser().parse_args(["search", "--spn", "x.pt", "--out", "o", *argv])
    with pytest.raises(ConfigError, match=match):
        search_target(args)
    ok = build_parser().parse_args(["search", "--spn", "x.pt", "--out", "o", "--targets", "0.3:0.8", "--budget",
                                    "params"])
    assert search_target(ok) == ((0.3, 0.8), "params")
    with pytest.raises(ConfigError, match="target"):
        SearchConfig(spn="x.pt", out="o", target=(0.8, 0.3))
