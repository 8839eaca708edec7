"""CIFAR-10 from a local ``cifar-10-batches-py`` folder (the "python version" of the data set).

Nothing is downloaded: point ``data_dir`` (the CLI's ``--data-dir``) or ``$RLPRUNE_DATA`` at the folder
or at its parent. The folder holds five training pickles and one test pickle::

    cifar-10-batches-py/
        data_batch_1 .. data_batch_5   {b"data": uint8 (10000, 3072), b"labels": [int] * 10000}
        test_batch                     same layout
        batches.meta                   label names (not needed)

Each row of ``b"data"`` is a 32x32 image stored channel-major (1024 red, 1024 green, 1024 blue values).
Splits: the last 5,000 training images (10% when the folder holds fewer than 50,000) form the validation
split, the 5,000 before them the calibration split, the rest the train split, and ``test_batch`` the test
split.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rlprune.errors import ConfigError, DataError
from rlprune.models import resnet20, resnet56
from rlprune.tasks.base import Task
from rlprune.tasks.training import TrainConfig, random_shift

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
MEAN = (0.4914, 0.4822, 0.4465)
"""Per-channel mean of the CIFAR-10 training images in [0, 1]."""
STD = (0.2470, 0.2435, 0.2616)
"""Per-channel standard deviation of the CIFAR-10 training images in [0, 1]."""
CALIBRATION_SIZE = 5000
"""Calibration images, and as many validation images, carved from the end of the training set (each capped
at 10% of it)."""
ARCHS = {"resnet20": resnet20, "resnet56": resnet56}

_HOW_TO_FIX = (
    "download CIFAR-10 (python version) from https://www.cs.toronto.edu/~kriz/cifar.html, unpack it, "
    "and pass --data-dir DIR or set RLPRUNE_DATA=DIR"
)


def find_cifar_folder(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Locate the ``cifar-10-batches-py`` folder.

    Args:
        data_dir: the folder itself or its parent; ``$RLPRUNE_DATA`` when None.

    Returns:
        The folder that holds ``data_batch_1..5`` and ``test_batch``.

    Raises:
        DataError: if no folder is given, or the expected files are not there.
    """
    if data_dir is None:
        data_dir = os.environ.get("RLPRUNE_DATA") or None
    if data_dir is None:
        raise DataError(f"no CIFAR-10 data folder given; {_HOW_TO_FIX}")
    root = Path(data_dir).expanduser()
    folder = root / FOLDER if (root / FOLDER).is_dir() else root
    missing = [name for name in (*TRAIN_FILES, TEST_FILE) if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"expected {FOLDER}/data_batch_1..5 and test_batch under {root} (missing: {', '.join(missing)}); "
            f"{_HOW_TO_FIX}"
        )
    return folder


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch.

    Args:
        path: a ``data_batch_*`` or ``test_batch`` pickle.

    Returns:
        ``(images, labels)``: uint8 ``(N, 3, 32, 32)`` and int64 ``(N,)`` arrays.

    Raises:
        DataError: if the file is not a CIFAR-10 batch (unreadable, wrong keys, shapes or labels).
    """
    try:
        with open(path, "rb") as f:
            # The official files are Python 2 pickles whose keys and strings are bytes.
            batch = pickle.load(f, encoding="bytes")  # noqa: S301 - the user's own data set
        data = np.asarray(batch[b"data"])
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except Exception as e:  # noqa: BLE001 - any failure means the same thing to the user
        raise DataError(
            f"{path} is not a CIFAR-10 python batch ({type(e).__name__}: {e}); expected a pickled dict with "
            f"b'data' (uint8, N x 3072) and b'labels'; re-download it: {_HOW_TO_FIX}"
        ) from e
    problem = None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        problem = f"b'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072)"
    elif labels.shape != (len(data),):
        problem = f"{labels.shape[0] if labels.ndim else 0} labels for {len(data)} images"
    elif len(labels) and (labels.min() < 0 or labels.max() > 9):
        problem = f"labels outside 0..9 (min {labels.min()}, max {labels.max()})"
    elif not len(data):
        problem = "no images"
    if problem:
        raise DataError(f"{path} is not a CIFAR-10 python batch: {problem}; re-download it: {_HOW_TO_FIX}")
    return data.reshape(-1, 3, 32, 32), labels


class Cifar10Task(Task):
    """CIFAR-10 (3x32x32, 10 classes) from a local folder, with a CIFAR ResNet-20 or ResNet-56."""

    name = "cifar10"
    description = "CIFAR-10 from a local cifar-10-batches-py folder (--data-dir), ResNet-20/56; needs a GPU to train"
    input_shape = (3, 32, 32)
    num_classes = 10

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        arch: str = "resnet20",
        epochs: int = 160,
        batch_size: int = 128,
        lr: float = 0.1,
        seed: int = 0,
    ) -> None:
        """Create the task; the folder is located now, the images are read on first use.

        Args:
            data_dir: the ``cifar-10-batches-py`` folder or its parent; ``$RLPRUNE_DATA`` when None.
            arch: ``"resnet20"`` or ``"resnet56"``.
            epochs: training epochs of the base model (160 reaches the published ~91.5% / ~93% accuracy).
            batch_size: training minibatch size.
            lr: peak learning rate of the cosine schedule.
            seed: seeds weight init, shuffling, augmentation and fine-tuning.

        Raises:
            ConfigError: for an unknown ``arch``.
            DataError: if the folder or one of its files is missing.
            ValueError: for out-of-range training settings.
        """
        super().__init__(seed)
        if arch not in ARCHS:
            raise ConfigError(f"unknown CIFAR-10 arch {arch!r}; choose one of: {', '.join(ARCHS)}")
        self.arch = arch
        self.folder = find_cifar_folder(data_dir)
        self._train_config = TrainConfig(
            epochs=epochs, batch_size=batch_size, lr=lr, warmup_epochs=1 if epochs > 1 else 0
        )
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self._mean = torch.tensor(MEAN).view(1, 3, 1, 1)
        self._std = torch.tensor(STD).view(1, 3, 1, 1)

    @property
    def train_config(self) -> TrainConfig:
        """SGD (momentum 0.9, weight decay 5e-4), one warmup epoch, cosine decay."""
        return self._train_config

    @property
    def cache_params(self) -> dict[str, Any]:
        """The architecture name (also visible in the model, kept explicit for readability)."""
        return {"arch": self.arch}

    def build_model(self) -> nn.Module:
        """Return an untrained ResNet of the configured ``arch``."""
        return ARCHS[self.arch](num_classes=self.num_classes, in_channels=3)

    def _split_tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_split(split)
        if self._splits is None:
            self._splits = self._read_splits()
        return self._splits[split]

    def _read_splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        parts = [read_batch(self.folder / name) for name in TRAIN_FILES]
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        test_x, test_y = read_batch(self.folder / TEST_FILE)
        n_held = min(CALIBRATION_SIZE, len(y) // 10)
        if n_held < 1:
            raise DataError(
                f"{self.folder} holds only {len(y)} training images, too few for calibration and validation "
                f"splits; {_HOW_TO_FIX}"
            )
        cut, val = len(y) - 2 * n_held, len(y) - n_held
        # Images stay uint8 (150 MB instead of 600 MB as float); _transform converts each batch.
        return {
            "train": (torch.from_numpy(x[:cut].copy()), torch.from_numpy(y[:cut].copy())),
            "calibration": (torch.from_numpy(x[cut:val].copy()), torch.from_numpy(y[cut:val].copy())),
            "validation": (torch.from_numpy(x[val:].copy()), torch.from_numpy(y[val:].copy())),
            "test": (torch.from_numpy(test_x.copy()), torch.from_numpy(test_y.copy())),
        }

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255.0 - self._mean) / self._std

    def _augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        # The standard CIFAR recipe (He et al. 2016): 4-pixel padded random crops and horizontal flips.
        # Padding happens after normalisation, so the border is the mean colour rather than black.
        x = random_shift(x, 4, generator, fill=0.0)
        flip = torch.rand(len(x), generator=generator) < 0.5
        return torch.where(flip[:, None, None, None], x.flip(3), x)

    def __repr__(self) -> str:
        return f"Cifar10Task(data_dir={str(self.folder)!r}, arch={self.arch!r}, seed={self.seed})"


__all__ = ["ARCHS", "Cifar10Task", "find_cifar_folder", "read_batch"]
