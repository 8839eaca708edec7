"""Bootstrap intervals and the paired comparison in ``rlprune.measure.stats``."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from scipy.stats import binomtest

from rlprune.measure.stats import _mcnemar_exact, accuracy_ci, describe, paired_difference


def _vector(n: int, k: int, seed: int = 0) -> np.ndarray:
    """n outcomes with exactly k correct, in shuffled order."""
    out = np.zeros(n, dtype=bool)
    out[:k] = True
    return np.random.default_rng(seed).permutation(out)


def _pair(n: int, both: int, a_only: int, b_only: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Paired outcomes with the given cell counts (the rest wrong for both), shuffled together."""
    a = np.zeros(n, dtype=bool)
    b = np.zeros(n, dtype=bool)
    a[:both] = b[:both] = True
    a[both:both + a_only] = True
    b[both + a_only:both + a_only + b_only] = True
    perm = np.random.default_rng(seed).permutation(n)
    return a[perm], b[perm]


# --- accuracy_ci -------------------------------------------------------------------------------------------


def test_interval_contains_point_estimate_and_narrows_with_n():
    widths = []
    for n in (100, 400, 1600):
        correct = _vector(n, int(0.8 * n))
        lo, hi = accuracy_ci(correct)
        assert lo < 80.0 < hi
        widths.append(hi - lo)
    # Width scales as 1/sqrt(n): quadrupling n roughly halves it.
    assert widths[0] > widths[1] > widths[2]
    assert widths[0] / widths[1] == pytest.approx(2.0, rel=0.15)
    assert widths[1] / widths[2] == pytest.approx(2.0, rel=0.15)


def test_half_width_matches_normal_approximation():
    lo, hi = accuracy_ci(_vector(400, 200))
    expected = 100 * 1.96 * math.sqrt(0.25 / 400)  # 4.9 points
    assert (hi - lo) / 2 == pytest.approx(expected, abs=0.4)
    assert (lo + hi) / 2 == pytest.approx(50.0, abs=0.5)


def test_binomial_shortcut_matches_index_resampling():
    # The shortcut must agree with the textbook bootstrap (resample image indices, re-average).
    correct = _vector(300, 240, seed=3)
    rng = np.random.default_rng(1)
    idx = rng.integers(0, correct.size, size=(10_000, correct.size))
    brute = np.quantile(100 * correct[idx].mean(axis=1), [0.025, 0.975])
    lo, hi = accuracy_ci(correct)
    assert lo == pytest.approx(brute[0], abs=0.5)
    assert hi == pytest.approx(brute[1], abs=0.5)


def test_coverage_by_simulation():
    # Intervals from many datasets drawn at a known accuracy should contain it about 95% of the time.
    true_p, n, reps = 0.8, 300, 600
    rng = np.random.default_rng(123)
    hits = 0
    for r in range(reps):
        lo, hi = accuracy_ci(rng.random(n) < true_p, n_boot=1000, seed=r)
        hits += lo <= 100 * true_p <= hi
    assert 0.91 <= hits / reps <= 0.98


def test_degenerate_all_correct_and_level():
    assert accuracy_ci(np.ones(50, dtype=bool)) == (100.0, 100.0)
    assert accuracy_ci([0] * 50) == (0.0, 0.0)
    correct = _vector(400, 300)
    lo90, hi90 = accuracy_ci(correct, level=0.90)
    lo99, hi99 = accuracy_ci(correct, level=0.99)
    assert hi90 - lo90 < hi99 - lo99


def test_accuracy_ci_deterministic_given_seed():
    correct = _vector(500, 377)
    assert accuracy_ci(correct, seed=7) == accuracy_ci(correct, seed=7)
    # 0/1 ints and bools are the same data.
    assert accuracy_ci(correct.astype(int), seed=7) == accuracy_ci(correct, seed=7)


def test_large_inputs_are_fast():
    correct = _vector(10_000, 9_000)
    a, b = _pair(10_000, 8_800, 200, 150)
    start = time.perf_counter()
    accuracy_ci(correct, n_boot=10_000)
    paired_difference(a, b, n_boot=10_000)
    assert time.perf_counter() - start < 1.0


# --- paired_difference -------------------------------------------------------------------------------------


def test_identical_vectors_are_no_difference():
    a = _vector(359, 350)
    res = paired_difference(a, a.copy())
    assert res["diff"] == 0.0
    assert res["diff_ci"] == [0.0, 0.0]
    assert res["p_value"] == 1.0
    assert res["real"] is False
    assert (res["a_only"], res["b_only"], res["n"]) == (0, 0, 359)


def test_large_true_difference_is_real():
    # 90% vs 70% on 1,000 paired images: A right on 250 images B misses, B right on 50 A misses.
    a, b = _pair(1000, 650, 250, 50)
    assert a.mean() == pytest.approx(0.9) and b.mean() == pytest.approx(0.7)
    res = paired_difference(a, b)
    assert res["diff"] == pytest.approx(20.0)
    lo, hi = res["diff_ci"]
    assert 0 < lo < 20.0 < hi
    assert res["real"] is True
    assert res["p_value"] < 1e-20
    assert res["acc_a"] == pytest.approx(90.0) and res["acc_b"] == pytest.approx(70.0)


def test_small_difference_is_not_real():
    # Two images apart on digits-sized data: noise.
    a, b = _pair(359, 340, 5, 3)
    res = paired_difference(a, b)
    assert res["diff"] == pytest.approx(100 * 2 / 359)
    assert res["diff_ci"][0] < 0 < res["diff_ci"][1]
    assert res["real"] is False
    assert res["p_value"] > 0.5


def test_swapping_methods_negates_difference():
    a, b = _pair(500, 380, 30, 12, seed=4)
    ab, ba = paired_difference(a, b), paired_difference(b, a)
    assert ba["diff"] == pytest.approx(-ab["diff"])
    assert ba["diff_ci"][0] == pytest.approx(-ab["diff_ci"][1], abs=0.25)
    assert ba["diff_ci"][1] == pytest.approx(-ab["diff_ci"][0], abs=0.25)
    assert ba["p_value"] == ab["p_value"]
    assert (ba["a_only"], ba["b_only"]) == (ab["b_only"], ab["a_only"])


def test_paired_interval_much_narrower_than_unpaired():
    # Highly correlated methods: 1,000 images, 785 right for both, 15 only A, 5 only B.
    a, b = _pair(1000, 785, 15, 5)
    lo, hi = paired_difference(a, b)["diff_ci"]
    rng = np.random.default_rng(0)
    ia = rng.integers(0, a.size, size=(5000, a.size))
    ib = rng.integers(0, b.size, size=(5000, b.size))
    unpaired = 100 * (a[ia].mean(axis=1) - b[ib].mean(axis=1))
    ulo, uhi = np.quantile(unpaired, [0.025, 0.975])
    assert hi - lo < 0.4 * (uhi - ulo)
    # The unpaired interval would hide a difference the paired one can resolve at this effect size.
    assert ulo < 0 < uhi


def test_multinomial_shortcut_matches_paired_index_resampling():
    a, b = _pair(400, 300, 25, 10, seed=2)
    rng = np.random.default_rng(5)
    idx = rng.integers(0, a.size, size=(10_000, a.size))
    brute = np.quantile(100 * (a[idx].mean(axis=1) - b[idx].mean(axis=1)), [0.025, 0.975])
    lo, hi = paired_difference(a, b)["diff_ci"]
    assert lo == pytest.approx(brute[0], abs=0.3)
    assert hi == pytest.approx(brute[1], abs=0.3)


@pytest.mark.parametrize(("a_only", "b_only"), [(0, 6), (1, 9), (5, 3), (7, 7), (40, 20), (120, 80), (0, 0)])
def test_exact_mcnemar_matches_scipy(a_only, b_only):
    expected = 1.0 if a_only + b_only == 0 else binomtest(a_only, a_only + b_only, 0.5).pvalue
    assert _mcnemar_exact(a_only, b_only) == pytest.approx(expected, rel=1e-9)


def test_mcnemar_hand_value():
    # 6 discordant images, all favour B: p = 2 * (1/2)^6.
    a, b = _pair(100, 80, 0, 6)
    assert paired_difference(a, b)["p_value"] == pytest.approx(2 / 64)


def test_paired_difference_deterministic_and_json_ready():
    a, b = _pair(600, 500, 20, 9, seed=8)
    first = paired_difference(a, b, seed=11)
    assert first == paired_difference(a, b, seed=11)
    assert json.loads(json.dumps(first)) == first


# --- describe ----------------------------------------------------------------------------------------------


def test_describe_sentences():
    real = describe(paired_difference(*_pair(1000, 650, 250, 50)))
    assert real.startswith("+20.00 points (95% CI +")
    assert "p < 0.001" in real and real.endswith(": a real difference")
    noise = describe({"diff": 0.42, "diff_ci": [-0.10, 0.95], "p_value": 0.1234, "real": False, "n": 359})
    assert noise == "+0.42 points (95% CI -0.10 to +0.95, p = 0.12, n = 359): not a real difference at this sample size"
    neg = describe(paired_difference(*_pair(359, 300, 2, 30), level=0.9))
    assert neg.startswith("-7.80 points (90% CI -") and neg.endswith(": a real difference")


# --- errors --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: accuracy_ci([]), "correct is empty"),
        (lambda: paired_difference([], []), "correct_a is empty"),
        (lambda: paired_difference([1, 0, 1], [1, 0]), "3 examples but correct_b has 2"),
        (lambda: accuracy_ci([0, 1, 2]), r"only 0/1 or bool.*\[2\]"),
        (lambda: accuracy_ci([0.0, 0.5j, 1.0]), r"only 0/1 or bool.*0.5j"),
        (lambda: accuracy_ci([0.0, np.nan]), "only 0/1 or bool"),
        (lambda: accuracy_ci(["yes", "no"]), "only 0/1 or bool"),
        (lambda: paired_difference([0, 1], [0, 3]), "correct_b must hold only 0/1"),
        (lambda: accuracy_ci([[0, 1], [1, 1]]), "1-D"),
        (lambda: accuracy_ci([0, 1], level=0.0), "level=0.0"),
        (lambda: accuracy_ci([0, 1], level=1.0), "level=1.0"),
        (lambda: paired_difference([0, 1], [1, 1], level=95), "level=95"),
        (lambda: accuracy_ci([0, 1], n_boot=99), "n_boot=99"),
        (lambda: paired_difference([0, 1], [1, 1], n_boot=10), "n_boot=10"),
        (lambda: accuracy_ci([0, 1], n_boot=500.5), "n_boot=500.5"),
    ],
)
def test_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("n", [1, 7, 8, 359, 10_000])
def test_packed_outcomes_round_trip(n):
    from rlprune.measure.stats import pack_correct, unpack_correct

    correct = np.random.default_rng(n).random(n) < 0.9
    text = pack_correct(correct)
    assert text.startswith(f"{n}:") and len(text) < n // 6 + 16
    assert np.array_equal(unpack_correct(text), correct)
    with pytest.raises(ValueError, match="packed outcome vector"):
        unpack_correct(f"{n + 8}:{text.split(':', 1)[1]}")
    with pytest.raises(ValueError, match="not a packed outcome vector"):
        unpack_correct("garbage")


# --- float scores (user metrics: IoU, F1, PSNR, ...) --------------------------------------------------------


def _scores(n: int, mean: float = 30.0, sd: float = 5.0, seed: int = 0) -> np.ndarray:
    """n per-example float scores (PSNR-like, in the metric's own points)."""
    return np.random.default_rng(seed).normal(mean, sd, n)


def test_float_interval_contains_mean_and_narrows_with_n():
    widths = []
    for n in (100, 400, 1600):
        scores = _scores(n, seed=n)
        lo, hi = accuracy_ci(scores)
        assert lo < scores.mean() < hi
        # Scores are already in points: no factor of 100, and width ~ 2 * 1.96 * sd / sqrt(n).
        assert hi - lo == pytest.approx(2 * 1.96 * scores.std() / math.sqrt(n), rel=0.12)
        widths.append(hi - lo)
    assert widths[0] / widths[1] == pytest.approx(2.0, rel=0.15)
    assert widths[1] / widths[2] == pytest.approx(2.0, rel=0.15)


def test_float_interval_matches_index_resampling_and_is_seeded():
    scores = np.random.default_rng(3).random(300)  # IoU-like, in [0, 1)
    rng = np.random.default_rng(1)
    brute = np.quantile(scores[rng.integers(0, scores.size, size=(10_000, scores.size))].mean(axis=1),
                        [0.025, 0.975])
    lo, hi = accuracy_ci(scores)
    assert lo == pytest.approx(brute[0], abs=0.004) and hi == pytest.approx(brute[1], abs=0.004)
    assert accuracy_ci(scores, seed=7) == accuracy_ci(list(scores), seed=7)
    assert accuracy_ci(scores.astype(np.float32), seed=7)[0] == pytest.approx(accuracy_ci(scores, seed=7)[0])
    assert accuracy_ci(np.full(50, 0.75)) == (0.75, 0.75)


def test_metric_points_for_both_kinds():
    from rlprune.measure.stats import metric_points

    assert metric_points(_vector(400, 300)) == pytest.approx(75.0)
    assert metric_points([0, 1, 1, 1]) == pytest.approx(75.0)
    assert metric_points([0.0, 1.0, 1.0, 1.0]) == pytest.approx(75.0)  # 0/1 floats read as outcomes
    assert metric_points([0.25, 0.5, 0.75]) == pytest.approx(0.5)
    assert metric_points(_scores(100)) == pytest.approx(_scores(100).mean())


def test_zero_one_floats_take_the_binary_path():
    from rlprune.measure.stats import pack_correct, unpack_correct

    correct = _vector(500, 377)
    as_float = correct.astype(float)
    assert accuracy_ci(as_float, seed=5) == accuracy_ci(correct, seed=5)
    a, b = _pair(300, 250, 12, 4)
    assert paired_difference(a.astype(np.float32), b.astype(float)) == paired_difference(a, b)
    text = pack_correct(as_float)
    assert text == pack_correct(correct) and not text.startswith("f")
    assert unpack_correct(text).dtype == bool


def test_float_paired_difference_is_the_mean_difference():
    a = _scores(500, seed=1)
    b = a - 0.3 + np.random.default_rng(2).normal(0.0, 1.0, a.size)
    res = paired_difference(a, b)
    assert res["diff"] == pytest.approx(a.mean() - b.mean())
    assert res["acc_a"] == pytest.approx(a.mean()) and res["acc_b"] == pytest.approx(b.mean())
    assert (res["a_only"], res["b_only"]) == (int((a > b).sum()), int((b > a).sum()))
    lo, hi = res["diff_ci"]
    assert lo < res["diff"] < hi
    # Paired: the width follows the spread of a - b (sd 1), not of the scores themselves (sd 5).
    assert hi - lo == pytest.approx(2 * 1.96 * (a - b).std() / math.sqrt(a.size), rel=0.12)
    assert json.loads(json.dumps(res)) == res
    assert res == paired_difference(a, b)
    swapped = paired_difference(b, a)
    assert swapped["diff"] == pytest.approx(-res["diff"])
    assert (swapped["a_only"], swapped["b_only"]) == (res["b_only"], res["a_only"])
    assert swapped["p_value"] == pytest.approx(res["p_value"], abs=0.01)


def test_sign_flip_p_small_for_a_clear_shift_and_large_for_none():
    a = np.random.default_rng(4).random(400)
    noise = np.random.default_rng(5).normal(0.0, 0.1, 200)
    shifted = paired_difference(a, a - 0.05 + np.concatenate([noise, -noise]))
    assert shifted["real"] is True and shifted["p_value"] < 0.001
    assert describe(shifted).endswith("p < 0.001, n = 400): a real difference")
    # Differences exactly symmetric about 0: no evidence either way.
    none = paired_difference(a, a + np.concatenate([noise, -noise]))
    assert none["diff"] == pytest.approx(0.0, abs=1e-12)
    assert none["p_value"] > 0.9 and none["real"] is False
    assert none["diff_ci"][0] < 0 < none["diff_ci"][1]


def test_sign_flip_p_agrees_with_paired_t_test():
    from scipy.stats import ttest_rel

    a = _scores(200, seed=6)
    b = a - 0.15 + np.random.default_rng(11).normal(0.0, 1.0, a.size)
    p = paired_difference(a, b)["p_value"]
    assert 0.005 < p < 0.2  # a borderline case, so the comparison is informative
    assert p == pytest.approx(ttest_rel(a, b).pvalue, abs=0.015)


def test_sign_flip_is_exact_with_few_nonzero_differences():
    # 5 examples differ, all in A's favour: only the identity and the all-flipped labelling are as extreme,
    # so the exact two-sided p is 2 / 2^5; examples with equal scores carry no information.
    a = np.full(50, 0.5)
    b = a.copy()
    b[[3, 9, 17, 30, 41]] -= [0.3, 0.2, 0.5, 0.1, 0.4]
    res = paired_difference(a, b)
    assert res["p_value"] == pytest.approx(2 / 32)
    assert (res["a_only"], res["b_only"]) == (5, 0)


def test_identical_float_vectors_are_no_difference():
    a = _scores(359)
    res = paired_difference(a, a.copy())
    assert (res["diff"], res["diff_ci"], res["p_value"], res["real"]) == (0.0, [0.0, 0.0], 1.0, False)


def test_mixed_zero_one_and_fractional_scores_share_units():
    # A metric that came out exactly 0 or 1 on every example is still a score when compared with one that
    # did not: the difference is in the metric's units, not accuracy points.
    a = np.array([1.0, 0.0, 1.0, 1.0] * 50)
    b = np.array([0.5, 0.25, 0.75, 1.0] * 50)
    res = paired_difference(a, b)
    assert res["diff"] == pytest.approx(0.125)
    assert res["acc_a"] == pytest.approx(0.75) and res["acc_b"] == pytest.approx(0.625)


def test_float_resampling_memory_is_bounded_for_large_inputs():
    import tracemalloc

    a = _scores(10_000, seed=8)
    b = a - 0.1 + np.random.default_rng(9).normal(0.0, 1.0, a.size)
    tracemalloc.start()
    try:
        accuracy_ci(a, n_boot=10_000)
        paired_difference(a, b, n_boot=10_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # One (n_boot x n) index matrix would be 400 MB (int32) plus 800 MB of gathered scores.
    assert peak < 150e6


@pytest.mark.parametrize("n", [1, 7, 359, 10_000])
def test_packed_float_scores_round_trip(n):
    from rlprune.measure.stats import pack_correct, unpack_correct

    scores = _scores(n, mean=0.6, sd=0.2, seed=n)
    text = pack_correct(scores)
    assert text.startswith(f"f{n}:") and len(text) < 4 * n * 4 // 3 + 16
    back = unpack_correct(text)
    assert back.dtype == np.float64 and back.shape == (n,)
    np.testing.assert_allclose(back, scores, rtol=1e-7, atol=0)
    body = text.split(":", 1)[1]
    with pytest.raises(ValueError, match="packed outcome vector holds"):
        unpack_correct(f"f{n + 1}:{body}")
    for bad in (f"f{n}:{body[:-4]}!!!!", f"fx:{body}", f"f-1:{body}", f"f{n}"):
        with pytest.raises(ValueError, match="not a packed outcome vector"):
            unpack_correct(bad)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: accuracy_ci([0.3, np.nan, 0.2]), r"correct holds 1 NaN/inf value\(s\) \(first at index \[1\]\)"),
        (lambda: paired_difference([0.3, 0.4], [0.1, np.inf]), "correct_b holds 1 NaN/inf"),
        (lambda: paired_difference([0.3, 0.4], [0.1]), "2 examples but correct_b has 1"),
        (lambda: _pack([0.5, -np.inf]), "NaN/inf"),
        (lambda: _metric_points([np.nan]), "finite float scores"),
        (lambda: _pack([0.5, 1e39]), "beyond float32"),
    ],
)
def test_float_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def _pack(values):
    from rlprune.measure.stats import pack_correct

    return pack_correct(values)


def _metric_points(values):
    from rlprune.measure.stats import metric_points

    return metric_points(values)


# ---------------------------------------------------------------------------------------- rank correlation
@pytest.mark.filterwarnings("ignore:An input array is constant")
def test_spearman_matches_scipy_with_ties():
    from scipy.stats import spearmanr

    from rlprune.measure.ranking import spearman

    rng = np.random.default_rng(3)
    for n in (3, 7, 30):
        for _ in range(10):
            x = rng.integers(0, 4, n).astype(float)  # many ties, as accuracies on a small split have
            y = x + rng.integers(0, 3, n)
            want = spearmanr(x, y).statistic
            got = spearman(x, y)
            assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, abs=1e-12)
    assert math.isnan(spearman([1, 2, 3], [5, 5, 5])) and math.isnan(spearman([1, 2], [1, 2]))


def test_spearman_ci_contains_its_estimate_and_groups_average_within():
    from rlprune.measure.ranking import spearman, spearman_ci

    rng = np.random.default_rng(0)
    x = rng.normal(size=36)
    groups = np.repeat([0.3, 0.5, 0.7], 12)
    y = 0.7 * x + rng.normal(size=36) + 10 * groups  # the groups differ in level
    s = spearman_ci(x, y, seed=1)
    assert s["ci"][0] <= s["rho"] <= s["ci"][1] and s["n"] == 36 and s["level"] == 0.95
    assert s == spearman_ci(x, y, seed=1)  # seeded
    within = spearman_ci(x, y, groups=groups)
    per_group = [spearman(x[groups == g], y[groups == g]) for g in (0.3, 0.5, 0.7)]
    assert within["rho"] == pytest.approx(np.mean(per_group))
    assert within["ci"][0] <= within["rho"] <= within["ci"][1]
    # A perfect ranking resamples to a perfect ranking; a constant side has no ranking at all.
    assert spearman_ci(np.arange(10), np.arange(10) ** 2)["ci"] == [1.0, 1.0]
    flat = spearman_ci([1.0, 2.0, 3.0, 4.0], [2.0] * 4)
    assert math.isnan(flat["rho"]) and all(math.isnan(v) for v in flat["ci"])
    # Few items with ties: the interval still reaches the estimate.
    tied = spearman_ci([97.4, 96.7, 97.0, 97.4], [96.7, 97.0, 97.0, 97.0])
    assert tied["ci"][0] <= tied["rho"] <= tied["ci"][1]


@pytest.mark.parametrize(("args", "match"), [
    (([1, 2, 3], [1, 2]), "x has 3 values but y has 2"),
    (([1, 2, float("nan")], [1, 2, 3]), "must be finite"),
])
def test_spearman_rejects_unpaired_or_missing_values(args, match):
    from rlprune.measure.ranking import spearman, spearman_ci

    for fn in (spearman, spearman_ci):
        with pytest.raises(ValueError, match=match):
            fn(*args)
    with pytest.raises(ValueError, match="one group key per item"):
        spearman_ci([1, 2, 3], [1, 2, 3], groups=[0, 1])
