"""The real workload: Fashion-MNIST (70,000 images of 1x28x28) with ResNet-20, ResNet-56 or a depthwise net.

Built on the public bring-your-own API (``rlprune.make_task``) like a user's task: the datasets stream through
``DataLoader``s, the metric is top-1 accuracy, and the weights come from a callable run on first use, which
loads a committed checkpoint or the cache, or trains the base model once (``rlprune train``) and caches it.

Files: ``--data-dir``, else ``$RLPRUNE_DATA/fashion-mnist``, else Debian's ``/usr/share/datasets/fashion-mnist``
(``apt-get install dataset-fashion-mnist``); see ``rlprune.tasks.fashion_data``. Splits: train 50,000,
calibration 5,000, validation 5,000 (class-balanced from the train file, seeded by ``SPLIT_SEED`` rather than
the task seed, so every seed is scored on the same images), test 10,000 (the t10k file).
"""

from __future__ import annotations

import dataclasses
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from rlprune.errors import ConfigError
from rlprune.models import mobilenet_v2_small, resnet20, resnet56
from rlprune.tasks import training
from rlprune.tasks.fashion_data import MEAN, STD, fashion_splits, find_fashion_folder, load_fashion_mnist
from rlprune.tasks.training import BatchLoader, TrainConfig, random_shift
from rlprune.tasks.user import UserTask, make_task

NAME = "fashion-mnist"
SPLIT_SEED = 0
"""Seeds the class-balanced split; independent of the task seed so splits never move."""
ARCHS = {"resnet20": resnet20, "resnet56": resnet56, "mobilenet": mobilenet_v2_small}
EPOCHS = {"resnet20": 15, "resnet56": 15, "mobilenet": 8}
"""Default training epochs per architecture (cosine schedule; see the README for the accuracy reached)."""


class Images(Dataset):
    """uint8 images kept as they are (47 MB for all 60,000) and normalised one item at a time."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = torch.from_numpy(np.ascontiguousarray(labels)).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return _normalise(self.images[i]), self.labels[i]


def _normalise(x: torch.Tensor) -> torch.Tensor:
    """uint8 ``(..., 28, 28)`` -> normalised float ``(..., 1, 28, 28)`` (one image or a batch)."""
    return ((x.float() / 255.0 - MEAN) / STD).unsqueeze(-3)


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # Shifts of up to 2 pixels on the background colour and left-right flips: clothing is mirror-symmetric
    # enough that flipped shirts stay shirts (the data set's usual augmentation).
    x = random_shift(x, 2, generator, fill=-MEAN / STD)
    flip = torch.rand(len(x), generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


@lru_cache(maxsize=2)
def _splits(folder: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every split's uint8 images and labels, read and checked once per process."""
    train_x, train_y, test_x, test_y = load_fashion_mnist(Path(folder))
    idx = fashion_splits(train_y, seed=SPLIT_SEED)
    out = {name: (train_x[i], train_y[i]) for name, i in idx.items()}
    out["test"] = (test_x, test_y)
    return out


def fashion_mnist(arch: str = "resnet20", seed: int = 0, data_dir: str | os.PathLike | None = None,
                  epochs: int | None = None, batch_size: int = 128, lr: float = 0.1) -> UserTask:
    """The ``fashion-mnist`` task.

    Args:
        arch: ``resnet20`` (12 groups), ``resnet56`` (30 groups) or ``mobilenet`` (inverted residuals).
        seed: seeds the base model's initialisation and training, and fine-tuning.
        data_dir: the folder with the four IDX files (or its parent).
        epochs: base-model training epochs (default :data:`EPOCHS`).
        batch_size, lr: the training recipe's batch size and peak learning rate.

    Returns:
        A task made by ``rlprune.make_task``; its base model is trained on first use unless cached.

    Raises:
        ConfigError: unknown ``arch`` or a bad recipe.
        DataError: missing, truncated or corrupt files (named, with how to get them).
    """
    if arch not in ARCHS:
        raise ConfigError(f"unknown fashion-mnist arch {arch!r}; choose one of: {', '.join(ARCHS)}")
    try:
        recipe = TrainConfig(epochs=EPOCHS[arch] if epochs is None else epochs, batch_size=batch_size, lr=lr,
                             warmup_epochs=1 if (epochs or EPOCHS[arch]) > 1 else 0)
    except ValueError as e:
        raise ConfigError(f"fashion-mnist training recipe: {e}") from e
    folder = str(find_fashion_folder(data_dir))
    splits = _splits(folder)

    def build() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return ARCHS[arch](num_classes=10, in_channels=1)

    def weights() -> dict:
        tensors = {s: (torch.from_numpy(x), torch.from_numpy(y).long()) for s, (x, y) in splits.items()}
        meta = {"name": NAME, "arch": arch, "seed": seed, "train": dataclasses.asdict(recipe)}
        key = training.weights_key(build(), (_normalise, _augment, Images), meta,
                                   [(s, *tensors[s]) for s in ("train", "calibration", "validation", "test")])
        path = training.cache_dir() / "models" / f"{NAME}-{arch}-seed{seed}-{key}.pt"
        loader = BatchLoader(*tensors["train"], recipe.batch_size, True, seed, _normalise, _augment)
        state, task.base_model_source = training.cached_state(
            path, build,
            lambda m, snapshot: training.train(m, loader, recipe, seed, F.cross_entropy, f"train {NAME} {arch}",
                                               resume=snapshot),
            {"task": NAME, "arch": arch, "seed": seed, "epochs": recipe.epochs})
        task.weights_file = path
        return state

    task = make_task(build, {s: Images(*splits[s]) for s in ("train", "calibration", "validation", "test")},
                     weights=weights, example_input=torch.zeros(1, 1, 28, 28), batch_size=batch_size, name=NAME,
                     metric_name="accuracy", seed=seed)
    task.arch, task.recipe, task.weights_file = arch, recipe, None
    return task


fashion_mnist.description = (  # type: ignore[attr-defined]
    "Fashion-MNIST 1x28x28 from /usr/share/datasets/fashion-mnist or --data-dir; --arch resnet20/resnet56/mobilenet")

__all__ = ["ARCHS", "EPOCHS", "NAME", "fashion_mnist"]
