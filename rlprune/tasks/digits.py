"""The embedded default task: scikit-learn's 8x8 handwritten digits, upsampled to 1x32x32.

No download is needed (the 1,797 images ship with scikit-learn), the ResNet-8 trains in well under a
minute on two CPU cores, and the upsampling gives it CIFAR's spatial size, so the whole pipeline
(groups, cost model, sampling, search, validation) runs end to end on a laptop.

Splits are stratified by label and fixed by ``SPLIT_SEED`` (not the task seed), so every seed is scored on
the same images: 50% train (897), 15% calibration (270), 15% validation (270), 20% test (360).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rlprune.models import digits_resnet
from rlprune.tasks.base import SPLITS, Task
from rlprune.tasks.training import TrainConfig, random_shift

SPLIT_SEED = 0
"""Seed of the stratified split; independent of the task seed so splits never move."""

SPLIT_FRACTIONS = (0.5, 0.15, 0.15, 0.2)
"""Train / calibration / validation / test shares of the 1,797 images (the test split keeps the size it
had with three splits: on 360 images one image is 0.28 points, and intervals are wide enough already)."""


class DigitsTask(Task):
    """scikit-learn's digits (8x8 -> bilinear 32x32, 1 channel, normalised) with a ResNet-8."""

    name = "digits"
    description = "scikit-learn digits upsampled to 1x32x32, ResNet-8; embedded, trains in ~10 s on CPU"
    input_shape = (1, 32, 32)
    num_classes = 10

    def __init__(self, seed: int = 0, epochs: int = 15) -> None:
        """Create the task (the data is loaded lazily, on first use).

        Args:
            seed: seeds weight init, shuffling, augmentation and fine-tuning.
            epochs: training epochs of the base model.

        Raises:
            ValueError: if ``seed`` or ``epochs`` is out of range.
        """
        super().__init__(seed)
        self._train_config = TrainConfig(epochs=epochs, batch_size=32, lr=0.1, warmup_epochs=1 if epochs > 1 else 0)
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self._indices: dict[str, np.ndarray] | None = None
        self._background = 0.0

    @property
    def train_config(self) -> TrainConfig:
        """SGD, batch 32, peak lr 0.1 after a one-epoch warmup, cosine decay (99%+ test accuracy, ~10 s)."""
        return self._train_config

    def build_model(self) -> nn.Module:
        """Return an untrained ``digits_resnet`` (see ``rlprune.models``)."""
        return digits_resnet(num_classes=self.num_classes, in_channels=1)

    def split_indices(self) -> dict[str, np.ndarray]:
        """Return which of scikit-learn's 1,797 images each split holds.

        Returns:
            ``{"train": idx, "calibration": idx, "validation": idx, "test": idx}``: disjoint, sorted int
            arrays whose union is ``range(1797)``.
        """
        self._load()
        assert self._indices is not None
        return {k: v.copy() for k, v in self._indices.items()}

    def _split_tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_split(split)
        self._load()
        assert self._splits is not None
        return self._splits[split]

    def _load(self) -> None:
        if self._splits is not None:
            return
        # Imported here: scikit-learn costs ~1 s to import and most commands never touch this task.
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        data = load_digits()
        images = torch.as_tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
        labels = torch.as_tensor(data.target, dtype=torch.int64)
        index = np.arange(len(labels))
        # Carve test, then validation, then calibration off the rest, each stratified by label.
        self._indices, rest, left = {}, index, 1.0
        for split, frac in zip(SPLITS[:0:-1], SPLIT_FRACTIONS[:0:-1], strict=True):
            rest, part = train_test_split(rest, test_size=frac / left, stratify=data.target[rest],
                                          random_state=SPLIT_SEED)
            self._indices[split] = np.sort(part)
            left -= frac
        self._indices["train"] = np.sort(rest)
        # align_corners=False samples pixel centres, so the 8x8 grid maps onto 32x32 without a shift.
        upsampled = F.interpolate(images, size=self.input_shape[1:], mode="bilinear", align_corners=False)
        # Normalise with train-split statistics only, so nothing about the other splits leaks in.
        train_x = upsampled[torch.as_tensor(self._indices["train"])]
        mean, std = train_x.mean(), train_x.std()
        normalised = (upsampled - mean) / std
        self._background = float(-mean / std)
        self._splits = {}
        for split in SPLITS:
            idx = torch.as_tensor(self._indices[split])
            self._splits[split] = (normalised[idx].contiguous(), labels[idx].contiguous())

    def _augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        # Shift by up to 2 pixels, padding with the background: digits are not mirror-symmetric, so no flips.
        return random_shift(x, 2, generator, fill=self._background)


__all__ = ["DigitsTask", "SPLIT_FRACTIONS", "SPLIT_SEED"]
