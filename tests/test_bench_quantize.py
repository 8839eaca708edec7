"""``benchmarks/quantize.py``: the quick run meets the size budget with equal world-model calls and resumes from kept
rows; on a pruned model the drop is reported from the unpruned one.
"""

from __future__ import annotations

import pytest

from tests.bench_helpers import assert_in_ci, read_rows, run_script


@pytest.mark.slow
def test_quick_quantize_meets_the_size_budget_with_equal_world_model_calls(quick, bench):
    """Every bits method is within the size budget after the same QAT, with an interval around its accuracy;
    random search and CEM score exactly the RL search's counted world-model calls; a rerun reads the seed back."""
    out, _ = quick("quantize")
    rows = read_rows(out / "quantize_quick.csv")
    methods = {r["method"]: r for r in rows}
    assert methods["fp32"]["size_ratio"] == 1.0
    for r in rows:
        if r["method"] != "fp32":
            assert r["size_ratio"] <= 0.125 + 1e-9 and r["finetune_steps"] == 10
            assert_in_ci(r["acc"], r["acc_ci_lo"], r["acc_ci_hi"])
    assert methods["random_search"]["wm_calls"] == methods["cem"]["wm_calls"] == methods["rl"]["wm_calls"] > 0
    assert methods["random_search"]["real_evals"] == methods["cem"]["real_evals"] == methods["rl"]["real_evals"] == 2
    assert {r["world_model"] for r in rows} == {"spn"}  # the default, and both kinds' held-out fit is recorded
    assert all(-1 <= float(r["heldout_spearman_mlp"]) <= 1 and float(r["heldout_mae_spn"]) >= 0 for r in rows)
    comps = bench("quality").comparisons(rows, budget="size")
    base = [r for r in rows if r["source"] == "baseline"]
    best = max(base, key=lambda r: (r["val_acc"], -r["params_ratio"], r["method"]))
    assert comps[0]["best_baseline"] == best["method"]  # chosen on validation
    assert comps[0]["diff"] == pytest.approx(methods["rl"]["acc"] - best["acc"], abs=0.01)
    # A fresh machine: an empty --work, and the finished seed's rows as committed with --keep-rows.
    assert len(list((out / "kept").rglob("rows-*.json"))) == 1
    proc = run_script("quantize", "--quick", "--results-dir", str(out / "again"), "--work", str(out / "fresh"),
                      "--keep-rows", str(out / "kept"), "--pruned", str(out / "pruned"), timeout=300)
    assert proc.returncode == 0 and "seed 0: done" not in proc.stderr, proc.stderr[-2000:]
    assert (out / "again" / "quantize_quick.csv").read_text() == (out / "quantize_quick.csv").read_text()


@pytest.mark.slow
def test_quick_quantize_of_a_pruned_model_reports_the_drop_from_the_unpruned_one(quick, digits_task):
    """The quick run quantizes a pruned model (``bench_helpers.quick_runs``); its markdown puts every method
    against the unpruned fp32 model on one size axis."""
    tmp_path, _ = quick("quantize")
    md = (tmp_path / "quantize_quick.md").read_text()
    assert "## Against the unpruned fp32 model" in md
    ref = float(md.split("Unpruned fp32: validation ")[1].split("test ")[1].split(" ")[0])
    assert ref == pytest.approx(digits_task.evaluate(digits_task.base_model(), "test")["acc"], abs=0.01)
    section = md.split("## Against the unpruned fp32 model")[1].split("## Bits world models")[0]
    table = [line.split("|")[1:-1] for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    rows = {c[0].strip(): [float(x) for x in c[1:]] for c in table[1:]}
    shrink = rows["fp32"][0]
    assert 0.3 < shrink < 0.9  # the pruned input stores less than the unpruned model
    for name, (size, acc, drop) in rows.items():
        assert drop == pytest.approx(ref - acc, abs=0.015) and (name == "fp32" or size <= 0.125 * shrink + 1e-4)
