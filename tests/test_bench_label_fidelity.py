"""``benchmarks/label_fidelity.py``: every label scored against validation finals, resuming, shards, the vectors it
shares with the SPN-fidelity benchmark, and the rule that picks a task's default label.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.bench_helpers import assert_in_ci, read_rows, run_script


@pytest.mark.slow
def test_quick_label_fidelity_scores_every_label_against_validation_finals(quick, bench):
    """Every k has its label (accuracy, loss, cost) per vector; the final is the validation recipe on the
    validation split for two seeds (re-measured here); every Spearman interval contains its estimate; section 2
    trains every SPN within one budget and says the quick data are too few; a rerun with the same --work reads
    the vectors and the SPN comparison back instead of measuring and training again."""
    from rlprune.measure.recipe import prune_and_score
    from rlprune.measure.spec import MeasureSpec
    from rlprune.spn.nets import one_thread
    from rlprune.tasks import get_task

    out, _ = quick("label_fidelity")
    lf = bench("label_fidelity")
    rows = read_rows(out / "label_fidelity_quick.csv")
    steps = (0, 10, 25)
    assert len(rows) == 12 and {r["target"] for r in rows} == {0.3, 0.5, 0.7}
    for r in rows:
        assert r["final_split"] == "validation" and (r["final_seed_1"], r["final_seed_2"]) == (1, 2)
        assert r["final_acc"] == pytest.approx((r["final_acc_1"] + r["final_acc_2"]) / 2)
        assert r["macs_ratio"] <= r["target"] + 1e-9  # projected onto the target from below
        for k in steps:
            assert 0 <= r[f"acc_k{k}"] <= 100 and r[f"loss_k{k}"] > 0 and r[f"s_k{k}"] > 0
    assert np.mean([r["s_k25"] for r in rows]) > np.mean([r["s_k0"] for r in rows])  # fine-tune steps cost time
    # The final is the validation recipe scored on the validation split, with fine-tune seed 1.
    task = get_task("digits", seed=0)
    spec = MeasureSpec(finetune_steps=int(rows[0]["final_steps"]))
    with one_thread():
        space = spec.task_space(task)
        _, val = prune_and_score(lf.reseeded(task, 1), space, json.loads(rows[0]["ratios"]), spec, finetune=True,
                                 split="validation")
    assert val["acc"] == pytest.approx(rows[0]["final_acc_1"])
    # The two finals are two fine-tune seeds of one recipe: some vector must score differently under them.
    assert (lf.reseeded(task, 2).finetune_seed, task.finetune_seed) == (2, 0)
    assert any(r["final_acc_1"] != r["final_acc_2"] for r in rows)
    summary = lf.summarise(rows)
    labels = {(s["k"], s["metric"]) for s in summary}
    assert labels == {(k, m) for k in steps for m in ("acc", "loss")} | {("final", "acc")}
    assert {s["scope"] for s in summary} == {"all", "within", "0.3", "0.5", "0.7"}
    for s in summary:
        if np.isfinite(s["rho"]):
            assert_in_ci(s["rho"], s["lo"], s["hi"])
    md = (out / "label_fidelity_quick.md").read_text()
    assert "final seed 1 vs seed 2" in md and "within-target" in md and "Cheapest label" in md

    # Section 2: single- vs multi-fidelity SPNs at one sample-generation budget, scored on held-out finals.
    comparison = read_rows(out / "label_fidelity_spn_quick.csv")
    by = {(c["arm"], c["scope"]): c for c in comparison}
    assert {a for a, _ in by} == {"final", "k=0", "k=10", "k=25", "multi"}
    assert {s for _, s in by} == {"within", "0.3", "0.5", "0.7"}
    for c in comparison:
        assert c["spent_s"] <= c["budget_s"] + 0.01  # nobody buys more than the budget
        if np.isfinite(c["rho"]):
            assert_in_ci(c["rho"], c["lo"], c["hi"])
    final, multi = by[("final", "within")], by[("multi", "within")]
    assert final["spent_s"] == pytest.approx(final["budget_s"], abs=0.01) and final["cheap"] == 0
    assert 0 < multi["finals"] < final["finals"] and multi["cheap"] > 0  # fewer finals, bought cheap labels
    assert str(multi["fidelities"]).split()[-1] == str(rows[0]["final_steps"])  # predicts at the final's
    assert all(np.isfinite(by[(a, "within")]["rho"]) for a in ("final", "k=0", "multi"))  # all trained
    assert "Single- vs multi-fidelity SPN" in md and "its numbers are noise" in md
    figures = lf.headline(rows, comparison)
    assert {"label_fidelity_digits_spn_final_spearman", "label_fidelity_digits_spn_multi_spearman",
            "label_fidelity_digits_spn_best_k"} <= set(figures)
    (cached,) = (out / "work").glob("spn-compare-*.json")
    cached_at = cached.stat().st_mtime_ns

    again = out / "again"
    proc = run_script("label_fidelity", "--quick", "--results-dir", str(again), "--work", str(out / "work"),
                      timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "vector 0: labels" not in proc.stderr  # nothing was measured this time
    assert read_rows(again / "label_fidelity_quick.csv") == rows
    assert pd.read_csv(again / "label_fidelity_spn_quick.csv").equals(pd.read_csv(out / "label_fidelity_spn_quick.csv"))
    assert cached.stat().st_mtime_ns == cached_at  # read back, not retrained


@pytest.mark.slow
def test_label_fidelity_shards_measure_disjoint_vectors_into_one_folder(quick):
    """``--shard 1/2`` measures only the odd vectors that --work lacks (here vector 5 of each target; 1 and 3 are
    read back), writes no tables; a bad shard or one without --work is refused before anything is measured."""
    out, _ = quick("label_fidelity")
    work = out / "work"
    before = {p.name for p in work.glob("t*-v*.json")}
    cmd = ["--quick", "--vectors", "6", "--results-dir", str(out / "shard"), "--work", str(work)]
    proc = run_script("label_fidelity", *cmd, "--shard", "1/2", timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    new = {p.name for p in work.glob("t*-v*.json")} - before
    assert new == {f"t{t}-v005.json" for t in ("0.3", "0.5", "0.7")}
    assert "9 vectors" in proc.stderr and "(6 read back)" in proc.stderr
    assert not (out / "shard").exists() or not list((out / "shard").iterdir())
    for bad, why in ((["--shard", "2/2"], "0 <= I < M"), (["--shard", "1/2"], "--shard needs --work")):
        args = cmd[:-2] + bad if why.startswith("--shard needs") else [*cmd, *bad]
        proc = run_script("label_fidelity", *args, timeout=120)
        assert proc.returncode == 2 and why in proc.stderr


@pytest.mark.slow
def test_within_budget_and_label_fidelity_share_their_vectors(digits_task, bench, tmp_path):
    """The SPN fidelity's within-budget section (k=0 label, first final) and the label-fidelity study measure
    with one loop into one row format: the study, run into the same folder, keeps the section's measurements
    and only adds its other labels and its second final."""
    from rlprune.measure.spec import MeasureSpec
    from rlprune.spn.nets import one_thread

    wb, lf = bench("spn_within_budget"), bench("label_fidelity")
    spec = MeasureSpec(finetune_steps=5, eval_batches=1)
    with one_thread():
        first, read = wb.measure(digits_task, "digits", spec, 1, 0, tmp_path)
        assert read == 0 and len(first) == len(wb.TARGETS)
        assert all("final_acc_2" not in r and "acc_k10" not in r for r in first)
        assert [r["final_acc"] for r in first] == [r["final_acc_1"] for r in first]
        assert [r["bn_acc"] for r in first] == [r["acc_k0"] for r in first]
        study, read = lf.run(digits_task, "digits", spec, wb.TARGETS, 1, (0, 10), 0, tmp_path)
        again, read_again = wb.measure(digits_task, "digits", spec, 1, 0, tmp_path)
    assert read == 0 and read_again == len(first)  # the study added to every row; the section only reads
    for a, s, b in zip(first, study, again, strict=True):
        assert (s["acc_k0"], s["final_acc_1"], s["ratios"]) == (a["acc_k0"], a["final_acc_1"], a["ratios"])
        assert s["fingerprint"] == a["fingerprint"] and "acc_k10" in s
        assert s["final_acc"] == pytest.approx((s["final_acc_1"] + s["final_acc_2"]) / 2)
        assert b["final_acc"] == a["final_acc"]  # the section's final stays the first, whatever the study added


def test_cheapest_label_must_meet_the_rule_at_every_target(bench):
    """A label ranking far below the final where the finals discriminate is not excused by a target where they
    do not (low seed-to-seed agreement there), even when its mean within-target Spearman would be; a target whose
    finals agree with their own second seed only by chance (interval across 0) judges no label."""
    lf = bench("label_fidelity_tables")

    def rows(k, cost, per_target, half_width=0.2):
        out = [{"k": k, "metric": "acc", "cost_s": cost, "scope": "within", "rho": float(np.mean(per_target))}]
        return out + [{"k": k, "metric": "acc", "cost_s": cost, "scope": t, "rho": r, "lo": r - half_width,
                       "hi": r + half_width} for t, r in zip(("0.3", "0.7"), per_target, strict=True)]

    final = rows("final", 90.0, [0.9, 0.3])  # the mean bound is 0.6
    cheap = rows(0, 5.0, [0.7, 0.5])  # mean 0.6: "within 0.1" of the mean bound, but 0.2 below it at 0.3
    dear = rows(25, 17.0, [0.85, 0.2])  # >= 0.8 at 0.3, within 0.1 of the bound at 0.7
    assert lf.cheapest(final + cheap + dear)["k"] == 25
    assert lf.cheapest(final + cheap) is None
    flat = [dict(r, rho=float("nan")) if r["scope"] == "0.7" else r for r in final]  # finals all equal at 0.7
    assert lf.cheapest(flat + rows(0, 5.0, [0.82, float("nan")]))["k"] == 0
    # Finals that agree with their own second seed only by chance at 0.7 (interval across 0) judge no label there:
    # a label failing only at 0.7 passes; the same label where that agreement is real does not.
    noisy = rows("final", 90.0, [0.9, 0.25], half_width=0.6)
    real = rows("final", 90.0, [0.9, 0.25], half_width=0.2)
    mute = rows(25, 17.0, [0.85, -0.05])
    assert lf.cheapest(noisy + mute)["k"] == 25 and lf.cheapest(real + mute) is None
    assert not lf.informative(noisy[-1]) and lf.informative(real[-1])
