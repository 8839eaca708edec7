"""Real samples on digits: BN recalibration, the generator, the Tune run, the CLI, resume after SIGKILL."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlprune.cli import main
from rlprune.measure.recipe import evaluate_ratios, measure_baseline
from rlprune.measure.spec import MeasureSpec
from rlprune.samples.generator import SampleGenerator
from rlprune.samples.spaces import read_spaces
from rlprune.samples.store import SAMPLE_COLUMNS, read_samples
from rlprune.space.pruning import PruningSpace

FAST = MeasureSpec(eval_batches=1, bn_batches=2)  # one 128-image batch scored: enough for direction checks


@pytest.fixture(scope="module")
def digits_space(digits_task):
    model = digits_task.base_model()
    return PruningSpace.from_model(model, digits_task.example_input()), measure_baseline(digits_task, model, FAST)


def test_bn_recalibration_recovers_accuracy(digits_task, digits_space):
    space, base = digits_space
    ratios = [0.4] * space.n_groups
    plain = evaluate_ratios(digits_task, space, ratios, base, dataclasses.replace(FAST, recalibrate=False))
    recal = evaluate_ratios(digits_task, space, ratios, base, FAST)
    # stale BN statistics after pruning wreck accuracy; re-estimating them recovers much of it
    assert recal["acc"] > plain["acc"] + 10
    assert recal["acc_drop"] < plain["acc_drop"]
    assert recal["sample_id"] != plain["sample_id"]
    assert (json.loads(recal["measure"])["recalibrate"], json.loads(plain["measure"])["recalibrate"]) == (True, False)
    assert recal["measure_id"] == FAST.label_id() != plain["measure_id"]


def test_evaluate_ratios_row(digits_task, digits_space):
    space, base = digits_space
    row = evaluate_ratios(digits_task, space, [0.0] * space.n_groups, base, FAST, sampler="x", worker="y")
    assert set(row) == set(SAMPLE_COLUMNS)
    assert row["params_ratio"] == pytest.approx(1.0) and row["macs_ratio"] == pytest.approx(1.0)
    assert abs(row["acc_drop"]) < 5  # unpruned + recalibrated stays close to the base model
    assert row["latency_ms"] > 0 and row["eval_s"] > 0
    assert (row["sampler"], row["worker"], row["model_fingerprint"]) == ("x", "y", base.fingerprint)


def test_generator_flushes_and_never_reevaluates_stored_vectors(digits_task, tmp_path):
    gen = SampleGenerator(digits_task, tmp_path, FAST, seed=3, flush_every=2)
    progress = list(gen.run(3))
    assert [p["n_new"] for p in progress] == [2, 3]
    assert len(list((tmp_path / "shards").glob("*.parquet"))) == 2
    assert progress[-1]["samples_per_s"] > 0 and 0 <= progress[-1]["acc_min"] <= progress[-1]["acc_max"] <= 100
    # Same seed again: its first proposals are already stored, so they are skipped before evaluation.
    again = SampleGenerator(digits_task, tmp_path, FAST, seed=3, flush_every=2)
    last = list(again.run(3))[-1]
    assert last["n_new"] == 3 and last["n_evaluated"] == 3
    df = read_samples(tmp_path)
    assert len(df) == 6 and df["sample_id"].is_unique
    assert set(read_spaces(tmp_path)) == {gen.base.fingerprint}


def test_tune_run_under_a_shared_cluster(digits_task, ray_cluster, tmp_path):
    from rlprune.samples.tune import run_sampling

    res = run_sampling("digits", 4, 2, tmp_path / "s", FAST, flush_every=2, progress=False)
    assert res["n_total"] == 4 and res["n_new"] == 4 and res["samples_per_s"] > 0
    df = read_samples(tmp_path / "s")
    assert len(df) == 4 and df["worker"].nunique() == 2
    assert ray_cluster.is_initialized()  # an instance it did not start is left running
    results = list((tmp_path / "s" / "tune").glob("sample-*/w*/result.json"))
    assert len(results) == 2
    last = json.loads(results[0].read_text().splitlines()[-1])
    assert {"samples_per_s", "acc_mean", "n_new"} <= set(last)
    # already complete: nothing to generate, no trials started
    again = run_sampling("digits", 4, 2, tmp_path / "s", FAST, progress=False)
    assert (again["n_total"], again["n_new"]) == (4, 0)


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "rlprune.cli", "sample", "--task", "digits", *args]


def _kill_session(sid: int) -> None:
    """SIGKILL every process of the session we started (Ray workers set their own process group)."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if int((d / "stat").read_text().rsplit(")", 1)[1].split()[3]) == sid:
                os.kill(int(d.name), signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass  # already gone


def _wait_for_a_shard(proc: subprocess.Popen, out: Path, timeout: float = 180) -> None:
    """Block until the sampling command ``proc`` has flushed its first shard into ``out``."""
    deadline = time.time() + timeout
    while not list(out.glob("shards/*.parquet")):
        assert proc.poll() is None, "the sampling command ended before writing a shard"
        assert time.time() < deadline, f"no shard after {timeout:.0f} s"
        time.sleep(0.2)


@pytest.mark.slow
def test_sigkilled_run_resumes_to_exactly_n(digits_task, tmp_path):
    out = tmp_path / "store"
    args = _cli("--n", "8", "--workers", "1", "--out", str(out), "--flush-every", "2", "--eval-batches", "1",
                "--json")
    proc = subprocess.Popen(args, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_a_shard(proc, out)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        os.killpg(proc.pid, signal.SIGKILL)
        _kill_session(proc.pid)
        proc.wait()
    first = {p.name for p in out.glob("shards/*.parquet")}
    n_before = len(read_samples(out))
    assert 1 <= n_before < 8
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    res = json.loads(done.stdout)
    assert res["n_total"] == 8 and res["n_new"] == 8 - n_before
    df = read_samples(out)
    assert len(df) == 8 and df["sample_id"].is_unique
    assert first <= {p.name for p in out.glob("shards/*.parquet")}  # nothing rewritten


@pytest.mark.slow
def test_ctrl_c_stops_sampling_and_keeps_what_was_stored(digits_task, tmp_path):
    """Ctrl-C (SIGINT) ends the command with status 130; it does not start another round of trials (Tune's own
    handler would end the experiment quietly and the top-up loop would go on), and what was flushed is kept."""
    out = tmp_path / "store"
    args = _cli("--n", "400", "--workers", "1", "--out", str(out), "--flush-every", "2", "--eval-batches", "1")
    # A shell started without job control (`pytest ... &`) hands its children SIGINT ignored, and Python then keeps
    # it ignored; a terminal's foreground command has the default, which is what Ctrl-C meets.
    proc = subprocess.Popen(args, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        _wait_for_a_shard(proc, out)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        _kill_session(proc.pid)
        proc.wait()
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and "-r1" not in err  # stopped, no second round of trials
    df = read_samples(out)
    assert 1 <= len(df) < 400 and df["sample_id"].is_unique


@pytest.mark.parametrize("args, match", [
    (["--n", "0"], "--n 0 must be a positive integer"),
    (["--n", "4", "--workers", "0"], "--workers 0 must be a positive integer"),
    (["--n", "4", "--sampler", "budget", "--band", "0.7,0.3"], "band"),
    (["--n", "4", "--eval-batches", "0"], "--eval-batches 0"),
])
def test_cli_bad_numbers(tmp_path, capsys, args, match):
    assert main(["sample", "--task", "digits", "--out", str(tmp_path / "s"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err
    assert not (tmp_path / "s").exists()


def test_cli_out_file_and_foreign_store_are_left_untouched(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("keep")
    assert main(["sample", "--task", "digits", "--n", "2", "--out", str(a_file)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert a_file.read_text() == "keep"
    foreign = tmp_path / "old"
    foreign.mkdir()
    (foreign / "manifest.json").write_text('{"schema_version": 2, "columns": []}')
    assert main(["sample", "--task", "digits", "--n", "2", "--out", str(foreign)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "schema version 2" in err
    assert sorted(p.name for p in foreign.iterdir()) == ["manifest.json"]
