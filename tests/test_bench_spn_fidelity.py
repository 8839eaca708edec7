"""``benchmarks/spn_fidelity.py`` on a task other than digits: the within-budget section, the points CSV, resuming.

The quick run measures Fashion-MNIST ResNet-20 (the committed base model) with ResNet-20 as its own transfer
source (so the transfer section only runs its code path): 56 samples, 3 within-budget vectors per MACs target.
It runs twice, the second time as on a fresh machine (empty ``--work`` and store, restored from the first's
``--keep-rows``): it must measure nothing. ~4 min on 2 idle cores (twice that while other jobs share them).
Digits' own quick run is tested in ``test_benchmarks_smoke.py``.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from rlprune.tasks.fashion_data import DEBIAN_FOLDER
from tests.bench_helpers import run_script

FLAGS = ["--quick", "--task", "fashion-mnist", "--arch", "resnet20", "--source-arch", "resnet20"]
NAME = "fashionmnist_resnet20_quick"
TARGETS = {0.3, 0.5, 0.7}

needs_fashion = pytest.mark.skipif(not DEBIAN_FOLDER.is_dir(), reason="dataset-fashion-mnist is not installed")


def _run(out: Path, work: Path, *extra: str) -> subprocess.CompletedProcess:
    proc = run_script("spn_fidelity", *FLAGS, "--results-dir", str(out), "--work", str(work), *extra, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory, rlprune_cache):
    """The quick run keeping its store and rows (``--keep-rows``), then the same run again as on a fresh machine:
    an empty ``--work`` and an empty ``--store``, the same ``--keep-rows``. (folder, second work, procs, the first
    run's rows)."""
    if not DEBIAN_FOLDER.is_dir():
        pytest.skip("dataset-fashion-mnist is not installed")
    out, work, again = (tmp_path_factory.mktemp(n) for n in ("spn-fm", "spn-fm-work", "spn-fm-fresh"))
    keep = out / "kept"
    first = _run(out, work, "--keep-rows", str(keep))
    saved = {p.name: p.read_bytes() for p in work.glob("*.json")}
    second = _run(out, again, "--keep-rows", str(keep), "--store", str(again / "store"))
    return out, again, (first, second), saved


def _csv(path: Path) -> list[dict]:
    return pd.read_csv(path).to_dict("records")


@needs_fashion
@pytest.mark.slow
def test_within_budget_rows_are_final_validated_accuracy_and_the_k0_label(runs):
    """Every vector of every target is projected onto it from below, its final is the validation recipe (whole
    validation split, the quick run's 10 fine-tune steps, its own fine-tune seed) and its proxy the k=0 label;
    recomputing one vector's of each here gives the same numbers."""
    from rlprune.measure.recipe import evaluate_ratios, measure_baseline, prune_and_score
    from rlprune.measure.spec import MeasureSpec
    from rlprune.spn.nets import one_thread
    from rlprune.tasks import get_task

    out, _, _, _ = runs
    rows = _csv(out / f"spn_within_budget_{NAME}.csv")
    assert sorted((r["target"], r["vector"]) for r in rows) == sorted((t, i) for t in TARGETS for i in range(3))
    for r in rows:
        assert r["target"] - 0.1 <= r["macs_ratio"] <= r["target"] + 1e-6
        assert (r["final_split"], r["final_steps"], r["final_n"], r["final_seed"]) == ("validation", 10, 5000, 1)
        assert 0 <= r["bn_acc"] <= 100 and math.isfinite(r["spn_pred_drop"]) and r["date"] and r["commit"]
    r = rows[-1]
    ratios = json.loads(r["ratios"])
    task = get_task("fashion-mnist", arch="resnet20", seed=0)
    spec = MeasureSpec(eval_batches=8, finetune_steps=10)  # the quick run's spec
    with one_thread():
        model = task.base_model()
        space = spec.space_of(model, task.example_input())
        label = evaluate_ratios(task, space, ratios, measure_baseline(task, model, spec), spec)
        task.finetune_seed = 1
        _, val = prune_and_score(task, space, ratios, spec, finetune=True, split="validation")
    assert label["acc"] == pytest.approx(r["bn_acc"], abs=1e-6)
    assert float(val["acc"]) == pytest.approx(r["final_acc"], abs=0.1)


@needs_fashion
@pytest.mark.slow
def test_within_budget_spearman_rows_and_the_markdown(runs):
    """The SPN (seed 0, the curve's largest) and the adaptive-BN proxy each get a within-target and a per-target
    Spearman over the 9 vectors, every interval holding its estimate."""
    out, _, _, _ = runs
    within = [r for r in _csv(out / f"spn_fidelity_{NAME}.csv") if r["section"] == "within"]
    assert {(r["arch"], str(r["scope"])) for r in within} == {
        (a, s) for a in ("transformer", "adaptive BN") for s in ("within", "0.3", "0.5", "0.7")}
    for r in within:
        assert r["lo"] - 1e-6 <= r["spearman"] <= r["hi"] + 1e-6
        assert r["n_vectors"] == (9 if r["scope"] == "within" else 3)
    assert {r["n_train"] for r in within if r["arch"] == "transformer"} == {32}
    md = (out / f"spn_fidelity_{NAME}.md").read_text()
    assert md.startswith("# SPN fidelity (fashion-mnist/resnet20, quick)") and "## Within budget" in md
    assert not (out / "summary.json").exists() and not list(out.glob("summary_*.json"))


@needs_fashion
@pytest.mark.slow
def test_points_csv_holds_the_held_out_samples_real_drops(runs, rlprune_cache):
    """``spn_points``: one row per held-out sample, its real drop the store's label (plots.py reads it)."""
    from rlprune.samples.store import read_samples

    out, _, _, _ = runs
    pts = pd.read_csv(out / f"spn_points_{NAME}.csv")
    assert {"real_drop", "predicted_drop", "macs_ratio"} <= set(pts.columns) and len(pts) == 24
    store = read_samples(rlprune_cache / "benchmarks" / "spn_fidelity").set_index("sample_id")
    assert pts["sample_id"].is_unique and set(pts["sample_id"]) <= set(store.index)
    assert pts["real_drop"].to_numpy() == pytest.approx(store.loc[pts["sample_id"], "acc_drop"].to_numpy(), abs=1e-3)


@needs_fashion
@pytest.mark.slow
def test_rerun_measures_nothing_new(runs, rlprune_cache):
    """The second run, on an empty ``--work`` and store, generates no sample and measures no vector: the kept
    copies (``--keep-rows``: the store's finished files in ``samples/``, the rows in ``within/``) restore both."""
    from rlprune.samples.store import read_samples

    out, again, (first, second), saved = runs
    assert "generating" in first.stderr and "generating" not in second.stderr
    measured = "fashion-mnist/resnet20 target 0.3 vector 0: labels k0="  # label_fidelity.run measures them
    assert measured in first.stderr and "vector 0: labels" not in second.stderr
    assert {p.name: p.read_bytes() for p in again.glob("*.json")} == saved and len(saved) == 9
    assert sorted(p.name for p in (out / "kept" / "within").iterdir()) == sorted(saved)
    assert "9 read back from --work" in (out / f"spn_fidelity_{NAME}.md").read_text()
    first_store = read_samples(rlprune_cache / "benchmarks" / "spn_fidelity")
    assert sorted(read_samples(again / "store")["sample_id"]) == sorted(first_store["sample_id"])


@needs_fashion
@pytest.mark.slow
def test_headline_has_every_figure_of_the_real_workload(runs, bench):
    out, _, _, _ = runs
    figures = bench("spn_fidelity").headline(_csv(out / f"spn_fidelity_{NAME}.csv"))
    want = {"spn_spearman_at_32", "spn_mae_at_32", "spn_within_budget_spearman_at_32",
            "spn_within_budget_spearman_at_32_ci", "adaptive_bn_within_budget_spearman",
            "adaptive_bn_within_budget_spearman_ci", "spn_transfer_spearman_after_16", "spn_scratch_spearman_after_16"}
    assert want <= set(figures), sorted(figures)
    assert figures["spn_label_steps"] == 0


def test_within_budget_headline_reports_seed_0_and_every_seed(bench):
    """Seed 0's SPN (the points CSV's) with its interval, the spread over SPN seeds, the proxy; none without rows."""
    wb = bench("spn_within_budget")

    def row(arch, seed, rho, scope="within"):
        return {"section": "within", "arch": arch, "n_train": 512, "seed": seed, "scope": scope, "spearman": rho,
                "lo": rho - 0.1, "hi": rho + 0.1}

    rows = [row("transformer", 1, 0.5), row("transformer", 0, 0.4), row("transformer", 0, 0.9, "0.3"),
            row("adaptive BN", 0, 0.2), {"section": "curve", "arch": "transformer", "n_train": 512, "seed": 0}]
    assert wb.headline(rows) == {
        "spn_within_budget_spearman_at_512": 0.4, "spn_within_budget_spearman_at_512_ci": [0.4 - 0.1, 0.4 + 0.1],
        "spn_within_budget_spearman_at_512_seeds": [0.4, 0.5], "adaptive_bn_within_budget_spearman": 0.2,
        "adaptive_bn_within_budget_spearman_ci": [0.2 - 0.1, 0.2 + 0.1]}
    assert wb.headline(rows[-1:]) == {}


def test_source_arch_is_refused_on_digits(bench, capsys):
    with pytest.raises(SystemExit) as e:
        bench("spn_fidelity").main(["--quick", "--source-arch", "resnet20"])
    assert e.value.code == 2 and "--source-arch is for tasks other than digits" in capsys.readouterr().err
