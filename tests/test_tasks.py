"""The Task contract on the digits task, the base-model cache, the CIFAR-10 reader and task lookup."""

from __future__ import annotations

import copy
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from rlprune.errors import ConfigError, DataError, RlpruneError
from rlprune.models import resnet20
from rlprune.tasks import TASKS, Cifar10Task, DigitsTask, Task, get_task, list_tasks, load_callable
from rlprune.tasks.training import random_shift

# ----- digits: splits and loaders ------------------------------------------------------------------


def test_digits_splits_are_disjoint_stratified_and_cover_the_data() -> None:
    from sklearn.datasets import load_digits

    task = DigitsTask()
    idx = task.split_indices()
    target = load_digits().target
    sets = {k: set(v.tolist()) for k, v in idx.items()}
    names = list(sets)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not sets[a] & sets[b], (a, b)
    assert set().union(*sets.values()) == set(range(len(target)))
    assert {k: len(v) for k, v in idx.items()} == {"train": 897, "calibration": 270, "validation": 270,
                                                   "test": 360}
    for split, members in idx.items():
        counts = np.bincount(target[members], minlength=10) / len(members)
        assert np.allclose(counts, np.bincount(target) / len(target), atol=0.01), split
        # The loader serves exactly these labels, in this order.
        labels = torch.cat([y for _, y in task.loader(split)])
        assert labels.tolist() == target[members].tolist()


def test_loader_shapes_shuffling_and_augmentation() -> None:
    task = DigitsTask()
    loader = task.loader("train", batch_size=100)
    assert len(loader) == 9 and loader.num_examples == 897
    x, y = next(iter(loader))
    assert x.shape == (100, 1, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert abs(x.mean().item()) < 0.2 and 0.8 < x.std().item() < 1.2  # normalised with train statistics
    first = [next(iter(task.loader("train", shuffle=True)))[1] for _ in range(2)]
    assert torch.equal(first[0], first[1])  # same seed, same permutation
    shuffled = task.loader("train", shuffle=True)
    epoch1, epoch2 = (torch.cat([y for _, y in shuffled]) for _ in range(2))
    assert not torch.equal(epoch1, epoch2) and torch.equal(epoch1.sort().values, epoch2.sort().values)
    aug, _ = next(iter(task.loader("train", batch_size=100, augment=True)))
    assert aug.shape == x.shape and not torch.equal(aug, x)


def test_random_shift_crops_from_the_padded_image() -> None:
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    out = random_shift(x, 1, torch.Generator().manual_seed(0), fill=-1.0)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), value=-1.0)
    for b in range(2):
        windows = [padded[b, :, i : i + 4, j : j + 4] for i in range(3) for j in range(3)]
        assert any(torch.equal(out[b], w) for w in windows)


def test_unknown_split_names_valid_ones() -> None:
    task = DigitsTask()
    with pytest.raises(ValueError, match="'val'.*train, calibration, validation, test"):
        task.loader("val")
    with pytest.raises(ValueError, match="'valid'"):
        task.evaluate(nn.Linear(1, 1), "valid")


def test_example_input() -> None:
    assert DigitsTask().example_input().shape == (1, 1, 32, 32)


# ----- digits: base model, evaluation, fine-tuning, recalibration -------------------------------


def test_base_model_accuracy(digits_task: DigitsTask) -> None:
    model = digits_task.base_model()
    assert not model.training
    test = digits_task.evaluate(model, "test")
    assert test["acc"] >= 97.0, test
    assert digits_task.evaluate(model, "calibration")["acc"] >= 95.0


def test_evaluate_keys_ranges_and_mode(digits_task: DigitsTask) -> None:
    model = digits_task.base_model().train()
    grad_seen = []
    model.register_forward_hook(lambda *_: grad_seen.append(torch.is_grad_enabled()))
    result = digits_task.evaluate(model, "test")
    assert set(result) == {"acc", "loss", "n"}
    assert result["n"] == 360 and 0.0 <= result["acc"] <= 100.0 and 0.0 < result["loss"] < 1.0
    assert not model.training and grad_seen and not any(grad_seen)
    assert torch.is_grad_enabled()
    assert digits_task.evaluate(model, "calibration", max_batches=1)["n"] == 128
    untrained = digits_task.evaluate(digits_task.build_model(), "test")
    assert untrained["acc"] < 50.0 and untrained["loss"] > result["loss"]


def _zero_channels(model: nn.Module, fraction: float, seed: int) -> nn.Module:
    """Zero a random ``fraction`` of every conv's output channels: pruning without removing anything."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight[torch.randperm(m.out_channels, generator=g)[: int(fraction * m.out_channels)]] = 0
    return model


def test_recalibrate_bn_undoes_a_conv_rescaling(digits_task: DigitsTask) -> None:
    # Every conv feeds a BN, so scaling conv weights changes nothing once BN statistics are re-estimated,
    # while the stale statistics break the model.
    base = digits_task.base_model()
    base_acc = digits_task.evaluate(base, "calibration")["acc"]
    scaled = copy.deepcopy(base)
    with torch.no_grad():
        for m in scaled.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(0.3)
    stale = digits_task.evaluate(scaled, "calibration")["acc"]
    fixed = digits_task.evaluate(digits_task.recalibrate_bn(scaled.train()), "calibration")["acc"]
    assert stale < 50.0
    assert fixed >= base_acc - 1.5
    assert not scaled.training


def test_recalibrate_bn_helps_after_channel_zeroing(digits_task: DigitsTask) -> None:
    base = digits_task.base_model()
    stale = digits_task.evaluate(_zero_channels(copy.deepcopy(base), 0.3, seed=1), "calibration")["acc"]
    model = _zero_channels(copy.deepcopy(base), 0.3, seed=1)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    bns[0].momentum = 0.3  # a non-default momentum must survive recalibration
    before = bns[1].running_mean.clone()
    digits_task.recalibrate_bn(model, batches=2)
    assert [bn.momentum for bn in bns] == [0.3] + [0.1] * (len(bns) - 1)
    assert int(bns[1].num_batches_tracked) == 2 and not torch.equal(before, bns[1].running_mean)
    fixed = digits_task.evaluate(model, "calibration")["acc"]
    assert fixed > stale + 10.0, (stale, fixed)


def test_finetune_changes_weights_is_deterministic_and_recovers(digits_task: DigitsTask) -> None:
    damaged = digits_task.recalibrate_bn(_zero_channels(digits_task.base_model(), 0.5, seed=0))
    before = digits_task.evaluate(damaged, "calibration")["acc"]
    rng_state = torch.get_rng_state()
    a = digits_task.finetune(copy.deepcopy(damaged), steps=30)
    b = digits_task.finetune(copy.deepcopy(damaged), steps=30)
    assert torch.equal(rng_state, torch.get_rng_state())  # the caller's global RNG is untouched
    assert not a.training
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert not torch.equal(a.fc.weight, damaged.fc.weight)
    assert digits_task.evaluate(a, "calibration")["acc"] > before + 10.0
    # Another fine-tune seed, on the same base model: another data order, so other weights.
    other = DigitsTask(seed=digits_task.seed)
    assert other.finetune_seed == other.seed
    other.finetune_seed = digits_task.seed + 1
    c = other.finetune(copy.deepcopy(damaged), steps=30)
    assert not torch.equal(c.fc.weight, a.fc.weight)
    untouched = copy.deepcopy(damaged).train()
    assert digits_task.finetune(untouched, steps=0) is untouched and not untouched.training
    with pytest.raises(ValueError, match="steps"):
        digits_task.finetune(untouched, steps=-1)


def test_fingerprint_is_stable(digits_task: DigitsTask) -> None:
    fp = digits_task.fingerprint
    assert re.fullmatch("[0-9a-f]{16}", fp)
    assert DigitsTask().fingerprint == fp  # loaded from the cache: same weights, same hash
    assert DigitsTask(seed=1, epochs=1).cache_key() != DigitsTask(seed=0, epochs=1).cache_key()
    assert DigitsTask(epochs=2).cache_key() != DigitsTask(epochs=1).cache_key()


# ----- the base-model cache ---------------------------------------------------------------------


def test_base_model_cache_is_reused(digits_task: DigitsTask, rlprune_cache: Path) -> None:
    assert digits_task.base_model_source == "trained"
    path = digits_task.cache_path()
    assert path.parent == rlprune_cache / "models" and path.name.startswith("digits-seed0-")
    fresh = DigitsTask()
    model = fresh.base_model()
    assert fresh.base_model_source == "cache"  # loaded, not retrained (no timing: CI machines vary)
    for key, value in digits_task.base_model().state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key
    assert model is not fresh.base_model()  # a new module per call, safe to prune in place


def test_training_is_deterministic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    states = []
    for i, seed in enumerate((0, 0, 1)):
        monkeypatch.setenv("RLPRUNE_CACHE", str(tmp_path / str(i)))
        states.append(DigitsTask(seed=seed, epochs=1).base_model().state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not torch.equal(states[0]["fc.weight"], states[2]["fc.weight"])


def _killed_after(n: int):
    """Cross-entropy that raises after ``n`` calls: a training killed mid-epoch."""
    calls = [0]

    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        if calls[0] > n:
            raise KeyboardInterrupt
        return nn.functional.cross_entropy(out, y)
    return loss


def test_killed_training_resumes_from_its_last_epoch_to_the_same_weights(tmp_path: Path) -> None:
    from rlprune.tasks.training import BatchLoader, TrainConfig, train

    x, y = torch.randn(96, 6, generator=torch.Generator().manual_seed(0)), torch.arange(96) % 3
    cfg = TrainConfig(epochs=4, batch_size=16, lr=0.1, warmup_epochs=1)

    def fit(loss, resume=None) -> nn.Module:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.2), nn.ReLU(), nn.Linear(16, 3))
        loader = BatchLoader(x, y, 16, True, 1, None, lambda b, g: b + 0.05 * torch.randn(b.shape, generator=g))
        return train(model, loader, cfg, 0, loss, "test", resume=resume)

    straight = fit(nn.functional.cross_entropy).state_dict()
    snapshot = tmp_path / "model.pt.partial"
    with pytest.raises(KeyboardInterrupt):
        fit(_killed_after(15), snapshot)  # 6 batches per epoch: killed in the third epoch, two saved
    assert torch.load(snapshot, weights_only=True)["step"] == 12
    resumed = fit(_killed_after(24 - 12), snapshot).state_dict()  # only the 12 remaining steps may run
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert not snapshot.exists()  # done: the snapshot is gone

    snapshot.write_bytes(b"torn")  # an unusable snapshot restarts from scratch, with a warning
    with pytest.warns(RuntimeWarning, match="unusable.*starting over"):
        again = fit(nn.functional.cross_entropy, snapshot).state_dict()
    assert all(torch.equal(straight[k], again[k]) for k in straight)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign"])
def test_corrupt_cache_is_retrained(damage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLPRUNE_CACHE", str(tmp_path))
    task = DigitsTask(epochs=1)
    task.base_model()
    path = task.cache_path()
    good = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"not a checkpoint")
    elif damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    else:
        torch.save({"state_dict": nn.Linear(2, 2).state_dict()}, path)
    fresh = DigitsTask(epochs=1)
    with pytest.warns(RuntimeWarning, match="unreadable.*retraining"):
        model = fresh.base_model()
    assert fresh.base_model_source == "trained"
    assert fresh.evaluate(model, "test")["acc"] > 20.0  # one epoch: well above chance (10%)
    assert DigitsTask(epochs=1).fingerprint == fresh.fingerprint  # rewritten and readable again
    assert not list(path.parent.glob("*.tmp"))  # the atomic write left no temp files behind


# ----- CIFAR-10 from a local folder ---------------------------------------------------------------


def _write_batch(path: Path, n: int, rng: np.random.Generator) -> None:
    batch = {
        b"batch_label": b"fake",
        b"labels": rng.integers(0, 10, n).tolist(),
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [b"img%d.png" % i for i in range(n)],
    }
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


@pytest.fixture()
def fake_cifar(tmp_path: Path) -> Path:
    """A parent folder holding a tiny cifar-10-batches-py: 5 x 40 training images, 50 test images."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        _write_batch(folder / f"data_batch_{i}", 40, rng)
    _write_batch(folder / "test_batch", 50, rng)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"c%d" % i for i in range(10)], b"num_vis": 3072}, f, protocol=2)
    return tmp_path


def test_fake_cifar_loads(fake_cifar: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    task = Cifar10Task(data_dir=fake_cifar)
    sizes = {split: task.loader(split).num_examples for split in ("train", "calibration", "validation", "test")}
    assert sizes == {"train": 160, "calibration": 20, "validation": 20, "test": 50}
    x, y = next(iter(task.loader("train", batch_size=16, augment=True)))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    # The validation split is the tail of data_batch_5, the calibration split the 20 images before it.
    with open(fake_cifar / "cifar-10-batches-py" / "data_batch_5", "rb") as f:
        last = pickle.load(f, encoding="bytes")
    calib_y = torch.cat([y for _, y in task.loader("calibration")])
    val_y = torch.cat([y for _, y in task.loader("validation")])
    assert calib_y.tolist() == last[b"labels"][-40:-20] and val_y.tolist() == last[b"labels"][-20:]
    # The folder itself works too, and so does $RLPRUNE_DATA.
    assert Cifar10Task(data_dir=fake_cifar / "cifar-10-batches-py").folder == task.folder
    monkeypatch.setenv("RLPRUNE_DATA", str(fake_cifar))
    assert Cifar10Task(arch="resnet56").folder == task.folder


def test_fake_cifar_trains_and_caches(fake_cifar: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLPRUNE_CACHE", str(tmp_path / "cache"))
    task = Cifar10Task(data_dir=fake_cifar, epochs=1, batch_size=64)
    model = task.base_model()
    assert not model.training and task.cache_path().name.startswith("cifar10-seed0-")
    assert task.evaluate(model, "test")["n"] == 50
    assert Cifar10Task(data_dir=fake_cifar, epochs=1, arch="resnet56").cache_key() != task.cache_key()


def test_missing_cifar_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataError, match="expected cifar-10-batches-py/data_batch_1..5 and test_batch under") as e:
        Cifar10Task(data_dir=tmp_path / "nowhere")
    message = str(e.value)
    assert str(tmp_path / "nowhere") in message and "--data-dir" in message and "RLPRUNE_DATA" in message
    assert "\n" not in message and isinstance(e.value, RlpruneError)
    monkeypatch.delenv("RLPRUNE_DATA", raising=False)
    with pytest.raises(DataError, match="no CIFAR-10 data folder given.*RLPRUNE_DATA"):
        Cifar10Task()


def test_incomplete_cifar_folder_names_missing_files(fake_cifar: Path) -> None:
    (fake_cifar / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DataError, match="missing: data_batch_4"):
        Cifar10Task(data_dir=fake_cifar)


@pytest.mark.parametrize("damage", ["garbage", "wrong_shape", "bad_labels", "missing_key"])
def test_malformed_cifar_batch(damage: str, fake_cifar: Path) -> None:
    path = fake_cifar / "cifar-10-batches-py" / "data_batch_3"
    batch = {b"labels": [1, 2], b"data": np.zeros((2, 3072), dtype=np.uint8)}
    if damage == "garbage":
        path.write_bytes(b"\x00\x01 definitely not a pickle")
    else:
        if damage == "wrong_shape":
            batch[b"data"] = np.zeros((2, 1024), dtype=np.uint8)
        elif damage == "bad_labels":
            batch[b"labels"] = [1, 12]
        else:
            del batch[b"labels"]
        path.write_bytes(pickle.dumps(batch, protocol=2))
    task = Cifar10Task(data_dir=fake_cifar)
    with pytest.raises(DataError, match=r"data_batch_3 is not a CIFAR-10 python batch.*RLPRUNE_DATA"):
        task.loader("train")


def test_cifar_unknown_arch(fake_cifar: Path) -> None:
    with pytest.raises(ConfigError, match="'resnet18'.*resnet20, resnet56"):
        Cifar10Task(data_dir=fake_cifar, arch="resnet18")


# ----- task lookup and user plugins -------------------------------------------------------------


@pytest.fixture()
def plugins_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))


def test_list_tasks() -> None:
    listed = dict(list_tasks())
    assert list(listed) == list(TASKS) == ["digits", "cifar10", "fashion-mnist", "user"]
    assert all(desc and "\n" not in desc for desc in listed.values())


def test_get_builtin_task_passes_kwargs() -> None:
    task = get_task("digits", seed=3)
    assert isinstance(task, DigitsTask) and task.seed == 3


def test_get_task_unknown_name() -> None:
    with pytest.raises(ConfigError, match="unknown task 'mnist'.*digits, cifar10.*module:callable"):
        get_task("mnist")


def test_user_task_from_spec(plugins_on_path: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLPRUNE_CACHE", str(tmp_path))
    task = get_task("user_plugins:make_tiny_task", seed=2)
    assert isinstance(task, Task) and task.name == "tiny" and task.seed == 2
    model = task.base_model()
    result = task.evaluate(model, "test")
    assert result["n"] == 32 and result["acc"] > 60.0
    assert task.cache_path().exists()


@pytest.mark.parametrize(
    ("spec", "pattern", "cause"),
    [
        ("no_such_module_xyz:make", "cannot import module 'no_such_module_xyz'.*PYTHONPATH", ModuleNotFoundError),
        ("user_plugins:nope", "'user_plugins' has no attribute 'nope'", AttributeError),
        ("user_plugins:TinyTask.nope", "'user_plugins.TinyTask' has no attribute 'nope'", AttributeError),
        ("user_plugins:NOT_CALLABLE", "names a int, not a callable", None),
        ("user_plugins:make_not_a_task", "returned a dict, not an rlprune.tasks.Task", None),
        ("user_plugins:", "not a 'package.module:callable' spec", None),
    ],
)
def test_get_task_bad_specs(plugins_on_path: None, spec: str, pattern: str, cause: type | None) -> None:
    with pytest.raises(ConfigError, match=pattern) as e:
        get_task(spec)
    assert repr(spec) in str(e.value)
    if cause is not None:
        assert isinstance(e.value.__cause__, cause)


def test_load_callable_resolves_dotted_attributes() -> None:
    assert load_callable("rlprune.models:resnet20") is resnet20
    assert load_callable("rlprune.tasks:DigitsTask.build_model") is DigitsTask.build_model


def test_concurrent_first_runs_train_once(tmp_path: Path) -> None:
    code = "from rlprune.tasks import DigitsTask; t = DigitsTask(epochs=1); t.base_model(); print(t.base_model_source)"
    env = {**os.environ, "RLPRUNE_CACHE": str(tmp_path)}
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    sources = sorted(p.communicate(timeout=300)[0].strip() for p in procs)
    assert all(p.returncode == 0 for p in procs)
    assert sources == ["cache", "trained"]


# ----- library pieces: BN recalibration, lr schedules, the cache lock, spec resolution -----------------


def test_recalibrate_bn_averages_the_statistics_of_the_first_batches() -> None:
    task = DigitsTask()
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 4, 3)
    bn = nn.BatchNorm2d(4, momentum=0.3)
    model = nn.Sequential(conv, bn, nn.Flatten())
    with torch.no_grad():
        feats = [conv(x) for x, _ in task.loader("calibration", 100)][:2]
    assert task.recalibrate_bn(model, batches=2, batch_size=100) is model
    # momentum=None: the cumulative average of the per-batch mean and (unbiased) variance.
    assert torch.allclose(bn.running_mean, torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0), atol=1e-6)
    assert torch.allclose(bn.running_var, torch.stack([f.var((0, 2, 3)) for f in feats]).mean(0), rtol=1e-5)
    assert int(bn.num_batches_tracked) == 2 and bn.momentum == 0.3
    assert not model.training and conv.weight.grad is None
    task.recalibrate_bn(model.train(), batches=50, batch_size=100)  # the 270 examples make 3 batches
    assert int(bn.num_batches_tracked) == 3 and not model.training
    assert not task.recalibrate_bn(nn.Sequential(nn.Conv2d(1, 2, 3)).train()).training  # no BN: only eval()


def _lrs_of_every_step(run) -> list[float]:
    """The learning rate each optimiser step of ``run()`` used (read by a global step pre-hook)."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    seen: list[float] = []
    hook = register_optimizer_step_pre_hook(lambda opt, *_: seen.append(opt.param_groups[0]["lr"]))
    try:
        run()
    finally:
        hook.remove()
    return seen


def test_training_and_finetuning_follow_the_closed_form_lr_schedules(
    plugins_on_path: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import math

    from user_plugins import TinyTask

    from rlprune.tasks import TrainConfig

    class WarmTinyTask(TinyTask):
        @property
        def train_config(self) -> TrainConfig:
            return TrainConfig(epochs=3, batch_size=8, lr=0.05, warmup_epochs=1.5)

    monkeypatch.setenv("RLPRUNE_CACHE", str(tmp_path))
    task = WarmTinyTask()
    lrs = _lrs_of_every_step(task.base_model)
    # The formulas the schedules replaced: 32 train examples in batches of 8 -> 12 steps, 6 of them warmup.
    total, warmup, lr = 12, 6, 0.05
    old = [lr * (s + 1) / warmup if s < warmup else 0.5 * lr * (1 + math.cos(math.pi * (s - warmup) / (total - warmup)))
           for s in range(total)]
    assert lrs == pytest.approx(old, rel=1e-14, abs=0)
    assert np.array_equal(np.float32(lrs), np.float32(old))  # SGD applies the rate as float32: same weights
    steps, ft_lr = 7, 0.02
    lrs = _lrs_of_every_step(lambda: task.finetune(task.base_model(), steps, lr=ft_lr))
    assert lrs == [0.5 * ft_lr * (1 + math.cos(math.pi * s / steps)) for s in range(steps)]  # bit for bit


def test_base_model_waits_while_another_holder_has_the_cache_lock(
    plugins_on_path: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from filelock import FileLock
    from user_plugins import TinyTask

    monkeypatch.setenv("RLPRUNE_CACHE", str(tmp_path))
    task = TinyTask()
    path = task.cache_path()
    path.parent.mkdir(parents=True)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (task.base_model(), done.set()))
    with FileLock(path.with_name(path.name + ".lock")):  # e.g. another worker training the same model
        worker.start()
        assert not done.wait(1.0) and not path.exists()
    worker.join(timeout=120)
    assert done.is_set() and path.exists() and task.base_model_source == "trained"


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ("user_plugins:TinyTask.TinyTask", "'user_plugins.TinyTask' has no attribute 'TinyTask'"),
        ("user_plugins:TinyTask.build_model.nope.more", "'user_plugins.TinyTask.build_model' has no attribute 'nope'"),
        ("user_plugins:make-task", "not a 'package.module:callable' spec"),
        ("user_plugins.:make", "cannot import module 'user_plugins.'"),
    ],
)
def test_load_callable_names_the_step_that_fails(plugins_on_path: None, spec: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(pattern)):
        load_callable(spec)
