"""User-side plugins loaded by ``module:callable`` specs in the tests (not a test module)."""

from __future__ import annotations

import torch
from torch import nn

from rlprune.tasks import Task, TrainConfig


class TinyTask(Task):
    """Two classes of 1x8x8 noise images told apart by the sign of their mean; a two-conv net."""

    name = "tiny"
    description = "synthetic 2-class 1x8x8 task for plugin tests"
    input_shape = (1, 8, 8)
    num_classes = 2

    def __init__(self, seed: int = 0, n: int = 128) -> None:
        super().__init__(seed)
        g = torch.Generator().manual_seed(1234)
        y = torch.randint(0, 2, (n,), generator=g)
        x = torch.randn(n, 1, 8, 8, generator=g) + (2.0 * y - 1.0)[:, None, None, None]
        q = n // 4
        self._data = {
            "train": (x[:q], y[:q]),
            "calibration": (x[q : 2 * q], y[q : 2 * q]),
            "validation": (x[2 * q : 3 * q], y[2 * q : 3 * q]),
            "test": (x[3 * q :], y[3 * q :]),
        }

    @property
    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=2, batch_size=16, lr=0.05)

    def build_model(self) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, 2),
        )

    def _split_tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_split(split)
        return self._data[split]


def make_tiny_task(seed: int = 0) -> TinyTask:
    """Factory named by ``user_plugins:make_tiny_task``."""
    return TinyTask(seed=seed)


def make_not_a_task(seed: int = 0) -> dict:
    """A factory that returns the wrong type."""
    return {"seed": seed}


NOT_CALLABLE = 42
