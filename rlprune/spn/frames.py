"""From sample frames to SPN inputs and back: padded tensors, held-out splits, predictions and metrics.

A frame has one row per real sample (``rlprune.samples.store`` schema: achieved ``ratios``, ``acc_drop``,
``loss``, ``model_fingerprint``); group features come from the store's space records (``read_spaces``),
so nothing is re-traced. Rows of models with different group counts are padded into one batch (the
transformer's padding mask hides the padding). Training lives in ``rlprune.spn.train``.

A row's fidelity (its label's fine-tune steps) is its ``label_steps`` column if the frame has one, else the
``label_steps`` of its ``measure`` JSON (absent: 0, as every label measured before fidelities existed). A
row's ``loss`` may be NaN (a label measured without it); it then teaches ``acc_drop`` only.

    train_df, test_df = split_samples(df, test_frac=0.2)
    evaluate(spn, test_df)          # {"mae", "rmse", "spearman", "r2", "n"}: acc_drop in points
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from rlprune.errors import ConfigError, SampleStoreError
from rlprune.spn.predictor import SPN, TARGETS

FIDELITY = "label_steps"
"""The column (and ``measure`` key) naming a row's fidelity: its label's fine-tune steps."""


# ====================================================================== data
@dataclass
class SampleRows:
    """Rows as padded tensors; ``model`` indexes ``fingerprints`` and the feature table."""

    fingerprints: list[str]
    model: torch.Tensor  # (N,) long
    R: torch.Tensor  # (N, Gmax) float32, 0 where padded
    mask: torch.Tensor  # (N, Gmax) bool
    Y: torch.Tensor  # (N, T) float32, raw units (NaN: a target the row lacks)
    sample_ids: list[str]
    fidelity: np.ndarray  # (N,) int64: label fine-tune steps of each row

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
    fid = row_fidelities(df)
    return SampleRows(fps, torch.tensor([index[fp] for fp in df["model_fingerprint"]], dtype=torch.long),
                      torch.from_numpy(R), torch.from_numpy(mask),
                      torch.tensor(df[list(TARGETS)].to_numpy(np.float32)), ids,
                      np.zeros(len(df), np.int64) if fid is None else fid)


def row_fidelities(df: pd.DataFrame) -> np.ndarray | None:
    """Each row's label fine-tune steps (see the module docstring), or None when the frame does not say.

    Raises:
        SampleStoreError: a ``measure`` that is not JSON, or a negative or non-integer fidelity.
    """
    if FIDELITY in df:
        k = df[FIDELITY].to_numpy(np.float64)
    elif "measure" in df:
        try:
            steps = {m: json.loads(m).get(FIDELITY, 0) for m in dict.fromkeys(df["measure"])}
        except (TypeError, ValueError, AttributeError) as e:
            raise SampleStoreError(f"a row's measure is not a MeasureSpec label ({e}); read rows with "
                                   f"rlprune.samples.store.read_samples") from e
        k = df["measure"].map(steps).to_numpy(np.float64)
    else:
        return None
    if len(k) and not (np.isfinite(k).all() and (k >= 0).all() and (k == np.round(k)).all()):
        raise SampleStoreError(f"{FIDELITY} must be whole numbers >= 0; got {sorted(set(k.tolist()))[:5]}")
    return k.astype(np.int64)


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


def split_samples(df: pd.DataFrame, test_frac: float = 0.2, seed: int = 0,
                  by_vector: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Random held-out split, per model (every model keeps the same share in both parts).

    Args:
        df: samples.
        test_frac: share of each model's rows in the test part, in (0, 1).
        seed: seeds the permutation.
        by_vector: split ratio vectors instead of rows, so every label of a vector (one per fidelity)
            falls on the same side: a held-out final is then never of a vector whose cheap label trained.

    Returns:
        ``(train_df, test_df)`` with fresh indices.

    Raises:
        ConfigError: ``test_frac`` out of range.
    """
    if not 0 < test_frac < 1:
        raise ConfigError(f"test_frac={test_frac} must lie in (0, 1), e.g. 0.2")
    rng = np.random.default_rng(seed)
    test = np.zeros(len(df), bool)
    if by_vector:
        keys = vector_keys(df)
        for _, pos in df.groupby("model_fingerprint", sort=True).indices.items():
            vecs = rng.permutation(np.array(list(dict.fromkeys(keys[pos]))))
            test[pos[np.isin(keys[pos], vecs[: int(round(len(vecs) * test_frac))])]] = True
    else:
        for _, pos in df.groupby("model_fingerprint", sort=True).indices.items():
            pos = rng.permutation(pos)
            test[pos[: int(round(len(pos) * test_frac))]] = True
    return df[~test].reset_index(drop=True), df[test].reset_index(drop=True)


def vector_keys(df: pd.DataFrame) -> np.ndarray:
    """One string per row naming its ratio vector (model + ratios to 6 decimals, as sample ids round them)."""
    return np.array([fp + ":" + ",".join(f"{float(r):.6f}" for r in rs)
                     for fp, rs in zip(df["model_fingerprint"], df["ratios"], strict=True)])


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


def predict_frame(spn: SPN, df: pd.DataFrame, spaces: dict | None = None,
                  fidelity=None) -> tuple[np.ndarray, np.ndarray]:
    """Predicted ``acc_drop`` mean and std for every row of a samples frame (any mix of models).

    Args:
        spn: the SPN; features of new models are registered on it from ``spaces``.
        df: samples (``ratios``, ``model_fingerprint``).
        spaces: ``read_spaces`` records, needed for models the SPN does not know.
        fidelity: label fine-tune steps to predict every row at; None: each row at its own fidelity (the
            SPN's default where the frame does not say).

    Returns:
        ``(mean, std)`` float32 arrays aligned with the rows of ``df``.

    Raises:
        SampleStoreError: a model the SPN does not know and ``spaces`` does not describe.
        ConfigError: a fidelity the SPN was not trained to predict (a row of another label, for a
            single-fidelity SPN).
    """
    register_models(spn, df["model_fingerprint"], spaces)
    own = row_fidelities(df) if fidelity is None else None
    mean, std = np.zeros(len(df), np.float32), np.zeros(len(df), np.float32)
    for fp, pos in df.groupby("model_fingerprint", sort=False).indices.items():
        R = np.stack([np.asarray(r, np.float32) for r in df["ratios"].iloc[pos]])
        mean[pos], std[pos] = spn.predict(R, fp, fidelity=fidelity if own is None else own[pos])
    return mean, std


def evaluate(spn: SPN, df: pd.DataFrame, spaces: dict | None = None, fidelity=None) -> dict:
    """:func:`metrics` of ``spn`` on the rows of ``df`` (models it never saw are scored zero-shot).

    Args:
        spn: the SPN; features of new models are registered on it from ``spaces``.
        df: samples (real ``acc_drop``).
        spaces: ``read_spaces`` records, needed for models the SPN does not know.
        fidelity: as :func:`predict_frame` (None: each row at its own fidelity).

    Returns:
        ``{"mae", "rmse", "spearman", "r2", "n"}`` plus ``mean_std`` (average ensemble spread).

    Raises:
        SampleStoreError: a model the SPN does not know and ``spaces`` does not describe.
        ConfigError: see :func:`predict_frame`.
    """
    mean, std = predict_frame(spn, df, spaces, fidelity)
    return {**metrics(df["acc_drop"].to_numpy(), mean), "mean_std": float(std.mean()) if len(std) else float("nan")}


def evaluate_by_fidelity(spn: SPN, df: pd.DataFrame, spaces: dict | None = None) -> dict[int, dict]:
    """:func:`evaluate` on each fidelity's rows apart, each at its own fidelity.

    Returns:
        ``{k: metrics}`` by label fine-tune steps k, ascending.

    Raises:
        ConfigError: a fidelity the SPN cannot predict.
    """
    k = row_fidelities(df)
    k = np.zeros(len(df), np.int64) if k is None else k
    return {int(f): evaluate(spn, df[k == f], spaces) for f in sorted(set(k.tolist()))}


__all__ = ["FIDELITY", "SampleRows", "evaluate", "evaluate_by_fidelity", "metrics", "predict_frame",
           "register_models", "row_fidelities", "sample_rows", "space_features", "split_samples", "vector_keys"]
