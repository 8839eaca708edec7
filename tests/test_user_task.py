"""Bring your own model, data and metric: make_task, its errors, and the measuring recipe on it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

import rlprune
from rlprune.errors import ConfigError, DataError
from rlprune.measure.recipe import evaluate_ratios, measure_base, measure_baseline
from rlprune.measure.spec import MeasureSpec
from rlprune.tasks import SPLITS, UserTask, get_task


def small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))


class Streamed(Dataset):
    """A dataset that builds each item on demand (no tensor to slice), as a user's usually does."""

    def __init__(self, n: int, offset: int):
        self.n, self.offset = n, offset

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(self.offset + i)
        y = int(torch.randint(0, 2, (1,), generator=g))
        return torch.randn(1, 8, 8, generator=g) + (2.0 * y - 1.0), y


def datasets():
    return {s: Streamed(48, 1000 * i) for i, s in enumerate(SPLITS)}


@pytest.fixture(scope="module")
def trained():
    """A small net trained in "user code" for a few steps: clearly better than chance."""
    torch.manual_seed(0)
    net = small_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    train = datasets()["train"]
    x = torch.stack([train[i][0] for i in range(len(train))])
    y = torch.tensor([train[i][1] for i in range(len(train))])
    for _ in range(30):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval()


def test_make_task_from_a_module_streams_batches_and_measures(trained):
    task = rlprune.make_task(trained, datasets, batch_size=16)
    assert isinstance(task, UserTask) and task.input_shape == (1, 8, 8) and task.metric_name == "accuracy"
    assert get_task(task) is task  # an in-process task is accepted wherever a task spec is
    out = task.evaluate(task.base_model(), "test", per_example=True)
    assert out["n"] == 48 and out["acc"] > 70 and out["correct"].dtype == bool
    # A fixed calibration subset: the first batches, the same examples every time.
    first = task.evaluate(task.base_model(), "calibration", max_batches=1)
    assert first["n"] == 16 and first == task.evaluate(task.base_model(), "calibration", max_batches=1)
    spec = MeasureSpec(eval_batches=2, bn_batches=2, finetune_steps=3)
    space = spec.task_space(task)
    base = measure_baseline(task, task.base_model(), spec)
    row = evaluate_ratios(task, space, [0.5] * len(space.groups), base, spec)
    assert row["task"] == task.name and row["macs_ratio"] < 1 and math.isfinite(row["acc_drop"])
    # Fine-tuning with the task's (default) loss changes the weights; the base model stays as given.
    model = task.base_model()
    task.finetune(model, 3)
    assert not torch.equal(model[0].weight, trained[0].weight)
    assert torch.equal(task.base_model()[0].weight, trained[0].weight)


def test_weights_from_a_file_and_a_custom_metric_and_loss(trained, tmp_path):
    path = tmp_path / "net.pt"
    torch.save(trained.state_dict(), path)
    calls = []

    def f1_points(model, loader):
        return torch.cat([(model(x).argmax(1) == y).float() * 100 for x, y in loader])

    def smooth_ce(outputs, targets):
        calls.append(len(targets))
        return nn.functional.cross_entropy(outputs, targets, label_smoothing=0.1)

    task = rlprune.make_task(small_net, datasets(), weights=str(path), metric=f1_points, loss=smooth_ce)
    assert task.metric_name == "f1_points"
    out = task.evaluate(task.base_model(), "test", per_example=True)
    ref = rlprune.make_task(trained, datasets()).evaluate(trained, "test")
    assert out["acc"] == pytest.approx(ref["acc"]) and out["correct"].dtype == np.float64
    task.finetune(task.base_model(), 2)
    assert len(calls) >= 2  # fine-tuning used the user's loss
    one_number = rlprune.make_task(trained, datasets(), metric=lambda m, loader: 42.0)
    assert one_number.evaluate(trained, "test", per_example=True) == {"acc": 42.0, "loss": pytest.approx(
        ref["loss"]), "n": 48}


@pytest.mark.parametrize("bad, match", [
    (lambda m, loader: float("nan"), "returned nan"),
    (lambda m, loader: "good", "returned str"),
    (lambda m, loader: torch.ones(3), "not 48 finite numbers"),
])
def test_a_bad_metric_value_is_one_clear_error(trained, bad, match):
    task = rlprune.make_task(trained, datasets(), metric=bad)
    with pytest.raises(ConfigError, match=match):
        task.evaluate(trained, "test")


def test_bad_input_gets_one_clear_error(trained, tmp_path):
    sd = trained.state_dict()
    with pytest.raises(ConfigError, match=r"missing \['0.weight'"):
        rlprune.make_task(small_net, datasets(), weights={k: v for k, v in sd.items() if k != "0.weight"})
    with pytest.raises(ConfigError, match="unexpected"):
        rlprune.make_task(small_net, datasets(), weights={**sd, "extra": torch.ones(1)})
    with pytest.raises(ConfigError, match=r"shape mismatches \['0.weight: weights \(8, 1, 3, 3\) vs model"):
        rlprune.make_task(lambda: nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten()), datasets(),
                          weights={"0.weight": sd["0.weight"], "0.bias": sd["0.bias"]})
    with pytest.raises(DataError, match="does not exist"):
        rlprune.make_task(small_net, datasets(), weights=tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a readable state_dict"):
        rlprune.make_task(small_net, datasets(), weights=tmp_path / "junk.pt")
    with pytest.raises(ConfigError, match="needs weights"):
        rlprune.make_task(small_net, datasets())
    with pytest.raises(ConfigError, match="lack the split.* validation"):
        rlprune.make_task(trained, {k: v for k, v in datasets().items() if k != "validation"})
    x = torch.randn(4, 1, 8, 8)
    with pytest.raises(ConfigError, match="must be \\(input tensor, target\\) pairs"):
        rlprune.make_task(trained, {s: TensorDataset(x) for s in SPLITS})
    with pytest.raises(ConfigError, match=r"cannot run an input of shape \(1, 3, 8, 8\)"):
        rlprune.make_task(trained, datasets(), example_input=torch.zeros(1, 3, 8, 8))
    with pytest.raises(ConfigError, match="not callable"):
        rlprune.make_task(trained, datasets(), metric="top1")


def test_user_task_from_import_specs_rebuilds_in_any_process(trained, tmp_path):
    path = tmp_path / "net.pt"
    torch.save({"state_dict": trained.state_dict()}, path)  # a trainer's wrapped checkpoint is unwrapped
    task = get_task("user", model="tests.test_user_task:small_net", data="tests.test_user_task:datasets",
                    weights=str(path), input_shape="1,8,8", seed=3)
    assert task.seed == 3 and task.example_input().shape == (1, 1, 8, 8)
    assert torch.equal(task.base_model()[0].weight, trained[0].weight)
    with pytest.raises(ConfigError, match="cannot import module 'tests.nope'"):
        get_task("user", model="tests.nope:net", data="tests.test_user_task:datasets", weights=str(path))
    with pytest.raises(ConfigError, match="input shape"):
        get_task("user", model="tests.test_user_task:small_net", data="tests.test_user_task:datasets",
                 weights=str(path), input_shape="0,8,8")
    base = measure_base(task, task.base_model(), MeasureSpec(latency_runs=1))
    assert base["acc_ci"][0] <= base["acc"] <= base["acc_ci"][1]


@pytest.mark.parametrize("argv, said", [
    (["run", "--weights", "w.pt", "--out", "OUT"], "--weights go(es) with --model"),
    (["sample", "--model", "tests.test_user_task:small_net", "--n", "4", "--out", "OUT"], "needs --data"),
    (["run", "--model", "tests.test_user_task:small_net", "--data", "tests.test_user_task:datasets",
      "--arch", "resnet20", "--out", "OUT"], "--data-dir and --arch are for built-in tasks"),
])
def test_your_model_flags_that_do_not_fit_together_are_one_line_and_nothing_written(tmp_path, capsys, argv, said):
    from rlprune.cli import main

    out = tmp_path / "out"
    assert main([str(out) if a == "OUT" else a for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and said in err[0] and not out.exists()
