"""From sample frames to SPN inputs and back: padded tensors, held-out splits, predictions and metrics.

A frame has one row per real sample (``rlprune.samples.store`` schema: achieved ``ratios``, ``acc_drop``,
``loss``, ``model_fingerprint``); group features come from the store's space records (``read_spaces``),
so nothing is re-traced. Rows of models with different group counts are padded into one batch (the
transformer's padding mask hides the padding). Training lives in ``rlprune.spn.train``.

    train_df, test_df = split_samples(df, test_frac=0.2)
    evaluate(spn, test_df)          # {"mae", "rmse", "spearman", "r2", "n"}: acc_drop in points
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from rlprune.errors import ConfigError, SampleStoreError
from rlprune.spn.predictor import SPN, TARGETS


# ====================================================================== data
@dataclass
class SampleRows:
    """Rows as padded tensors; ``model`` indexes ``fingerprints`` and the feature table."""

    fingerprints: list[str]
    model: torch.Tensor  # (N,) long
    R: torch.Tensor  # (N, Gmax) float32, 0 where padded
    mask: torch.Tensor  # (N, Gmax) bool
    Y: torch.Tensor  # (N, T) float32, raw units
    sample_ids: list[str]

    def __len__(self):
        return len(self.model)


def sample_rows(df: pd.DataFrame, n_groups: dict[str, int]) -> SampleRows:
    """Check a samples frame against the known group counts and pad it into tensors.

    Raises:
        SampleStoreError: missing columns, a model with no group features, or a ratio vector whose
            length is not the model's group count.
    """
    missing = {"ratios", "acc_drop", "loss", "model_fingerprint"} - set(df.columns)
    if missing:
        raise SampleStoreError(f"samples lack columns {sorted(missing)}; read them with "
                               f"rlprune.samples.store.read_samples")
    fps = list(dict.fromkeys(df["model_fingerprint"]))
    unknown = [fp for fp in fps if fp not in n_groups]
    if unknown:
        raise SampleStoreError(f"no group features for model(s) {unknown}: the store has no space record for them; "
                               f"regenerate a sample with `rlprune sample` so the store records the model")
    G = max((n_groups[fp] for fp in fps), default=1)
    R = np.zeros((len(df), G), np.float32)
    mask = np.zeros((len(df), G), bool)
    for i, (fp, r) in enumerate(zip(df["model_fingerprint"], df["ratios"], strict=True)):
        r = np.asarray(r, np.float32)
        if r.shape != (n_groups[fp],):
            raise SampleStoreError(f"sample {i} of model {fp} has {r.size} ratios but the model has {n_groups[fp]} "
                                   f"groups; the store mixes samples of different models under one fingerprint")
        R[i, : r.size] = r
        mask[i, : r.size] = True
    index = {fp: i for i, fp in enumerate(fps)}
    ids = df["sample_id"].astype(str).tolist() if "sample_id" in df else [str(i) for i in range(len(df))]
    return SampleRows(fps, torch.tensor([index[fp] for fp in df["model_fingerprint"]], dtype=torch.long),
                 torch.from_numpy(R), torch.from_numpy(mask),
                 torch.tensor(df[list(TARGETS)].to_numpy(np.float32)), ids)


def space_features(spaces: dict, fp: str) -> tuple[np.ndarray, list[str]]:
    rec = spaces[fp]
    return np.asarray(rec["features"], np.float32), list(rec["feature_names"])


def register_models(spn: SPN, fingerprints, spaces: dict | None) -> None:
    """Give ``spn`` the group features of every model in ``fingerprints`` it does not know yet.

    Args:
        spn: the SPN (changed in place).
        fingerprints: models about to be scored or trained on.
        spaces: ``read_spaces`` records by fingerprint (may be None if every model is known).

    Raises:
        SampleStoreError: a model that is neither known nor in ``spaces``.
    """
    for fp in dict.fromkeys(fingerprints):
        if fp in spn.known:
            continue
        if not spaces or fp not in spaces:
            raise SampleStoreError(f"the SPN has no group features for model {fp} and the store has no space "
                                   f"record for it; pass the store the samples came from")
        f, names = space_features(spaces, fp)
        spn.add_model(fp, f, names)


def split_samples(df: pd.DataFrame, test_frac: float = 0.2, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Random held-out split, per model (every model keeps the same share in both parts).

    Args:
        df: samples.
        test_frac: share of each model's rows in the test part, in (0, 1).
        seed: seeds the permutation.

    Returns:
        ``(train_df, test_df)`` with fresh indices.

    Raises:
        ConfigError: ``test_frac`` out of range.
    """
    if not 0 < test_frac < 1:
        raise ConfigError(f"test_frac={test_frac} must lie in (0, 1), e.g. 0.2")
    rng = np.random.default_rng(seed)
    test = np.zeros(len(df), bool)
    for _, pos in df.groupby("model_fingerprint", sort=True).indices.items():
        pos = rng.permutation(pos)
        test[pos[: int(round(len(pos) * test_frac))]] = True
    return df[~test].reset_index(drop=True), df[test].reset_index(drop=True)


# ====================================================================== metrics
def metrics(y_true, y_pred) -> dict:
    """Held-out fidelity of predicted accuracy drops.

    Args:
        y_true, y_pred: 1-D arrays in points.

    Returns:
        ``{"mae", "rmse", "spearman", "r2", "n"}`` (spearman and r2 are NaN for fewer than 3 rows or a
        constant target).
    """
    y, p = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    err = p - y
    n = len(y)
    out = {"mae": float(np.abs(err).mean()) if n else float("nan"),
           "rmse": float(np.sqrt((err ** 2).mean())) if n else float("nan"),
           "spearman": float("nan"), "r2": float("nan"), "n": int(n)}
    if n >= 3 and np.ptp(y) > 0:
        out["r2"] = float(1 - (err ** 2).sum() / ((y - y.mean()) ** 2).sum())
        if np.ptp(p) > 0:
            out["spearman"] = float(spearmanr(y, p).statistic)
    return out


def predict_frame(spn: SPN, df: pd.DataFrame, spaces: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Predicted ``acc_drop`` mean and std for every row of a samples frame (any mix of models).

    Args:
        spn: the SPN; features of new models are registered on it from ``spaces``.
        df: samples (``ratios``, ``model_fingerprint``).
        spaces: ``read_spaces`` records, needed for models the SPN does not know.

    Returns:
        ``(mean, std)`` float32 arrays aligned with the rows of ``df``.

    Raises:
        SampleStoreError: a model the SPN does not know and ``spaces`` does not describe.
    """
    register_models(spn, df["model_fingerprint"], spaces)
    mean, std = np.zeros(len(df), np.float32), np.zeros(len(df), np.float32)
    for fp, pos in df.groupby("model_fingerprint", sort=False).indices.items():
        R = np.stack([np.asarray(r, np.float32) for r in df["ratios"].iloc[pos]])
        mean[pos], std[pos] = spn.predict(R, fp)
    return mean, std


def evaluate(spn: SPN, df: pd.DataFrame, spaces: dict | None = None) -> dict:
    """:func:`metrics` of ``spn`` on the rows of ``df`` (models it never saw are scored zero-shot).

    Args:
        spn: the SPN; features of new models are registered on it from ``spaces``.
        df: samples (real ``acc_drop``).
        spaces: ``read_spaces`` records, needed for models the SPN does not know.

    Returns:
        ``{"mae", "rmse", "spearman", "r2", "n"}`` plus ``mean_std`` (average ensemble spread).

    Raises:
        SampleStoreError: a model the SPN does not know and ``spaces`` does not describe.
    """
    mean, std = predict_frame(spn, df, spaces)
    return {**metrics(df["acc_drop"].to_numpy(), mean), "mean_std": float(std.mean()) if len(std) else float("nan")}


__all__ = ["SampleRows", "evaluate", "metrics", "predict_frame", "register_models", "sample_rows",
           "space_features", "split_samples"]
