"""Rank agreement: how alike two numbers rank the same items, with a bootstrap interval (numpy only).

Why: a search compares ratio vectors at one budget, so what a world model or a cheap sample label must get
right is the ORDER of the vectors by what the user gets (accuracy after fine-tuning), not its level. Spearman's
rho measures that; over few items it is noisy, so it comes with a percentile-bootstrap interval over the items,
and within groups (e.g. one MACs target each: any label ranks a 30% model below a 70% one, which says nothing)
as the mean of the per-group correlations with a bootstrap stratified by group.

- ``spearman``: rho of paired values (average ranks for ties, as ``scipy.stats.spearmanr``).
- ``spearman_ci``: rho (overall or the mean within groups) with its interval.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from rlprune.measure.stats import check_options, percentile_interval


def _ranks(a: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions) along the last axis of a 2-D array."""
    order = np.argsort(a, axis=1, kind="stable")
    s = np.take_along_axis(a, order, axis=1)
    pos = np.broadcast_to(np.arange(a.shape[1]), a.shape)
    new = np.ones(a.shape, dtype=bool)
    new[:, 1:] = s[:, 1:] != s[:, :-1]  # where a run of equal values starts
    ends = np.ones(a.shape, dtype=bool)
    ends[:, :-1] = new[:, 1:]
    first = np.maximum.accumulate(np.where(new, pos, 0), axis=1)
    last = np.minimum.accumulate(np.where(ends, pos, a.shape[1] - 1)[:, ::-1], axis=1)[:, ::-1]
    out = np.empty(a.shape)
    np.put_along_axis(out, order, (first + last) / 2.0, axis=1)
    return out


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row pair: Pearson of average ranks; NaN where a row is constant."""
    rx, ry = _ranks(x), _ranks(y)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    den = np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rx * ry).sum(axis=1) / den, np.nan)


def spearman(x: Any, y: Any) -> float:
    """Spearman's rank correlation of paired values (ties get average ranks, as ``scipy.stats.spearmanr``).

    Returns:
        rho in [-1, 1]; NaN for fewer than 3 pairs or a constant side (no ranking to compare).

    Raises:
        ValueError: ``x`` and ``y`` differ in length or hold NaN/inf.
    """
    x, y = _check_pairs(x, y)
    return float(_spearman_rows(x[None], y[None])[0]) if x.size >= 3 else float("nan")


def _check_pairs(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if x.size != y.size:
        raise ValueError(f"x has {x.size} values but y has {y.size}; pass one value of each per item")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("x and y must be finite; drop the items whose measurement failed from both")
    return x, y


def spearman_ci(x: Any, y: Any, groups: Any = None, level: float = 0.95, n_boot: int = 2_000,
                seed: int = 0) -> dict[str, Any]:
    """Spearman's rho with a 95% percentile-bootstrap interval over the items.

    Few items with many ties make the bootstrap distribution so discrete that the percentile interval can
    miss the estimate itself (4 items, 3 of them tied, can only resample to a handful of values); the
    interval is then widened to reach the estimate, so it is never narrower than the percentile interval.

    With ``groups``, rho is the mean of the within-group correlations (groups of fewer than 3 items, or with a
    constant side, are left out), and each resample draws items with replacement within every group, so the
    groups keep their sizes. That is the number that matters when the groups differ in level (e.g. MACs
    targets: everything ranks the targets alike, only the ranking within a target is informative).

    Args:
        x, y: paired values, one per item.
        groups: one group key per item, or None for one group.
        level: coverage of the interval, in (0, 1).
        n_boot: resamples (>= 100); resamples without a ranking (a constant side) are skipped.
        seed: seed of the resampling.

    Returns:
        ``{"rho", "ci": [lo, hi], "n", "level"}``; rho and the interval are NaN when no group has a ranking.

    Raises:
        ValueError: as :func:`spearman`, ``groups`` of another length, or a bad ``level`` or ``n_boot``.
    """
    x, y = _check_pairs(x, y)
    check_options(level, n_boot)
    keys = np.zeros(x.size, dtype=int) if groups is None else np.asarray(groups).ravel()
    if keys.size != x.size:
        raise ValueError(f"groups has {keys.size} keys for {x.size} items; pass one group key per item")
    rng = np.random.default_rng(seed)
    rhos, boots = [], []
    for key in dict.fromkeys(keys.tolist()):
        idx = np.flatnonzero(keys == key)
        if idx.size < 3:
            continue
        rhos.append(spearman(x[idx], y[idx]))
        draw = idx[rng.integers(0, idx.size, size=(int(n_boot), idx.size))]
        boots.append(_spearman_rows(x[draw], y[draw]))
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices are reported as NaN below
        rho = float(np.nanmean(rhos)) if rhos else float("nan")
        boot = np.nanmean(np.stack(boots), axis=0) if boots else np.array([np.nan])
    boot = boot[np.isfinite(boot)]
    if not (boot.size and np.isfinite(rho)):
        return {"rho": rho, "ci": [float("nan"), float("nan")], "n": int(x.size), "level": level}
    lo, hi = percentile_interval(boot, level)
    return {"rho": rho, "ci": [min(lo, rho), max(hi, rho)], "n": int(x.size), "level": level}


__all__ = ["spearman", "spearman_ci"]
