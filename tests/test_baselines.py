"""Baselines: every method lands on the same budget; searches use their predictor budget honestly."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from rlprune.errors import ConfigError
from rlprune.search.baselines import RULES, cem, global_threshold_ratios, random_search, rule_ratios, run_baselines
from rlprune.space.pruning import PruningSpace, count_ops_and_params
from tests.arch_zoo import MobileNetTiny, PlainFlatten

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
    # One more channel kept anywhere would break the budget or the ranking: the result is tight.
    assert cm.budget_ratio(r)[0] > 0.4
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


def test_run_baselines_collects_everything_on_one_budget():
    torch.manual_seed(0)
    sp = PruningSpace.from_model(PlainFlatten().eval(), X)
    out = run_baselines(sp.cost_model, 0.5, scores=sp.channel_scores(), predict=sensitive_first_group, n_calls=256)
    assert [b.method for b in out] == [*RULES, "global_l1", "random_search", "cem"]
    for b in out:
        assert b.macs_ratio <= 0.5 + 1e-9 and "predicted_acc_drop" in b.to_dict()
    assert len(run_baselines(sp.cost_model, 0.5)) == len(RULES)
