"""Every benchmark's ``--quick`` mode runs end to end and writes its tables; no figure is asserted.

Each script runs in a subprocess (as a user would run it) into ``tmp_path``, so the committed results under
``benchmarks/results`` are never touched, with the session's temporary ``RLPRUNE_CACHE`` (conftest.py) in its
environment. Together the four quick runs take about 3 minutes on 2 cores.
"""

from __future__ import annotations

import csv
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"

# script -> what its full run would put into summary.json (key prefixes: sizes differ in quick mode)
HEADLINE = {
    "search_speed": {"spn_vs_real_step_speedup", "end_to_end_speedup", "end_to_end_speedup_is_lower_bound",
                     "real_evals_ratio"},
    "quality": {"rl_minus_best_baseline_acc_at_0.5", "params_removed_ratio_vs_best_rule"},
    "spn_fidelity": {"spn_spearman_at_", "spn_mae_at_", "spn_transfer_zero_shot_spearman", "spn_transfer_mae_after_"},
    "scaling": {"sample_throughput_2_vs_1", "cost_model_vectors_per_s", "cost_model_vectors_per_s_resnet56",
                "spn_inference_vectors_per_s", "env_steps_per_s_simultaneous", "env_steps_per_s_sequential"},
}
# script -> (columns its CSV must have, the column naming each row's kind, kinds that must all appear)
EXPECTED = {
    "search_speed": ({"section", "method", "episodes", "real_evals", "wall_s", "env_steps_per_s", "acc", "macs_ratio"},
                     "section", {"step", "pipeline", "amc"}),
    "quality": ({"task", "seed", "target", "finetune_steps", "method", "acc", "acc_drop", "params_ratio",
                 "macs_ratio", "latency_ms"}, "method", {"rl", "uniform", "larger_group", "depth", "global_l1",
                                                          "random_search", "cem"}),
    "spn_fidelity": ({"section", "arch", "n_train", "seed", "mae", "spearman"}, "section", {"curve", "transfer"}),
    "scaling": ({"section", "name", "workers", "samples_per_s", "vectors_per_s", "env_steps_per_s", "mode"},
                "section", {"samples", "spn", "cost_model", "env"}),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_quick_run_writes_its_tables(name, tmp_path, digits_task, bench):
    """``python benchmarks/<name>.py --quick --results-dir DIR`` exits 0 and writes ``<name>_quick.csv/.md``;
    the figures a full run would merge into summary.json can be computed from that CSV."""
    proc = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), "--quick", "--results-dir", str(tmp_path)],
                          cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    columns, kind, kinds = EXPECTED[name]
    with open(tmp_path / f"{name}_quick.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows, f"{name}_quick.csv has no rows"
    assert columns <= set(rows[0]), f"missing columns: {columns - set(rows[0])}"
    assert kinds <= {r[kind] for r in rows}
    md = (tmp_path / f"{name}_quick.md").read_text()
    assert md.startswith("# ") and "|---" in md
    assert md.splitlines()[0] in proc.stdout  # the table is printed too
    assert not (tmp_path / "summary.json").exists()  # only full runs update the summary
    assert not (tmp_path / f"{name}.csv").exists()  # a quick run never writes the full result's name
    figures = bench(name).headline(pd.read_csv(tmp_path / f"{name}_quick.csv").to_dict("records"))
    assert all(any(k.startswith(want) for k in figures) for want in HEADLINE[name]), sorted(figures)


@pytest.fixture
def bench(monkeypatch):
    """Import a benchmark script as a module (the scripts import their sibling ``common``)."""
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module


def test_update_summary_merges_atomically(tmp_path, bench):
    """Each script's figures are merged in; other keys survive; date and machine are stamped; no tmp is left."""
    common = bench("common")
    common.update_summary(tmp_path, {"a": 1.5, "nan": float("nan")}, "one")
    common.update_summary(tmp_path, {"b": 2}, "two")
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["a"] == 1.5 and s["b"] == 2 and s["nan"] is None
    assert set(s["updated"]) == {"one", "two"} and s["date"]
    assert {"platform", "cpu_count", "torch", "ray"} <= set(s["machine"])
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_params_removed_at_equal_drop_interpolates_between_targets(bench):
    """The rule's curve is walked from the unpruned model; RL's drop may fall between two targets."""
    quality = bench("quality")
    points = [(0.5, 0.3), (1.4, 0.52), (5.0, 0.8)]  # (acc drop, params removed), least pruned first
    assert quality.removed_at_drop(points, 0.83) == pytest.approx(0.3 + 0.33 / 0.9 * 0.22)
    assert quality.removed_at_drop(points, 10.0) == pytest.approx(0.8)
    assert quality.removed_at_drop([(2.0, 0.3)], 1.0) == pytest.approx(0.15)  # on the segment from (0, 0)
    assert quality.removed_at_drop([(0.5, 0.3)], -1.0) == 0.0  # nothing on the curve is that accurate


def test_quality_full_mode_figures_from_rows(bench):
    """The summary.json figures of a 3-target, 2-seed run come out of the per-seed rows (synthetic here)."""
    quality = bench("quality")
    rows = []
    for seed in (0, 1):
        for target in (0.3, 0.5, 0.7):
            for method, acc, params in (("rl", 98.0, target + 0.05), ("uniform", 97.0, target),
                                        ("larger_group", 90.0, target - 0.2), ("depth", 91.0, target - 0.2),
                                        ("cem", 97.5, target + 0.02)):
                rows.append({"task": "digits", "seed": seed, "target": target, "finetune_steps": 100,
                             "method": method, "acc": acc, "acc_drop": 99.0 - acc, "params_ratio": params,
                             "macs_ratio": target, "latency_ms": 0.5})
    summary = quality.summarise(rows)
    equal = quality.params_at_equal_drop(rows, 100)
    fig = quality.headline(rows)
    assert set(fig) == {"rl_minus_best_baseline_acc_at_0.3", "rl_minus_best_baseline_acc_at_0.5",
                        "rl_minus_best_baseline_acc_at_0.7", "params_removed_ratio_vs_best_rule"}
    assert fig["rl_minus_best_baseline_acc_at_0.5"] == pytest.approx(0.5)  # vs cem
    assert {r["target"] for r in equal} == {0.3, 0.5, 0.7}
    md = quality.markdown(summary, equal, "# Quality")
    assert "| digits | 0.5 | 100 | rl |" in md and "| digits | 0.5 | 100 |" in md.split("equal accuracy drop")[1]


def test_missing_cifar_folder_is_one_line_and_exit_2(tmp_path):
    """``quality.py --data-dir`` with no CIFAR-10 there stops at once with the task's own message."""
    proc = subprocess.run([sys.executable, str(BENCH / "quality.py"), "--quick", "--data-dir", str(tmp_path / "none"),
                           "--results-dir", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "cifar-10-batches-py" in proc.stderr
    assert not (tmp_path / "out").exists()
