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
CHECKPOINT_VERSION = 1
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
        meta: JSON-serialisable notes (training metrics, sample ids, world-model version).
    """

    def __init__(self, config: SPNConfig, feature_names, norm: dict, features: dict | None = None,
                 fingerprints=(), meta: dict | None = None, net: nn.Module | None = None, seed: int = 0):
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

    # ------------------------------------------------------------------ inference
    def predict_mixed(self, ratios, fingerprints, target: str = "acc_drop"):
        """Score ratio vectors of different models (different group counts) in one padded batch.

        Args:
            ratios: N ratio vectors, each as long as its model's group count.
            fingerprints: the N models (registered).
            target: ``"acc_drop"`` or ``"loss"``.

        Returns:
            ``(mean, std)`` arrays of shape ``(N,)``, equal to :meth:`predict` per model.

        Raises:
            ConfigError: not a transformer SPN, unknown models, or a vector of the wrong length.
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
        with torch.inference_mode(), one_thread():
            y = self.denormalise(self.net(torch.from_numpy(R), feats, torch.from_numpy(mask)))
        y = y[..., _target_index(target)].numpy()
        return y.mean(0), y.std(0)

    def forward_normalised(self, R: torch.Tensor, feats: torch.Tensor, mask=None) -> torch.Tensor:
        """Raw ensemble output ``(E, N, T)`` in normalised target units (training uses this)."""
        return self.net(R, feats, mask)

    def denormalise(self, y: torch.Tensor) -> torch.Tensor:
        """Normalised targets (..., T) -> points / nats."""
        mean = torch.from_numpy(self.norm["target_mean"])
        std = torch.from_numpy(self.norm["target_std"])
        return y * std + mean

    def predict_members(self, R, fingerprint: str, batch_size: int = 1024) -> np.ndarray:
        """Every member's prediction of every target, in real units (points for ``acc_drop``).

        Args:
            R: ``(N, n_groups)`` (or one ``(n_groups,)`` vector) of achieved ratios, numpy or list.
            fingerprint: a registered model.
            batch_size: rows per forward pass (1024 keeps activations in cache: faster than larger).

        Returns:
            A float32 array ``(members, N, len(TARGETS))``.

        Raises:
            ConfigError: unknown model or a ratio matrix of the wrong shape / non-finite values.
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
        out = []
        with torch.inference_mode(), one_thread():
            for i in range(0, len(Rt), batch_size):
                out.append(self.denormalise(self.net(Rt[i:i + batch_size], feats)))
        if not out:
            return np.zeros((self.config.members, 0, len(TARGETS)), np.float32)
        return torch.cat(out, 1).numpy()

    def predict(self, R, fingerprint: str, target: str = "acc_drop", batch_size: int = 1024):
        """Ensemble mean and std of one target for each ratio vector.

        Args:
            R: ``(N, n_groups)`` numpy array of achieved ratios (a single vector is treated as N=1).
            fingerprint: the model (see :attr:`known`).
            target: ``"acc_drop"`` (percentage points) or ``"loss"``.
            batch_size: rows per forward pass.

        Returns:
            ``(mean, std)``: float32 arrays of shape ``(N,)``.

        Raises:
            ConfigError: unknown model or target, or a ratio matrix of the wrong shape.
        """
        y = self.predict_members(R, fingerprint, batch_size)[..., _target_index(target)]
        return y.mean(0), y.std(0)

    # ------------------------------------------------------------------ state
    def state(self) -> dict:
        """Everything needed to rebuild the SPN: tensors, lists, numbers and strings only (safe to
        ``torch.load(weights_only=True)`` and cheap to ship to env workers)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "config": asdict(self.config),
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
        if state.get("format_version") != CHECKPOINT_VERSION:
            raise CheckpointError(f"{source} has SPN checkpoint format {state.get('format_version')!r}; this rlprune "
                                  f"reads format {CHECKPOINT_VERSION}: retrain it with `rlprune spn train`")
        try:
            known = {f.name for f in fields(SPNConfig)}
            cfg = SPNConfig(**{k: v for k, v in state["config"].items() if k in known})
            spn = cls(cfg, state["feature_names"], {k: v.numpy() for k, v in state["norm"].items()},
                      fingerprints=state["fingerprints"], meta=json.loads(state["meta"]))
            spn.net.load_state_dict(state["weights"])
            for fp, f in state["features"].items():
                spn.add_model(fp, f.numpy())
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
            raise CheckpointError(f"{source} is an incompatible SPN checkpoint ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0]}); retrain it with `rlprune spn train`") from e
        return spn

    def copy(self) -> SPN:
        """An independent deep copy (fine-tuning a copy leaves the original untouched)."""
        return SPN(self.config, self.feature_names, self.norm, features=self._features,
                   fingerprints=self.fingerprints, meta=copy.deepcopy(self.meta), net=copy.deepcopy(self.net))

    def __repr__(self) -> str:
        return (f"SPN(arch={self.config.arch!r}, members={self.config.members}, "
                f"trained_on={len(self.fingerprints)} model(s), known={len(self._features)})")


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
