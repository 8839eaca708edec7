"""`rlprune run --target-macs 0.4,0.6` end to end: one conditioned sweep, every method at every target.

One tiny run (``--preset tiny``) is run up to the sweep, then to the end (the finished stages are reused),
then once more (nothing runs). The module's tests read its outputs: a pruned model per target at or below
it, per-target rows and comparisons, the accuracy-vs-MACs plot across the targets, and equal counted budgets.
"""

from __future__ import annotations

import json
import subprocess

import pandas as pd
import pytest
import torch

from rlprune.io import load_pruned
from tests.test_pipeline import ROOT, env, rlprune_cmd

TARGETS = (0.4, 0.6)
STAGE_NAMES = ["base", "samples", "spn", "sweep", "validate", "report"]


def run_json(out, *extra) -> dict:
    cmd = rlprune_cmd("run", "--task", "digits", "--target-macs", ",".join(map(str, TARGETS)), "--preset", "tiny",
                      "--out", str(out), "--json", *extra)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env(), cwd=ROOT, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def multi_run(tmp_path_factory, digits_task):
    """(out folder, summary after the sweep, summary of the full run, summary of a rerun)."""
    out = tmp_path_factory.mktemp("multi") / "run"
    to_sweep = run_json(out, "--until", "sweep")
    full = run_json(out)
    again = run_json(out)
    return out, to_sweep, full, again


def test_one_conditioned_search_per_sweep_trial(multi_run):
    out, to_sweep, _, _ = multi_run
    assert to_sweep["targets"] == list(TARGETS) and to_sweep["per_target"] == []
    results = [json.loads(p.read_text()) for p in out.glob("sweep/*/*/result.json")]
    assert len(results) == 1  # the tiny grid has one trial, and it is one search, not one per target
    r = results[0]
    assert r["conditioned"] and r["target"] == [min(TARGETS), max(TARGETS)]
    assert any(out.glob("sweep/*/*/policy/policy.json")) and r["policy"].endswith("policy")
    marker = json.loads((out / "stages" / "sweep.json").read_text())
    trial = marker["output"]["trials"][0]
    assert trial["policy"] == r["policy"] and len(trial["per_target"]) >= 2


def test_a_rerun_reuses_every_finished_stage(multi_run):
    _, _, full, again = multi_run
    assert list(full["stages"]) == STAGE_NAMES
    assert [full["stages"][s]["status"] for s in STAGE_NAMES] == ["reused"] * 4 + ["ran"] * 2
    assert {s["status"] for s in again["stages"].values()} == {"reused"}
    assert again["per_target"] == full["per_target"] and again["methods"] == full["methods"]


def test_a_pruned_model_per_target_at_or_below_it(multi_run, digits_task):
    out, _, full, _ = multi_run
    assert full["targets"] == list(TARGETS) and full["budget"] == "macs"
    assert [p["target"] for p in full["per_target"]] == list(TARGETS)
    for p in full["per_target"]:
        t = p["target"]
        path = out / f"t{t:g}" / "pruned_model.pt"
        assert p["pruned_model"] == str(path) and (out / f"t{t:g}" / "pruned_model.json").is_file()
        model, manifest = load_pruned(path)
        winner = next(m for m in p["methods"] if m["method"] == p["winner"])
        assert manifest["method"] == p["winner"] and manifest["target"] == t and manifest["ratios"] == winner["ratios"]
        assert manifest["macs"] / full["base"]["macs"] <= t + 1e-9
        # Chosen on validation among the candidates within this target, not on the test split.
        assert winner["val_acc"] == max(m["val_acc"] for m in p["methods"] if m["macs_ratio"] <= t + 1e-9)
        with torch.no_grad():
            assert model(digits_task.example_input()).shape[-1] == 10
        assert digits_task.evaluate(model, "test")["acc"] == pytest.approx(winner["acc"], abs=1e-6)


def test_every_method_at_every_target_with_comparisons(multi_run):
    out, _, full, _ = multi_run
    k = len(TARGETS)
    for p in full["per_target"]:
        t = p["target"]
        methods = {m["method"]: m for m in p["methods"]}
        assert {"uniform", "larger_group", "depth", "global_l1", "random_search", "cem"} <= set(methods)
        rl = [m for m in p["methods"] if m["source"] == "rl"]
        assert len(rl) == 1 and rl[0]["method"].startswith("rl")
        for m in p["methods"]:
            assert m["target"] == t and m["macs_ratio"] <= t + 1e-9 and m["meets_target"]
            assert m["acc_ci"][0] <= m["acc"] <= m["acc_ci"][1]
        assert sorted(q.stem for q in (out / "validate").glob(f"*/t{t:g}/rows/*.json")) == sorted(methods)
        comp = p["comparison"]
        assert comp["rl"] == rl[0]["method"] and comp["selection_split"] == "validation"
        base = max((m for m in p["methods"] if m["source"] == "baseline"), key=lambda m: m["val_acc"])
        assert comp["best_baseline"] == base["method"]
        assert comp["diff"] == pytest.approx(rl[0]["acc"] - base["acc"])
        assert comp["diff_ci"][0] <= comp["diff"] <= comp["diff_ci"][1]
        # RL's row reports the whole sweep's spending: one training served every target.
        assert rl[0]["spn_calls"] > 0 and rl[0]["real_evals"] >= 1 and rl[0]["targets_shared"] == k
        for name in ("random_search", "cem"):
            assert methods[name]["real_evals"] == p["search_budget"]["n_real"]
            assert methods[name]["spn_calls"] <= p["search_budget"]["n_calls"]
    # Equal counted budgets: each target gets 1/K of the sweep's SPN calls and real evaluations (the first
    # targets one more where they do not divide), so together the black-box searches spend what RL spent.
    rl = next(m for m in full["methods"] if m["source"] == "rl")
    n, r = rl["spn_calls"], rl["real_evals"]
    assert [p["search_budget"]["n_calls"] for p in full["per_target"]] == \
        [max(64, n // k + (i < n % k)) for i in range(k)]
    assert [p["search_budget"]["n_real"] for p in full["per_target"]] == [r // k + (i < r % k) for i in range(k)]
    assert "// K" in full["search_budget"]["rule"] or "// K" in (out / "report.md").read_text()
    rows = pd.read_csv(out / "results.csv")
    assert sorted(rows["target"].unique()) == list(TARGETS) and len(rows) == len(full["methods"])


def test_report_plots_accuracy_against_macs_across_targets(multi_run):
    out, _, full, _ = multi_run
    png = out / "figures" / "acc_vs_targets.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    md = (out / "report.md").read_text()
    assert "figures/acc_vs_targets.png" in md and "both chosen on the validation split" in md
    for p in full["per_target"]:
        assert f"## Target {p['target']:g}" in md and f"t{p['target']:g}/pruned_model.pt" in md
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 2
    assert "Spearman is taken within each target" in md


@pytest.mark.parametrize("value, words", [
    ("0.6,0.4", ["--target-macs 0.6,0.4", "increasing order"]),
    ("0.4,0.4", ["distinct"]),
    ("0.4,1.2", ["1.2 must lie in (0, 1]"]),
    ("0.4,x", ["'x' is not a number"]),
    ("0.4,", ["'' is not a number"]),
])
def test_bad_target_lists_are_one_line_and_nothing_is_written(tmp_path, value, words):
    out = tmp_path / "never"
    r = subprocess.run(rlprune_cmd("run", "--target-macs", value, "--out", str(out)), capture_output=True,
                       text=True, env=env(), cwd=ROOT, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    for w in words:
        assert w in r.stderr
    assert not out.exists()
