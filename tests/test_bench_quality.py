"""``benchmarks/quality.py``: the quick run chooses on validation with equal counted budgets and resumes; the tables'
best-baseline choice, pooled interval and params-at-equal-drop on synthetic rows; one base model across seeds.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.bench_helpers import assert_in_ci, read_rows, run_script


@pytest.mark.slow
def test_quick_quality_chooses_on_validation_with_equal_budgets(quick, bench):
    """The best baseline is the validation winner; the paired interval contains the difference; the searches
    spend RL's counted budget; every accuracy has an interval around it and every method meets the target."""
    out, _ = quick("quality")
    quality = bench("quality_tables")
    rows = read_rows(out / "quality_quick.csv")
    for r in rows:
        assert_in_ci(r["acc"], r["acc_ci_lo"], r["acc_ci_hi"])
        assert r["macs_ratio"] <= r["target"] + 1e-9 and r["candidates"] == 1
    comps = quality.comparisons(rows)
    assert {c["seed"] for c in comps} >= {"all"}
    for c in comps:
        assert_in_ci(c["diff"], c["diff_ci_lo"], c["diff_ci_hi"])
        assert c["real"] == (c["diff_ci_lo"] > 0 or c["diff_ci_hi"] < 0)
        if c["seed"] == "all":
            continue
        mine = [r for r in rows if (r["seed"], r["target"], r["finetune_steps"]) ==
                (c["seed"], c["target"], c["finetune_steps"])]
        base = [r for r in mine if r["source"] == "baseline"]
        by_val = max(base, key=lambda r: (r["val_acc"], -r["params_ratio"], r["method"]))
        assert c["best_baseline"] == by_val["method"]  # chosen on validation, whatever the test split says
        rl = next(r for r in mine if r["method"] == "rl")
        assert c["diff"] == pytest.approx(rl["acc"] - by_val["acc"], abs=0.01)
        for s in (r for r in mine if r["method"] in ("random_search", "cem")):
            # Equal, counted budgets: RL's SPN calls and real evaluations, as each search counted them.
            assert s["real_evals"] == rl["real_evals"] > 0
            assert s["spn_calls"] == rl["spn_calls"] > 0
    fig = quality.headline(rows)
    lo, hi = fig["rl_minus_best_baseline_acc_at_0.5_ci"]
    assert_in_ci(fig["rl_minus_best_baseline_acc_at_0.5"], lo, hi)
    assert fig["rl_minus_best_baseline_acc_at_0.5_real"] == (lo > 0 or hi < 0)

    # Resumable: the same --work again reads the finished target back instead of measuring it again.
    again = out / "again"
    proc = run_script("quality", "--quick", "--results-dir", str(again), "--work", str(out / "work"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "target 0.5: done" not in proc.stderr  # nothing was searched or measured this time
    assert (again / "quality_quick.csv").read_text() == (out / "quality_quick.csv").read_text()


@pytest.mark.slow
def test_samples_only_makes_the_seeds_samples_and_spn_and_no_results(quick):
    """The quick run was made in two calls (``bench_helpers.quick_runs``): ``--samples-only`` wrote each seed's
    samples and SPN (kept with --keep-rows) and no results, and the second call found them done: it sampled
    nothing. Without --work it is refused: the samples would go with a temporary folder."""
    out, _ = quick("quality")
    assert not (out / "samples-only").exists() or not list((out / "samples-only").iterdir())
    seed = out / "work" / "digits-0"
    assert (seed / "stages.json").is_file() and (seed / "spn.pt").is_file()
    assert len(list((out / "kept" / "digits-0" / "samples" / "shards").glob("*.parquet"))) >= 8  # 32 rows, 4 a shard
    recorded = (seed / "stages.json").stat().st_mtime  # the second call added no sample after the stage was done
    assert max(f.stat().st_mtime for f in (seed / "samples" / "shards").glob("*.parquet")) <= recorded
    refused = run_script("quality", "--quick", "--samples-only", timeout=120)
    assert refused.returncode == 2 and "--samples-only needs --work" in refused.stderr


def test_params_removed_at_equal_drop_interpolates_between_targets(bench):
    """The rule's curve is walked from the unpruned model; RL's drop may fall between two targets."""
    quality = bench("quality_tables")
    points = [(0.5, 0.3), (1.4, 0.52), (5.0, 0.8)]  # (acc drop, params removed), least pruned first
    assert quality.removed_at_drop(points, 0.83) == pytest.approx(0.3 + 0.33 / 0.9 * 0.22)
    assert quality.removed_at_drop(points, 10.0) == pytest.approx(0.8)
    assert quality.removed_at_drop([(2.0, 0.3)], 1.0) == pytest.approx(0.15)  # on the segment from (0, 0)
    assert quality.removed_at_drop([(0.5, 0.3)], -1.0) == 0.0  # nothing on the curve is that accurate


def synthetic_rows(task: str = "digits") -> list[dict]:
    """Two seeds x three targets of ``task``; ``cem`` wins on validation, ``uniform`` on test (it must not be
    chosen)."""
    from rlprune.measure.stats import pack_correct

    rng = np.random.default_rng(0)
    n, rows = 360, []
    for seed in (0, 1):
        for target in (0.3, 0.5, 0.7):
            # method -> (val acc, test images right, params ratio)
            spec = {"rl": (97.0, 354 - seed, target + 0.05), "uniform": (95.0, 356, target),
                    "larger_group": (90.0, 324, target - 0.2), "depth": (91.0, 327, target - 0.2),
                    "cem": (97.5, 350, target + 0.02)}
            for method, (val, right, params) in spec.items():
                correct = np.zeros(n, dtype=bool)
                correct[rng.choice(n, right, replace=False)] = True
                acc = 100.0 * right / n
                rows.append({"task": task, "seed": seed, "target": target, "finetune_steps": 100,
                             "method": method, "source": "rl" if method == "rl" else "baseline", "val_acc": val,
                             "val_drop": 99.0 - val, "acc": acc, "acc_drop": 99.0 - acc, "params_ratio": params,
                             "macs_ratio": target - 0.001, "latency_ms": 0.5, "spn_calls": 0, "real_evals": 0,
                             "candidates": 1, "search_s": 0.0, "test_correct": pack_correct(correct)})
    return rows


def test_headline_figures_come_from_any_workload_and_one_at_a_time(bench):
    """summary.json's quality figures come from the real workload's rows as from digits' (they were once read
    from digits rows only, so a fashion-mnist run wrote none); rows of two workloads are refused."""
    quality = bench("quality_tables")
    fm = quality.headline(synthetic_rows("fashion-mnist/resnet56"))
    assert fm == quality.headline(synthetic_rows())
    assert {"rl_minus_best_baseline_acc_at_0.5", "params_removed_ratio_vs_best_rule"} <= set(fm)
    with pytest.raises(ValueError, match="one workload"):
        quality.headline(synthetic_rows() + synthetic_rows("fashion-mnist/resnet56"))


def test_quality_chooses_the_best_baseline_on_validation(bench):
    """The baseline compared with RL is the validation winner (``cem``), not the test winner (``uniform``);
    pooled over seeds the difference is the mean of the per-seed ones, inside its interval, with its spread."""
    quality = bench("quality_tables")
    rows = synthetic_rows()
    comps = [c for c in quality.comparisons(rows) if c["target"] == 0.5]
    per_seed = [c for c in comps if c["seed"] != "all"]
    pooled = next(c for c in comps if c["seed"] == "all")
    assert [c["best_baseline"] for c in per_seed] == ["cem", "cem"] and pooled["best_baseline"] == "cem, cem"
    assert [c["diff"] for c in per_seed] == pytest.approx([100 * 4 / 360, 100 * 3 / 360], abs=0.01)
    assert pooled["diff"] == pytest.approx(np.mean([c["diff"] for c in per_seed]), abs=0.01)
    assert (pooled["spread_lo"], pooled["spread_hi"]) == (min(c["diff"] for c in per_seed),
                                                          max(c["diff"] for c in per_seed))
    assert_in_ci(pooled["diff"], pooled["diff_ci_lo"], pooled["diff_ci_hi"])
    fig = quality.headline(rows)
    assert {"rl_minus_best_baseline_acc_at_0.3", "rl_minus_best_baseline_acc_at_0.5_ci",
            "rl_minus_best_baseline_acc_at_0.7_real", "params_removed_ratio_vs_best_rule"} <= set(fig)
    assert fig["rl_minus_best_baseline_acc_at_0.5"] == pooled["diff"]
    assert fig["rl_minus_best_baseline_acc_at_0.5_ci"] == [pooled["diff_ci_lo"], pooled["diff_ci_hi"]]
    summary = quality.summarise(rows)
    for r in summary:
        assert_in_ci(r["acc"], r["acc_ci_lo"], r["acc_ci_hi"])
    equal = quality.params_at_equal_drop(rows, 100)
    assert {r["target"] for r in equal} == {0.3, 0.5, 0.7}
    md = quality.markdown(summary, quality.comparisons(rows), equal, "# Quality")
    assert "| digits | 0.5 | 100 | rl |" in md and "| digits | 0.5 | 100 | all | cem, cem |" in md


def test_model_seed_shares_one_base_model_across_benchmark_seeds(bench, tmp_path):
    """``--model-seed`` fixes the base model (and its splits) for every benchmark seed; the search built from the
    benchmark's keyword arguments uses it, not its own seed; digits keeps one base model per seed by default."""
    from rlprune.search.config import SearchConfig
    from rlprune.search.rl import Search

    common = bench("common")

    def choice(*flags):
        p = common.parser("x")
        common.add_task_args(p)
        return common.task_choice(p.parse_args(list(flags)))

    assert choice() == ({}, "digits")
    kw, label = choice("--model-seed", "0")
    assert (kw, label) == ({"seed": 0}, "digits")
    assert common.task_of("digits", 2, kw).seed == 0
    assert common.task_of("digits", 2, {}).seed == 2
    search = Search(SearchConfig(spn=None, out=str(tmp_path), reward="real", online=False, task_kwargs=kw, seed=2))
    assert search.task.seed == 0 and search.env_config(None)["seed"] == 2
    assert search.env_config(None)["task_kwargs"]["seed"] == 0  # the AMC-style env prunes the same base model
