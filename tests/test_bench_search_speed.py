"""``benchmarks/search_speed.py`` for a sweep of MACs targets: the sweep's speedup reading on hand-built curves, the
task and target choices, and a quick run over two targets (every search has its rows and its curve, with counted
real evaluations, and the sweep's figures follow from the curves).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.bench_helpers import assert_in_ci, read_rows, run_script


@pytest.fixture
def speed(bench):
    """``benchmarks/search_speed.py`` imported as a module (it imports its siblings ``common`` and ``stop_rule``)."""
    return bench("search_speed")


def _curve(points, shared_s=0.0, shared_evals=0, evals_per_iter=10):
    """Curve rows from ``(wall since the search started, validation accuracy)`` points, with ``shared_s`` and
    ``shared_evals`` spent before the search (as the SPN pipeline's sampling and SPN training)."""
    best, out = 0.0, []
    for i, (wall, acc) in enumerate(points, 1):
        best = max(best, acc)
        out.append({"iteration": i, "wall_s": shared_s + wall, "val_acc": acc, "best_val_acc": best,
                    "real_evals": shared_evals + evals_per_iter * i, "shared_s": shared_s,
                    "shared_real_evals": shared_evals})
    return out


def test_sweep_counts_the_shared_stages_once_and_each_search_to_its_own_level(speed):
    """Sweep time = shared sampling + SPN training once + each search's own time to its target's level (the lower
    of the two final bests there); the AMC-style time is the sum of its searches' times; evaluations likewise."""
    pre = {"shared_s": 100.0, "shared_evals": 256}
    pairs = {
        0.3: (_curve([(5, 80), (10, 85)], **pre), _curve([(50, 84), (90, 86)], evals_per_iter=64)),  # level 85
        0.5: (_curve([(4, 90), (8, 92), (12, 93)], **pre), _curve([(60, 92)], evals_per_iter=64)),  # level 92
        0.7: (_curve([(3, 95)], **pre), _curve([(40, 94), (70, 96)], evals_per_iter=64)),  # level 95
    }
    r = speed.sweep_row(1, pairs)
    assert r["section"] == "sweep" and r["seed"] == 1
    assert r["time_spn_s"] == pytest.approx(100 + 10 + 8 + 3)
    assert r["time_amc_s"] == pytest.approx(90 + 60 + 70)
    assert r["speedup"] == pytest.approx(220 / 121, rel=1e-3)
    assert r["real_evals_spn"] == 256 + 20 + 20 + 10 and r["real_evals_amc"] == 128 + 64 + 128
    assert r["note"] == "levels 0.3: 85.00, 0.5: 92.00, 0.7: 95.00"
    # One target: the sweep is the single-target reading (the shared stages counted in full).
    one = speed.sweep_row(0, {0.5: pairs[0.5]})
    single = speed.speedup_row(0, *pairs[0.5], 0.5)
    assert one["time_spn_s"] == pytest.approx(single["time_spn_s"]) and single["target"] == 0.5
    assert one["speedup"] == pytest.approx(single["speedup"], rel=1e-3)
    with pytest.raises(ValueError, match="shared shared_s"):
        speed.sweep_row(0, {0.3: pairs[0.3], 0.5: (_curve([(4, 92)], shared_s=50.0), pairs[0.5][1])})


def test_headline_reads_the_sweep_rows_over_seeds(speed):
    """The headline speedup is the sweep's (median, range over seeds), never a per-target figure."""
    rows = [{"section": "step", "method": "spn", "env_steps_per_s": 500.0},
            {"section": "step", "method": "real", "env_steps_per_s": 5.0}]
    for seed, sweep in ((0, 2.0), (1, 0.5), (2, 1.0)):
        rows += [{"section": "speedup", "seed": seed, "target": t, "level": 90 + t, "speedup": 9.0}
                 for t in (0.3, 0.7)]
        rows.append({"section": "sweep", "seed": seed, "speedup": sweep, "real_evals_spn": 300,
                     "real_evals_amc": 600 + 300 * seed})
    fig = speed.headline(rows)
    assert fig["spn_vs_real_step_speedup"] == 100.0
    assert fig["end_to_end_speedup"] == 1.0 and fig["end_to_end_speedup_range"] == [0.5, 2.0]
    assert (fig["end_to_end_speedup_min"], fig["end_to_end_speedup_max"], fig["end_to_end_seeds"]) == (0.5, 2.0, 3)
    assert fig["end_to_end_targets"] == [0.3, 0.7] and fig["end_to_end_level_val_acc"][0] == [90.3, 90.7]
    assert fig["real_evals_ratio"] == 3.0


def test_budgets_keep_the_cap_and_the_mode(speed):
    """``--cap-s`` overrides the mode's cap; quick mode runs offline with tiny budgets."""
    assert speed.budgets(True, None)["cap_s"] == 20.0 and not speed.budgets(True, None)["online"]
    assert speed.budgets(False, None)["cap_s"] == 600.0 and speed.budgets(False, 1800.0)["cap_s"] == 1800.0


@pytest.mark.slow
def test_quick_sweep_of_two_targets_has_every_search(quick, speed):
    """The quick run (``bench_helpers.quick_runs``: ``--targets 0.4 0.6 --seeds 0``): per seed the samples and the
    SPN once, and per target both methods' rows and curves with counted real evaluations; every sweep row follows
    from the curves; a rerun on a fresh machine reads the seed back from the kept rows."""
    out, _ = quick("search_speed")
    # A rerun on a fresh machine (empty --work, the kept rows) measures nothing again and writes the same tables.
    again = run_script("search_speed", "--quick", "--targets", "0.4", "0.6", "--seeds", "0", "--work",
                       str(out / "fresh"), "--keep-rows", str(out / "kept"), "--results-dir", str(out / "again"))
    assert again.returncode == 0, again.stderr[-4000:]
    for name in ("search_speed_quick.csv", "search_speed_curves_quick.csv"):
        assert pd.read_csv(out / "again" / name).equals(pd.read_csv(out / name)), name
    assert not (out / "fresh" / "seed0" / "samples").exists()
    rows = pd.read_csv(out / "search_speed_quick.csv").to_dict("records")
    curves = pd.read_csv(out / "search_speed_curves_quick.csv")
    assert set(curves["target"]) == {0.4, 0.6} and set(curves["seed"]) == {0}
    for seed in (0,):  # one seed keeps CI short; the median over seeds is read in the test above
        mine = [r for r in rows if r["seed"] == seed]
        assert sorted(r["method"] for r in mine if r["method"] in ("spn_sample", "spn_fit")) == ["spn_fit",
                                                                                                 "spn_sample"]
        pairs = {}
        for t in (0.4, 0.6):
            finals = {r["method"]: r for r in mine if r["target"] == t and r["section"] in ("pipeline", "amc")}
            assert {speed.SPN, speed.AMC, "spn_search"} <= set(finals)
            for method in (speed.SPN, speed.AMC):
                c = curves[(curves["seed"] == seed) & (curves["method"] == method) & (curves["target"] == t)]
                c = c.sort_values("iteration")
                assert list(c["iteration"]) == list(range(1, len(c) + 1))
                last = c.iloc[-1]
                assert finals[method]["real_evals"] == last["real_evals"] > 0
                assert finals[method]["macs_ratio"] <= t + 1e-9
            pairs[t] = tuple(curves[(curves["seed"] == seed) & (curves["method"] == m) & (curves["target"] == t)]
                             .sort_values("iteration").to_dict("records") for m in (speed.SPN, speed.AMC))
            spn, amc = pairs[t]
            assert amc[-1]["spn_calls"] == 0 and amc[-1]["real_evals"] >= amc[-1]["episodes"]
            assert spn[0]["shared_real_evals"] > 0 and spn[0]["real_evals"] >= spn[0]["shared_real_evals"]
        sweep = next(r for r in mine if r["section"] == "sweep")
        again = speed.sweep_row(seed, pairs)
        for k in ("time_spn_s", "time_amc_s", "speedup", "real_evals_spn", "real_evals_amc"):
            assert sweep[k] == pytest.approx(again[k], rel=1e-3, abs=0.02), k
        # The samples and the SPN are counted once, not once per target.
        shared = pairs[0.4][0][0]["shared_s"]
        assert sweep["time_spn_s"] < sum(pairs[t][0][-1]["wall_s"] for t in pairs) - shared + 0.05
    fig = speed.headline(rows)
    assert fig["end_to_end_seeds"] == 1 and fig["end_to_end_targets"] == [0.4, 0.6]
    lo, hi = fig["end_to_end_speedup_range"]
    assert lo <= fig["end_to_end_speedup"] <= hi
    md = (out / "search_speed_quick.md").read_text()
    assert "a sweep of MACs targets 0.4 0.6" in md
    assert not (out / "summary.json").exists() and not (out / "summary_digits.json").exists()


@pytest.mark.slow
def test_quick_search_speed_curves_are_like_for_like(quick, bench):
    """Per (seed, target) both searches' curves rise monotonically in time; counts are counted and match the
    table; the speedup is read at the best validation accuracy both reached."""
    out, _ = quick("search_speed")
    speed = bench("search_speed")
    rows = read_rows(out / "search_speed_quick.csv")
    curves = pd.read_csv(out / "search_speed_curves_quick.csv")
    assert set(curves["method"]) == {speed.SPN, speed.AMC}
    for (seed, method, target), c in curves.groupby(["seed", "method", "target"]):
        c = c.sort_values("iteration")
        assert list(c["iteration"]) == list(range(1, len(c) + 1))
        for col in ("wall_s", "episodes"):
            assert np.all(np.diff(c[col]) > 0), (seed, method, col)
        for col in ("best_val_acc", "real_evals", "spn_calls"):
            assert np.all(np.diff(c[col]) >= 0), (seed, method, col)
        assert np.allclose(c["best_val_acc"], np.maximum.accumulate(c["val_acc"]))
        final = next(r for r in rows if (r["seed"], r["method"], r["target"]) == (seed, method, target)
                     and r["section"] in ("pipeline", "amc"))
        last = c.iloc[-1]
        assert final["real_evals"] == last["real_evals"] and final["iterations"] == last["iteration"]
        assert_in_ci(final["acc"], final["acc_ci_lo"], final["acc_ci_hi"])
        if method == speed.AMC:  # every episode paid one real evaluation; no SPN
            assert last["spn_calls"] == 0 and last["real_evals"] >= last["episodes"]
        else:  # the clock started before sampling: the first point is after sampling and SPN training
            pre = sum(r["wall_s"] for r in rows if r["seed"] == seed and r["method"] in ("spn_sample", "spn_fit"))
            assert c["wall_s"].iloc[0] > pre and last["spn_calls"] > 0
    speedups = [r for r in rows if r["section"] == "speedup"]
    assert {r["target"] for r in speedups} == {0.4, 0.6}
    for r in speedups:
        mine = curves[(curves["seed"] == r["seed"]) & (curves["target"] == r["target"])]
        ends = mine.groupby("method")["best_val_acc"].max()
        assert r["level"] == pytest.approx(ends.min())
        first = {m: c[c["best_val_acc"] >= r["level"] - 1e-9]["wall_s"].min() for m, c in mine.groupby("method")}
        assert r["time_spn_s"] == pytest.approx(first[speed.SPN]) and r["time_amc_s"] == pytest.approx(first[speed.AMC])
        assert r["speedup"] == pytest.approx(r["time_amc_s"] / r["time_spn_s"], rel=1e-2, abs=1e-3)
    fig = speed.headline(rows)
    assert fig["end_to_end_speedup_min"] <= fig["end_to_end_speedup"] <= fig["end_to_end_speedup_max"]


def test_stop_rule_and_speedup_reading(bench):
    """The one stop rule (patience, cap, max iterations) and the speedup at the level both curves reached."""
    speed = bench("search_speed")
    rule = speed.StopRule(patience=2, cap_s=100.0, max_iters=10)

    def curve(points):
        best, out = 0.0, []
        for i, (wall, acc) in enumerate(points, 1):
            best = max(best, acc)
            out.append({"iteration": i, "wall_s": wall, "val_acc": acc, "best_val_acc": best, "real_evals": 10 * i})
        return out

    rising = curve([(1, 90), (2, 91), (3, 92)])
    assert not rule.done(rising, 3.0)
    assert rule.done(curve([(1, 90), (2, 92), (3, 91), (4, 92)]), 4.0)  # two iterations without a gain
    assert rule.done(rising, 100.0) and rule.done(curve([(i, 90 + i) for i in range(1, 11)]), 10.0)
    spn = curve([(10, 93), (11, 95), (12, 96)])
    amc = curve([(5, 90), (40, 94), (90, 95)])
    r = speed.speedup_row(0, spn, amc)
    assert r["level"] == 95 and r["time_spn_s"] == 11 and r["time_amc_s"] == 90
    assert r["speedup"] == pytest.approx(90 / 11, rel=1e-3) and "AMC-style did not reach" in r["note"]
    assert bench("search_speed_tables").time_to(amc, 96) is None
