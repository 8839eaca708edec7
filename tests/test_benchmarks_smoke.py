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
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests.bench_helpers import BENCH, ROOT, read_rows, run_script

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
    figures = bench(name).headline(read_rows(out / f"{name}_quick.csv"))
    assert all(any(k.startswith(want) for k in figures) for want in HEADLINE[name]), sorted(figures)


def test_rows_keep_the_provenance_of_their_measurement_and_archives_know_their_commit(tmp_path, bench):
    """A row stamped when it was measured keeps that stamp when a resumed run writes it again; a row without one
    is stamped at writing; a snapshot made with ``git archive`` (no .git) still names its commit."""
    record = bench("record")
    old = {"seed": 0, "acc": 90.0, "date": "2026-01-01T00:00:00+00:00", "commit": "abc", "machine": "m",
           "load_1min": 3.5}
    path = record.write_csv(tmp_path, "t", [old, {"seed": 1, "acc": 91.0}], ["seed", "acc"])
    rows = read_rows(path)
    assert list(rows[0]) == ["seed", "acc", *record.PROVENANCE]
    assert rows[0] == old
    assert rows[1]["commit"] == record.commit() and rows[1]["date"].startswith(time.strftime("%Y-"))
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode:
        pytest.skip("not a git checkout")
    assert record.commit().split("-")[0] == head.stdout.strip()
    archived = subprocess.run("git archive HEAD benchmarks/record.py | tar -xO", shell=True, cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout
    assert f'_ARCHIVED_COMMIT = "{head.stdout.strip()}"' in archived


def test_update_summary_merges_atomically(tmp_path, bench):
    """Each script's figures are merged in; other keys survive; retired keys go; date and machine are stamped;
    no tmp is left."""
    record = bench("record")
    record.update_summary(tmp_path, {"a": 1.5, "nan": float("nan"), "old": 3}, "one")
    record.update_summary(tmp_path, {"b": 2, "ci": [np.float64(-0.5), 1.0]}, "two", retired=("old",))
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["a"] == 1.5 and s["b"] == 2 and s["nan"] is None and s["ci"] == [-0.5, 1.0] and "old" not in s
    assert set(s["updated"]) == {"one", "two"} and s["date"]
    assert {"platform", "cpu_count", "torch", "ray"} <= set(s["machine"])
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
    # A script's headline workload writes summary.json (and names itself there); any other workload its own file.
    record.update_summary(tmp_path, {"q": 1}, "quality", label=record.HEADLINE_WORKLOAD["quality"])
    record.update_summary(tmp_path, {"q": 2}, "quality", label="digits")
    record.update_summary(tmp_path, {"lf": 3}, "label_fidelity", label="digits")
    record.update_summary(tmp_path, {"x": 4}, "no_headline", label="digits")  # a script without one: summary.json
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["q"] == 1 and s["x"] == 4 and "lf" not in s and s["task"] == "fashion-mnist"
    assert s["workload"] == {"quality": record.HEADLINE_WORKLOAD["quality"]}
    digits = json.loads((tmp_path / "summary_digits.json").read_text())
    assert digits["q"] == 2 and digits["lf"] == 3 and digits["workload"] == {"quality": "digits",
                                                                             "label_fidelity": "digits"}


@pytest.mark.parametrize(("task", "named"), [("cifar10", "cifar-10-batches-py"),
                                              ("fashion-mnist", "dataset-fashion-mnist")])
def test_missing_data_folder_is_one_line_and_exit_2(tmp_path, task, named):
    """``quality.py --task T --data-dir`` with no data there stops at once with the task's own message."""
    proc = run_script("quality", "--quick", "--task", task, "--data-dir", str(tmp_path / "none"), "--results-dir",
                      str(tmp_path / "out"), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and named in proc.stderr
    assert not (tmp_path / "out").exists()


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
        proc = run_script(name, "--help", timeout=120)
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


def test_a_running_benchmark_keeps_its_finished_files_every_few_seconds_it_is_told(bench, tmp_path):
    """keeping restores the kept files first, copies rows and finished shards while its block runs (a machine
    lost mid-seed keeps them), never a writer's temp file nor a file its patterns leave out, and stops copying
    when the block ends."""
    common = bench("common")
    src, dst = tmp_path / "work", tmp_path / "keep"
    shards = src / "s-0" / "samples" / "shards"
    shards.mkdir(parents=True)
    earlier = Path("s-1/rows-target0.7-ft100.json")
    (dst / earlier).parent.mkdir(parents=True)
    (dst / earlier).write_text("[1]")
    kept = [Path("s-0/rows-target0.3-ft100.json"), Path("s-0/samples/shards/a.parquet")]
    with common.keeping([(src, dst, common.KEPT_ROWS + common.KEPT_STORE)], every=0.05):
        assert (src / earlier).read_text() == "[1]"
        (shards / ".b.parquet.tmp").write_bytes(b"half")
        (src / "s-0" / "samples" / "tune.log").write_text("not kept")
        for i, rel in enumerate(kept):
            (src / rel).write_bytes(b"row %d" % i)
        deadline = time.monotonic() + 30
        while not all((dst / rel).is_file() and (dst / rel).read_bytes() == (src / rel).read_bytes() for rel in kept):
            assert time.monotonic() < deadline, sorted(p.relative_to(dst) for p in dst.rglob("*") if p.is_file())
            time.sleep(0.02)
    (src / "s-0" / "rows-target0.5-ft100.json").write_text("[]")
    time.sleep(0.3)
    assert sorted(p.relative_to(dst) for p in dst.rglob("*") if p.is_file()) == sorted([earlier, *kept])


@pytest.mark.slow
def test_kept_sample_store_resumes_sampling_on_a_fresh_machine(bench, tmp_path, digits_task):
    """A seed's finished shards, copied out while it runs (``common.py WORK DIR``) and into an empty ``--work`` on
    another machine, count as stored samples: sampling adds only the missing ones, and its wall, no longer
    measured in one piece, is left out. Tune's logs and a killed writer's temp file are not kept."""
    from rlprune.samples.store import read_samples

    common = bench("common")
    first, kept, fresh = tmp_path / "first", tmp_path / "kept", tmp_path / "fresh"
    got = common.samples_and_spn("digits", 10, first / "digits-0", seed=0)
    assert got["sample_s"] > 0 and got["real_evals"] == 10
    (got["store"] / "shards" / ".killed.parquet.tmp").write_bytes(b"half a shard")
    proc = run_script("common", str(first), str(kept), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (kept / "digits-0" / "samples").iterdir()) == ["manifest.json", "shards", "spaces"]
    assert not list(kept.rglob(".*"))
    common.copy_kept(kept, fresh, common.KEPT_STORE)
    again = common.samples_and_spn("digits", 12, fresh / "digits-0", seed=0)
    assert again["real_evals"] == 2 and again["sample_s"] is None
    assert len(read_samples(again["store"])) == 12
    assert run_script("common", str(tmp_path / "nowhere"), str(kept), timeout=120).returncode != 0


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


