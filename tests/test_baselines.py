"""Baselines: every method lands on the same budget; searches use their predictor budget honestly."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from rlprune.errors import ConfigError
from rlprune.search.baselines import (
    RULES,
    global_threshold_ratios,
    rule_direction,
    rule_ratios,
    run_baselines,
)
from rlprune.search.blackbox import blackbox_search, cem, random_search
from rlprune.space.costmodel import TARGET_SLACK, meets_target
from rlprune.space.pruning import PruningSpace, count_ops_and_params
from tests.arch_zoo import DenseNetTiny, MobileNetTiny, PlainFlatten

X = torch.randn(1, 3, 32, 32)


@pytest.fixture(scope="module")
def space():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PruningSpace.from_model(MobileNetTiny().eval(), X)


def sensitive_first_group(R):
    """A known landscape: group 0 is ten times as sensitive as the others."""
    R = np.atleast_2d(R)
    w = np.ones(R.shape[1])
    w[0] = 10.0
    return (R**2 * w).sum(axis=1) * 10


@pytest.mark.parametrize("budget", ["macs", "params"])
@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
def test_rules_meet_the_budget(space, budget, target):
    cm = space.cost_model
    for rule in RULES:
        r = rule_ratios(cm, rule, target, budget)
        assert cm.budget_ratio(r, budget)[0] <= target + 1e-9, rule
        # Close below it (a 4-group toy: one channel step can exceed TARGET_SLACK, depth at params 0.3 is 0.9895 t).
        assert cm.budget_ratio(r, budget)[0] >= 0.985 * target, rule
        assert np.all((0 <= r) & (r <= cm.max_ratio))


def test_rule_shapes(space):
    cm = space.cost_model
    depth = rule_ratios(cm, "depth", 0.5)
    assert depth[-1] >= depth[0]
    big = rule_ratios(cm, "larger_group", 0.5)
    order = np.argsort(cm.channels)
    assert big[order[-1]] >= big[order[0]]
    with pytest.raises(ConfigError, match="rule"):
        rule_ratios(cm, "biggest", 0.5)


def test_global_l1_meets_budget_and_matches_real_pruning(space):
    cm = space.cost_model
    r = global_threshold_ratios(cm, space.channel_scores("l1"), 0.5)
    assert cm.budget_ratio(r)[0] <= 0.5
    assert meets_target(cm.budget_ratio(r)[0], 0.5)  # tight: within TARGET_SLACK below the target
    pruned = space.apply(r)
    assert count_ops_and_params(pruned, X) == space.cost(r)


def test_searches_spend_exactly_their_calls_and_beat_uniform(space):
    cm = space.cost_model
    uniform = rule_ratios(cm, "uniform", 0.5)
    for search in (random_search, cem):
        r, extra = search(sensitive_first_group, cm, 0.5, n_calls=600, seed=1)
        assert extra["predictor_calls"] == 600
        assert cm.budget_ratio(r)[0] <= 0.5 + 1e-9
        assert extra["predicted_acc_drop"] < sensitive_first_group(uniform)[0]
        assert r[0] < uniform[0]  # the searches learned to spare the sensitive group


def test_cem_beats_random_search_at_equal_calls(space):
    cm = space.cost_model
    rs = [random_search(sensitive_first_group, cm, 0.4, n_calls=1024, seed=s)[1]["predicted_acc_drop"]
          for s in range(3)]
    ce = [cem(sensitive_first_group, cm, 0.4, n_calls=1024, seed=s)[1]["predicted_acc_drop"] for s in range(3)]
    assert np.mean(ce) < np.mean(rs)


@pytest.mark.parametrize("method", ["random_search", "cem"])
def test_online_blackbox_spends_its_real_evals_and_follows_the_corrected_world_model(space, method):
    """A world model blind to group 0's sensitivity; each round's real evaluations teach it a bit more."""
    cm = space.cost_model
    learned = []

    def blind(R):
        R = np.atleast_2d(R)
        return (R[:, 1:] ** 2).sum(axis=1) * 10

    def learn(vectors):
        learned.append(len(vectors))
        # The "real" landscape is sensitive_first_group; after any real evaluation the model knows it.
        return list(sensitive_first_group(np.stack(vectors))), sensitive_first_group

    offline, off = blackbox_search(method, blind, cm, 0.5, n_calls=768, seed=2)
    online, on = blackbox_search(method, blind, cm, 0.5, n_calls=768, seed=2, rounds=3, n_real=7, learn=learn)
    assert off["real_evals"] == 0 and off["predictor_calls"] == 768
    assert on["real_evals"] == sum(learned) == 7 and learned == [2, 2, 3]  # spread over the rounds, exactly
    assert [r["round"] for r in on["online_rounds"]] == [1, 2, 3]
    # Calls are counted, re-scoring included, and never pass the budget.
    assert 768 - 3 * 64 <= on["predictor_calls"] <= 768
    assert cm.budget_ratio(online)[0] <= 0.5 + 1e-9
    assert sensitive_first_group(online)[0] < sensitive_first_group(offline)[0]
    with pytest.raises(ConfigError, match="learn"):
        blackbox_search(method, blind, cm, 0.5, n_calls=64, n_real=2)


def test_run_baselines_collects_everything_on_one_budget():
    torch.manual_seed(0)
    sp = PruningSpace.from_model(PlainFlatten().eval(), X)
    out = run_baselines(sp.cost_model, 0.5, scores=sp.channel_scores(), predict=sensitive_first_group, n_calls=256)
    assert [b.method for b in out] == [*RULES, "global_l1", "random_search", "cem"]
    for b in out:
        assert b.macs_ratio <= 0.5 + 1e-9 and "predicted_acc_drop" in b.to_dict()
        # Counted spending: the searches their predictor calls, the rules none; every method its wall time.
        assert b.extra["predictor_calls"] == (256 if b.method in ("random_search", "cem") else 0)
        assert b.extra["real_evals"] == 0
        assert b.extra["search_s"] > 0
    assert len(run_baselines(sp.cost_model, 0.5)) == len(RULES)


@pytest.fixture(scope="module")
def model_spaces():
    """(cost model, channel scores) of the models the experiments prune, traced once."""
    from rlprune import models

    out = {}
    for name, channels in (("digits_resnet", 1), ("resnet20", 3), ("resnet56", 3)):
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sp = PruningSpace.from_model(getattr(models, name)().eval(), torch.zeros(1, channels, 32, 32))
        out[name] = sp.cost_model, sp.channel_scores()
    return out


@pytest.mark.parametrize("model", ["digits_resnet", "resnet20", "resnet56"])
@pytest.mark.parametrize("budget, target", [("macs", 0.3), ("macs", 0.5), ("macs", 0.7), ("params", 0.5)])
def test_every_baseline_lands_within_the_slack_below_the_target(model_spaces, model, budget, target):
    cm, scores = model_spaces[model]
    out = run_baselines(cm, target, budget, scores=scores, predict=lambda R: (R**2).sum(1), n_calls=128)
    assert [b.method for b in out] == [*RULES, "global_l1", "random_search", "cem"]
    for b in out:
        ratio = b.params_ratio if budget == "params" else b.macs_ratio
        # Measured: every method lands in the band on these models (the rules used to be 4-14% below).
        assert (1 - TARGET_SLACK) * target <= ratio <= target + 1e-12, (b.method, ratio)
        assert "meets_target" not in b.extra


@pytest.mark.parametrize("model", ["digits_resnet", "resnet20", "resnet56"])
def test_projected_rules_keep_their_shape(model_spaces, model):
    """The projection only gives channels back to the scaled rule: a few per group, never more pruning."""
    cm, _ = model_spaces[model]
    for budget, target in (("macs", 0.3), ("macs", 0.7), ("params", 0.5)):
        for rule in RULES:
            d = rule_direction(rule, cm.channels)
            scaled = cm.achieved(np.clip(cm.scale_to_target(d, target, budget) * d, 0.0, cm.max_ratio))
            kept_more = np.round((scaled - rule_ratios(cm, rule, target, budget)) * cm.channels)
            assert 0 <= kept_more.min() and kept_more.max() <= 3, (rule, budget, target, kept_more)


def test_run_baselines_flags_a_target_channel_steps_cannot_meet():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cm = PruningSpace.from_model(DenseNetTiny().eval(), X, round_to=4).cost_model  # steps of 4 of 8-24
    out = run_baselines(cm, 0.5, predict=lambda R: (R**2).sum(1), n_calls=64)
    for b in out:
        assert b.macs_ratio <= 0.5 + 1e-12
        assert b.extra.get("meets_target", True) == bool(meets_target(b.macs_ratio, 0.5))
    assert all(b.extra.get("meets_target") is False for b in out if b.method in RULES)
