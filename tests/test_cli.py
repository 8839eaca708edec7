"""The `rlprune` command as a user runs it: subprocesses, exit codes, one-line errors, files written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlprune.io import load_pruned

ROOT = Path(__file__).resolve().parents[1]
MODEL = ["--model", "tests.arch_zoo:PlainFlatten", "--input-shape", "3,32,32"]


def rlprune(*args, cwd=ROOT):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "rlprune.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


def test_help_teaches_every_verb():
    top = rlprune("--help")
    assert top.returncode == 0 and "groups" in top.stdout and "prune" in top.stdout
    for verb in ("tasks", "groups", "prune"):
        r = rlprune(verb, "--help")
        assert r.returncode == 0, verb
    assert "examples:" in rlprune("prune", "--help").stdout


def test_tasks_lists_the_embedded_default():
    r = rlprune("tasks", "--json")
    names = [t["name"] for t in json.loads(r.stdout)["tasks"]]
    assert "digits" in names and "cifar10" in names


def test_groups_of_a_user_model():
    r = rlprune("groups", *MODEL, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["n_groups"] == 4 == len(out["groups"])
    assert out["params"] > 0 and out["macs"] > 0
    assert {"id", "root", "channels", "layers", "params", "macs", "features"} <= set(out["groups"][0])


def test_prune_a_user_model_and_load_it_back(tmp_path):
    r = rlprune("prune", *MODEL, "--ratios", "0.5,0.25,0.5,0.5", "--out", str(tmp_path / "o"), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["achieved_ratios"] == [0.5, 0.25, 0.5, 0.5]
    assert 0 < out["macs_ratio"] < 1 and 0 < out["params_ratio"] < 1
    model, manifest = load_pruned(tmp_path / "o")
    assert manifest["params"] == out["params"] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("args, needle", [
    (["prune", *MODEL, "--ratios", "0.5,0.5"], "got 2 ratios but the model has 4"),
    (["prune", *MODEL, "--ratios", "0.5,nan,0.5,0.5"], "finite"),
    (["prune", *MODEL, "--ratios", "0.5,x,0.5,0.5"], "'x'"),
    (["prune", *MODEL, "--uniform", "0.95"], "outside [0, 0.9]"),
    (["prune", "--task", "imagenet", "--uniform", "0.1"], "unknown task"),
    (["groups", "--model", "no_such_pkg.mod:build", "--input-shape", "3,32,32"], "no_such_pkg"),
    (["groups", "--model", "tests.arch_zoo:channel_shuffle", "--input-shape", "3,32,32"], "raised"),
    (["groups", "--model", "tests.arch_zoo:ZOO", "--input-shape", "3,32,32"], "tests.arch_zoo:ZOO"),
    (["groups", "--model", "tests.arch_zoo:PlainFlatten", "--input-shape", "3,32"], "C,H,W"),
    (["groups", "--model", "tests.arch_zoo:PlainFlatten"], "--input-shape"),
    (["groups", "--model", "tests.arch_zoo:PlainFlatten", "--input-shape", "5,32,32"], "cannot trace"),
    (["groups", "--task", "cifar10", "--data-dir", "/nonexistent/cifar"], "cifar-10-batches-py"),
])
def test_bad_input_is_one_line_naming_the_value_and_nothing_is_written(tmp_path, args, needle):
    r = rlprune(*args, "--out", str(tmp_path / "o")) if args[0] == "prune" else rlprune(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    err = r.stderr.strip()
    assert needle in err, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_out_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("keep me")
    r = rlprune("prune", *MODEL, "--uniform", "0.2", "--out", str(f))
    assert r.returncode == 2 and "is a file" in r.stderr
    assert f.read_text() == "keep me"


def test_prune_digits_for_real_with_finetune(digits_task, tmp_path):
    r = rlprune("prune", "--task", "digits", "--uniform", "0.3", "--finetune-steps", "30",
                "--out", str(tmp_path / "d"), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["base_acc"] >= 97.0
    assert out["acc"] > 80.0 and out["acc_drop"] == pytest.approx(out["base_acc"] - out["acc"])
    assert out["macs_ratio"] < 0.75
    assert (tmp_path / "d" / "pruned_model.json").is_file()
