"""State predictor network (SPN): a pruned model's accuracy drop, predicted from its groups and ratios.

The SPN replaces real evaluation during the search. Params and MACs are never predicted (the cost model
gives them exactly); the SPN predicts ``acc_drop`` (points) and ``loss`` after pruning + BN recalibration.

    spn = rlprune.spn.train.fit("transformer", df, spaces)   # train
    mean, std = spn.predict(R, fingerprint)                  # R: (N, n_groups) numpy -> acc_drop, points
    save_spn(spn, "spn.pt"); spn = load_spn("spn.pt")

Architectures (``rlprune.spn.nets``): ``transformer`` (default; one token per group, any group count,
several models in one batch), ``mlp`` (the published SPN: one model's fixed ratio vector) and ``linear``
(ridge on ratios and their squares: the floor). Each is an ensemble of ``members`` independently
initialised nets whose spread is the prediction's ``std``.

Fidelity. A label is measured after ``label_steps`` = k fine-tune steps (``MeasureSpec``); an SPN records the
k it was trained on (:attr:`SPN.fidelities`; ``[0]`` for checkpoints written before fidelities existed,
whose labels were all k = 0). A single-fidelity SPN predicts its own k only. A multi-fidelity SPN
(``rlprune.spn.train.fit(..., multi_fidelity=True)``) learns rows of several k at once, k encoded as
``log1p(k) / log1p(k_max)`` in [0, 1] (the label moves most over the first steps, so a log scale spaces
0, 10, 25, 100 evenly enough), and predicts at any k from the lowest to the highest it was trained on; the
highest (the final recipe's, when its rows are in the store) by default. Outside that range it refuses
with a ConfigError rather than clamp: a clamped "final" prediction from cheaper labels would look like a
final one and is not.

Targets are standardised with the training mean/std; group features are centred and scaled with the
training statistics (std floored, so a feature constant in training cannot blow up on a new model).
Both are stored with the weights. This module imports torch and numpy only (no Ray, no torch-pruning), so
env workers can hold a copy (``rlprune.spn.local.LocalSPN``).
"""

from __future__ import annotations

import copy
import io
import json
import os
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rlprune.errors import CheckpointError, ConfigError
from rlprune.io import atomic_write_bytes
from rlprune.spn.nets import ARCHS, TARGETS, LinearNet, MLPNet, SPNConfig, TransformerNet, build_net, one_thread

CHECKPOINT_FORMAT = "rlprune-spn"
CHECKPOINT_VERSION = 2
"""1: single-fidelity SPNs (still written for them, so older rlprune keeps reading them); 2: an SPN with a
fidelity input, which an rlprune without one cannot run."""
DEFAULT_FIDELITIES = (0,)
"""What a checkpoint without ``fidelities`` was trained on: labels before ``label_steps`` existed had none."""
FEATURE_STD_FLOOR = 0.2
"""Features are designed to lie in [0, 1]; a floor keeps one that never varied in training (e.g.
``depthwise`` on ResNets) from being scaled by 1/1e-6 when a new model sets it."""


# ====================================================================== the SPN
class SPN:
    """A trained predictor: net + normalisation + the group features of every model it can score.

    Attributes:
        config: the ``SPNConfig``.
        net: the ensemble ``nn.Module`` (outputs normalised targets).
        feature_names: names of the feature columns (checked when a model is added).
        fingerprints: models it was trained on (a subset of ``known``).
        fidelities: the label fine-tune steps k it was trained on, ascending (one unless
            ``config.fidelity_input``).
        meta: JSON-serialisable notes (training metrics, sample ids, world-model version).

    Raises:
        ConfigError: ``fidelities`` empty, negative, or several for a net without a fidelity input.
    """

    def __init__(self, config: SPNConfig, feature_names, norm: dict, features: dict | None = None,
                 fingerprints=(), meta: dict | None = None, net: nn.Module | None = None, seed: int = 0,
                 fidelities=DEFAULT_FIDELITIES):
        self.fidelities = sorted({int(k) for k in fidelities})
        if not self.fidelities or self.fidelities[0] < 0:
            raise ConfigError(f"fidelities={list(fidelities)} must hold label fine-tune steps >= 0")
        if len(self.fidelities) > 1 and not config.fidelity_input:
            raise ConfigError(f"fidelities {self.fidelities} need SPNConfig(fidelity_input=True); a net without "
                              f"the input learns one fidelity")
        self.config = config
        self.feature_names = list(feature_names)
        self.norm = {k: np.asarray(v, dtype=np.float32) for k, v in norm.items()}
        self.net = net if net is not None else build_net(config, seed)
        self.net.eval()
        self.fingerprints = list(fingerprints)
        self.meta = dict(meta or {})
        self._features: dict[str, np.ndarray] = {}
        self._feat_t: dict[str, torch.Tensor] = {}
        for fp, f in (features or {}).items():
            self.add_model(fp, f)

    # ------------------------------------------------------------------ models
    @property
    def known(self) -> list[str]:
        """Fingerprints whose group features are registered (predictable)."""
        return list(self._features)

    def n_groups(self, fingerprint: str) -> int:
        """Number of groups of a registered model."""
        return self._require(fingerprint).shape[0]

    def add_model(self, fingerprint: str, features, feature_names=None) -> None:
        """Register a model's group features so the SPN can score it (zero-shot for a new model).

        Args:
            fingerprint: the samples' ``model_fingerprint`` (``rlprune.io.model_fingerprint`` of the model).
            features: ``(n_groups, n_features)`` matrix, ``PruningSpace.features()``.
            feature_names: if given, must equal the SPN's ``feature_names``.

        Raises:
            ConfigError: wrong shape, different feature names, or a group count ``mlp``/``linear``
                cannot take.
        """
        f = np.asarray(features, dtype=np.float32)
        if feature_names is not None and list(feature_names) != self.feature_names:
            raise ConfigError(f"model {fingerprint} has features {list(feature_names)} but this SPN was trained "
                              f"on {self.feature_names}; retrain the SPN with the current rlprune")
        if f.ndim != 2 or f.shape[1] != self.config.n_features or not np.isfinite(f).all():
            raise ConfigError(f"features of model {fingerprint} have shape {f.shape}; expected finite "
                              f"(n_groups, {self.config.n_features})")
        if self.config.arch != "transformer" and f.shape[0] != self.config.n_groups:
            raise ConfigError(f"a {self.config.arch} SPN takes exactly {self.config.n_groups} groups; model "
                              f"{fingerprint} has {f.shape[0]}: use the transformer SPN for other models")
        self._features[fingerprint] = f
        self._feat_t[fingerprint] = self.normalised_features(f)[None]

    def normalised_features(self, f) -> torch.Tensor:
        """Centre and scale raw features with the training statistics -> float32 tensor."""
        return torch.from_numpy((np.asarray(f, np.float32) - self.norm["feat_mean"]) / self.norm["feat_std"])

    def _require(self, fingerprint: str) -> np.ndarray:
        try:
            return self._features[fingerprint]
        except KeyError:
            raise ConfigError(f"the SPN knows no model {fingerprint!r} (known: {', '.join(self.known) or 'none'}); "
                              f"register it with spn.add_model(fingerprint, space.features())") from None

    def feature_table(self, fingerprints, n_groups: int) -> torch.Tensor:
        """``(len(fingerprints), n_groups, n_features)`` normalised features, zero-padded past each model's groups."""
        table = torch.zeros(len(fingerprints), n_groups, self.config.n_features)
        for i, fp in enumerate(fingerprints):
            f = self._feat_t.get(fp)
            if f is None:
                self._require(fp)
            table[i, : f.shape[1]] = f[0]
        return table

    # ------------------------------------------------------------------ fidelity
    @property
    def fidelity(self) -> int:
        """The fidelity predictions are made at by default: the highest one trained on."""
        return self.fidelities[-1]

    def encode_fidelity(self, fidelity, n: int) -> torch.Tensor | None:
        """The net's fidelity input for ``n`` rows, after checking that the SPN can predict there.

        Args:
            fidelity: label fine-tune steps k: None (the default, :attr:`fidelity`), one number for every row,
                or ``n`` numbers.
            n: the number of rows.

        Returns:
            ``(n,)`` float32 tensor of ``log1p(k) / log1p(max(fidelities))``, or None for a single-fidelity SPN.

        Raises:
            ConfigError: a k this SPN was not trained to predict (see the module docstring).
        """
        try:
            k = np.broadcast_to(np.asarray(self.fidelity if fidelity is None else fidelity, np.float64), (n,))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"fidelity={fidelity!r} must be one number of label fine-tune steps or one per "
                              f"row ({n})") from e
        lo, hi = self.fidelities[0], self.fidelities[-1]
        bad = ~np.isfinite(k) | (k < lo) | (k > hi)
        if bad.any():
            got = float(k[bad][0])
            if lo == hi:
                raise ConfigError(f"this SPN learnt labels of label_steps={lo} only and cannot predict label_steps="
                                  f"{got:g}; train one on both with `rlprune spn train --multi-fidelity`")
            raise ConfigError(f"this SPN learnt label_steps {self.fidelities} and predicts from {lo} to {hi} only, not "
                              f"{got:g} (it refuses to extrapolate); add rows of that fidelity and retrain")
        if not self.config.fidelity_input:
            return None
        # max(hi, 1): a hand-built SPN with the input but only fidelity 0 encodes 0, not 0 / 0.
        return torch.from_numpy((np.log1p(k) / np.log1p(max(hi, 1))).astype(np.float32))

    # ------------------------------------------------------------------ inference
    def predict_mixed(self, ratios, fingerprints, target: str = "acc_drop", fidelity=None):
        """Score ratio vectors of different models (different group counts) in one padded batch.

        Args:
            ratios: N ratio vectors, each as long as its model's group count.
            fingerprints: the N models (registered).
            target: ``"acc_drop"`` or ``"loss"``.
            fidelity: label fine-tune steps to predict at (None: :attr:`fidelity`; one number or N).

        Returns:
            ``(mean, std)`` arrays of shape ``(N,)``, equal to :meth:`predict` per model.

        Raises:
            ConfigError: not a transformer SPN, unknown models, a vector of the wrong length, or a fidelity
                outside the trained ones.
        """
        if self.config.arch != "transformer":
            raise ConfigError(f"a {self.config.arch} SPN takes one model's group count; use the transformer")
        models = list(dict.fromkeys(fingerprints))
        sizes = {fp: self.n_groups(fp) for fp in models}
        G = max(sizes.values())
        R = np.zeros((len(ratios), G), np.float32)
        mask = np.zeros((len(ratios), G), bool)
        for i, (r, fp) in enumerate(zip(ratios, fingerprints, strict=True)):
            r = np.asarray(r, np.float32)
            if r.shape != (sizes[fp],) or not np.isfinite(r).all():
                raise ConfigError(f"vector {i} has shape {r.shape}; model {fp} takes {sizes[fp]} finite ratios")
            R[i, : r.size], mask[i, : r.size] = r, True
        which = torch.tensor([models.index(fp) for fp in fingerprints], dtype=torch.long)
        feats = self.feature_table(models, G)[which]
        fid = self.encode_fidelity(fidelity, len(R))
        with torch.inference_mode(), one_thread():
            y = self.denormalise(self.net(torch.from_numpy(R), feats, torch.from_numpy(mask), fidelity=fid))
        y = y[..., _target_index(target)].numpy()
        return y.mean(0), y.std(0)

    def forward_normalised(self, R: torch.Tensor, feats: torch.Tensor, mask=None, fidelity=None) -> torch.Tensor:
        """Raw ensemble output ``(E, N, T)`` in normalised target units (training uses this; ``fidelity`` is
        :meth:`encode_fidelity`'s tensor)."""
        return self.net(R, feats, mask, fidelity=fidelity)

    def denormalise(self, y: torch.Tensor) -> torch.Tensor:
        """Normalised targets (..., T) -> points / nats."""
        mean = torch.from_numpy(self.norm["target_mean"])
        std = torch.from_numpy(self.norm["target_std"])
        return y * std + mean

    def predict_members(self, R, fingerprint: str, batch_size: int = 1024, fidelity=None) -> np.ndarray:
        """Every member's prediction of every target, in real units (points for ``acc_drop``).

        Args:
            R: ``(N, n_groups)`` (or one ``(n_groups,)`` vector) of achieved ratios, numpy or list.
            fingerprint: a registered model.
            batch_size: rows per forward pass (1024 keeps activations in cache: faster than larger).
            fidelity: label fine-tune steps to predict at (None: :attr:`fidelity`; one number or N).

        Returns:
            A float32 array ``(members, N, len(TARGETS))``.

        Raises:
            ConfigError: unknown model, a ratio matrix of the wrong shape / non-finite values, or a fidelity
                outside the trained ones.
        """
        feats = self._feat_t.get(fingerprint)
        if feats is None:
            self._require(fingerprint)
        R = np.asarray(R, dtype=np.float32)
        if R.ndim == 1:
            R = R[None]
        G = feats.shape[1]
        if R.ndim != 2 or R.shape[1] != G:
            raise ConfigError(f"ratio matrix has shape {R.shape}; model {fingerprint} has {G} groups: pass (N, {G})")
        if not np.isfinite(R).all():
            raise ConfigError("ratios must be finite numbers")
        Rt = torch.from_numpy(R)
        fid = self.encode_fidelity(fidelity, len(Rt))
        out = []
        with torch.inference_mode(), one_thread():
            for i in range(0, len(Rt), batch_size):
                part = None if fid is None else fid[i:i + batch_size]
                out.append(self.denormalise(self.net(Rt[i:i + batch_size], feats, fidelity=part)))
        if not out:
            return np.zeros((self.config.members, 0, len(TARGETS)), np.float32)
        return torch.cat(out, 1).numpy()

    def predict(self, R, fingerprint: str, target: str = "acc_drop", batch_size: int = 1024, fidelity=None):
        """Ensemble mean and std of one target for each ratio vector.

        Args:
            R: ``(N, n_groups)`` numpy array of achieved ratios (a single vector is treated as N=1).
            fingerprint: the model (see :attr:`known`).
            target: ``"acc_drop"`` (percentage points) or ``"loss"``.
            batch_size: rows per forward pass.
            fidelity: label fine-tune steps k to predict at: None for :attr:`fidelity` (the highest trained),
                one number, or one per row.

        Returns:
            ``(mean, std)``: float32 arrays of shape ``(N,)``.

        Raises:
            ConfigError: unknown model or target, a ratio matrix of the wrong shape, or a fidelity outside
                the trained ones.
        """
        y = self.predict_members(R, fingerprint, batch_size, fidelity)[..., _target_index(target)]
        return y.mean(0), y.std(0)

    # ------------------------------------------------------------------ state
    def state(self) -> dict:
        """Everything needed to rebuild the SPN: tensors, lists, numbers and strings only (safe to
        ``torch.load(weights_only=True)`` and cheap to ship to env workers)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION if self.config.fidelity_input else 1,
            "config": asdict(self.config),
            "fidelities": list(self.fidelities),
            "weights": {k: v.detach().clone() for k, v in self.net.state_dict().items()},
            "feature_names": list(self.feature_names),
            "features": {fp: torch.from_numpy(f.copy()) for fp, f in self._features.items()},
            "norm": {k: torch.from_numpy(v.copy()) for k, v in self.norm.items()},
            "fingerprints": list(self.fingerprints),
            "meta": json.dumps(self.meta, default=str),
        }

    @classmethod
    def from_state(cls, state: dict, source: str = "state") -> SPN:
        """Rebuild an SPN from :meth:`state`.

        Args:
            state: the dict.
            source: what to call it in errors (a path).

        Returns:
            The SPN, in eval mode.

        Raises:
            CheckpointError: not an SPN state, a newer format, or weights that do not fit the config.
        """
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{source} is not an rlprune SPN checkpoint; train one with `rlprune spn train`")
        if state.get("format_version") not in range(1, CHECKPOINT_VERSION + 1):
            raise CheckpointError(f"{source} has SPN checkpoint format {state.get('format_version')!r}; this rlprune "
                                  f"reads formats 1 to {CHECKPOINT_VERSION}: retrain it with `rlprune spn train`")
        try:
            known = {f.name for f in fields(SPNConfig)}
            cfg = SPNConfig(**{k: v for k, v in state["config"].items() if k in known})
            spn = cls(cfg, state["feature_names"], {k: v.numpy() for k, v in state["norm"].items()},
                      fingerprints=state["fingerprints"], meta=json.loads(state["meta"]),
                      fidelities=state.get("fidelities", DEFAULT_FIDELITIES))
            spn.net.load_state_dict(state["weights"])
            for fp, f in state["features"].items():
                spn.add_model(fp, f.numpy())
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, ConfigError) as e:
            raise CheckpointError(f"{source} is an incompatible SPN checkpoint ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0]}); retrain it with `rlprune spn train`") from e
        return spn

    def copy(self) -> SPN:
        """An independent deep copy (fine-tuning a copy leaves the original untouched)."""
        return SPN(self.config, self.feature_names, self.norm, features=self._features,
                   fingerprints=self.fingerprints, meta=copy.deepcopy(self.meta), net=copy.deepcopy(self.net),
                   fidelities=self.fidelities)

    def __repr__(self) -> str:
        return (f"SPN(arch={self.config.arch!r}, members={self.config.members}, "
                f"trained_on={len(self.fingerprints)} model(s), known={len(self._features)}, "
                f"fidelities={self.fidelities})")


def _target_index(target: str) -> int:
    if target not in TARGETS:
        raise ConfigError(f"target {target!r} is unknown; use one of {', '.join(TARGETS)}")
    return TARGETS.index(target)


def save_spn(spn: SPN, path: str | os.PathLike) -> Path:
    """Write an SPN checkpoint atomically (readers see the old file or the new one, never a partial one).

    Args:
        spn: the SPN.
        path: destination file, e.g. ``spn.pt``; its directory is created if needed.

    Returns:
        The path written.
    """
    buf = io.BytesIO()
    torch.save(spn.state(), buf)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def load_spn(path: str | os.PathLike) -> SPN:
    """Read a checkpoint written by :func:`save_spn`.

    Args:
        path: the file.

    Returns:
        The SPN, in eval mode.

    Raises:
        CheckpointError: missing, corrupt or truncated, not an SPN checkpoint, or incompatible with this
            version of rlprune.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no SPN checkpoint at {path}; train one with `rlprune spn train --out {path}`")
    try:
        # weights_only: a checkpoint holds tensors, lists, numbers and strings only, so nothing is unpickled.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a damaged zip/pickle raises many different types
        raise CheckpointError(f"{path} is not a readable SPN checkpoint (corrupt or truncated: "
                              f"{type(e).__name__}); retrain it with `rlprune spn train`") from e
    return SPN.from_state(state, source=str(path))


__all__ = [
    "ARCHS",
    "DEFAULT_FIDELITIES",
    "TARGETS",
    "LinearNet",
    "MLPNet",
    "SPN",
    "SPNConfig",
    "TransformerNet",
    "build_net",
    "load_spn",
    "one_thread",
    "save_spn",
]
