"""``rlprune quantize`` end to end on digits (tiny budgets): a pruned folder in, the winner exported, and the
errors a user meets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import rlprune
from rlprune.cli import main
from rlprune.quant.samples import read_bits

ROOT = Path(__file__).resolve().parents[1]


def test_bad_bits_and_target_are_one_clear_error(digits_task, tmp_path, capsys):
    cases = [(["--target-size", "1.5"], "outside (0, 1]"), (["--target-size", "nan"], "outside (0, 1]"),
             (["--target-size", "0.2", "--bits", "4,nan,4"], "bits nan for layer_01"),
             (["--target-size", "0.2", "--bits", "4,1,4"], "bits 1 for layer_01 is not an integer in 2..8"),
             (["--target-size", "0.2", "--bits", "4,4,4"], "got 3 bit widths but the model has 10"),
             (["--target-size", "0.01"], "unreachable")]
    for extra, words in cases:
        assert main(["quantize", "--task", "digits", "--out", str(tmp_path / "q"), *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("rlprune quantize: error:") and words in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "q").exists()  # nothing written


@pytest.mark.slow
def test_quantize_a_pruned_folder_exports_the_validated_winner(digits_task, ray_cluster, tmp_path, capsys):
    assert main(["prune", "--task", "digits", "--uniform", "0.3", "--out", str(tmp_path / "p")]) == 0
    capsys.readouterr()
    out = tmp_path / "q"
    code = main(["quantize", "--task", "digits", "--pruned", str(tmp_path / "p"), "--target-size", "0.15",
                 "--out", str(out), "--samples", "16", "--rl-iters", "1", "--rl-batch", "16", "--qat-steps", "10",
                 "--bits", "4,4,4,4,4,4,3,3,3,8", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    methods = summary["methods"]
    assert set(methods) == {"uniform8", "uniform6", "uniform4", "sensitivity", "rl", "random_search", "cem", "given"}
    # Equal, counted budgets: the black-box searches score exactly the vectors the RL search's env did.
    assert methods["random_search"]["wm_calls"] == methods["cem"]["wm_calls"] == methods["rl"]["wm_calls"] > 0
    assert all(r["meets_target"] and r["size_ratio"] <= 0.15 and r["qat_steps"] == 10 for r in methods.values())
    assert methods["given"]["bits"] == [4, 4, 4, 4, 4, 4, 3, 3, 3, 8]
    best = max(r["val_acc"] for r in methods.values())
    assert methods[summary["winner"]]["val_acc"] == best
    assert summary["world_model"]["n"] >= 2 and summary["rl"]["episodes"] >= 16
    model, manifest = rlprune.load_quantized(out)
    assert manifest["method"] == summary["winner"] and manifest["bits"] == methods[summary["winner"]]["bits"]
    assert digits_task.evaluate(model, "test")["acc"] == methods[summary["winner"]]["acc"]
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["winner"] == summary["winner"] and on_disk["selection_split"] == "validation"
    # One online round (one RL iteration) of 2 real evaluations per search, each search refining its own model.
    assert all(methods[m]["real_evals"] == 2 and len(summary["online"][m]) == 1 for m in ("rl", "random_search", "cem"))
    # 16 random vectors and the 4 rules' (two rules may land on one vector), each measured once on Tune, then
    # the online rounds' vectors into the same store.
    stored = read_bits(out / "bits_samples")
    online = {tuple(b) for rounds in summary["online"].values() for rd in rounds for b in rd["bits"]}
    assert summary["samples"]["where"] == "tune" and 17 <= summary["samples"]["n_new"] <= 20
    assert online <= set(map(tuple, stored["bits"])) and len(stored) <= summary["samples"]["n_new"] + len(online)
    assert stored["sample_id"].is_unique


@pytest.mark.slow
def test_a_killed_quantize_keeps_its_flushed_samples_and_the_rerun_measures_only_the_rest(digits_task, tmp_path):
    """SIGKILL the whole command (driver, Ray, Tune trials) while it measures bits samples; the same command then
    reads back every flushed row and measures only what is missing."""
    out = tmp_path / "q"
    cmd = [sys.executable, "-m", "rlprune.cli", "quantize", "--task", "digits", "--target-size", "0.15",
           "--out", str(out), "--samples", "40", "--workers", "1", "--rl-iters", "1", "--rl-batch", "16",
           "--qat-steps", "0", "--online-top", "0", "--json"]  # offline: the store holds the samples alone
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT,
                            start_new_session=True)
    shards = out / "bits_samples" / "shards"
    try:
        t0 = time.monotonic()
        while len(list(shards.glob("*.parquet"))) < 2:
            assert proc.poll() is None, "quantize ended before it flushed two shards"
            assert time.monotonic() - t0 < 300, "no two shards within 300 s"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # Ray's workers live outside the command's process group and may flush a shard or two before they notice
    # their driver is gone: those rows are kept too. Count once the store has been still for 5 s.
    last, still_since = -1, time.monotonic()
    while time.monotonic() - still_since < 5 and time.monotonic() - t0 < 400:
        n = len(list(shards.glob("*.parquet")))
        if n != last:
            last, still_since = n, time.monotonic()
        time.sleep(0.5)
    kept = read_bits(out / "bits_samples")
    assert 8 <= len(kept) < 40 and not (out / "summary.json").exists()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout)
    after = read_bits(out / "bits_samples")  # 40 random vectors and the rules' (some may coincide)
    assert summary["samples"]["n_new"] == len(after) - len(kept)
    assert 41 <= len(after) <= 44 and after["sample_id"].is_unique
    assert set(kept["sample_id"]) <= set(after["sample_id"])
