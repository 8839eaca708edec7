"""Every choice after the search is made on the validation split; the test split only reports."""

from __future__ import annotations

import numpy as np
import pytest

from rlprune.errors import ConfigError
from rlprune.measure.stats import pack_correct
from rlprune.pipeline.select import comparison, feasible, pick_winner, rank_rl, within_slack


def row(method, val_acc, test_correct, macs=0.5, source="baseline", params=0.5):
    correct = np.asarray(test_correct, dtype=bool)
    return {"method": method, "source": source, "val_acc": val_acc, "acc": 100.0 * correct.mean(),
            "test_correct": pack_correct(correct), "macs_ratio": macs, "params_ratio": params}


N = 400
RNG = np.random.default_rng(0)
GOOD = RNG.random(N) < 0.95
BAD = RNG.random(N) < 0.80


def test_the_winner_is_chosen_on_validation_not_on_test():
    # "lucky" has the best test accuracy but the worse validation accuracy: it must not win.
    rows = [row("lucky", 90.0, GOOD), row("steady", 91.0, BAD, source="rl")]
    assert pick_winner(rows, 0.5, "macs")["method"] == "steady"


def test_infeasible_candidates_never_win_and_ties_prefer_the_smaller_model():
    rows = [row("over", 99.0, GOOD, macs=0.51), row("a", 90.0, BAD, params=0.6), row("b", 90.0, BAD, params=0.4)]
    assert pick_winner(rows, 0.5, "macs")["method"] == "b"
    assert not feasible(rows[0], 0.5, "macs") and feasible(rows[1], 0.5, "macs")
    with pytest.raises(ConfigError, match="meets the macs target 0.5"):
        pick_winner([rows[0]], 0.5, "macs")


def test_within_slack_is_from_below_within_one_percent():
    assert within_slack({"macs_ratio": 0.496}, 0.5, "macs") and not within_slack({"macs_ratio": 0.48}, 0.5, "macs")
    assert not within_slack({"macs_ratio": 0.501}, 0.5, "macs")


def test_comparison_pairs_rl_and_the_best_baseline_on_the_same_images():
    rows = [row("rl-a", 93.0, GOOD, source="rl"), row("rl-b", 95.0, BAD, source="rl"),
            row("uniform", 92.0, BAD), row("cem", 90.0, GOOD)]
    comp = comparison(rows, 0.5, "macs")
    # Best on validation on each side: rl-b and uniform, although rl-a and cem test better.
    assert (comp["rl"], comp["best_baseline"], comp["selection_split"]) == ("rl-b", "uniform", "validation")
    assert comp["diff"] == pytest.approx(0.0) and comp["diff_ci"] == [0.0, 0.0] and not comp["real"]
    rows[1] = row("rl-b", 95.0, GOOD, source="rl")
    comp = comparison(rows, 0.5, "macs")
    assert comp["diff"] == pytest.approx(100.0 * (GOOD.mean() - BAD.mean())) and comp["real"]
    assert comparison([r for r in rows if r["source"] == "rl"], 0.5, "macs") is None


def test_rank_rl_prefers_measured_drops_and_drops_infeasible_trials():
    trials = [{"tag": "a", "macs_ratio": 0.5, "real_acc_drop": 3.0, "predicted_acc_drop": 0.1},
              {"tag": "b", "macs_ratio": 0.49, "real_acc_drop": None, "predicted_acc_drop": 2.0},
              {"tag": "c", "macs_ratio": 0.6, "real_acc_drop": 0.0, "predicted_acc_drop": 0.0}]
    assert [t["tag"] for t in rank_rl(trials, 0.5, "macs")] == ["b", "a"]
