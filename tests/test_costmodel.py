"""CostModel on its own: validation, batching, serialisation, budget targeting (numpy only)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from rlprune.errors import ConfigError
from rlprune.space.costmodel import CostModel, keep_counts
from rlprune.space.pruning import PruningSpace
from tests.arch_zoo import DenseNetTiny


@pytest.fixture(scope="module")
def cm() -> CostModel:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PruningSpace.from_model(DenseNetTiny().eval(), torch.randn(1, 3, 32, 32)).cost_model


def test_batch_equals_single(cm):
    R = np.random.default_rng(0).uniform(0, cm.max_ratio, (50, cm.n_groups))
    P, M = cm.cost_batch(R)
    for i in range(0, 50, 7):
        assert cm.cost(R[i]) == (round(P[i]), round(M[i]))


def test_cost_is_monotone_in_each_group(cm):
    base = np.full(cm.n_groups, 0.2)
    for g in range(cm.n_groups):
        more = base.copy()
        more[g] = 0.7
        assert cm.cost(more)[0] < cm.cost(base)[0]
        assert cm.cost(more)[1] < cm.cost(base)[1]


def test_round_trip_through_dict(cm):
    again = CostModel.from_dict(cm.to_dict())
    R = np.random.default_rng(1).uniform(0, cm.max_ratio, (20, cm.n_groups))
    np.testing.assert_array_equal(cm.cost_batch(R)[1], again.cost_batch(R)[1])
    assert again.round_to == cm.round_to and again.max_ratio == cm.max_ratio


def test_keep_counts_rounding():
    C = np.array([16, 16, 10])
    R = np.array([[0.3, 0.0, 0.9]])
    assert keep_counts(R, C, 8).tolist() == [[8, 16, 8]]
    assert keep_counts(R, C, 1).tolist() == [[12, 16, 1]]


@pytest.mark.parametrize("budget", ["macs", "params"])
@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
def test_uniform_for_target_is_the_least_pruning_that_meets_target(cm, budget, target):
    r = cm.uniform_for_target(target, budget)
    col = 0 if budget == "params" else 1

    def frac(x):
        return cm.cost_batch(np.full((1, cm.n_groups), x))[col][0] / cm.base[col]

    assert frac(r) <= target + 1e-9
    assert frac(r - 1e-3) > target  # a hair less pruning misses it: nothing is over-pruned


def test_unreachable_target_and_bad_budget(cm):
    with pytest.raises(ConfigError, match="unreachable"):
        cm.uniform_for_target(0.001)
    with pytest.raises(ConfigError, match="budget"):
        cm.uniform_for_target(0.5, "latency")


@pytest.mark.parametrize("R, match", [
    (np.zeros((3, 2)), "shape"),
    (np.full((1, 4), np.inf), "finite"),
    (np.full((1, 4), 1.5), "outside"),
])
def test_matrix_validation(cm, R, match):
    with pytest.raises(ConfigError, match=match):
        cm.cost_batch(R)


def test_constructor_checks_shapes(cm):
    d = cm.to_dict()
    d["max_ratio"] = 1.5
    with pytest.raises(ValueError, match="max_ratio"):
        CostModel.from_dict(d)


@pytest.mark.parametrize("budget", ["macs", "params"])
def test_project_to_budget_meets_target_minimally(cm, budget):
    rng = np.random.default_rng(3)
    R = rng.uniform(0, 0.3, (40, cm.n_groups))
    R[:5] = cm.max_ratio * 0.95  # these already meet the target and must not move
    P = cm.project_to_budget(R, 0.5, budget)
    assert P.shape == R.shape and np.all(P >= R - 1e-12) and np.all(P <= cm.max_ratio)
    assert np.all(cm.budget_ratio(P, budget) <= 0.5 + 1e-12)
    np.testing.assert_array_equal(P[:5], R[:5])
    # Backing off a little along the same path misses the target: nothing is pruned more than needed.
    moved = np.abs(P - R).sum(axis=1) > 1e-9
    back = P - 1e-7 * (cm.max_ratio - R)
    assert moved.sum() >= 30 and np.all(cm.budget_ratio(back[moved], budget) > 0.5)
    assert cm.project_to_budget(R[7], 0.5, budget).shape == (cm.n_groups,)


def test_projection_leaves_no_raised_group_lowerable(cm):
    R = np.random.default_rng(5).uniform(0, 0.4, (25, cm.n_groups))
    P = cm.project_to_budget(R, 0.45)
    for r, p in zip(R, P, strict=True):
        for g in np.flatnonzero(p > r + 1e-12):
            lower = p.copy()
            # One channel step back (or back to the request) must break the budget.
            lower[g] = max(r[g], (np.floor(p[g] * cm.channels[g] + 1e-9) - 1) / cm.channels[g])
            assert cm.budget_ratio(lower)[0] > 0.45


def test_achieved_ratios_never_exceed_max_ratio_and_are_idempotent():
    cm = CostModel(channels=np.array([64, 10]), dim_size=np.array([64.0, 10.0]), dim_coef=np.eye(2),
                   term_in=np.array([-1, -1]), term_out=np.array([0, 1]),
                   params_coef=np.array([[0, 0, 1.0, 0], [0, 0, 1.0, 0]]), macs_coef=np.zeros((2, 4)),
                   round_to=4, max_ratio=0.9)
    # 0.9 of 64 removes 57, keeps 7 -> rounded down to 4 would remove 0.9375 > max_ratio: round up to 8.
    a = cm.achieved([0.9, 0.9])
    assert a[0] == pytest.approx(56 / 64) and np.all(a <= 0.9)
    np.testing.assert_array_equal(cm.achieved(a), a)


def test_bisect_first_finds_the_first_fitting_integer_in_log_steps():
    from rlprune.space.costmodel import bisect_first

    calls = []

    def fits(i):
        calls.append(i)
        return i >= 37

    assert bisect_first(fits, 0, 100) == 37 and len(calls) <= 7  # log2(100) evaluations
    assert bisect_first(fits, 40, 50) == 40
    calls.clear()
    assert bisect_first(fits, 0, 37) == 37 and max(calls) < 37  # none fits: hi, which is never evaluated
    assert bisect_first(fits, 5, 5) == 5


@pytest.mark.parametrize("budget", ["macs", "params"])
def test_scale_to_target_is_the_least_scale_that_meets_target(cm, budget):
    col = 0 if budget == "params" else 1
    for direction in (np.linspace(0.2, 1.0, cm.n_groups), np.linspace(1.0, 0.1, cm.n_groups)):
        for target in (0.35, 0.6):
            s = cm.scale_to_target(direction, target, budget, tol=1e-4)

            def frac(x, d=direction):
                return cm.cost_batch(np.clip(x * d, 0, cm.max_ratio)[None, :])[col][0] / cm.base[col]

            assert frac(s) <= target and frac(s - 1e-4) > target


def test_meets_target_is_the_slack_band_just_below_the_target():
    from rlprune.space.costmodel import TARGET_SLACK, meets_target

    assert TARGET_SLACK == 0.01
    assert meets_target(0.5, 0.5) is True and meets_target(0.495, 0.5) and meets_target(0.3 * 0.99, 0.3)
    assert not meets_target(0.4949, 0.5) and not meets_target(0.5 + 1e-9, 0.5)
    np.testing.assert_array_equal(meets_target(np.array([0.69, 0.6931, 0.7, 0.7001]), 0.7),
                                  [False, True, True, False])


@pytest.mark.parametrize("budget", ["macs", "params"])
def test_relaxed_projection_brings_every_row_up_to_the_target_from_below(cm, budget):
    rng = np.random.default_rng(11)
    R = rng.uniform(0, cm.max_ratio, (40, cm.n_groups)) * rng.uniform(0.2, 1.0, (40, 1))
    target = 0.6
    before = cm.budget_ratio(R, budget)
    assert (before < 0.99 * target).sum() >= 10 and (before > target).sum() >= 10  # both ways exercised
    P = cm.project_to_budget(R, target, budget, relax=True)
    assert P.shape == R.shape and np.all((0 <= P) & (P <= cm.max_ratio))
    assert np.all(cm.budget_ratio(P, budget) <= target + 1e-12)
    # As close as single channels allow: no pruned group could keep one more channel.
    for p in P:
        for g in np.flatnonzero(np.floor(p * cm.channels + 1e-9) > 0):
            more = p.copy()
            more[g] = (np.floor(p[g] * cm.channels[g] + 1e-9) - 1) / cm.channels[g]
            assert cm.budget_ratio(more, budget)[0] > target
    # Target 1 asks for nothing: every row comes back unpruned.
    np.testing.assert_array_equal(cm.project_to_budget(R, 1.0, budget, relax=True), 0.0)


def test_give_back_bisection_matches_a_full_scan_of_breakpoints(cm):
    """The give-back bisects on channel breakpoints; a brute-force scan of every breakpoint agrees."""
    rng = np.random.default_rng(13)
    R = rng.uniform(0, 0.5, (30, cm.n_groups))
    target = 0.4
    raised = np.full_like(R, cm.max_ratio)  # everything raised to max_ratio, then given back in forward order
    out = cm._give_back(R, raised, target, "macs")
    brute = raised.copy()
    for i in range(len(R)):
        for g in range(cm.n_groups):
            C = cm.channels[g]
            for cand in [R[i, g], *(np.arange(int(np.floor(cm.max_ratio * C + 1e-9)) + 1) / C)]:
                if R[i, g] <= cand < brute[i, g]:
                    trial = brute[i].copy()
                    trial[g] = cand
                    if cm.budget_ratio(trial)[0] <= target + 1e-12:
                        brute[i, g] = cand
                        break
    np.testing.assert_array_equal(out, brute)
