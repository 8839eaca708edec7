"""The two examples of ``examples/`` run as a user runs them (``python -m examples.X --quick``), end to end.

Each example trains its own model in plain torch, saves a ``state_dict`` and prunes it with ``rlprune run``
(tiny preset) from import specs, so the Ray trials rebuild the user's task in their own processes. The outputs
a user reads are checked: every method's row, the metric's name, the pruned model, and (multi-label) that
every ``acc`` is the user's F1, not top-1 accuracy.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import rlprune
from rlprune.pipeline.sections import BASELINES

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _env(cache: Path) -> dict:
    return dict(os.environ, RLPRUNE_CACHE=str(cache), PYTHONPATH=str(ROOT))


def _run_example(name: str, tmp_path_factory) -> tuple[Path, dict, str]:
    """``python -m examples.<name> --quick --out OUT`` from the repository root: (OUT, summary, stdout)."""
    base = tmp_path_factory.mktemp(name)
    out = base / "out"
    r = subprocess.run([sys.executable, "-m", f"examples.{name}", "--quick", "--out", str(out)], cwd=ROOT,
                       env=_env(base / "cache"), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return out, json.loads((out / "run" / "summary.json").read_text()), r.stdout


@pytest.fixture(scope="module")
def own_model(tmp_path_factory):
    return _run_example("own_model", tmp_path_factory)


@pytest.fixture(scope="module")
def multilabel(tmp_path_factory):
    return _run_example("multilabel", tmp_path_factory)


def _check_rows(summary: dict) -> None:
    """Every method validated, with finite scores in points, and the winner among them."""
    methods = {m["method"]: m for m in summary["methods"]}
    assert set(BASELINES) < set(methods) and sum(m.startswith("rl-") for m in methods) == 1, sorted(methods)
    for m in summary["methods"]:
        for k in ("val_acc", "acc", "acc_drop", "params_ratio", "macs_ratio", "latency_ms"):
            assert isinstance(m[k], float) and math.isfinite(m[k]), (m["method"], k, m[k])
        assert 0 <= m["val_acc"] <= 100 and 0 <= m["acc"] <= 100
        lo, hi = m["acc_ci"]  # per-example scores (top-1 hits or F1s): every row has an interval
        assert lo <= m["acc"] <= hi
        assert m["macs_ratio"] <= summary["target"] + 1e-9, m  # every candidate fits the budget...
        # ...and the baselines, projected onto it, land within the 1% slack (RL's wall only keeps it under).
        assert m["meets_target"] or m["source"] == "rl", m
    assert summary["winner"] in methods and all(t["status"] == "ran" for t in summary["stages"].values())


def _base_marker(out: Path) -> dict:
    return json.loads((out / "run" / "stages" / "base.json").read_text())["output"]


def test_own_model_example_prunes_through_the_python_api_and_the_cli(own_model, tmp_path):
    out, summary, stdout = own_model
    # (b) the Python API part printed the groups and a measured uniform pruning.
    assert "3 prunable groups" in stdout and "uniform 0.3:" in stdout
    # (c) the pipeline through the Python entry point: the user task, top-1 accuracy.
    assert summary["task"] == "user" and summary["metric"] == "accuracy"
    assert _base_marker(out)["metric"] == "accuracy" and _base_marker(out)["task"] == "user-smallcnn"
    _check_rows(summary)
    assert summary["base"]["acc"] > 80  # the user's training worked: well above chance (10%)
    model, manifest = rlprune.load_pruned(out / "run" / "pruned_model.pt")
    assert manifest["method"] == summary["winner"] and manifest["macs_ratio"] <= 0.5 * 1.01
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    # The printed CLI command names the same run: run as typed, it reuses every stage.
    line = next(t for t in stdout.splitlines() if t.startswith("CLI: rlprune run "))
    args = shlex.split(line.removeprefix("CLI: rlprune "))
    r = subprocess.run([sys.executable, "-m", "rlprune.cli", *args, "--json"], cwd=ROOT,
                       env=_env(tmp_path / "cache"), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    again = json.loads(r.stdout)
    assert {t["status"] for t in again["stages"].values()} == {"reused"} and again["winner"] == summary["winner"]


def test_multilabel_example_scores_every_result_by_its_f1(multilabel):
    from examples.multilabel import datasets, f1

    out, summary, stdout = multilabel
    assert summary["metric"] == "f1" and _base_marker(out)["metric"] == "f1"
    _check_rows(summary)
    # F1 means, not hit rates: top-1 accuracy on the 357 test images would be a multiple of 100/357.
    n = 357
    assert summary["base"]["acc"] > 50 and any(abs(m["acc"] * n / 100 - round(m["acc"] * n / 100)) > 1e-6
                                               for m in summary["methods"])
    # The winner's test score is the user's metric on the saved model, recomputed here.
    model, manifest = rlprune.load_pruned(out / "run" / "pruned_model.pt")
    assert manifest["method"] == summary["winner"]
    winner = next(m for m in summary["methods"] if m["method"] == summary["winner"])
    scores = f1(model.eval(), DataLoader(datasets()["test"], batch_size=128))
    assert scores.shape == (n,) and not np.isin(scores, (0, 100)).all()
    assert winner["acc"] == pytest.approx(scores.mean(), abs=1e-6)
    # The SPN learned the F1 drop: its samples are labelled with the metric, on the calibration split.
    assert summary["spn"]["n"] >= 1 and math.isfinite(summary["spn"]["mae"])
    assert "winner:" in stdout and "val f1" in stdout


def test_multilabel_report_names_its_metric(multilabel):
    out, _, _ = multilabel
    report = (out / "run" / "report.md").read_text()
    assert "f1" in report.lower() and "test accuracy" not in report


@pytest.mark.parametrize("spec, named", [("examples.nope:datasets", "cannot import module 'examples.nope'"),
                                         ("examples.own_model:nope", "has no attribute 'nope'")])
def test_a_data_spec_that_does_not_import_is_one_line_and_exit_2(tmp_path, spec, named):
    from examples.own_model import build

    weights = tmp_path / "w.pt"
    torch.save(build().state_dict(), weights)
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "rlprune.cli", "run", "--model", "examples.own_model:build",
                        "--weights", str(weights), "--data", spec, "--preset", "tiny", "--out", str(out)],
                       cwd=ROOT, env=_env(tmp_path / "cache"), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rlprune run: error: ") and named in lines[0], r.stderr
    assert spec in lines[0] and not out.exists()  # nothing stored
