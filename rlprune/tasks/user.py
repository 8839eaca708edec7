"""Bring your own trained model, data and metric: :func:`make_task`.

You have a trained ``nn.Module`` (or a function that builds it and a ``state_dict`` file), your data as
torch ``Dataset`` objects, and the number you care about. That is a task::

    task = rlprune.make_task(MyNet, {"train": tr, "calibration": cal, "validation": val, "test": te},
                             weights="my_net.pt", metric=my_f1, loss=my_loss)

Batches come from ``DataLoader``s over your datasets (nothing is copied whole into memory). Evaluation reads a
split in order, so a search's calibration subset (the first ``eval_batches`` batches) is the same fixed list of
examples for every sample of a run. The metric is ``metric(model, loader) -> float`` (higher is better, in
points), or a 1-D array of per-example scores in points whose mean is the metric (bool or 0/1 outcomes are
read as right/wrong, and the metric is their percentage): per-example scores give every result a bootstrap
interval and every comparison a paired one; a plain number gets neither.

Ray trials rebuild a task in their own process, so the pipeline and the CLI name the pieces by import spec
(``"package.module:name"``) through :func:`task_from_specs` (``get_task("user", model=..., ...)``); only the
specs travel to the trials.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from rlprune.errors import ConfigError, DataError
from rlprune.measure.stats import metric_points
from rlprune.tasks.base import SPLITS, Task

Metric = Callable[[nn.Module, Any], Any]
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class UserTask(Task):
    """A task made of a user's trained model, datasets, metric and loss (build it with :func:`make_task`)."""

    description = "your own trained model, datasets and metric (rlprune.make_task / --model --weights --data)"

    def __init__(self, build: Callable[[], nn.Module], state,
                 datasets: dict[str, Dataset], example: torch.Tensor, *, name: str, metric: Metric | None,
                 metric_name: str, loss: Loss | None, batch_size: int, seed: int):
        super().__init__(seed)
        self._build, self._state, self._datasets = build, state, datasets
        self._example, self._metric, self._loss = example, metric, loss
        self.name, self.metric_name, self.batch_size = name, metric_name, batch_size
        self.input_shape = tuple(example.shape[1:])
        self.base_model_source = None if callable(state) else "given"

    # ----- what a trained task computes, given here
    def build_model(self) -> nn.Module:
        return self._build()

    @property
    def train_config(self):
        raise ConfigError(f"task {self.name!r} was given its trained weights; rlprune does not train it")

    def _load_base_state(self) -> dict[str, torch.Tensor]:
        if callable(self._state):  # weights made on first use (a built-in task trains or loads its cache)
            state = _weights(self._state(), None)
            _load_strict(self._build(), state)
            self._state = state
        return self._state

    def _split_tensors(self, split: str):
        raise ConfigError(f"task {self.name!r} streams its splits from datasets; use task.loader({split!r})")

    @property
    def finetune_batch_size(self) -> int:
        return self.batch_size

    def example_input(self) -> torch.Tensor:
        return self._example.clone()

    # ----- data, metric, loss
    def loader(self, split: str, batch_size: int | None = None, shuffle: bool = False,
               augment: bool = False, seed: int | None = None) -> DataLoader:
        """A ``DataLoader`` over one split (``augment`` is the dataset's own business and is ignored).

        Shuffling draws from a generator seeded by ``seed`` (None: the task seed), so fine-tunes are reproducible.
        """
        self._check_split(split)
        bs = self.batch_size if batch_size is None else batch_size
        if bs < 1:
            raise ValueError(f"batch_size must be >= 1, got {bs}")
        gen = torch.Generator().manual_seed(self.seed if seed is None else seed) if shuffle else None
        return DataLoader(self._datasets[split], batch_size=bs, shuffle=shuffle, generator=gen, num_workers=0)

    def loss(self, outputs, targets):
        return self._loss(outputs, targets) if self._loss is not None else super().loss(outputs, targets)

    def _score(self, model: nn.Module, batches) -> dict[str, Any]:
        if self._metric is None:
            return super()._score(model, batches)
        device = next(model.parameters()).device
        loss_sum, n = 0.0, 0
        for x, y in batches:  # the loss the SPN also learns: one pass of its own
            loss_sum += float(self.loss(model(x.to(device)), y.to(device))) * len(y)
            n += len(y)
        value = self._metric(model, batches)
        out = {"loss": loss_sum / max(n, 1), "n": n}
        arr = np.asarray(value.detach().cpu() if torch.is_tensor(value) else value, dtype=object)
        if arr.ndim == 1:
            scores = _finite_array(arr, self._metric, n)
            out.update(acc=metric_points(scores), correct=scores)
        else:
            out["acc"] = _finite_number(value, self._metric)
        return out

    def __repr__(self) -> str:
        return f"UserTask(name={self.name!r}, metric={self.metric_name!r}, seed={self.seed})"


def make_task(model: nn.Module | Callable[[], nn.Module], datasets, *, weights=None, metric: Metric | None = None,
              loss: Loss | None = None, example_input: torch.Tensor | None = None, batch_size: int = 128,
              name: str | None = None, metric_name: str | None = None, seed: int = 0) -> UserTask:
    """A task from your trained model, your datasets and (optionally) your metric and loss.

    Args:
        model: the trained ``nn.Module``, or a callable building the (untrained) module that ``weights`` fit.
        datasets: ``{"train", "calibration", "validation", "test"}`` -> torch ``Dataset`` of ``(input,
            target)`` items, or a callable returning that dict. train: fine-tuning; calibration: BN statistics
            and every search-time score; validation: every choice; test: the final table only.
        weights: a ``state_dict``, or a file holding one (``torch.save(model.state_dict(), path)``), or a
            callable returning one on first use (how built-in tasks train or load their cached weights); None
            uses ``model``'s own weights (a module must be given then).
        metric: ``metric(model, loader) -> float`` in points, higher is better, or a 1-D array of per-example
            scores (its mean); default top-1 accuracy.
        loss: ``loss(outputs, targets) -> scalar tensor`` for fine-tuning; default cross-entropy.
        example_input: one batch-of-1 input for tracing; default the first train item with a batch dimension.
        batch_size: examples per batch for evaluation and fine-tuning.
        name: the task's name in samples and reports (default ``user-<model class>``).
        metric_name: the metric's name in reports (default the function's name, or ``accuracy``).
        seed: seeds fine-tuning's shuffling.

    Returns:
        A :class:`UserTask`, accepted wherever rlprune takes a task.

    Raises:
        ConfigError: weights that do not fit the model (first missing/unexpected keys and shape mismatches
            named), items that are not ``(input, target)``, an input the model cannot run, a missing split, a
            non-positive batch size, a metric or loss that is not callable.
        DataError: a weights file that does not exist.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} is invalid; use a positive integer such as 128")
    for what, fn in (("metric", metric), ("loss", loss)):
        if fn is not None and not callable(fn):
            raise ConfigError(f"{what}={fn!r} is not callable; pass a function like {what}(outputs, targets)")
    build = _builder(model)
    lazy = callable(weights) and not isinstance(weights, (Mapping, str, os.PathLike))
    state = weights if lazy else _weights(weights, model)
    data = _datasets(datasets() if callable(datasets) and not isinstance(datasets, Mapping) else datasets)
    example = example_input if example_input is not None else _first_input(data["train"]).unsqueeze(0)
    net = build()
    if not lazy:
        _load_strict(net, state)
    try:
        with torch.no_grad():
            net.eval()(example)
    except Exception as e:  # noqa: BLE001 - any failure here is the user's shapes, said once, clearly
        raise ConfigError(f"the model cannot run an input of shape {tuple(example.shape)} ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200]}); pass example_input / --input-shape matching the "
                          f"model, or datasets whose inputs it takes") from e
    label = metric_name or (getattr(metric, "__name__", "metric") if metric is not None else "accuracy")
    return UserTask(build, state, data, example, name=name or f"user-{type(net).__name__.lower()}",
                    metric=metric, metric_name=label, loss=loss, batch_size=batch_size, seed=seed)


def task_from_specs(model: str, data: str, weights: str | None = None, metric: str | None = None,
                    loss: str | None = None, input_shape=None, batch_size: int = 128, seed: int = 0,
                    name: str | None = None) -> UserTask:
    """:func:`make_task` from import specs (``"package.module:name"``), as the CLI and Ray trials build it.

    Args:
        model: spec of a callable building the model (or of a module instance).
        data: spec of a callable returning the datasets dict.
        weights: ``state_dict`` file.
        metric, loss: specs of the metric and loss functions.
        input_shape: ``(C, H, W)`` (or a "C,H,W" string) of one example; default from the train split.
        batch_size, seed, name: as :func:`make_task`.

    Raises:
        ConfigError: a spec that does not import, and everything :func:`make_task` raises.
    """
    from rlprune.tasks import load_callable

    example = None
    if input_shape is not None:
        shape = [int(v) for v in (input_shape.split(",") if isinstance(input_shape, str) else input_shape)]
        if not shape or min(shape) < 1:
            raise ConfigError(f"input shape {input_shape!r} is invalid; pass C,H,W such as 3,32,32")
        example = torch.zeros(1, *shape)
    return make_task(load_callable(model), load_callable(data), weights=weights,
                     metric=load_callable(metric) if metric else None, loss=load_callable(loss) if loss else None,
                     example_input=example, batch_size=batch_size, seed=seed, name=name)


# ====================================================================== checks
def _builder(model) -> Callable[[], nn.Module]:
    if isinstance(model, nn.Module):
        frozen = copy.deepcopy(model).cpu()
        return lambda: copy.deepcopy(frozen)
    if callable(model):
        def build():
            net = model()
            if not isinstance(net, nn.Module):
                raise ConfigError(f"the model factory {getattr(model, '__name__', model)!r} returned a "
                                  f"{type(net).__name__}, not a torch nn.Module")
            return net
        return build
    raise ConfigError(f"model={model!r} is neither an nn.Module nor a callable building one")


def _weights(weights, model) -> dict[str, torch.Tensor]:
    if weights is None:
        if not isinstance(model, nn.Module):
            raise ConfigError("a model factory needs weights: pass weights= (a state_dict or its file) or --weights")
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if isinstance(weights, (str, os.PathLike)):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise DataError(f"weights file {path} does not exist; save it with "
                            f"torch.save(model.state_dict(), {str(path)!r})")
        try:
            weights = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - unreadable is unreadable, whatever torch raised
            raise ConfigError(f"weights file {path} is not a readable state_dict ({type(e).__name__}); save it "
                              f"with torch.save(model.state_dict(), path)") from e
        if isinstance(weights, dict) and isinstance(weights.get("state_dict"), dict):
            weights = weights["state_dict"]  # a checkpoint that wraps its state_dict, as trainers often write
    if not isinstance(weights, Mapping) or not all(torch.is_tensor(v) for v in weights.values()):
        raise ConfigError("weights must be a state_dict (names -> tensors), e.g. model.state_dict()")
    return {k: v.detach().cpu() for k, v in weights.items()}


def _load_strict(net: nn.Module, state: dict) -> None:
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: weights {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"missing {missing[:3]}" if missing else "", f"unexpected {unexpected[:3]}" if unexpected else "",
                 f"shape mismatches {shapes[:3]}" if shapes else ""]
        raise ConfigError(f"the weights do not fit the model ({'; '.join(p for p in parts if p)}); pass the "
                          f"state_dict saved from this architecture")
    net.load_state_dict(state)


def _datasets(data) -> dict[str, Dataset]:
    if not isinstance(data, Mapping):
        raise ConfigError(f"datasets must be a dict of the splits {', '.join(SPLITS)} (or a callable returning "
                          f"one), got {type(data).__name__}")
    missing = [s for s in SPLITS if s not in data]
    if missing:
        raise ConfigError(f"datasets lack the split(s) {', '.join(missing)}; give all of {', '.join(SPLITS)} "
                          f"(calibration scores every search-time sample, validation chooses, test reports)")
    extra = sorted(set(data) - set(SPLITS))
    if extra:
        raise ConfigError(f"datasets has unknown split(s) {', '.join(map(str, extra))}; use {', '.join(SPLITS)}")
    for split in SPLITS:
        if len(data[split]) < 1:
            raise ConfigError(f"the {split} dataset is empty; give it at least one (input, target) item")
        _first_input(data[split], split)
    return dict(data)


def _first_input(ds, split: str = "train") -> torch.Tensor:
    item = ds[0]
    if not isinstance(item, (tuple, list)) or len(item) != 2 or not torch.is_tensor(item[0]):
        raise ConfigError(f"the {split} dataset's items must be (input tensor, target) pairs; item 0 is a "
                          f"{type(item).__name__}{'' if not isinstance(item, (tuple, list)) else f' of {len(item)}'}")
    return item[0]


def _finite_number(value, metric) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
        kind = type(value).__name__
    else:
        kind = repr(value)
    if not math.isfinite(v):
        raise ConfigError(f"the metric {getattr(metric, '__name__', metric)!r} returned {kind}; it must return a "
                          f"finite number (points, higher is better) or a 1-D array of per-example scores")
    return v


def _finite_array(arr: np.ndarray, metric, n: int) -> np.ndarray:
    try:
        scores = np.asarray(arr.tolist())
        if scores.dtype != bool:
            scores = scores.astype(np.float64)
    except (TypeError, ValueError):
        scores = None
    if scores is None or (scores.dtype != bool and not np.isfinite(scores).all()) or len(scores) != n:
        raise ConfigError(f"the metric {getattr(metric, '__name__', metric)!r} returned per-example scores that "
                          f"are not {n} finite numbers (one per example of the split); return one score per "
                          f"example, or one finite number")
    return scores


task_from_specs.description = (  # type: ignore[attr-defined]
    "your own trained model: --model pkg.mod:build --weights FILE --data pkg.mod:datasets [--metric --loss]")

__all__ = ["UserTask", "make_task", "task_from_specs"]
