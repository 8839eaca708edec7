"""``benchmarks/targets.py``: every method answers every target (trained and unseen) from below with equal counted
budgets, and the paired conditioned-minus-CEM interval resamples test images with all their targets.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.bench_helpers import assert_in_ci, read_rows, run_script


@pytest.mark.slow
def test_quick_targets_answers_every_target_with_equal_budgets(quick, bench):
    """Every method at every training and unseen target, on the target from below, with an interval around its
    accuracy; validation chooses; the black-box searches spend N/K of the conditioned training's counted calls per
    target; the policy answers an unseen target without a search."""
    out, _ = quick("targets")
    targets = bench("targets")
    rows = read_rows(out / "targets_quick.csv")
    answers = [r for r in rows if r["kind"] != "train"]
    train = [r for r in rows if r["kind"] == "train"]
    assert [r["method"] for r in train] == ["conditioned_rl"] and train[0]["spn_calls"] > 0
    trained_at = sorted({r["target"] for r in answers if r["kind"] == "trained"})
    assert trained_at == [0.3, 0.7] and sorted({r["target"] for r in answers if r["kind"] == "unseen"}) == [0.45, 0.65]
    per_target = max(1, int(train[0]["spn_calls"]) // len(trained_at))
    for t in {r["target"] for r in answers}:
        mine = [r for r in answers if r["target"] == t]
        assert sorted(r["method"] for r in mine) == sorted(targets.METHODS)
        best = max(mine, key=lambda r: (r["val_acc"], -r["params_ratio"], r["method"]))
        assert {r["chosen"] for r in mine} == {best["method"]}  # chosen on validation, whatever the test says
        for r in mine:
            assert r["macs_ratio"] <= t + 1e-9
            assert_in_ci(r["acc"], r["acc_ci_lo"], r["acc_ci_hi"])
            if r["method"] in ("random_search", "cem"):
                assert 0 < r["spn_calls"] <= per_target and r["answer_s"] == pytest.approx(r["search_s"], abs=1e-3)
            if r["method"] == "conditioned_rl":  # no search: the saved policy answers
                assert r["search_s"] == 0 and r["spn_calls"] == 2 and r["answer_s"] < 1.0
    summary = {s["method"]: s for s in targets.summarise(rows)}
    assert summary["conditioned_rl"]["spn_calls"] == train[0]["spn_calls"] + 2 * len({r["target"] for r in answers})
    md = (out / "targets_quick.md").read_text()
    assert "## Per method" in md and "## Per target" in md
    # Conditioned RL minus CEM over every target, paired on the test images that every method was scored on.
    got = targets.paired_over_targets(rows, "conditioned_rl", "cem")
    mean = {m: np.mean([r["acc"] for r in answers if r["method"] == m]) for m in ("conditioned_rl", "cem")}
    assert got["diff"] == pytest.approx(mean["conditioned_rl"] - mean["cem"], abs=1e-3)
    assert_in_ci(got["diff"], *got["diff_ci"])
    assert "Conditioned RL minus CEM" in md and "95% paired interval" in md

    # Resumable per seed: the same --work again reads the finished seed's rows back (a fresh machine gets them
    # from --keep-rows) instead of searching and measuring again.
    again, kept = out / "again", out / "kept"
    proc = run_script("targets", "--quick", "--results-dir", str(again), "--work", str(out / "work"),
                      "--keep-rows", str(kept), timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "done (validation picks" not in proc.stderr
    assert (again / "targets_quick.csv").read_text() == (out / "targets_quick.csv").read_text()
    assert len(list(kept.rglob("rows-*.json"))) == 1
    assert list(kept.glob("*/samples/shards/*.parquet"))  # and the seed's sample store, for a seed cut short


def test_conditioned_minus_cem_resamples_images_with_all_their_targets(bench):
    """One seed, two targets, 200 images: A beats B on the first 100 images at target 0.3 and loses on the same
    images at 0.7, so per image the two targets cancel: the difference is exactly 0 with a zero-width interval
    (resampling (image, target) pairs separately would give a wide one). Rows without per-image outcomes
    (older runs) give None."""
    from rlprune.measure.stats import pack_correct

    targets = bench("targets")
    first = np.arange(200) < 100

    def row(method, target, correct):
        return {"kind": "trained", "seed": 0, "target": target, "method": method,
                "test_correct": pack_correct(correct)}

    rows = [row("a", 0.3, first), row("b", 0.3, np.zeros(200, bool)),
            row("a", 0.7, np.zeros(200, bool)), row("b", 0.7, first)]
    got = targets.paired_over_targets(rows, "a", "b")
    assert got["diff"] == 0 and got["diff_ci"] == [0.0, 0.0] and not got["real"]
    # A right on every image at both targets, B on the first half at both: +50 points, clearly real.
    rows = [row("a", t, np.ones(200, bool)) for t in (0.3, 0.7)] + [row("b", t, first) for t in (0.3, 0.7)]
    got = targets.paired_over_targets(rows, "a", "b")
    assert got["diff"] == pytest.approx(50.0) and got["n"] == 200 and got["real"] and got["diff_ci"][0] > 0
    assert targets.paired_over_targets([{**r, "test_correct": None} for r in rows], "a", "b") is None
