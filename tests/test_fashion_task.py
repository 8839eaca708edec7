"""The fashion-mnist task: built on make_task, trains once, caches, commits; `rlprune train` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlprune.cli import main
from rlprune.errors import ConfigError
from rlprune.tasks import UserTask, get_task
from rlprune.tasks.fashion_data import DEBIAN_FOLDER
from tests.test_fashion_data import write_folder


@pytest.fixture()
def tiny_folder(tmp_path: Path) -> Path:
    write_folder(tmp_path / "fashion-mnist", n_train=200, n_test=40)
    return tmp_path / "fashion-mnist"


def test_task_is_a_make_task_and_trains_once_then_loads(tiny_folder, rlprune_cache, monkeypatch, tmp_path):
    monkeypatch.setenv("RLPRUNE_CHECKPOINTS", str(tmp_path / "committed"))
    task = get_task("fashion-mnist", arch="mobilenet", data_dir=str(tiny_folder), epochs=1, batch_size=32)
    assert isinstance(task, UserTask) and task.input_shape == (1, 28, 28) and task.base_model_source is None
    assert [len(task.loader(s).dataset) for s in ("train", "calibration", "validation", "test")] == [167, 17, 16, 40]
    model = task.base_model()
    assert task.base_model_source == "trained" and task.weights_file.is_file()
    again = get_task("fashion-mnist", arch="mobilenet", data_dir=str(tiny_folder), epochs=1, batch_size=32)
    loaded = again.base_model().state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in model.state_dict().items())
    assert again.base_model_source == "cache"
    # Another recipe is another model: never the cached one.
    other = get_task("fashion-mnist", arch="mobilenet", data_dir=str(tiny_folder), epochs=2, batch_size=32)
    assert other.fingerprint != task.fingerprint or other.base_model_source == "trained"


def test_train_verb_commits_with_a_manifest_and_committed_weights_are_used(tiny_folder, rlprune_cache, monkeypatch,
                                                                           tmp_path, capsys):
    committed = tmp_path / "committed"
    monkeypatch.setenv("RLPRUNE_CHECKPOINTS", str(committed))
    argv = ["train", "--task", "fashion-mnist", "--arch", "mobilenet", "--data-dir", str(tiny_folder),
            "--epochs", "1", "--commit", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["source"] == "trained" and out["train_s"] > 0 and out["test_acc_ci"][0] <= out["test_acc"]
    manifest = json.loads((committed / "manifest.json").read_text())["checkpoints"]
    assert [e["file"] for e in manifest] == [Path(out["committed"]).name]
    assert manifest[0]["command"].startswith("rlprune train --task fashion-mnist --arch mobilenet --seed 0 --epochs 1")
    assert manifest[0]["fingerprint"] == out["fingerprint"] and manifest[0]["test_acc"] == out["test_acc"]
    Path(out["weights"]).unlink()  # the cache is gone: the committed copy is loaded, nothing retrains
    task = get_task("fashion-mnist", arch="mobilenet", data_dir=str(tiny_folder), epochs=1)
    assert task.fingerprint == out["fingerprint"] and task.base_model_source == "committed"


def test_bad_arch_and_missing_data_are_one_clear_error(tmp_path, capsys):
    with pytest.raises(ConfigError, match="unknown fashion-mnist arch 'vgg'"):
        get_task("fashion-mnist", arch="vgg", data_dir=str(tmp_path))
    assert main(["train", "--task", "fashion-mnist", "--data-dir", str(tmp_path / "none")]) == 2
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err


@pytest.mark.skipif(not DEBIAN_FOLDER.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_real_files_give_the_documented_splits():
    task = get_task("fashion-mnist", arch="resnet20")
    sizes = [len(task.loader(s).dataset) for s in ("train", "calibration", "validation", "test")]
    assert sizes == [50000, 5000, 5000, 10000]
    x, y = next(iter(task.loader("calibration", batch_size=256)))
    assert x.shape == (256, 1, 28, 28) and abs(float(x.mean())) < 0.2 and set(y.tolist()) <= set(range(10))


@pytest.mark.slow
def test_every_verb_takes_the_task_and_its_arch(tiny_folder, rlprune_cache, monkeypatch, tmp_path, capsys,
                                                ray_cluster):
    """groups, prune, sample, spn, search, baselines and quantize on fashion-mnist (a tiny IDX folder, the
    depthwise net): the task and its --arch reach the Ray workers, and groups needs no trained model at all."""
    monkeypatch.setenv("RLPRUNE_CHECKPOINTS", str(tmp_path / "committed"))
    task = ["--task", "fashion-mnist", "--arch", "mobilenet", "--data-dir", str(tiny_folder)]

    def run(*argv) -> dict | list:
        assert main([*argv, *task, "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    before = set(rlprune_cache.rglob("fashion-mnist-*"))
    groups = run("groups")
    assert groups["n_groups"] == 12 and set(rlprune_cache.rglob("fashion-mnist-*")) == before  # nothing trained
    assert main(["groups", "--task", "fashion-mnist", "--arch", "resnet56", "--data-dir", str(tiny_folder),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_groups"] == 30
    pruned = run("prune", "--uniform", "0.3")
    assert pruned["macs_ratio"] < 1 and 0 <= pruned["acc"] <= 100
    store, spn = tmp_path / "samples", tmp_path / "spn.pt"
    # One label step: the task's k=25 costs ~15 s a sample on this net, and what is tested here is that the task
    # and its arch reach the worker (other tests measure labels).
    assert run("sample", "--n", "12", "--workers", "1", "--label-steps", "1", "--out", str(store))["n_total"] == 12
    assert main(["spn", "train", "--samples", str(store), "--no-baselines", "--max-steps", "50", "--out", str(spn),
                 "--json"]) == 0
    capsys.readouterr()
    found = run("search", "--spn", str(spn), "--target-macs", "0.5", "--out", str(tmp_path / "search"), "--iters",
                "1", "--train-batch", "32", "--no-online")
    assert len(found["ratios"]) == 12 and found["macs_ratio"] <= 0.5 + 1e-9
    rules = run("baselines", "--target-macs", "0.5", "--finetune-steps", "0")
    assert {"uniform", "global_l1"} <= {r["method"] for r in rules}
    quant = run("quantize", "--target-size", "0.2", "--samples", "8", "--rl-iters", "1", "--rl-batch", "8",
                "--qat-steps", "0", "--out", str(tmp_path / "q"))
    from rlprune.quant.size import QuantSpace
    from rlprune.tasks import get_task

    net = get_task("fashion-mnist", arch="mobilenet", data_dir=str(tiny_folder)).base_model()
    assert quant["task"] == "fashion-mnist" and quant["config"]["task_kwargs"]["arch"] == "mobilenet"
    assert {len(r["bits"]) for r in quant["methods"].values()} == {QuantSpace.from_model(net).n_layers}
