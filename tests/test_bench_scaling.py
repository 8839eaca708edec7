"""``benchmarks/scaling.py`` on any workload: the task's flags reach every part, the rows name the workload and
its group count, the result files and the summary go where :mod:`common` routes them.

The quick runs are real (a subprocess, as a user runs the script, into a temporary folder with the session's
``RLPRUNE_CACHE``); no figure is asserted, only which workload each row measured. The digits quick run itself is
covered by ``tests/test_benchmarks_smoke.py``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from rlprune.tasks.fashion_data import DEBIAN_FOLDER
from tests.bench_helpers import run_script
from tests.test_fashion_data import write_folder

SECTIONS = ["samples", "samples", "spn", "spn", "spn", "cost_model", "env", "env"]
"""A task other than digits: one cost-model row (its own net), no CIFAR ResNet-56 row."""


def _run_quick(out: Path, *task_args: str) -> subprocess.CompletedProcess:
    proc = run_script("scaling", "--quick", "--results-dir", str(out), *task_args, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _n_groups(task_name: str, **kw) -> int:
    from rlprune.space.pruning import PruningSpace
    from rlprune.tasks import get_task

    task = get_task(task_name, **kw)
    return PruningSpace.from_model(task.base_model(), task.example_input()).cost_model.n_groups


def _assert_rows_name(out: Path, stem: str, label: str, n_groups: int, bench) -> list[dict]:
    """The quick CSV/MD of workload ``label``: every row names it (the SPN rows name their arch), the cost-model
    row carries its group count, the headline reads from it without a CIFAR ResNet-56 figure, no summary."""
    rows = pd.read_csv(out / f"{stem}.csv").to_dict("records")
    assert [r["section"] for r in rows] == SECTIONS
    assert {r["name"] for r in rows if r["section"] != "spn"} == {label}
    assert [int(r["n"]) for r in rows if r["section"] == "samples"] == [8, 8]  # both worker settings sampled
    assert int(next(r for r in rows if r["section"] == "cost_model")["n_groups"]) == n_groups
    assert (out / f"{stem}.md").read_text().startswith(f"# Scaling ({label}, quick)")
    figures = bench("scaling").headline(rows)
    assert "cost_model_vectors_per_s_resnet56" not in figures and figures["cost_model_vectors_per_s"] > 0
    assert not list(out.glob("summary*.json"))  # only full runs update a summary
    return rows


@pytest.mark.slow
def test_quick_run_on_a_tiny_fashion_folder_takes_arch_and_data_dir_to_the_workers(tmp_path, bench):
    """``--arch mobilenet --data-dir`` (not the task's defaults) reach the Tune workers and the env: a worker
    building the default resnet20 or the default data folder would not match the driver's base model."""
    folder = tmp_path / "fashion-mnist"
    write_folder(folder, n_train=200, n_test=40)  # its base model trains in seconds, cached in RLPRUNE_CACHE
    _run_quick(tmp_path / "out", "--task", "fashion-mnist", "--arch", "mobilenet", "--data-dir", str(folder))
    groups = _n_groups("fashion-mnist", arch="mobilenet", data_dir=str(folder))
    _assert_rows_name(tmp_path / "out", "scaling_fashionmnist_mobilenet_quick", "fashion-mnist/mobilenet", groups,
                      bench)


def test_default_workload_is_digits_with_todays_file_names(bench):
    """No flags: digits, its own base model per seed (no shared one), ``scaling.csv`` / ``scaling_quick.csv``."""
    scaling, common, record = bench("scaling"), bench("common"), bench("record")
    args = scaling.parse_args([])
    assert (args.task, args.arch, args.data_dir, args.model_seed) == ("digits", None, None, None)
    kw, label = common.task_choice(args)
    assert (kw, label) == ({}, "digits")
    assert [record.stem(record.result_name("scaling", label), q) for q in (False, True)] == ["scaling",
                                                                                          "scaling_quick"]


@pytest.mark.skipif(not DEBIAN_FOLDER.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_fashion_flags_give_the_task_kwargs_and_label(bench):
    """``--task fashion-mnist --arch resnet56``: the committed seed-0 base model, labelled by its arch;
    ``--model-seed`` is passed on as the task's seed."""
    scaling, common, record = bench("scaling"), bench("common"), bench("record")
    kw, label = common.task_choice(scaling.parse_args(["--task", "fashion-mnist", "--arch", "resnet56"]))
    assert (kw, label) == ({"arch": "resnet56", "seed": 0}, "fashion-mnist/resnet56")
    assert record.stem(record.result_name("scaling", label), True) == "scaling_fashionmnist_resnet56_quick"
    args = scaling.parse_args(["--task", "fashion-mnist", "--arch", "resnet20", "--model-seed", "3"])
    assert common.task_choice(args)[0] == {"arch": "resnet20", "seed": 3}


def test_missing_data_folder_is_one_line_and_exit_2(tmp_path):
    """``--task fashion-mnist --data-dir`` with no data there stops before any work, with the task's message."""
    proc = run_script("scaling", "--quick", "--task", "fashion-mnist", "--data-dir", str(tmp_path / "none"),
                      "--results-dir", str(tmp_path / "out"), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "dataset-fashion-mnist" in proc.stderr
    assert not (tmp_path / "out").exists()


def _rows(label: str, with_resnet56: bool) -> list[dict]:
    """One row per section as :func:`scaling.measure` writes them (figures made up: only routing is checked)."""
    cost = [{"section": "cost_model", "name": label, "n_groups": 30, "vectors_per_s": 1_000_000}]
    if with_resnet56:
        cost.append({"section": "cost_model", "name": "resnet56", "n_groups": 30, "vectors_per_s": 500_000})
    return [{"section": "samples", "name": label, "workers": 1, "n": 64, "samples_per_s": 0.2, "speedup_vs_1": 1.0},
            {"section": "samples", "name": label, "workers": 2, "n": 64, "samples_per_s": 0.36, "speedup_vs_1": 1.8},
            *({"section": "spn", "name": a, "batch": 65_536, "vectors_per_s": v, "single_ms": 0.2}
              for a, v in (("transformer", 90_000), ("mlp", 1e6), ("linear", 1e7))),
            *cost,
            *({"section": "env", "name": label, "mode": m, "episodes": 10, "env_steps": s, "episodes_per_s": e,
               "env_steps_per_s": e * s / 10} for m, s, e in (("simultaneous", 10, 500.0), ("sequential", 300, 20.0)))]


@pytest.mark.parametrize(("label", "summary", "stem"), [
    ("fashion-mnist/resnet56", "summary.json", "scaling_fashionmnist_resnet56"),
    ("digits", "summary_digits.json", "scaling"),
    ("fashion-mnist/resnet20", "summary_fashionmnist_resnet20.json", "scaling_fashionmnist_resnet20"),
])
def test_full_mode_routes_the_summary_by_workload(tmp_path, bench, label, summary, stem):
    """The headline workload (fashion-mnist/resnet56) writes summary.json; any other its summary_<workload>.json;
    the keys are the same, with ``_resnet56`` only where that row was measured (digits)."""
    scaling = bench("scaling")
    digits = label == "digits"
    scaling.save(tmp_path, _rows(label, digits), label, quick=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{stem}.csv", f"{stem}.md", summary])
    s = json.loads((tmp_path / summary).read_text())
    assert s["sample_throughput_2_vs_1"] == 1.8 and s["cost_model_vectors_per_s"] == 1_000_000
    assert s["spn_inference_vectors_per_s"] == 90_000 and s["env_steps_per_s_sequential"] == 600.0
    assert ("cost_model_vectors_per_s_resnet56" in s) == digits
    assert s["workload"] == {"scaling": label} and s["task"] == label.split("/")[0]
    scaling.save(tmp_path / "quick", _rows(label, digits), label, quick=True)
    assert sorted(p.name for p in (tmp_path / "quick").iterdir()) == [f"{stem}_quick.csv", f"{stem}_quick.md"]
