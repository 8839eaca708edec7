"""The Task protocol: data splits, a cached trained base model, evaluation, fine-tuning, BN recalibration.

A task owns four disjoint splits::

    train        -> base-model training and fine-tuning
    calibration  -> BN recalibration, sample labels, online and AMC-style real evaluations (what the search sees)
    validation   -> every choice: the run's winner, which candidates go forward, when a search stops
    test         -> the final table only (never a choice)

Subclasses provide the raw split tensors (``_split_tensors``), the per-batch preprocessing
(``_transform``, ``_augment``), the architecture (``build_model``) and the training recipe
(``train_config``); everything else lives here.

The trained base model is cached on disk under ``$RLPRUNE_CACHE`` (default ``~/.cache/rlprune``) as
``models/<name>-seed<seed>-<key>.pt``. ``key`` hashes the source of every non-torch module class in the
model, the model's ``repr`` (layer shapes), the training recipe and the source of the code that runs it
(training loop, preprocessing, augmentation), the task's ``cache_params`` (e.g. the architecture name),
the split sizes and labels, and ``CACHE_VERSION``; editing any of these retrains.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import inspect
import io
import itertools
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from filelock import FileLock
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import update_bn
from tqdm import tqdm

from rlprune.io import atomic_write_bytes, model_fingerprint

logger = logging.getLogger(__name__)

SPLITS = ("train", "calibration", "validation", "test")
"""The valid split names, in the order they are carved out of the data."""

CACHE_VERSION = 1
"""Bump to invalidate every cached base model (e.g. after changing ``Task._train``)."""


def cache_dir() -> Path:
    """Return the cache root: ``$RLPRUNE_CACHE`` or ``~/.cache/rlprune``.

    Returns:
        The directory path (not created here).
    """
    return Path(os.environ.get("RLPRUNE_CACHE") or Path.home() / ".cache" / "rlprune").expanduser()


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How a task trains its base model: SGD with momentum and a per-step cosine schedule."""

    epochs: int
    """Passes over the train split."""
    batch_size: int = 128
    """Examples per SGD step (the last, smaller batch of an epoch is kept)."""
    lr: float = 0.1
    """Peak learning rate, reached after the warmup and decayed to 0 with a cosine."""
    momentum: float = 0.9
    """SGD momentum."""
    weight_decay: float = 5e-4
    """L2 penalty applied by SGD to every parameter."""
    warmup_epochs: float = 0.0
    """Epochs of linear warmup from 0 to ``lr``."""

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"TrainConfig.epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"TrainConfig.batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(
                f"TrainConfig.warmup_epochs must be in [0, epochs={self.epochs}), got {self.warmup_epochs}"
            )


class BatchLoader:
    """Iterates ``(x, y)`` minibatches of one split, preprocessing each batch on the fly.

    Slicing whole tensors is far cheaper than ``DataLoader``'s per-example collation for data that fits in
    memory, which all built-in tasks do. A shuffling loader draws a new permutation on every pass from its
    own seeded generator, so a sequence of passes is reproducible without touching the global RNG.
    """

    def __init__(self, task: Task, split: str, batch_size: int, shuffle: bool, augment: bool) -> None:
        self.task = task
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.x, self.y = task._split_tensors(split)
        self.generator = torch.Generator().manual_seed(task.seed)

    @property
    def num_examples(self) -> int:
        """Examples in the split."""
        return len(self.y)

    def __len__(self) -> int:
        return math.ceil(self.num_examples / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = self.num_examples
        order = torch.randperm(n, generator=self.generator) if self.shuffle else None
        for start in range(0, n, self.batch_size):
            if order is None:
                x, y = self.x[start : start + self.batch_size], self.y[start : start + self.batch_size]
            else:
                idx = order[start : start + self.batch_size]
                x, y = self.x[idx], self.y[idx]
            x = self.task._transform(x)
            if self.augment:
                x = self.task._augment(x, self.generator)
            yield x, y


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

    def loader(self, split: str, batch_size: int = 128, shuffle: bool = False, augment: bool = False) -> BatchLoader:
        """Return an iterable of ``(x, y)`` minibatches of one split.

        Args:
            split: ``"train"``, ``"calibration"`` or ``"test"`` (disjoint).
            batch_size: examples per batch; the last batch may be smaller.
            shuffle: draw a new, seeded permutation on every pass.
            augment: apply the task's training augmentation (meant for the train split).

        Returns:
            A ``BatchLoader``; ``len()`` is the number of batches, ``num_examples`` the split size.

        Raises:
            ValueError: for an unknown split or a non-positive batch size.
        """
        self._check_split(split)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return BatchLoader(self, split, batch_size, shuffle, augment)

    # ----- base model -----------------------------------------------------------------------------
    def cache_key(self) -> str:
        """Return the hash that names the cached base model (see the module docstring).

        Returns:
            16 hex characters.
        """
        model = self._seeded_model()
        classes = sorted(
            {type(m) for m in model.modules() if not type(m).__module__.startswith("torch.")},
            key=lambda c: f"{c.__module__}.{c.__qualname__}",
        )
        h = hashlib.sha256()
        for cls in classes:
            h.update(f"{cls.__module__}.{cls.__qualname__}\n".encode())
            h.update(inspect.getsource(cls).encode())
        h.update(repr(model).encode())
        # The training code itself: a fix to the recipe's implementation retrains instead of reusing weights.
        for fn in (Task._train, Task._sgd_steps, type(self)._transform, type(self)._augment):
            try:
                h.update(inspect.getsource(fn).encode())
            except (OSError, TypeError):  # defined where no source is kept (an interactive session)
                h.update(fn.__qualname__.encode())
        meta = {
            "version": CACHE_VERSION,
            "name": self.name,
            "seed": self.seed,
            "train": dataclasses.asdict(self.train_config),
            "params": self.cache_params,
        }
        h.update(json.dumps(meta, sort_keys=True).encode())
        for split in SPLITS:
            x, y = self._split_tensors(split)
            h.update(f"{split}:{tuple(x.shape)}:{x.dtype}".encode())
            h.update(y.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

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
            path = self.cache_path()
            state = self._load_cached(path)
            if state is None:
                path.parent.mkdir(parents=True, exist_ok=True)
                # Parallel workers asking for the same model wait for the first one to train it, then load.
                with FileLock(path.with_name(path.name + ".lock")):
                    state = self._load_cached(path, warn=False)
                    if state is None:
                        state = self._train_and_save(path)
                        self.base_model_source = "trained"
            if self.base_model_source is None:
                self.base_model_source = "cache"
            self._base_state = state
        model = self._seeded_model()
        model.load_state_dict(self._base_state)
        return model.eval()

    def _seeded_model(self) -> nn.Module:
        # Weight init depends on the task seed only, and the caller's global RNG is left as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return self.build_model()

    def _train_and_save(self, path: Path) -> dict[str, torch.Tensor]:
        model = self._seeded_model()
        started = time.perf_counter()
        # Train on a GPU when there is one (CIFAR needs it); the cached weights are always CPU tensors.
        self._train(model.to("cuda" if torch.cuda.is_available() else "cpu"))
        model.cpu()
        logger.info("trained %s base model in %.1f s", self.name, time.perf_counter() - started)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._save_cached(path, state)
        return state

    def _load_cached(self, path: Path, warn: bool = True) -> dict[str, torch.Tensor] | None:
        if not path.exists():
            return None
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            state = payload["state_dict"]
            self._seeded_model().load_state_dict(state)  # strict: catches a truncated or foreign file
        except Exception as e:  # noqa: BLE001 - any unreadable cache means "retrain", never a crash
            if not warn:
                return None
            reason = (str(e).strip().splitlines() or [""])[0][:200]
            warnings.warn(
                f"cached base model {path} is unreadable ({type(e).__name__}: {reason}); retraining it",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
        logger.info("loaded %s base model from %s", self.name, path)
        return state

    def _save_cached(self, path: Path, state: dict[str, torch.Tensor]) -> None:
        payload = {"state_dict": state, "task": self.name, "seed": self.seed, "key": path.stem}
        # Atomic: readers (e.g. parallel sample workers) see no file or a complete one, never a partial write.
        buf = io.BytesIO()
        torch.save(payload, buf)
        atomic_write_bytes(path, buf.getvalue())
        logger.info("cached %s base model at %s", self.name, path)

    @property
    def fingerprint(self) -> str:
        """``rlprune.io.model_fingerprint`` of the base model: the key of its samples and SPN entries."""
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.base_model())
        return self._fingerprint

    # ----- training, evaluation, recalibration --------------------------------------------------------
    def _train(self, model: nn.Module) -> nn.Module:
        """Train ``model`` in place with ``train_config``; deterministic given ``seed``."""
        cfg = self.train_config
        loader = self.loader("train", cfg.batch_size, shuffle=True, augment=True)
        total = cfg.epochs * len(loader)
        warmup = round(cfg.warmup_epochs * len(loader))

        def lr_factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return _cosine_factor(step - warmup, total - warmup)

        # fork_rng keeps the caller's global RNG untouched while seeding anything the model draws
        # (e.g. dropout in a user's model).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self._sgd_steps(
                model, loader, total, cfg.lr, lr_factor, cfg.momentum, cfg.weight_decay, f"train {self.name}"
            )
        return model.eval()

    def _sgd_steps(
        self,
        model: nn.Module,
        loader: BatchLoader,
        steps: int,
        lr: float,
        lr_factor: Callable[[int], float],
        momentum: float,
        weight_decay: float,
        desc: str,
    ) -> None:
        device = _device_of(model)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        # LambdaLR with the closed-form factor, not LinearLR/CosineAnnealingLR: those update the rate
        # recursively, which drifts from the closed form by float ulps and changes the trained weights.
        schedule = LambdaLR(opt, lr_factor)
        model.train()
        batches = iter(loader)
        with tqdm(total=steps, desc=desc, file=sys.stderr, disable=not sys.stderr.isatty(), leave=False) as bar:
            for step in range(steps):
                try:
                    x, y = next(batches)
                except StopIteration:  # cycle through the split, reshuffling on every pass
                    batches = iter(loader)
                    x, y = next(batches)
                loss = F.cross_entropy(model(x.to(device)), y.to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                schedule.step()
                bar.update(1)
                if step % 20 == 0:
                    bar.set_postfix(loss=f"{loss.item():.3f}")

    def finetune(self, model: nn.Module, steps: int, lr: float = 0.01) -> nn.Module:
        """Fine-tune ``model`` in place on the (augmented) train split.

        SGD with momentum 0.9 and weight decay 5e-4; the learning rate decays from ``lr`` to 0 with a
        cosine over ``steps``, which recovers more accuracy than a constant rate in short fine-tunes.
        Batches cycle through the train split with seeded reshuffling, so the result depends only on the
        model, ``steps``, ``lr`` and the task seed.

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
        loader = self.loader("train", self.train_config.batch_size, shuffle=True, augment=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self._sgd_steps(
                model, loader, steps, lr, lambda step: _cosine_factor(step, steps), 0.9, 5e-4, f"finetune {self.name}"
            )
        return model.eval()

    def evaluate(self, model: nn.Module, split: str, max_batches: int | None = None,
                 per_example: bool = False) -> dict[str, Any]:
        """Measure accuracy and mean cross-entropy of ``model`` on a split.

        The model is switched to eval mode (and left there); gradients are off.

        Args:
            model: the model to measure; it may live on any device.
            split: one of :data:`SPLITS`.
            max_batches: stop after this many batches of 128 (all when None).
            per_example: also return which examples were classified correctly (for bootstrap intervals
                and paired comparisons over the same images).

        Returns:
            ``{"acc": percent in [0, 100], "loss": mean cross-entropy, "n": examples seen}``, plus
            ``"correct"`` (a bool numpy array in split order) with ``per_example``.

        Raises:
            ValueError: for an unknown split or a non-positive ``max_batches``.
        """
        self._check_split(split)
        if max_batches is not None and max_batches < 1:
            raise ValueError(f"max_batches must be >= 1 or None, got {max_batches}")
        device = _device_of(model)
        model.eval()
        hits, loss_sum, n = [], 0.0, 0
        with torch.no_grad():
            for i, (x, y) in enumerate(self.loader(split)):
                if max_batches is not None and i >= max_batches:
                    break
                x, y = x.to(device), y.to(device)
                logits = model(x)
                loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
                hits.append((logits.argmax(1) == y).cpu())
                n += len(y)
        correct = torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool)
        out = {"acc": 100.0 * int(correct.sum()) / max(n, 1), "loss": loss_sum / max(n, 1), "n": n}
        if per_example:
            out["correct"] = correct.numpy()
        return out

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
        update_bn(itertools.islice(self.loader("calibration", batch_size), batches), model, _device_of(model))
        return model.eval()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed})"


def random_shift(x: torch.Tensor, pad: int, generator: torch.Generator, fill: float = 0.0) -> torch.Tensor:
    """Randomly crop each image of a batch from a copy padded by ``pad`` pixels on every side.

    Args:
        x: a ``(B, C, H, W)`` batch.
        pad: maximum shift in pixels.
        generator: the only source of randomness.
        fill: value of the padded border.

    Returns:
        A batch of the same shape.
    """
    if pad <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), value=fill)
    top = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    left = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    rows = (top[:, None] + torch.arange(h))[:, :, None]  # (B, H, 1)
    cols = (left[:, None] + torch.arange(w))[:, None, :]  # (B, 1, W)
    batch = torch.arange(b)[:, None, None]
    # Index a channels-last view with broadcast (B, H, W) grids: one gather instead of a loop over images.
    shifted = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
    # Copy into fresh NCHW strides: with C == 1, `.contiguous()` keeps the permuted strides (size-1 dims
    # count as contiguous), and the CPU conv backward of a pruned net segfaults on them (torch 2.13).
    return torch.empty(shifted.shape, dtype=shifted.dtype).copy_(shifted)


def _cosine_factor(step: int, steps: int) -> float:
    """Cosine decay from 1 at ``step`` 0 to 0 at ``steps`` (a span below 1 counts as 1)."""
    return 0.5 * (1 + math.cos(math.pi * step / max(1, steps)))


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


__all__ = ["SPLITS", "BatchLoader", "Task", "TrainConfig", "cache_dir", "random_shift"]
