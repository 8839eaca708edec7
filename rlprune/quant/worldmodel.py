"""The bits world model: measured (bit vector -> accuracy drop) samples and a small net that predicts them.

Samples are generated in-process (no Ray): each bit vector fake-quantizes the fp32 model
(``rlprune.quant.fake.wrap``, no fine-tune) and the drop is the calibration accuracy of the fp32 model minus
that of the quantized one, in points. Vectors are drawn per row from a random band ``lo..hi`` of widths, so a
sample set covers near-uniform vectors at every level as well as mixed ones.

The model (:class:`BitsWorldModel`) is a two-layer MLP on the layers' *noise powers* ``4 ** -(b_l - 2)``
(one more bit quarters the rounding noise, so the drop is closer to smooth in these than in ``b``); its
output is the drop in points. It is small enough to train in a second on a CPU and to sit inside every env
copy; :meth:`BitsWorldModel.state` is a JSON-able dict that env configs carry.

:class:`BitsSPN` is the other choice: the pruning SPN's own transformer (``rlprune.spn``), one token per
quantizable layer (its ``QuantSpace.features()``) carrying that layer's noise power where a pruning token
carries its ratio; an ensemble, trained with the SPN's early stopping. Both have the same interface
(``fit``, ``predict``, ``fidelity``, ``state``; :func:`world_model_from_state` rebuilds either), and both are
measured on held-out samples like the SPN: Spearman's rank correlation and the mean absolute error in points.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from rlprune.errors import ConfigError
from rlprune.measure.ranking import spearman
from rlprune.quant.fake import wrap
from rlprune.quant.size import LAYER_FEATURES, MAX_BITS, MIN_BITS, QuantSpace

_SCALE = 100.0  # drops are in points; the net works in fractions
REFINE_WEIGHT = 8
"""How many times an online round's fresh sample counts in the MLP's warm refit (the SPN's fine-tune draws
half of every minibatch from them instead)."""


def random_bits(space: QuantSpace, n: int, seed: int = 0) -> np.ndarray:
    """``n`` random bit vectors, each drawn uniformly from a random band ``lo..hi`` within 2..8.

    Args:
        space: the model's quantizable layers.
        n: how many vectors.
        seed: seeds the draw.

    Returns:
        An int64 array of shape ``(n, n_layers)``.
    """
    rng = np.random.default_rng(seed)
    ends = np.sort(rng.integers(MIN_BITS, MAX_BITS + 1, size=(n, 2)), axis=1)
    return rng.integers(ends[:, :1], ends[:, 1:] + 1, size=(n, space.n_layers)).astype(np.int64)


def measure_drops(task, model: nn.Module, B, split: str = "calibration", max_batches: int | None = None) -> np.ndarray:
    """The real accuracy drop (points) of each bit vector, post-training (no fine-tune).

    Args:
        task: an ``rlprune.tasks.Task``.
        model: the fp32 (pruned or base) model; not modified.
        B: ``(N, n_layers)`` bit vectors.
        split: the split measured (calibration: what a search may look at).
        max_batches: evaluate only this many batches of 128 (None: all).

    Returns:
        A float64 array of shape ``(N,)``: fp32 accuracy minus quantized accuracy.

    Raises:
        ConfigError: a bad bit vector.
    """
    ref = task.evaluate(model, split, max_batches=max_batches)["acc"]
    return np.array([ref - task.evaluate(wrap(model, row), split, max_batches=max_batches)["acc"]
                     for row in np.asarray(B)], dtype=np.float64)


def noise_features(B) -> np.ndarray:
    """The net's input: ``4 ** -(b - 2)`` per layer (1 at 2 bits, about 2e-4 at 8 bits), float32."""
    return (4.0 ** -(np.asarray(B, dtype=np.float64) - MIN_BITS)).astype(np.float32)


class _BitsModel:
    """What both bits world models share: input checks, held-out fidelity and rebuilding from ``state()``."""

    n_layers: int

    def fidelity(self, B, drops) -> dict:
        """How well the model ranks and predicts held-out samples (:func:`heldout_fidelity`)."""
        return heldout_fidelity(self, B, drops)

    def refined(self, B_new, drops_new, B_old, drops_old, seed: int = 0):
        """A copy taught a few fresh real samples, the older ones replayed so it does not forget them (an
        online round's update; this model is left as it was).

        Args:
            B_new, drops_new: the fresh samples (bit vectors and measured drops).
            B_old, drops_old: every sample it learnt before.
            seed: seeds the update's minibatches.

        Returns:
            The refined copy, of this class.

        Raises:
            ConfigError: shapes that do not match or NaN drops.
        """
        B_new, y_new = self._checked(B_new, drops_new, min_n=1)
        B_old, y_old = self._checked(B_old, drops_old, min_n=0) if len(drops_old) else (B_new[:0], y_new[:0])
        return self._refined(B_new, y_new, B_old, y_old, seed)

    def _refined(self, B_new, y_new, B_old, y_old, seed: int):
        raise NotImplementedError

    @classmethod
    def from_state(cls, state):
        """Rebuild from ``state()`` (a model of this class is returned as is).

        Raises:
            ConfigError: a malformed state.
        """
        if isinstance(state, cls):
            return state
        from rlprune.errors import CheckpointError

        try:
            return cls._restore(state)
        except (KeyError, TypeError, ValueError, RuntimeError, CheckpointError) as e:
            raise ConfigError(f"not a {cls.__name__} state ({type(e).__name__}); pass {cls.__name__}.state()") from e

    @classmethod
    def _restore(cls, state):
        raise NotImplementedError

    def _checked(self, B, drops, min_n: int) -> tuple[np.ndarray, np.ndarray]:
        B = np.atleast_2d(np.asarray(B))
        y = np.asarray(drops, dtype=np.float64).reshape(-1)
        if B.shape != (y.size, self.n_layers) or y.size < min_n:
            raise ConfigError(f"need N >= {min_n} bit vectors of {self.n_layers} layers and N drops; got bits "
                              f"{B.shape} and {y.size} drops")
        if not np.isfinite(y).all():
            raise ConfigError("drops hold NaN/inf; measure them again")
        return B, y


class BitsWorldModel(_BitsModel):
    """Predicts the post-training accuracy drop (points) of bit vectors of one model.

    Args:
        n_layers: the model's quantizable layers.
        hidden: width of the two hidden layers.
        seed: seeds the weights' initialisation and nothing else.
    """

    def __init__(self, n_layers: int, hidden: int = 32, seed: int = 0) -> None:
        if not isinstance(n_layers, int) or n_layers < 1:
            raise ConfigError(f"n_layers={n_layers!r} must be a positive integer")
        if not isinstance(hidden, int) or hidden < 1:
            raise ConfigError(f"hidden={hidden!r} must be a positive integer, e.g. 32")
        self.n_layers, self.hidden, self.seed = n_layers, hidden, seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Linear(n_layers, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                     nn.Linear(hidden, 1))

    def fit(self, B, drops, steps: int = 1500, lr: float = 1e-2, weight_decay: float = 1e-4) -> BitsWorldModel:
        """Train on measured samples (full batch Adam on the squared error; deterministic).

        Args:
            B: ``(N, n_layers)`` bit vectors.
            drops: their measured drops (points).
            steps: Adam steps.
            lr, weight_decay: Adam settings.

        Returns:
            ``self``.

        Raises:
            ConfigError: shapes that do not match, fewer than 2 samples, or NaN drops.
        """
        x, y = self._xy(B, drops)
        opt = torch.optim.Adam(self.net.parameters(), lr=lr, weight_decay=weight_decay)
        self.net.train()
        for _ in range(steps):
            loss = ((self.net(x).squeeze(1) - y) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        self.net.eval()
        return self

    def _refined(self, B_new, y_new, B_old, y_old, seed: int) -> BitsWorldModel:
        # Full batch, every sample, the fresh ones counted REFINE_WEIGHT times: a warm start, fewer steps.
        copy = type(self)._restore(self.state())
        reps = np.repeat(np.arange(len(y_new)), REFINE_WEIGHT)
        return copy.fit(np.vstack([B_old, B_new[reps]]), np.concatenate([y_old, y_new[reps]]), steps=300, lr=3e-3)

    def predict(self, B) -> np.ndarray:
        """Predicted drops (points) of an ``(N, n_layers)`` bit matrix (or one vector), float64 ``(N,)``."""
        B = np.atleast_2d(np.asarray(B))
        if B.shape[1] != self.n_layers:
            raise ConfigError(f"bit matrix has {B.shape[1]} columns; this world model has {self.n_layers} layers")
        with torch.no_grad():
            return self.net(torch.from_numpy(noise_features(B))).squeeze(1).double().numpy() * _SCALE

    def state(self) -> dict:
        """A JSON-able snapshot (:meth:`from_state` inverts it; env configs carry it)."""
        return {"kind": "mlp", "n_layers": self.n_layers, "hidden": self.hidden, "seed": self.seed,
                "weights": {k: v.tolist() for k, v in self.net.state_dict().items()}}

    @classmethod
    def _restore(cls, state) -> BitsWorldModel:
        wm = cls(int(state["n_layers"]), int(state["hidden"]), int(state["seed"]))
        wm.net.load_state_dict({k: torch.tensor(v, dtype=torch.float32) for k, v in state["weights"].items()})
        wm.net.eval()
        return wm

    def _xy(self, B, drops) -> tuple[torch.Tensor, torch.Tensor]:
        B, y = self._checked(B, drops, min_n=2)
        return torch.from_numpy(noise_features(B)), torch.from_numpy((y / _SCALE).astype(np.float32))


def heldout_fidelity(world_model, B, drops) -> dict:
    """How well a bits world model ranks and predicts held-out samples.

    Args:
        world_model: a :class:`BitsWorldModel` or :class:`BitsSPN`.
        B: ``(N, n_layers)`` bit vectors it was not trained on.
        drops: their measured drops (points).

    Returns:
        ``{"spearman": rho, "mae": mean |predicted - measured| in points, "n": samples}``.
    """
    y = np.asarray(drops, dtype=np.float64)
    pred = world_model.predict(B)
    return {"spearman": spearman(pred, y), "mae": float(np.abs(pred - y).mean()), "n": int(y.size)}


class BitsSPN(_BitsModel):
    """The SPN family's transformer as a bits world model: predicts post-training drops (points).

    Args:
        space: the model's quantizable layers (their features are the tokens).
        seed: seeds the split for early stopping, the initialisation and the minibatches.
        max_steps: upper bound on optimiser steps (early stopping usually ends sooner).
    """

    FINGERPRINT = "bits"
    """The one model it knows, inside its SPN (a bits world model describes one fp32 model)."""

    def __init__(self, space: QuantSpace, seed: int = 0, max_steps: int = 2000) -> None:
        if not isinstance(max_steps, int) or max_steps < 1:
            raise ConfigError(f"max_steps={max_steps!r} must be a positive integer, e.g. 2000")
        self.space, self.seed, self.max_steps = space, seed, max_steps
        self.n_layers = space.n_layers
        self.spn = None

    def fit(self, B, drops) -> BitsSPN:
        """Train on measured samples (at least 8; deterministic for a seed).

        Returns:
            ``self``.

        Raises:
            ConfigError: shapes that do not match, fewer than 8 samples, or NaN drops.
        """
        from rlprune.spn.train import FitConfig, fit

        B, y = self._checked(B, drops, min_n=8)
        spaces = {self.FINGERPRINT: {"features": self.space.features(), "feature_names": list(LAYER_FEATURES)}}
        self.spn = fit("transformer", self._frame(B, y), spaces, FitConfig(max_steps=self.max_steps, seed=self.seed))
        return self

    def _refined(self, B_new, y_new, B_old, y_old, seed: int) -> BitsSPN:
        from rlprune.spn.train import finetune

        if self.spn is None:
            raise ConfigError("this BitsSPN is not trained; call fit(B, drops) first")
        copy = type(self)(self.space, self.seed, self.max_steps)
        # The pruning world model's update: half of every minibatch fresh rows, half replayed ones.
        copy.spn = finetune(self.spn, self._frame(B_new, y_new), self._frame(B_old, y_old), steps=100, seed=seed)
        return copy

    def _frame(self, B, y):
        import pandas as pd

        # No loss was measured for bits samples: a NaN loss teaches the SPN acc_drop alone.
        return pd.DataFrame({"ratios": list(noise_features(B)), "acc_drop": y, "loss": math.nan,
                             "model_fingerprint": self.FINGERPRINT})

    def predict(self, B) -> np.ndarray:
        """Predicted drops (points) of an ``(N, n_layers)`` bit matrix (or one vector), float64 ``(N,)``.

        Raises:
            ConfigError: the model is not trained, or a matrix of the wrong width.
        """
        if self.spn is None:
            raise ConfigError("this BitsSPN is not trained; call fit(B, drops) first")
        B = np.atleast_2d(np.asarray(B))
        if B.shape[1] != self.n_layers:
            raise ConfigError(f"bit matrix has {B.shape[1]} columns; this world model has {self.n_layers} layers")
        return self.spn.predict(noise_features(B), self.FINGERPRINT)[0].astype(np.float64)

    def state(self) -> dict:
        """A snapshot env configs carry (tensors and plain values; :meth:`from_state` inverts it)."""
        if self.spn is None:
            raise ConfigError("this BitsSPN is not trained; call fit(B, drops) first")
        return {"kind": "spn", "n_layers": self.n_layers, "space": self.space.to_record(), "seed": self.seed,
                "max_steps": self.max_steps, "spn": self.spn.state()}

    @classmethod
    def _restore(cls, state) -> BitsSPN:
        from rlprune.spn.predictor import SPN

        wm = cls(QuantSpace.from_record(state["space"]), int(state["seed"]), int(state["max_steps"]))
        wm.spn = SPN.from_state(state["spn"])
        return wm


BitsModel = BitsSPN | BitsWorldModel
"""Either bits world model (the searches only call ``predict`` and ``state``)."""

WORLD_MODELS = ("spn", "mlp")
"""``rlprune quantize --world-model``: :class:`BitsSPN` or :class:`BitsWorldModel`."""


def make_world_model(kind: str, space: QuantSpace, seed: int = 0):
    """An untrained bits world model of ``kind`` (:data:`WORLD_MODELS`).

    Raises:
        ConfigError: an unknown kind.
    """
    if kind == "spn":
        return BitsSPN(space, seed=seed)
    if kind == "mlp":
        return BitsWorldModel(space.n_layers, seed=seed)
    raise ConfigError(f"world model {kind!r} is unknown; use one of {', '.join(WORLD_MODELS)}")


def world_model_from_state(state):
    """Rebuild a :class:`BitsSPN` or a :class:`BitsWorldModel` from its ``state()`` (or return a model as is).

    Raises:
        ConfigError: a malformed state.
    """
    if isinstance(state, BitsSPN | BitsWorldModel):
        return state
    if isinstance(state, dict) and state.get("kind") == "spn":
        return BitsSPN.from_state(state)
    return BitsWorldModel.from_state(state)  # states written before ``kind`` existed are the MLP's


__all__ = ["WORLD_MODELS", "BitsModel", "BitsSPN", "BitsWorldModel", "heldout_fidelity", "make_world_model",
           "measure_drops", "noise_features", "random_bits", "world_model_from_state"]
