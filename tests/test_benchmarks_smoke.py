"""Every benchmark's ``--quick`` mode runs end to end, and what it writes holds the rules the full run claims.

Each script runs once per session in a subprocess (as a user would run it) into a temporary folder, so the
committed results under ``benchmarks/results`` are never touched, with the session's temporary
``RLPRUNE_CACHE`` (conftest.py) in its environment; the tests then read its files. No figure is asserted,
only structure and invariants that a broken comparison would violate: validation chooses, intervals contain
their estimate, budgets are counted and equal, curves only go up. Together the quick runs take a few
minutes on 2 cores.
"""

from __future__ import annotations

import csv
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"

# script -> what its full run would put into summary.json (key prefixes: sizes differ in quick mode)
HEADLINE = {
    "search_speed": {"spn_vs_real_step_speedup", "end_to_end_speedup", "end_to_end_speedup_min",
                     "end_to_end_speedup_max", "end_to_end_seeds", "real_evals_ratio", "end_to_end_selection_split"},
    "quality": {"rl_minus_best_baseline_acc_at_0.5", "rl_minus_best_baseline_acc_at_0.5_ci",
                "params_removed_ratio_vs_best_rule", "quality_selection_split"},
    "spn_fidelity": {"spn_spearman_at_", "spn_mae_at_", "spn_transfer_zero_shot_spearman", "spn_transfer_mae_after_"},
    "label_fidelity": {"label_fidelity_digits_final_seed_spearman", "label_fidelity_digits_k0_acc_spearman",
                       "label_fidelity_digits_cheapest_k"},
    "scaling": {"sample_throughput_2_vs_1", "cost_model_vectors_per_s", "cost_model_vectors_per_s_resnet56",
                "spn_inference_vectors_per_s", "env_steps_per_s_simultaneous", "env_steps_per_s_sequential"},
    "targets": {"targets_selection_split", "targets_conditioned_minus_best_other_acc_unseen",
                "targets_unseen_answer_s_conditioned", "targets_unseen_answer_s_cem", "targets_spn_calls_conditioned"},
    "quantize": {"rl_minus_best_baseline_acc_at_size0.125", "rl_minus_best_baseline_acc_at_size0.125_ci"},
}
# script -> (columns its CSV must have, the column naming each row's kind, kinds that must all appear)
EXPECTED = {
    "search_speed": ({"section", "seed", "method", "episodes", "spn_calls", "real_evals", "wall_s", "env_steps_per_s",
                      "val_acc", "acc", "acc_ci_lo", "acc_ci_hi", "macs_ratio", "level", "speedup"},
                     "section", {"step", "pipeline", "amc", "speedup"}),
    "quality": ({"task", "seed", "target", "finetune_steps", "method", "source", "val_acc", "acc", "acc_ci_lo",
                 "acc_ci_hi", "acc_drop", "val_drop", "params_ratio", "macs_ratio", "latency_ms", "spn_calls",
                 "real_evals", "candidates", "search_s", "test_correct"},
                "method", {"rl", "uniform", "larger_group", "depth", "global_l1", "random_search", "cem"}),
    "spn_fidelity": ({"section", "arch", "n_train", "seed", "mae", "spearman"}, "section", {"curve", "transfer"}),
    "label_fidelity": ({"task", "target", "vector", "sampler", "macs_ratio", "acc_k0", "loss_k0", "s_k0", "acc_k25",
                        "final_split", "final_steps", "final_acc", "final_acc_1", "final_acc_2", "ratios"},
                       "target", {"0.3", "0.5", "0.7"}),
    "scaling": ({"section", "name", "workers", "samples_per_s", "vectors_per_s", "env_steps_per_s", "mode"},
                "section", {"samples", "spn", "cost_model", "env"}),
    "targets": ({"seed", "target", "kind", "method", "macs_ratio", "val_acc", "acc", "acc_ci_lo", "acc_ci_hi",
                 "spn_calls", "search_s", "answer_s", "chosen"},
                "method", {"conditioned_rl", "per_target_rl", "random_search", "cem"}),
    "quantize": ({"seed", "target", "finetune_steps", "method", "source", "size_ratio", "val_acc", "acc", "acc_ci_lo",
                  "acc_ci_hi", "wm_calls", "bits", "world_model", "heldout_spearman_spn", "heldout_spearman_mlp",
                  "test_correct"},
                 "method", {"fp32", "rl", "uniform8", "uniform4", "sensitivity", "random_search", "cem"}),
}


@pytest.fixture(scope="module")
def quick(tmp_path_factory, digits_task):
    """``name -> (results folder, finished process)``: each script's quick run, once per session."""
    done: dict[str, tuple[Path, subprocess.CompletedProcess]] = {}

    def run(name: str):
        if name not in done:
            out = tmp_path_factory.mktemp(f"bench-{name}")
            resumable = ["--work", str(out / "work")] if name in ("quality", "label_fidelity", "quantize") else []
            if name == "quantize":
                resumable += ["--keep-rows", str(out / "kept")]
            proc = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), "--quick", "--results-dir", str(out),
                                   *resumable], cwd=ROOT, env=dict(os.environ), capture_output=True, text=True,
                                  timeout=900)
            assert proc.returncode == 0, proc.stderr[-4000:]
            done[name] = (out, proc)
        return done[name]

    return run


@pytest.fixture
def bench(monkeypatch):
    """Import a benchmark script as a module (the scripts import their sibling ``common``)."""
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module


def _csv(path: Path) -> list[dict]:
    return pd.read_csv(path).to_dict("records")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_quick_run_writes_its_tables(name, quick, bench):
    """``python benchmarks/<name>.py --quick --results-dir DIR`` exits 0 and writes ``<name>_quick.csv/.md``;
    the figures a full run would merge into summary.json can be computed from that CSV."""
    out, proc = quick(name)
    columns, kind, kinds = EXPECTED[name]
    with open(out / f"{name}_quick.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows, f"{name}_quick.csv has no rows"
    assert columns <= set(rows[0]), f"missing columns: {columns - set(rows[0])}"
    assert kinds <= {r[kind] for r in rows}
    # Every row says when, from which commit and on what machine (under what load) it was measured.
    assert all(r["date"] and r["commit"] and r["machine"] and r["load_1min"] for r in rows)
    md = (out / f"{name}_quick.md").read_text()
    assert md.startswith("# ") and "|---" in md
    assert md.splitlines()[0] in proc.stdout  # the table is printed too
    assert not (out / "summary.json").exists()  # only full runs update the summary
    assert not (out / f"{name}.csv").exists()  # a quick run never writes the full result's name
    figures = bench(name).headline(_csv(out / f"{name}_quick.csv"))
    assert all(any(k.startswith(want) for k in figures) for want in HEADLINE[name]), sorted(figures)


def _assert_in_ci(value, lo, hi) -> None:
    assert float(lo) - 1e-6 <= float(value) <= float(hi) + 1e-6, (value, lo, hi)


@pytest.mark.slow
def test_quick_quality_chooses_on_validation_with_equal_budgets(quick, bench):
    """The best baseline is the validation winner; the paired interval contains the difference; the searches
    spend RL's counted budget; every accuracy has an interval around it and every method meets the target."""
    out, _ = quick("quality")
    quality = bench("quality_tables")
    rows = _csv(out / "quality_quick.csv")
    for r in rows:
        _assert_in_ci(r["acc"], r["acc_ci_lo"], r["acc_ci_hi"])
        assert r["macs_ratio"] <= r["target"] + 1e-9 and r["candidates"] == 1
    comps = quality.comparisons(rows)
    assert {c["seed"] for c in comps} >= {"all"}
    for c in comps:
        _assert_in_ci(c["diff"], c["diff_ci_lo"], c["diff_ci_hi"])
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
    _assert_in_ci(fig["rl_minus_best_baseline_acc_at_0.5"], lo, hi)
    assert fig["rl_minus_best_baseline_acc_at_0.5_real"] == (lo > 0 or hi < 0)

    # Resumable: the same --work again reads the finished target back instead of measuring it again.
    again = out / "again"
    proc = subprocess.run([sys.executable, str(BENCH / "quality.py"), "--quick", "--results-dir", str(again),
                           "--work", str(out / "work")], cwd=ROOT, env=dict(os.environ), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "target 0.5: done" not in proc.stderr  # nothing was searched or measured this time
    assert (again / "quality_quick.csv").read_text() == (out / "quality_quick.csv").read_text()


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
    rows = _csv(out / "label_fidelity_quick.csv")
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
            _assert_in_ci(s["rho"], s["lo"], s["hi"])
    md = (out / "label_fidelity_quick.md").read_text()
    assert "final seed 1 vs seed 2" in md and "within-target" in md and "Cheapest label" in md

    # Section 2: single- vs multi-fidelity SPNs at one sample-generation budget, scored on held-out finals.
    comparison = _csv(out / "label_fidelity_spn_quick.csv")
    by = {(c["arm"], c["scope"]): c for c in comparison}
    assert {a for a, _ in by} == {"final", "k=0", "k=10", "k=25", "multi"}
    assert {s for _, s in by} == {"within", "0.3", "0.5", "0.7"}
    for c in comparison:
        assert c["spent_s"] <= c["budget_s"] + 0.01  # nobody buys more than the budget
        if np.isfinite(c["rho"]):
            _assert_in_ci(c["rho"], c["lo"], c["hi"])
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
    proc = subprocess.run([sys.executable, str(BENCH / "label_fidelity.py"), "--quick", "--results-dir", str(again),
                           "--work", str(out / "work")], cwd=ROOT, env=dict(os.environ), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "vector 0: labels" not in proc.stderr  # nothing was measured this time
    assert _csv(again / "label_fidelity_quick.csv") == rows
    assert pd.read_csv(again / "label_fidelity_spn_quick.csv").equals(pd.read_csv(out / "label_fidelity_spn_quick.csv"))
    assert cached.stat().st_mtime_ns == cached_at  # read back, not retrained


@pytest.mark.slow
def test_label_fidelity_shards_measure_disjoint_vectors_into_one_folder(quick):
    """``--shard 1/2`` measures only the odd vectors that --work lacks (here vector 5 of each target; 1 and 3 are
    read back), writes no tables; a bad shard or one without --work is refused before anything is measured."""
    out, _ = quick("label_fidelity")
    work = out / "work"
    before = {p.name for p in work.glob("t*-v*.json")}
    cmd = [sys.executable, str(BENCH / "label_fidelity.py"), "--quick", "--vectors", "6", "--results-dir",
           str(out / "shard"), "--work", str(work)]
    proc = subprocess.run([*cmd, "--shard", "1/2"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    new = {p.name for p in work.glob("t*-v*.json")} - before
    assert new == {f"t{t}-v005.json" for t in ("0.3", "0.5", "0.7")}
    assert "9 vectors" in proc.stderr and "(6 read back)" in proc.stderr
    assert not (out / "shard").exists() or not list((out / "shard").iterdir())
    for bad, why in ((["--shard", "2/2"], "0 <= I < M"), (["--shard", "1/2"], "--shard needs --work")):
        args = cmd[:-2] + bad if why.startswith("--shard needs") else [*cmd, *bad]
        proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and why in proc.stderr


@pytest.mark.slow
def test_quick_search_speed_curves_are_like_for_like(quick, bench):
    """Three seeds of both searches; curves rise monotonically in time; counts are counted and match the
    table; the speedup is read at the best validation accuracy both reached."""
    out, _ = quick("search_speed")
    speed = bench("search_speed")
    rows = _csv(out / "search_speed_quick.csv")
    curves = pd.read_csv(out / "search_speed_curves_quick.csv")
    assert set(curves["method"]) == {speed.SPN, speed.AMC} and curves["seed"].nunique() >= 3
    for (seed, method), c in curves.groupby(["seed", "method"]):
        c = c.sort_values("iteration")
        assert list(c["iteration"]) == list(range(1, len(c) + 1))
        for col in ("wall_s", "episodes"):
            assert np.all(np.diff(c[col]) > 0), (seed, method, col)
        for col in ("best_val_acc", "real_evals", "spn_calls"):
            assert np.all(np.diff(c[col]) >= 0), (seed, method, col)
        assert np.allclose(c["best_val_acc"], np.maximum.accumulate(c["val_acc"]))
        final = next(r for r in rows if r["seed"] == seed and r["method"] == method)
        last = c.iloc[-1]
        assert final["real_evals"] == last["real_evals"] and final["iterations"] == last["iteration"]
        _assert_in_ci(final["acc"], final["acc_ci_lo"], final["acc_ci_hi"])
        if method == speed.AMC:  # every episode paid one real evaluation; no SPN
            assert last["spn_calls"] == 0 and last["real_evals"] >= last["episodes"]
        else:  # the clock started before sampling: the first point is after sampling and SPN training
            pre = sum(r["wall_s"] for r in rows if r["seed"] == seed and r["method"] in ("spn_sample", "spn_fit"))
            assert c["wall_s"].iloc[0] > pre and last["spn_calls"] > 0
    for r in (r for r in rows if r["section"] == "speedup"):
        mine = curves[curves["seed"] == r["seed"]]
        ends = mine.groupby("method")["best_val_acc"].max()
        assert r["level"] == pytest.approx(ends.min())
        first = {m: c[c["best_val_acc"] >= r["level"] - 1e-9]["wall_s"].min() for m, c in mine.groupby("method")}
        assert r["time_spn_s"] == pytest.approx(first[speed.SPN]) and r["time_amc_s"] == pytest.approx(first[speed.AMC])
        assert r["speedup"] == pytest.approx(r["time_amc_s"] / r["time_spn_s"], rel=1e-2, abs=1e-3)
    fig = speed.headline(rows)
    assert fig["end_to_end_seeds"] >= 3
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
    assert speed.time_to(amc, 96) is None


def test_rows_keep_the_provenance_of_their_measurement_and_archives_know_their_commit(tmp_path, bench):
    """A row stamped when it was measured keeps that stamp when a resumed run writes it again; a row without one
    is stamped at writing; a snapshot made with ``git archive`` (no .git) still names its commit."""
    common = bench("common")
    old = {"seed": 0, "acc": 90.0, "date": "2026-01-01T00:00:00+00:00", "commit": "abc", "machine": "m",
           "load_1min": 3.5}
    path = common.write_csv(tmp_path, "t", [old, {"seed": 1, "acc": 91.0}], ["seed", "acc"])
    rows = _csv(path)
    assert list(rows[0]) == ["seed", "acc", *common.PROVENANCE]
    assert rows[0] == old
    assert rows[1]["commit"] == common.commit() and rows[1]["date"].startswith(time.strftime("%Y-"))
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode:
        pytest.skip("not a git checkout")
    assert common.commit().split("-")[0] == head.stdout.strip()
    archived = subprocess.run("git archive HEAD benchmarks/common.py | tar -xO", shell=True, cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout
    assert f'_ARCHIVED_COMMIT = "{head.stdout.strip()}"' in archived


def test_update_summary_merges_atomically(tmp_path, bench):
    """Each script's figures are merged in; other keys survive; retired keys go; date and machine are stamped;
    no tmp is left."""
    common = bench("common")
    common.update_summary(tmp_path, {"a": 1.5, "nan": float("nan"), "old": 3}, "one")
    common.update_summary(tmp_path, {"b": 2, "ci": [np.float64(-0.5), 1.0]}, "two", retired=("old",))
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["a"] == 1.5 and s["b"] == 2 and s["nan"] is None and s["ci"] == [-0.5, 1.0] and "old" not in s
    assert set(s["updated"]) == {"one", "two"} and s["date"]
    assert {"platform", "cpu_count", "torch", "ray"} <= set(s["machine"])
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
    # A script's headline workload writes summary.json (and names itself there); any other workload its own file.
    common.update_summary(tmp_path, {"q": 1}, "quality", label=common.HEADLINE_WORKLOAD["quality"])
    common.update_summary(tmp_path, {"q": 2}, "quality", label="digits")
    common.update_summary(tmp_path, {"lf": 3}, "label_fidelity", label="digits")
    common.update_summary(tmp_path, {"x": 4}, "no_headline", label="digits")  # a script without one: summary.json
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["q"] == 1 and s["x"] == 4 and "lf" not in s and s["task"] == "fashion-mnist"
    assert s["workload"] == {"quality": common.HEADLINE_WORKLOAD["quality"]}
    digits = json.loads((tmp_path / "summary_digits.json").read_text())
    assert digits["q"] == 2 and digits["lf"] == 3 and digits["workload"] == {"quality": "digits",
                                                                             "label_fidelity": "digits"}


def test_params_removed_at_equal_drop_interpolates_between_targets(bench):
    """The rule's curve is walked from the unpruned model; RL's drop may fall between two targets."""
    quality = bench("quality_tables")
    points = [(0.5, 0.3), (1.4, 0.52), (5.0, 0.8)]  # (acc drop, params removed), least pruned first
    assert quality.removed_at_drop(points, 0.83) == pytest.approx(0.3 + 0.33 / 0.9 * 0.22)
    assert quality.removed_at_drop(points, 10.0) == pytest.approx(0.8)
    assert quality.removed_at_drop([(2.0, 0.3)], 1.0) == pytest.approx(0.15)  # on the segment from (0, 0)
    assert quality.removed_at_drop([(0.5, 0.3)], -1.0) == 0.0  # nothing on the curve is that accurate


def _synthetic_rows() -> list[dict]:
    """Two seeds x three targets; ``cem`` wins on validation, ``uniform`` on test (it must not be chosen)."""
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
                rows.append({"task": "digits", "seed": seed, "target": target, "finetune_steps": 100,
                             "method": method, "source": "rl" if method == "rl" else "baseline", "val_acc": val,
                             "val_drop": 99.0 - val, "acc": acc, "acc_drop": 99.0 - acc, "params_ratio": params,
                             "macs_ratio": target - 0.001, "latency_ms": 0.5, "spn_calls": 0, "real_evals": 0,
                             "candidates": 1, "search_s": 0.0, "test_correct": pack_correct(correct)})
    return rows


def test_quality_chooses_the_best_baseline_on_validation(bench):
    """The baseline compared with RL is the validation winner (``cem``), not the test winner (``uniform``);
    pooled over seeds the difference is the mean of the per-seed ones, inside its interval, with its spread."""
    quality = bench("quality_tables")
    rows = _synthetic_rows()
    comps = [c for c in quality.comparisons(rows) if c["target"] == 0.5]
    per_seed = [c for c in comps if c["seed"] != "all"]
    pooled = next(c for c in comps if c["seed"] == "all")
    assert [c["best_baseline"] for c in per_seed] == ["cem", "cem"] and pooled["best_baseline"] == "cem, cem"
    assert [c["diff"] for c in per_seed] == pytest.approx([100 * 4 / 360, 100 * 3 / 360], abs=0.01)
    assert pooled["diff"] == pytest.approx(np.mean([c["diff"] for c in per_seed]), abs=0.01)
    assert (pooled["spread_lo"], pooled["spread_hi"]) == (min(c["diff"] for c in per_seed),
                                                          max(c["diff"] for c in per_seed))
    _assert_in_ci(pooled["diff"], pooled["diff_ci_lo"], pooled["diff_ci_hi"])
    fig = quality.headline(rows)
    assert {"rl_minus_best_baseline_acc_at_0.3", "rl_minus_best_baseline_acc_at_0.5_ci",
            "rl_minus_best_baseline_acc_at_0.7_real", "params_removed_ratio_vs_best_rule"} <= set(fig)
    assert fig["rl_minus_best_baseline_acc_at_0.5"] == pooled["diff"]
    assert fig["rl_minus_best_baseline_acc_at_0.5_ci"] == [pooled["diff_ci_lo"], pooled["diff_ci_hi"]]
    summary = quality.summarise(rows)
    for r in summary:
        _assert_in_ci(r["acc"], r["acc_ci_lo"], r["acc_ci_hi"])
    equal = quality.params_at_equal_drop(rows, 100)
    assert {r["target"] for r in equal} == {0.3, 0.5, 0.7}
    md = quality.markdown(summary, quality.comparisons(rows), equal, "# Quality")
    assert "| digits | 0.5 | 100 | rl |" in md and "| digits | 0.5 | 100 | all | cem, cem |" in md


@pytest.mark.parametrize(("task", "named"), [("cifar10", "cifar-10-batches-py"),
                                              ("fashion-mnist", "dataset-fashion-mnist")])
def test_missing_data_folder_is_one_line_and_exit_2(tmp_path, task, named):
    """``quality.py --task T --data-dir`` with no data there stops at once with the task's own message."""
    proc = subprocess.run([sys.executable, str(BENCH / "quality.py"), "--quick", "--task", task, "--data-dir",
                           str(tmp_path / "none"), "--results-dir", str(tmp_path / "out")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and named in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_quick_targets_answers_every_target_with_equal_budgets(quick, bench):
    """Every method at every training and unseen target, on the target from below, with an interval around its
    accuracy; validation chooses; the black-box searches spend N/K of the conditioned training's counted calls per
    target; the policy answers an unseen target without a search."""
    out, _ = quick("targets")
    targets = bench("targets")
    rows = _csv(out / "targets_quick.csv")
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
            _assert_in_ci(r["acc"], r["acc_ci_lo"], r["acc_ci_hi"])
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
    _assert_in_ci(got["diff"], *got["diff_ci"])
    assert "Conditioned RL minus CEM" in md and "95% paired interval" in md


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


def test_benchmarks_measure_with_the_tasks_label_unless_told(bench, monkeypatch):
    """Every sampling benchmark measures what ``rlprune run`` would: the task's studied label (TASK_LABEL_STEPS;
    a value of 7 patched in, so a constant cannot pass), ``--label-steps`` overriding it; work folders of a
    label with steps get their own name, so rows of one label are never read back under another."""
    import rlprune.measure.spec as spec_module

    common = bench("common")
    monkeypatch.setitem(spec_module.TASK_LABEL_STEPS, "fashion-mnist", 7)
    assert common.label_spec("fashion-mnist").label_steps == 7
    assert common.label_spec("fashion-mnist", 0).label_steps == 0  # the flag wins, 0 included
    assert common.label_spec("digits").label_steps == spec_module.TASK_LABEL_STEPS["digits"]
    assert common.label_spec("my.module:task").label_steps == 0  # unstudied tasks: the spec's own default
    got = common.label_spec("fashion-mnist", 3, finetune_steps=0)
    assert (got.label_steps, got.finetune_steps) == (3, 0)
    assert (common.label_suffix(0), common.label_suffix(25)) == ("", "-k25")
    for name in ("quality", "targets", "search_speed", "spn_fidelity"):
        proc = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), "--help"], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0 and "--label-steps" in proc.stdout, name


@pytest.mark.slow
def test_samples_and_spn_label_their_samples_with_the_given_spec(bench, tmp_path, digits_task):
    """The shared sample stage measures under the spec it is given (here 2 fine-tune steps per label): every
    stored row carries that label, none the default one."""
    from rlprune.measure.spec import MeasureSpec
    from rlprune.samples.store import read_samples

    common = bench("common")
    spec = MeasureSpec(label_steps=2)
    got = common.samples_and_spn("digits", 10, tmp_path, seed=0, spec=spec)  # the SPN needs 8 or more
    assert got["real_evals"] == 10 and got["spn"].is_file()
    assert len(read_samples(got["store"], measure=spec)) == 10
    assert read_samples(got["store"], measure=MeasureSpec()).empty


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


@pytest.mark.slow
def test_quick_quantize_meets_the_size_budget_with_equal_world_model_calls(quick, bench):
    """Every bits method is within the size budget after the same QAT, with an interval around its accuracy;
    random search and CEM score exactly the RL search's counted world-model calls; a rerun reads the seed back."""
    out, _ = quick("quantize")
    rows = _csv(out / "quantize_quick.csv")
    methods = {r["method"]: r for r in rows}
    assert methods["fp32"]["size_ratio"] == 1.0
    for r in rows:
        if r["method"] != "fp32":
            assert r["size_ratio"] <= 0.125 + 1e-9 and r["finetune_steps"] == 10
            _assert_in_ci(r["acc"], r["acc_ci_lo"], r["acc_ci_hi"])
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
    proc = subprocess.run([sys.executable, str(BENCH / "quantize.py"), "--quick", "--results-dir", str(out / "again"),
                           "--work", str(out / "fresh"), "--keep-rows", str(out / "kept")], cwd=ROOT,
                          env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "seed 0: done" not in proc.stderr, proc.stderr[-2000:]
    assert (out / "again" / "quantize_quick.csv").read_text() == (out / "quantize_quick.csv").read_text()


@pytest.mark.slow
def test_quick_quantize_of_a_pruned_model_reports_the_drop_from_the_unpruned_one(tmp_path, digits_task):
    """With --pruned, the markdown puts every method against the unpruned fp32 model on one size axis."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    pruned = tmp_path / "p"
    subprocess.run([sys.executable, "-m", "rlprune.cli", "prune", "--task", "digits", "--uniform", "0.3", "--out",
                    str(pruned)], cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    proc = subprocess.run([sys.executable, str(BENCH / "quantize.py"), "--quick", "--pruned", str(pruned),
                           "--results-dir", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
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


@pytest.mark.slow
def test_plots_draw_every_results_csv(quick, bench, tmp_path):
    """``benchmarks/plots.py`` draws one PNG per results CSV it knows (the committed full results and the quick
    runs' label-fidelity and targets tables), skips the rest, and says so when there is nothing to draw."""
    plots = bench("plots")
    for name in ("quality", "search_speed_curves", "quantize", "search_speed"):
        (tmp_path / f"{name}.csv").write_bytes((BENCH / "results" / f"{name}.csv").read_bytes())
    for name in ("label_fidelity", "targets"):
        out, _ = quick(name)
        (tmp_path / f"{name}.csv").write_bytes((out / f"{name}_quick.csv").read_bytes())
    written = plots.plot_all(tmp_path)
    assert sorted(p.name for p in written) == ["label_fidelity.png", "quality.png", "quantize.png",
                                               "search_speed_curves.png", "targets.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)
    # One panel per MACs target or fine-tune at most: curves written before the sweep (no target column) are one.
    from PIL import Image

    assert Image.open(tmp_path / "search_speed_curves.png").size[0] < 1000
    assert all(Image.open(p).size[0] < 2000 for p in written)
    assert plots.plot_all(tmp_path, quick=True) == []
    with pytest.raises(SystemExit, match="no results CSV"):
        plots.main(["--results-dir", str(tmp_path / "empty")])


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


def test_readme_results_table_is_summary_json(bench):
    """The README's headline table is exactly what readme_results.py renders from the committed summary.json;
    a figure with an interval is called real only when the interval excludes 0; a missing one says so."""
    rr = bench("readme_results")
    assert rr.main(["--check"]) == 0, "run python benchmarks/readme_results.py after updating summary.json"
    summary = {"rl_minus_best_baseline_acc_at_0.5": 0.4, "rl_minus_best_baseline_acc_at_0.5_ci": [0.1, 0.7],
               "quant_rl_minus_best_baseline_acc": -0.05, "quant_rl_minus_best_baseline_acc_ci": [-0.15, 0.06],
               "end_to_end_speedup": 3.0, "end_to_end_speedup_range": [2.0, 4.0],
               "workload": {"quality": "fashion-mnist/resnet56"}, "updated": {"quality": "2026-12-01T10:00:00"}}
    lines = {ln.split(" | ")[1]: ln for ln in rr.render(summary, ["a.png"]).splitlines() if "| `" in ln}
    at_half = lines["`rl_minus_best_baseline_acc_at_0.5`"]
    assert "| 0.4 | [0.1, 0.7] | yes | fashion-mnist/resnet56 2026-12-01 |" in at_half
    assert "| -0.05 | [-0.15, 0.06] | no |" in lines["`quant_rl_minus_best_baseline_acc`"]
    assert "| 3.00 (range 2.00-4.00) |  |  |" in lines["`end_to_end_speedup`"]
    assert "not measured yet" in lines["`spn_spearman_at_512`"] and "--arch resnet56" in lines["`spn_spearman_at_512`"]
    readme = "intro\n" + rr.BEGIN + "\nold\n" + rr.END + "\noutro\n"
    assert rr.block_of(readme) == rr.BEGIN + "\nold\n" + rr.END and rr.block_of("no markers") is None


def test_cheapest_label_must_meet_the_rule_at_every_target(bench):
    """A label ranking far below the final where the finals discriminate is not excused by a target where they
    do not (low seed-to-seed agreement there), even when its mean within-target Spearman would be."""
    lf = bench("label_fidelity")

    def rows(k, cost, per_target):
        out = [{"k": k, "metric": "acc", "cost_s": cost, "scope": "within", "rho": float(np.mean(per_target))}]
        return out + [{"k": k, "metric": "acc", "cost_s": cost, "scope": t, "rho": r}
                      for t, r in zip(("0.3", "0.7"), per_target, strict=True)]

    final = rows("final", 90.0, [0.9, 0.3])  # the mean bound is 0.6
    cheap = rows(0, 5.0, [0.7, 0.5])  # mean 0.6: "within 0.1" of the mean bound, but 0.2 below it at 0.3
    dear = rows(25, 17.0, [0.85, 0.2])  # >= 0.8 at 0.3, within 0.1 of the bound at 0.7
    assert lf.cheapest(final + cheap + dear)["k"] == 25
    assert lf.cheapest(final + cheap) is None
    flat = [dict(r, rho=float("nan")) if r["scope"] == "0.7" else r for r in final]  # finals all equal at 0.7
    assert lf.cheapest(flat + rows(0, 5.0, [0.82, float("nan")]))["k"] == 0
