"""Real measurement on the test split: the comparison every report rests on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rlprune.measure.recipe import measure_base, measure_candidate
from rlprune.measure.spec import MeasureSpec
from rlprune.measure.stats import unpack_correct
from rlprune.search.baselines import measure_baselines
from rlprune.space.pruning import PruningSpace

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits(digits_task):
    model = digits_task.base_model()
    space = PruningSpace.from_model(model, digits_task.example_input())
    return digits_task, space, measure_base(digits_task, model, MeasureSpec())


def test_unpruned_candidate_matches_the_base(digits):
    task, space, base = digits
    row, _ = measure_candidate(task, space, np.zeros(space.n_groups), base,
                               MeasureSpec(recalibrate=False, finetune_steps=0))
    assert row["acc"] == pytest.approx(base["acc"]) and row["acc_drop"] == pytest.approx(0.0)
    # Scored on the validation split (to choose) and the test split (to report), with the test outcomes kept.
    assert row["val_acc"] == pytest.approx(base["val_acc"]) and row["val_drop"] == pytest.approx(0.0)
    assert row["acc_ci"] == pytest.approx(base["acc_ci"]) and row["acc_ci"][0] < row["acc"] <= row["acc_ci"][1]
    correct = unpack_correct(row["test_correct"])
    assert len(correct) == task.evaluate(task.base_model(), "test")["n"]
    assert 100 * correct.mean() == pytest.approx(row["acc"])
    assert row["macs_ratio"] == 1.0 and row["params_ratio"] == 1.0


def test_finetuning_recovers_accuracy(digits):
    task, space, base = digits
    ratios = np.full(space.n_groups, 0.6)
    plain, _ = measure_candidate(task, space, ratios, base, MeasureSpec(finetune_steps=0))
    tuned, pruned = measure_candidate(task, space, ratios, base, MeasureSpec(finetune_steps=60))
    assert tuned["acc"] > plain["acc"]
    assert tuned["macs_ratio"] == plain["macs_ratio"] < 0.4
    assert sum(p.numel() for p in pruned.parameters()) == pytest.approx(tuned["params_ratio"] * space.base_params)


def test_baselines_share_one_budget_and_are_measured(digits):
    task, space, _ = digits
    rows = measure_baselines(task, space, 0.5, MeasureSpec(finetune_steps=0))
    assert {r["method"] for r in rows} == {"uniform", "larger_group", "depth", "global_l1"}
    for r in rows:
        assert r["macs_ratio"] <= 0.5 and 0 <= r["acc"] <= 100 and r["base_acc"] >= 97


def test_baselines_cli_json_and_bad_target(digits):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = [sys.executable, "-m", "rlprune.cli", "baselines", "--task", "digits"]
    r = subprocess.run([*run, "--target-params", "0.6", "--json"], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert isinstance(out, list) and {m["method"] for m in out} >= {"uniform", "global_l1"}
    assert all(m["budget"] == "params" and m["params_ratio"] <= 0.6 and "acc_drop" in m for m in out)
    bad = subprocess.run([*run, "--target-macs", "1.5"], capture_output=True, text=True, env=env, timeout=600)
    assert bad.returncode == 2 and "--target-macs 1.5" in bad.stderr
