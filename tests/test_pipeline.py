"""`rlprune run` end to end, as a user runs it: killed half-way, rerun, and every output checked.

One tiny run (``--preset tiny``: 24 samples, a 2-iteration sweep, 7 validation trials) with a non-default
measurement spec (``MEASURE``) is SIGKILLed, with its whole process group (the local Ray cluster included),
once the reward sweep has checkpointed; the same command then finishes the job. The module's other tests
read that run's outputs (and rerun it with the same spec).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from rlprune.io import load_pruned
from rlprune.samples.store import read_samples

ROOT = Path(__file__).resolve().parents[1]
STAGE_NAMES = ["base", "samples", "spn", "sweep", "validate", "report"]
# Not the defaults (l1, every calibration batch): every number of the run must be measured this way.
MEASURE = ["--importance", "l2", "--eval-batches", "2"]


def rlprune_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "rlprune.cli", *args]


def run_cmd(*args) -> list[str]:
    """``rlprune run`` with the module's measurement spec."""
    return rlprune_cmd("run", *MEASURE, *args)


def env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT))


def wait_for(predicate, proc, timeout: float, what: str) -> None:
    t0 = time.monotonic()
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"rlprune run ended (exit {proc.returncode}) before {what}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory, digits_task):
    """(out folder, state at the kill, summary of the resumed run, stderr of the resumed run)."""
    out = tmp_path_factory.mktemp("run") / "demo"
    cmd = run_cmd("--task", "digits", "--target-macs", "0.5", "--preset", "tiny", "--out", str(out))
    log = open(out.parent / "first.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env(), cwd=ROOT, start_new_session=True)
    try:
        wait_for(lambda: any(out.glob("sweep/*/*/checkpoint/rlprune_search.json")), proc, 400,
                 "the sweep's first checkpoint")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()
    at_kill = {
        "markers": {p.stem: p.read_text() for p in (out / "stages").glob("*.json")},
        "n_samples": len(read_samples(out / "samples")),
    }
    assert not (out / "summary.json").exists(), "the kill came too late to test resuming"
    r = subprocess.run(cmd + ["--json"], capture_output=True, text=True, env=env(), cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, at_kill, json.loads(r.stdout), r.stderr


def test_resume_reuses_finished_stages_and_keeps_every_sample(killed_and_resumed):
    out, at_kill, summary, _ = killed_and_resumed
    assert {"base", "samples", "spn"} <= set(at_kill["markers"])
    for stage, text in at_kill["markers"].items():
        assert summary["stages"][stage]["status"] == "reused", stage
        assert (out / "stages" / f"{stage}.json").read_text() == text, f"{stage} was redone"
    assert summary["stages"]["sweep"]["status"] == "ran"
    assert list(summary["stages"]) == STAGE_NAMES
    n_now = len(read_samples(out / "samples"))
    assert n_now >= at_kill["n_samples"] >= 24
    # The killed search continued from its checkpoint instead of starting over.
    result = json.loads(next(out.glob("sweep/*/*/result.json")).read_text())
    assert result["iterations"] == 2


def test_every_number_is_measured_under_the_runs_spec(killed_and_resumed):
    out, _, summary, _ = killed_and_resumed
    df = read_samples(out / "samples")
    specs = [json.loads(m) for m in df["measure"]]
    assert all(s["importance"] == "l2" and s["eval_batches"] == 2 for s in specs)
    assert df["measure_id"].nunique() == 1
    # The online rounds' real evaluations were labelled exactly like the sampling stage's rows.
    assert (df["sampler"] == "online").sum() >= 1
    record = next((out / "samples" / "spaces").glob("*.json"))
    assert json.loads(record.read_text())["measure"]["importance"] == "l2"
    manifests = [json.loads(p.read_text()) for p in out.glob("validate/*/models/*.json")]
    assert manifests and all(m["importance"] == "l2" for m in manifests)
    assert json.loads((out / "run_config.json").read_text())["measure"]["eval_batches"] == 2


def test_summary_has_every_method_measured_the_same_way(killed_and_resumed):
    out, _, summary, _ = killed_and_resumed
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == summary and list(on_disk["stages"]) == STAGE_NAMES
    assert summary["target"] == 0.5 and summary["budget"] == "macs" and summary["selection_split"] == "validation"
    for stage in STAGE_NAMES:
        assert summary["stages"][stage]["wall_s"] >= 0
    methods = {m["method"]: m for m in summary["methods"]}
    assert any(name.startswith("rl") for name in methods)
    assert {"uniform", "larger_group", "depth", "global_l1", "random_search", "cem"} <= set(methods)
    for m in summary["methods"]:
        assert set(m) >= {"method", "ratios", "params_ratio", "macs_ratio", "val_acc", "acc", "acc_ci", "acc_drop",
                          "latency_ms", "meets_target"}
        assert m["acc_ci"][0] <= m["acc"] <= m["acc_ci"][1] and m["acc_ci"][1] - m["acc_ci"][0] > 0.5
        assert m["macs_ratio"] <= 0.51 and 0 < m["params_ratio"] < 1 and m["latency_ms"] > 0
        assert len(m["ratios"]) == 6 and m["finetune_steps"] == 10
        assert m["acc_drop"] == pytest.approx(summary["base"]["acc"] - m["acc"])
    results = pd.read_csv(out / "results.csv")
    assert sorted(results["method"]) == sorted(methods)
    # What each method spent, counted: rules spend nothing, the SPN searches their calls, RL also real evaluations.
    for name in ("uniform", "larger_group", "depth", "global_l1"):
        assert (methods[name]["spn_calls"], methods[name]["real_evals"], methods[name]["candidates"]) == (0, 0, 1)
    rl = [m for m in summary["methods"] if m["source"] == "rl"]
    assert all(m["spn_calls"] > 0 and m["real_evals"] >= 1 and m["candidates"] == len(rl) for m in rl)
    # Equal budgets: the black-box searches get the sweep's SPN calls and real evaluations, spent online.
    budget = summary["search_budget"]
    assert budget["n_calls"] == max(64, rl[0]["spn_calls"]) and budget["n_real"] == rl[0]["real_evals"]
    for name in ("random_search", "cem"):
        assert methods[name]["real_evals"] == budget["n_real"]
        assert budget["n_calls"] - 64 * budget["rounds"] <= methods[name]["spn_calls"] <= budget["n_calls"]
    # RL against the best baseline: both chosen on validation, compared pairwise on the same test images.
    comp = summary["comparison"]
    val = {name: m["val_acc"] for name, m in methods.items()}
    assert comp["rl"].startswith("rl") and val[comp["rl"]] == max(v for k, v in val.items() if k.startswith("rl"))
    assert val[comp["best_baseline"]] == max(v for k, v in val.items() if not k.startswith("rl"))
    assert comp["diff"] == pytest.approx(methods[comp["rl"]]["acc"] - methods[comp["best_baseline"]]["acc"])
    assert comp["diff_ci"][0] <= comp["diff"] <= comp["diff_ci"][1] and 0 <= comp["p_value"] <= 1
    assert comp["real"] == (comp["diff_ci"][0] > 0 or comp["diff_ci"][1] < 0)


def test_winner_is_saved_and_loads(killed_and_resumed, digits_task):
    out, _, summary, _ = killed_and_resumed
    model, manifest = load_pruned(out / "pruned_model.pt")
    winner = next(m for m in summary["methods"] if m["method"] == summary["winner"])
    assert manifest["method"] == summary["winner"] and manifest["ratios"] == winner["ratios"]
    # Chosen on the validation split, never on the test split it is reported on.
    assert winner["val_acc"] == max(m["val_acc"] for m in summary["methods"] if m["macs_ratio"] <= 0.5 + 1e-9)
    assert sum(p.numel() for p in model.parameters()) == manifest["params"]
    with torch.no_grad():
        assert model(digits_task.example_input()).shape[-1] == 10
    assert digits_task.evaluate(model, "test")["acc"] == pytest.approx(winner["acc"], abs=1e-6)


def test_report_renders_tables_and_figures(killed_and_resumed):
    out, _, summary, _ = killed_and_resumed
    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    for name in ("ratios.png", "acc_vs_macs.png", "spn_predicted_vs_real.png", "search_time.png"):
        png = out / "figures" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert f"figures/{name}" in md
    assert page.count("data:image/png;base64,") == 4
    for m in summary["methods"]:
        assert f"| {m['method']} | {m['val_acc']:.2f} | {m['acc']:.2f} |" in md
        assert f"<td>{m['method']}</td>" in page
    assert "Pareto" in md and "both chosen on the validation split" in md and "estimate" not in md
    assert "Against what the user gets" in md or "too few (or too alike)" in md


def test_spn_is_scored_against_the_fine_tuned_validation_drop():
    """The report's second SPN panel pairs each validated candidate's prediction with its drop after the
    fine-tune on validation (not the label the SPN learned), within each target when given."""
    from rlprune.measure.ranking import spearman
    from rlprune.pipeline.report.figures import describe_spn_vs_final, spn_vs_final

    rows = [{"predicted_acc_drop": p, "val_drop": v} for p, v in [(1, 2), (2, 1), (3, 4), (4, 3), (5, 6)]]
    rows += [{"predicted_acc_drop": None, "val_drop": 9.0}, {"predicted_acc_drop": float("nan"), "val_drop": 0.0}]
    got = spn_vs_final(rows)
    assert got["n"] == 5 and got["spearman"] == pytest.approx(spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 6]))
    assert got["ci"][0] <= got["spearman"] <= got["ci"][1]
    assert f"Spearman {got['spearman']:.2f}" in describe_spn_vs_final(got, "accuracy")
    # Within targets: two targets, each ranked perfectly, though their levels disagree across targets.
    within = [{"predicted_acc_drop": p, "val_drop": v} for p, v in [(1, 11), (2, 12), (3, 13), (4, 1), (5, 2), (6, 3)]]
    assert spn_vs_final(within, [0.3, 0.3, 0.3, 0.7, 0.7, 0.7])["spearman"] == pytest.approx(1.0)
    assert spn_vs_final(within)["spearman"] < 1.0
    assert "too few" in describe_spn_vs_final(spn_vs_final(rows[:2]), "accuracy")


def test_tune_experiments_are_on_disk(killed_and_resumed):
    out, _, summary, _ = killed_and_resumed
    names = sorted(p.name.split("-")[0] for p in (out / "tune").iterdir())
    assert names == ["reward_sweep", "validate"]
    grid = pd.read_csv(next(out.glob("validate/*/result_grid.csv")))
    assert len(grid) == len(summary["methods"]) and "acc" in grid.columns
    sweep = pd.read_csv(next(out.glob("sweep/*/result_grid.csv")))
    assert len(sweep) == 1 and "predicted_acc_drop" in sweep.columns
    sampling = pd.concat(pd.read_csv(p) for p in (out / "samples" / "tune").glob("sample-*.csv"))
    assert sampling["n_new"].sum() >= 24
    assert any((out / "tune").rglob("events.out.tfevents*")), "no TensorBoard events"
    from ray import tune

    for exp in (out / "tune").iterdir():
        assert tune.Tuner.can_restore(str(exp)), exp


def test_a_finished_run_reruns_as_a_no_op(killed_and_resumed):
    out, _, summary, _ = killed_and_resumed
    cmd = run_cmd("--preset", "tiny", "--out", str(out), "--json")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env(), cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    again = json.loads(r.stdout)
    assert {s["status"] for s in again["stages"].values()} == {"reused"}
    assert again["methods"] == summary["methods"] and again["winner"] == summary["winner"]


def test_a_new_target_reuses_samples_and_spn(killed_and_resumed):
    out, _, _, _ = killed_and_resumed
    cmd = run_cmd("--preset", "tiny", "--out", str(out), "--target-macs", "0.7", "--until", "sweep", "--json")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env(), cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads(r.stdout)
    assert [s["stages"][k]["status"] for k in ("base", "samples", "spn", "sweep")] == ["reused"] * 3 + ["ran"]
    assert s["methods"] == [] and s["winner"] is None


@pytest.mark.parametrize("args, words", [
    (["run", "--target-macs", "1.5", "--out", "x"], ["--target-macs 1.5", "(0, 1]"]),
    (["run", "--task", "nosuch", "--out", "x"], ["nosuch"]),
    (["tune", "tune_configs/nosuch.yaml"], ["does not exist", "tune_configs/"]),
])
def test_bad_input_is_one_clear_line(tmp_path, args, words):
    args = [a if a != "x" else str(tmp_path / "x") for a in args]
    r = subprocess.run(rlprune_cmd(*args), capture_output=True, text=True, env=env(), cwd=ROOT, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    for w in words:
        assert w in r.stderr


def test_out_that_is_a_file_is_refused_before_any_work(tmp_path):
    f = tmp_path / "file"
    f.write_text("keep me")
    r = subprocess.run(rlprune_cmd("run", "--out", str(f)), capture_output=True, text=True, env=env(), cwd=ROOT,
                       timeout=120)
    assert r.returncode == 2 and "is a file" in r.stderr and f.read_text() == "keep me"


def test_tune_yaml_runs_the_stages_it_names(killed_and_resumed, tmp_path):
    out, _, _, _ = killed_and_resumed
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(f"extends: {ROOT / 'tune_configs' / 'sample.yaml'}\npreset: tiny\nuntil: spn\n"
                   f"samples: {out / 'samples'}\nsample:\n  n: 24\nmeasure:\n  importance: l2\n"
                   f"  eval_batches: 2\n")
    r = subprocess.run(rlprune_cmd("tune", str(cfg), "--out", str(tmp_path / "o"), "--json"), capture_output=True,
                       text=True, env=env(), cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads(r.stdout)
    assert list(s["stages"]) == ["base", "samples", "spn"] and s["preset"] == "tiny"
    assert s["spn"]["n"] >= 4 and (tmp_path / "o" / "spn" / "spn.pt").is_file()
    assert len(read_samples(out / "samples")) >= 24  # the shared store was read, not regenerated elsewhere
    assert not (tmp_path / "o" / "samples").exists()


def test_a_lost_validation_row_is_measured_again_alone(killed_and_resumed):
    out, _, summary, _ = killed_and_resumed
    rows = next(out.glob("validate/*/rows"))
    lost = rows / "uniform.json"
    before = {p.name: p.stat().st_mtime_ns for p in rows.glob("*.json") if p != lost}
    old = json.loads(lost.read_text())
    lost.unlink()
    r = subprocess.run(run_cmd("--preset", "tiny", "--out", str(out), "--json"), capture_output=True,
                       text=True, env=env(), cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads(r.stdout)
    assert s["stages"]["validate"]["status"] == "ran"
    assert {p.name: p.stat().st_mtime_ns for p in rows.glob("*.json") if p != lost} == before
    again = json.loads(lost.read_text())
    assert again["ratios"] == old["ratios"] and again["macs_ratio"] == old["macs_ratio"]
    assert [m["method"] for m in s["methods"]] == [m["method"] for m in summary["methods"]]


def test_a_stage_marker_of_other_code_is_rerun_and_the_log_says_why(killed_and_resumed):
    out, _, _, _ = killed_and_resumed
    marker = out / "stages" / "report.json"
    old = json.loads(marker.read_text())
    assert len(old["code"]) == 12
    marker.write_text(json.dumps({**old, "key": "written-by-old-code", "code": "0" * 12}))
    r = subprocess.run(run_cmd("--preset", "tiny", "--out", str(out), "--json"), capture_output=True,
                       text=True, env=env(), cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads(r.stdout)
    assert s["stages"]["report"]["status"] == "ran" and s["stages"]["validate"]["status"] == "reused"
    assert "report: the code changed since it ran" in r.stderr
    assert json.loads(marker.read_text())["code"] == old["code"]



def test_the_second_stage_quantizes_the_output_model_and_joins_the_report(killed_and_resumed, digits_task):
    """``--quantize`` on a finished run: only the new stage runs; its bit vectors meet the size budget, the
    winner is the validation pick and its exported file scores what was validated; both stages share one size
    axis in summary.json and the report. (Last in the module: it adds a stage to the shared run.)"""
    import rlprune

    out, _, before, _ = killed_and_resumed
    cmd = run_cmd("--preset", "tiny", "--out", str(out), "--quantize", "--target-size", "0.15", "--json")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env(), cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(r.stdout)
    assert list(s["stages"]) == [*STAGE_NAMES, "quantize"]
    assert {k: v["status"] for k, v in s["stages"].items()} == {**dict.fromkeys(STAGE_NAMES, "reused"),
                                                                  "quantize": "ran"}
    q = s["quantize"]
    methods = {m["method"]: m for m in q["methods"]}
    assert {"uniform8", "uniform6", "uniform4", "sensitivity", "rl", "random_search", "cem"} == set(methods)
    assert all(m["size_ratio"] <= 0.15 + 1e-9 and m["meets_target"] for m in methods.values())
    assert all(len(m["bits"]) == len(q["layers"]) and set(m["bits"]) <= set(range(2, 9)) for m in methods.values())
    calls = {methods[k]["wm_calls"] for k in ("rl", "random_search", "cem")}
    assert len(calls) == 1 and calls.pop() > 0  # the black-box searches got RL's counted world-model calls
    assert {methods[k]["real_evals"] for k in ("rl", "random_search", "cem")} == {2}  # ...and its online round
    # Validation, then the smaller size, then the first name (rlprune.quant.qat.choose; ties happen: the rules and
    # a search often land on one vector).
    assert q["winner"] == min(methods, key=lambda k: (-methods[k]["val_acc"], methods[k]["size_ratio"], k))
    pruned, _ = load_pruned(out / "pruned_model.pt")
    assert q["fp32"]["params"] == sum(p.numel() for p in pruned.parameters())
    assert q["base_params"] == sum(p.numel() for p in digits_task.base_model().parameters())
    for m in methods.values():
        assert m["size_ratio_base"] == pytest.approx(m["size_ratio"] * q["fp32"]["params"] / q["base_params"])
        assert m["acc_ci"][0] <= m["acc"] <= m["acc_ci"][1]
    c = q["comparison"]
    assert c["rl"] == "rl" and c["best_baseline"] in methods and c["selection_split"] == "validation"
    # Pruning rows are fp32: no bits, and their size over the unpruned model is their params ratio.
    assert all(m["bits"] is None and m["size_ratio"] == m["params_ratio"] for m in s["methods"])
    assert [m["method"] for m in s["methods"]] == [m["method"] for m in before["methods"]]
    model, manifest = rlprune.load_quantized(out / "quantize")
    assert manifest["method"] == q["winner"] and manifest["pruned"] == str(out)
    assert digits_task.evaluate(model, "validation")["acc"] == pytest.approx(methods[q["winner"]]["val_acc"],
                                                                             abs=1e-6)
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert "## Second stage: weight bits" in md and page.count("data:image/png;base64,") == 6
    for name in ("bits_per_layer.png", "size_vs_acc.png"):
        assert f"figures/{name}" in md and (out / "figures" / name).read_bytes()[:4] == b"\x89PNG"
    assert f"| {q['winner']} | {methods[q['winner']]['size_ratio']:.4f} |" in md
    again = subprocess.run(cmd, capture_output=True, text=True, env=env(), cwd=ROOT, timeout=300)
    assert again.returncode == 0 and json.loads(again.stdout)["stages"]["quantize"]["status"] == "reused"
    bad = subprocess.run(run_cmd("--preset", "tiny", "--out", str(out), "--target-size", "0.001"),
                         capture_output=True, text=True, env=env(), cwd=ROOT, timeout=300)
    assert bad.returncode == 2 and "0.001" in bad.stderr.strip().splitlines()[-1], bad.stderr[-2000:]
    assert json.loads((out / "summary.json").read_text())["quantize"]["target_size"] == 0.15  # left as it was
