"""Synthetic rows in the sample store's format with a known truth at two label fidelities, for the
multi-fidelity SPN, store and world-model tests (no model is trained or pruned: the rows are made up, the
formats are real)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from rlprune.measure.spec import MeasureSpec
from rlprune.samples.spaces import write_space
from rlprune.samples.store import append_samples, now_iso, sample_id
from rlprune.space.pruning import FEATURE_NAMES

G = 6
FP = "m" * 16
_rng = np.random.default_rng(0)
FEATURES = _rng.uniform(0, 1, (G, len(FEATURE_NAMES)))
SPACES = {FP: {"features": FEATURES.tolist(), "feature_names": list(FEATURE_NAMES)}}
# The known truth: each group starts to hurt past its own ratio, quadratically and with its own weight.
_W, _T = _rng.uniform(0.5, 2.0, G), _rng.uniform(0.2, 0.5, G)
LOW, HIGH = 0, 100


def latent(R) -> np.ndarray:
    return (_W * np.maximum(np.asarray(R) - _T, 0) ** 2).sum(1)


def truth(R, k: int, noise_seed: int | None = None) -> np.ndarray:
    """The label at fidelity ``k``: the cheap one a noisy 60 x latent, the top one 10 + 30 x latent (fine-tuning
    recovers half the drop and adds a floor), so the top fidelity is a known function of the cheap one."""
    y = 60 * latent(R) if k == LOW else 10 + 30 * latent(R)
    if noise_seed is not None:
        y = y + np.random.default_rng(noise_seed).normal(0, 1, len(y))
    return y


def draw(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 0.9, (n, G))


def frame(R, k: int, y, tag: str, loss=None) -> pd.DataFrame:
    """Rows as ``read_samples`` gives them (the fidelity in ``measure``); ``loss`` None: NaN, as a final's."""
    spec = MeasureSpec(label_steps=k)
    return pd.DataFrame({"sample_id": [f"{tag}{i}" for i in range(len(R))], "ratios": list(R), "model_fingerprint": FP,
                         "acc_drop": y, "loss": np.full(len(R), np.nan) if loss is None else loss,
                         "measure_id": spec.label_id(), "measure": spec.label_json()})


def store_rows(R, k: int, y, spec: MeasureSpec | None = None) -> list[dict]:
    """Full sample rows (``SAMPLE_COLUMNS``) of vectors ``R`` labelled ``y`` at fidelity ``k``."""
    spec = spec or MeasureSpec(label_steps=k)
    rows = []
    for r, drop in zip(R, y, strict=True):
        ratios = [round(float(v), 6) for v in r]
        rows.append({"sample_id": sample_id("digits", FP, spec.label_id(), ratios), "ratios": ratios,
                     "requested_ratios": ratios, "params_ratio": 0.5, "macs_ratio": 0.5, "acc": 95.0 - drop,
                     "acc_drop": float(drop), "loss": float(drop) / 20, "latency_ms": 1.0, "eval_s": 0.1 + k / 50,
                     "task": "digits", "model_fingerprint": FP, "measure_id": spec.label_id(),
                     "measure": spec.label_json(), "sampler": "uniform", "worker": "t", "created_at": now_iso()})
    return rows


def write_store(store, parts) -> None:
    """Append ``parts`` (lists of :func:`store_rows`) and the space record of every spec they use."""
    rows = [r for part in parts for r in part]
    append_samples(store, rows)
    for mid in dict.fromkeys(r["measure_id"] for r in rows):
        write_space(store, {"fingerprint": FP, "measure_id": mid, "feature_names": list(FEATURE_NAMES),
                            "features": FEATURES.tolist(), "n_groups": G})
