"""The Task protocol: data splits, a cached trained base model, evaluation, fine-tuning, BN recalibration.

A task owns four disjoint splits::

    train        -> base-model training and fine-tuning
    calibration  -> BN recalibration, sample labels, online and AMC-style real evaluations (what the search sees)
    validation   -> every choice: the run's winner, which candidates go forward, when a search stops
    test         -> the final table only (never a choice)

Built-in tasks subclass it and provide the raw split tensors (``_split_tensors``), the per-batch
preprocessing (``_transform``, ``_augment``), the architecture (``build_model``) and the training recipe
(``train_config``; the loop and the cache live in ``rlprune.tasks.training``). A user's own trained model,
datasets, metric and loss come in through ``rlprune.make_task`` (``rlprune.tasks.user``), which overrides the
data, scoring and weights hooks (``loader``, ``_score``, ``loss``, ``_load_base_state``).

The trained base model is cached on disk under ``$RLPRUNE_CACHE`` (default ``~/.cache/rlprune``) as
``models/<name>-seed<seed>-<key>.pt``. ``key`` hashes the source of every non-torch module class in the
model, the model's ``repr`` (layer shapes), the training recipe and the source of the code that runs it
(training loop, preprocessing, augmentation), the task's ``cache_params`` (e.g. the architecture name),
the split sizes and labels, and ``CACHE_VERSION``; editing any of these retrains.
"""

from __future__ import annotations

import abc
import dataclasses
import itertools
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import update_bn

from rlprune.io import model_fingerprint
from rlprune.tasks import training
from rlprune.tasks.training import (
    BatchLoader,
    TrainConfig,
    cache_dir,
    cosine_factor,
    device_of,
    random_shift,
)

SPLITS = ("train", "calibration", "validation", "test")
"""The valid split names, in the order they are carved out of the data."""

class Task(abc.ABC):
    """A data set with three disjoint splits, an architecture, and its trained base model.

    Subclasses set the class attributes and implement ``build_model``, ``train_config`` and
    ``_split_tensors``; they may override ``_transform`` (raw tensor -> normalised float batch),
    ``_augment`` (training-time augmentation) and ``cache_params``.
    """

    name: str = ""
    """Registry name, also the cache-file prefix."""
    description: str = ""
    """One line shown by ``rlprune tasks``."""
    input_shape: tuple[int, int, int] = (0, 0, 0)
    """(C, H, W) of one example."""
    num_classes: int = 0
    """Number of labels."""
    metric_name: str = "accuracy"
    """What ``evaluate``'s ``acc`` holds (higher is better, in points); reports label their axes with it."""

    def __init__(self, seed: int = 0) -> None:
        """Create the task.

        Args:
            seed: seeds weight init, shuffling, augmentation and fine-tuning.

        Raises:
            ValueError: if ``seed`` is not a non-negative integer.
        """
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = seed
        self.finetune_seed = seed
        """Seeds the data order of :meth:`finetune` (the task seed unless a caller sets it: benchmarks that share
        one base model over seeds give each seed its own fine-tune, so repeated seeds are replicates)."""
        self._base_state: dict[str, torch.Tensor] | None = None
        self._fingerprint: str | None = None
        self.base_model_source: str | None = None
        """How the base model was obtained the first time: ``"trained"`` or ``"cache"``."""

    # ----- to implement ---------------------------------------------------------------------------
    @abc.abstractmethod
    def build_model(self) -> nn.Module:
        """Return a freshly initialised (untrained) model for this task."""

    @property
    @abc.abstractmethod
    def train_config(self) -> TrainConfig:
        """The recipe used to train the base model (part of the cache key)."""

    @abc.abstractmethod
    def _split_tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the raw ``(x, y)`` tensors of a validated split name; ``y`` holds int64 labels."""

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        """Turn a raw batch into the normalised float batch the model sees (default: as is)."""
        return x

    def _augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment a transformed training batch using only ``generator`` for randomness (default: none)."""
        return x

    @property
    def cache_params(self) -> dict[str, Any]:
        """Extra JSON-serialisable settings that change the base model (part of the cache key)."""
        return {}

    # ----- data -----------------------------------------------------------------------------------
    def example_input(self) -> torch.Tensor:
        """Return a zero tensor of shape ``(1, C, H, W)`` for tracing and cost counting.

        Returns:
            A float32 tensor on the CPU.
        """
        return torch.zeros(1, *self.input_shape)

    def _check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} for task {self.name!r}; valid splits: {', '.join(SPLITS)}")

    def loader(self, split: str, batch_size: int = 128, shuffle: bool = False, augment: bool = False,
               seed: int | None = None) -> BatchLoader:
        """Return an iterable of ``(x, y)`` minibatches of one split.

        Args:
            split: ``"train"``, ``"calibration"`` or ``"test"`` (disjoint).
            batch_size: examples per batch; the last batch may be smaller.
            shuffle: draw a new, seeded permutation on every pass.
            augment: apply the task's training augmentation (meant for the train split).
            seed: seeds the permutations and the augmentation (None: the task seed).

        Returns:
            A ``BatchLoader``; ``len()`` is the number of batches, ``num_examples`` the split size.

        Raises:
            ValueError: for an unknown split or a non-positive batch size.
        """
        self._check_split(split)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        x, y = self._split_tensors(split)
        return BatchLoader(x, y, batch_size, shuffle, self.seed if seed is None else seed, self._transform,
                           self._augment if augment else None)

    # ----- base model -----------------------------------------------------------------------------
    def cache_key(self) -> str:
        """Return the hash that names the cached base model (see the module docstring).

        Returns:
            16 hex characters.
        """
        meta = {"name": self.name, "seed": self.seed, "train": dataclasses.asdict(self.train_config),
                "params": self.cache_params}
        return training.weights_key(
            self._seeded_model(), (type(self)._transform, type(self)._augment, type(self).loss), meta,
            [(split, *self._split_tensors(split)) for split in SPLITS])

    def cache_path(self) -> Path:
        """Return where the base model is (or will be) cached.

        Returns:
            ``<cache_dir>/models/<name>-seed<seed>-<cache_key>.pt``.
        """
        return cache_dir() / "models" / f"{self.name}-seed{self.seed}-{self.cache_key()}.pt"

    def base_model(self) -> nn.Module:
        """Return the trained base model in eval mode, training and caching it on first use.

        Each call returns a new module, so callers may prune it in place. A cache file that cannot be read
        is retrained (with a warning) and overwritten.

        Returns:
            The trained model on the CPU, in eval mode.
        """
        if self._base_state is None:
            self._base_state = self._load_base_state()
        model = self._seeded_model()
        model.load_state_dict(self._base_state)
        return model.eval()

    def _load_base_state(self) -> dict[str, torch.Tensor]:
        """The trained weights: from the cache, or trained now and cached (a task given weights overrides this)."""
        state, source = training.cached_state(
            self.cache_path(), self._seeded_model,
            lambda m, snapshot: training.train(m, self.loader("train", self.train_config.batch_size, shuffle=True,
                                                              augment=True),
                                               self.train_config, self.seed, self.loss, f"train {self.name}",
                                               resume=snapshot),
            {"task": self.name, "seed": self.seed})
        self.base_model_source = self.base_model_source or source
        return state

    def _seeded_model(self) -> nn.Module:
        # Weight init depends on the task seed only, and the caller's global RNG is left as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return self.build_model()

    @property
    def fingerprint(self) -> str:
        """``rlprune.io.model_fingerprint`` of the base model: the key of its samples and SPN entries."""
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.base_model())
        return self._fingerprint

    # ----- training, evaluation, recalibration --------------------------------------------------------
    def finetune(self, model: nn.Module, steps: int, lr: float = 0.01) -> nn.Module:
        """Fine-tune ``model`` in place on the (augmented) train split.

        SGD with momentum 0.9 and weight decay 5e-4; the learning rate decays from ``lr`` to 0 with a
        cosine over ``steps``, which recovers more accuracy than a constant rate in short fine-tunes.
        Batches cycle through the train split with seeded reshuffling, so the result depends only on the
        model, ``steps``, ``lr`` and :attr:`finetune_seed` (the task seed unless set).

        Args:
            model: the (usually pruned) model; it may live on any device.
            steps: number of minibatch steps; 0 only switches the model to eval mode.
            lr: initial learning rate.

        Returns:
            The same model, in eval mode.

        Raises:
            ValueError: if ``steps`` is negative or ``lr`` is not positive.
        """
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if steps == 0:
            return model.eval()
        loader = self.loader("train", self.finetune_batch_size, shuffle=True, augment=True, seed=self.finetune_seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.finetune_seed)
            training.sgd_steps(model, loader, steps, lr, lambda step: cosine_factor(step, steps), 0.9, 5e-4,
                               self.loss, f"finetune {self.name}")
        return model.eval()

    def evaluate(self, model: nn.Module, split: str, max_batches: int | None = None,
                 per_example: bool = False) -> dict[str, Any]:
        """Measure the task's metric (top-1 accuracy unless the task has its own) and mean loss on a split.

        The model is switched to eval mode (and left there); gradients are off.

        Args:
            model: the model to measure; it may live on any device.
            split: one of :data:`SPLITS`.
            max_batches: stop after this many batches of 128 (all when None).
            per_example: also return which examples were classified correctly (for bootstrap intervals
                and paired comparisons over the same images).

        Returns:
            ``{"acc": the metric in points (top-1: percent in [0, 100]), "loss": mean loss, "n": examples
            seen}``, plus ``"correct"`` with ``per_example``: per-example outcomes in split order (bools for
            top-1, float scores for a metric that returns them), absent for a metric that returns one number.

        Raises:
            ValueError: for an unknown split or a non-positive ``max_batches``.
        """
        self._check_split(split)
        if max_batches is not None and max_batches < 1:
            raise ValueError(f"max_batches must be >= 1 or None, got {max_batches}")
        model.eval()
        with torch.no_grad():
            out = self._score(model, _FirstBatches(self.loader(split), max_batches))
        if not per_example:
            out.pop("correct", None)
        return out

    def _score(self, model: nn.Module, batches) -> dict[str, Any]:
        """Top-1 accuracy and mean loss in one pass; a task with its own metric overrides this."""
        device = device_of(model)
        hits, loss_sum, n = [], 0.0, 0
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss_sum += float(self.loss(logits, y)) * len(y)
            hits.append((logits.argmax(1) == y).cpu())
            n += len(y)
        correct = torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool)
        return {"acc": 100.0 * int(correct.sum()) / max(n, 1), "loss": loss_sum / max(n, 1), "n": n,
                "correct": correct.numpy()}

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The training and fine-tuning loss (mean over the batch); cross-entropy unless a task overrides it."""
        return F.cross_entropy(outputs, targets)

    @property
    def finetune_batch_size(self) -> int:
        """Examples per fine-tuning step (the base model's training batch size)."""
        return self.train_config.batch_size

    def recalibrate_bn(self, model: nn.Module, batches: int = 10, batch_size: int = 128) -> nn.Module:
        """Re-estimate every BatchNorm's running statistics on the calibration split.

        Pruning changes the distribution each BN sees, so stale statistics turn an un-fine-tuned score
        into noise; recomputing them first makes it track fine-tuned accuracy (EagleEye, Li et al. 2020).
        Statistics are reset and accumulated as a cumulative average (``momentum=None``) over the first
        ``batches`` calibration batches (fewer if the split is smaller); each BN's momentum is restored.

        Args:
            model: the model to recalibrate in place; it may live on any device.
            batches: number of calibration minibatches to average over.
            batch_size: examples per minibatch.

        Returns:
            The same model, in eval mode.

        Raises:
            ValueError: if ``batches`` or ``batch_size`` is not positive.
        """
        if batches < 1:
            raise ValueError(f"batches must be >= 1, got {batches}")
        # update_bn feeds the first element of each (x, y) batch to the model.
        update_bn(itertools.islice(self.loader("calibration", batch_size), batches), model, device_of(model))
        return model.eval()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed})"


class _FirstBatches:
    """The first ``limit`` batches of a loader (all when None): always the same examples, re-iterable."""

    def __init__(self, loader, limit: int | None):
        self.loader, self.limit = loader, limit

    def __iter__(self):
        return itertools.islice(iter(self.loader), self.limit)

    def __len__(self) -> int:
        return len(self.loader) if self.limit is None else min(self.limit, len(self.loader))


__all__ = ["SPLITS", "BatchLoader", "Task", "TrainConfig", "cache_dir", "random_shift"]
