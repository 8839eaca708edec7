"""Training a base model once and caching it: the recipe, the SGD loop, and the on-disk cache.

Built-in tasks train their own base model (a user's task brings trained weights). The loop is plain SGD with
momentum, a closed-form warmup + cosine schedule, seeded shuffling and augmentation, so a given task, seed
and recipe always give the same weights. The weights are cached under ``$RLPRUNE_CACHE`` (default
``~/.cache/rlprune``); a file's name carries a key hashing everything that changes the weights (the task
computes it), so a stale file is never loaded, and a file that cannot be read is retrained with a warning.
Parallel workers asking for the same model wait on a file lock for the first one to train it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import io
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from filelock import FileLock
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from tqdm import tqdm

from rlprune.io import atomic_write_bytes

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
"""Bump to invalidate every cached base model (e.g. after changing :func:`train`)."""

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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
    """Iterates ``(x, y)`` minibatches of in-memory tensors, preprocessing each batch on the fly.

    Slicing whole tensors is far cheaper than ``DataLoader``'s per-example collation for data that fits in
    memory, which all built-in tasks' does. A shuffling loader draws a new permutation on every pass from its
    own seeded generator, so a sequence of passes is reproducible without touching the global RNG.

    Args:
        x, y: the split's raw inputs and targets.
        batch_size: examples per batch (the last may be smaller).
        shuffle: a new permutation each pass.
        seed: seeds the permutations and the augmentation.
        transform: raw batch -> model input (e.g. uint8 -> normalised float); None keeps it.
        augment: ``(batch, generator) -> batch`` applied after ``transform``; None for none.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool, seed: int,
                 transform: Callable | None = None, augment: Callable | None = None) -> None:
        self.x, self.y = x, y
        self.batch_size, self.shuffle = batch_size, shuffle
        self.transform, self.augment = transform, augment
        self.generator = torch.Generator().manual_seed(seed)

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
            if self.transform is not None:
                x = self.transform(x)
            if self.augment is not None:
                x = self.augment(x, self.generator)
            yield x, y


def train(model: nn.Module, loader, cfg: TrainConfig, seed: int, loss: Loss, desc: str,
          resume: Path | None = None) -> nn.Module:
    """Train ``model`` in place with ``cfg`` on a shuffling, augmenting train ``loader``; deterministic.

    Args:
        model: the freshly initialised model (any device).
        loader: re-iterable ``(x, y)`` batches with ``len()``; each pass is one epoch.
        cfg: the recipe.
        seed: seeds anything the model draws (dropout); the loader has its own generator.
        loss: ``loss(outputs, targets)``.
        desc: the progress bar's label.
        resume: where to keep an end-of-epoch snapshot (see :func:`sgd_steps`); None keeps none.

    Returns:
        The model, in eval mode.
    """
    total = cfg.epochs * len(loader)
    warmup = round(cfg.warmup_epochs * len(loader))

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return cosine_factor(step - warmup, total - warmup)

    # fork_rng keeps the caller's global RNG untouched while seeding anything the model draws.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sgd_steps(model, loader, total, cfg.lr, lr_factor, cfg.momentum, cfg.weight_decay, loss, desc,
                  resume=resume)
    return model.eval()


def sgd_steps(model: nn.Module, loader: Iterable, steps: int, lr: float, lr_factor: Callable[[int], float],
              momentum: float, weight_decay: float, loss: Loss, desc: str, resume: Path | None = None) -> None:
    """``steps`` SGD steps over ``loader``'s batches (cycled, so each pass reshuffles), with a progress bar.

    With ``resume``, a snapshot of everything the remaining steps depend on (weights, optimiser, schedule, the
    loader's and torch's RNG states) is written there atomically after every pass over the loader, and a
    snapshot found there at the start is continued from: a killed training loses at most one epoch and ends
    with the weights an uninterrupted one would have had. The file is removed when the steps are done. Only
    loaders with a ``generator`` (like :class:`BatchLoader`) can be resumed exactly; others train without one.

    Args:
        model: trained in place (any device).
        loader: re-iterable ``(x, y)`` batches.
        steps: optimiser steps.
        lr, lr_factor: peak rate and the closed-form factor of step ``i``.
        momentum, weight_decay: SGD settings.
        loss: ``loss(outputs, targets)``.
        desc: the progress bar's label (the bar shows on a terminal only).
        resume: the snapshot file (see above), or None.
    """
    device = device_of(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    # LambdaLR with the closed-form factor, not LinearLR/CosineAnnealingLR: those update the rate
    # recursively, which drifts from the closed form by float ulps and changes the trained weights.
    schedule = LambdaLR(opt, lr_factor)
    generator = getattr(loader, "generator", None)
    snapshot = _Snapshot(resume, model, opt, schedule, generator) if resume and generator is not None else None
    first = snapshot.restore() if snapshot else 0
    model.train()
    batches = iter(loader)
    with tqdm(total=steps, initial=first, desc=desc, file=sys.stderr, disable=not sys.stderr.isatty(),
              leave=False) as bar:
        for step in range(first, steps):
            if snapshot and step > first and step % len(loader) == 0:
                snapshot.save(step)
            try:
                x, y = next(batches)
            except StopIteration:  # cycle through the split, reshuffling on every pass
                batches = iter(loader)
                x, y = next(batches)
            value = loss(model(x.to(device)), y.to(device))
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            schedule.step()
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{value.item():.3f}")
    if snapshot:
        snapshot.path.unlink(missing_ok=True)


class _Snapshot:
    """An end-of-epoch training snapshot: written atomically, restored exactly, refused when foreign."""

    def __init__(self, path: Path, model: nn.Module, opt, schedule, generator: torch.Generator) -> None:
        self.path, self.model, self.opt, self.schedule, self.generator = Path(path), model, opt, schedule, generator

    def save(self, step: int) -> None:
        buf = io.BytesIO()
        torch.save({"step": step, "model": self.model.state_dict(), "opt": self.opt.state_dict(),
                    "schedule": self.schedule.state_dict(), "generator": self.generator.get_state(),
                    "rng": torch.get_rng_state()}, buf)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path, buf.getvalue())

    def restore(self) -> int:
        """Load the snapshot if there is a usable one; returns the step to continue from (0 for none)."""
        if not self.path.is_file():
            return 0
        try:
            snap = torch.load(self.path, map_location=device_of(self.model), weights_only=True)
            self.model.load_state_dict(snap["model"])
            self.opt.load_state_dict(snap["opt"])
            self.schedule.load_state_dict(snap["schedule"])
            self.generator.set_state(snap["generator"])
            torch.set_rng_state(snap["rng"])
        except Exception as e:  # noqa: BLE001 - a torn or foreign snapshot means "start over", never a crash
            warnings.warn(f"training snapshot {self.path} is unusable ({type(e).__name__}); starting over",
                          RuntimeWarning, stacklevel=3)
            return 0
        logger.info("resuming training from step %d (%s)", snap["step"], self.path)
        return int(snap["step"])


def weights_key(model: nn.Module, code: Iterable[Callable], meta: dict, data: Iterable[tuple]) -> str:
    """The hash that names a base model's cache file: everything that changes its trained weights.

    Args:
        model: the freshly built model: the source of its non-torch module classes and its ``repr``.
        code: functions whose source shapes training beyond :func:`train` and :func:`sgd_steps` (always
            included): preprocessing, augmentation, the loss.
        meta: JSON-serialisable settings (task name, seed, recipe, architecture).
        data: ``(split, x, y)`` per split: shapes, dtypes and the labels are hashed.

    Returns:
        16 hex characters.
    """
    classes = sorted({type(m) for m in model.modules() if not type(m).__module__.startswith("torch.")},
                     key=lambda c: f"{c.__module__}.{c.__qualname__}")
    h = hashlib.sha256()
    for cls in classes:
        h.update(f"{cls.__module__}.{cls.__qualname__}\n".encode())
        h.update(inspect.getsource(cls).encode())
    h.update(repr(model).encode())
    # The training code itself: a fix to the recipe's implementation retrains instead of reusing weights.
    for fn in (train, sgd_steps, *code):
        try:
            h.update(inspect.getsource(fn).encode())
        except (OSError, TypeError):  # defined where no source is kept (an interactive session)
            h.update(fn.__qualname__.encode())
    h.update(json.dumps({"version": CACHE_VERSION, **meta}, sort_keys=True).encode())
    for split, x, y in data:
        h.update(f"{split}:{tuple(x.shape)}:{x.dtype}".encode())
        h.update(torch.as_tensor(y).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def committed_dir() -> Path:
    """Where committed base checkpoints live: ``$RLPRUNE_CHECKPOINTS``, else ``checkpoints/`` of the source tree."""
    env = os.environ.get("RLPRUNE_CHECKPOINTS")
    return Path(env).expanduser() if env else Path(__file__).resolve().parents[2] / "checkpoints"


def cached_state(path: Path, build: Callable[[], nn.Module], fit: Callable[[nn.Module, Path], nn.Module],
                 meta: dict) -> tuple[dict[str, torch.Tensor], str]:
    """The trained weights at ``path``, or trained now with ``fit`` and written there atomically.

    A committed checkpoint of the same name (:func:`committed_dir`, the same key, so the same model, recipe,
    code and data) is used first: benchmark machines load it instead of retraining.

    Args:
        path: the cache file (its name carries the key).
        build: returns the freshly initialised model (seeded by the caller).
        fit: ``fit(model, snapshot)`` trains that model in place, keeping an end-of-epoch snapshot at
            ``snapshot`` (next to ``path``) so a killed training resumes there (see :func:`sgd_steps`).
        meta: stored with the weights (task name, seed).

    Returns:
        ``(state_dict, source)`` with ``source`` ``"committed"``, ``"cache"`` or ``"trained"``.
    """
    committed = committed_dir() / path.name
    state = _load(committed, build) if committed.is_file() else None
    if state is not None:
        return state, "committed"
    state = _load(path, build)
    if state is not None:
        return state, "cache"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_name(path.name + ".lock")):
        state = _load(path, build, warn=False)
        if state is not None:
            return state, "cache"
        model = build()
        started = time.perf_counter()
        # Train on a GPU when there is one; the cached weights are always CPU tensors.
        fit(model.to("cuda" if torch.cuda.is_available() else "cpu"), path.with_name(path.name + ".partial"))
        model.cpu()
        logger.info("trained %s in %.1f s", meta.get("task", "a base model"), time.perf_counter() - started)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        buf = io.BytesIO()
        torch.save({"state_dict": state, **meta, "key": path.stem}, buf)
        # Atomic: readers (e.g. parallel sample workers) see no file or a complete one, never a partial write.
        atomic_write_bytes(path, buf.getvalue())
        return state, "trained"


def _load(path: Path, build: Callable[[], nn.Module], warn: bool = True) -> dict[str, torch.Tensor] | None:
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        build().load_state_dict(state)  # strict: catches a truncated or foreign file
    except Exception as e:  # noqa: BLE001 - any unreadable cache means "retrain", never a crash
        if warn:
            reason = (str(e).strip().splitlines() or [""])[0][:200]
            warnings.warn(f"cached base model {path} is unreadable ({type(e).__name__}: {reason}); retraining it",
                          RuntimeWarning, stacklevel=3)
        return None
    logger.info("loaded base model from %s", path)
    return state


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
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), value=fill)
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


def cosine_factor(step: int, steps: int) -> float:
    """Cosine decay from 1 at ``step`` 0 to 0 at ``steps`` (a span below 1 counts as 1)."""
    return 0.5 * (1 + math.cos(math.pi * step / max(1, steps)))


def device_of(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (CPU for a model without parameters)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


__all__ = ["CACHE_VERSION", "BatchLoader", "TrainConfig", "cache_dir", "cached_state", "committed_dir",
           "cosine_factor", "device_of", "random_shift", "sgd_steps", "train", "weights_key"]
