"""Uncertainty for per-example test scores and for the difference between two methods scored on the same examples.

Why: a test set is a sample. On digits (359 test images) one image is 0.28 points of accuracy, so two
methods a couple of images apart have not been shown to differ; a claim of "better" needs an interval.

Two kinds of per-example input are accepted, told apart by their values:

- 0/1 outcomes (bool, or numbers that are all 0 or 1; 1 = classified correctly): the metric is accuracy,
  reported in points (0-100, i.e. 100 * mean).
- finite float scores (a user metric such as IoU, F1 or PSNR whose value is the mean over examples, already
  in the metric's own points): the metric is the plain mean, in the same units as the scores.

A float vector whose values happen to be all 0 or 1 takes the 0/1 path, so for a score metric a perfectly
0/1 vector reads as 100 * mean; ``paired_difference`` uses the float path when either side holds other values.

- ``metric_points``: the metric value of one vector (100 * mean, or mean for float scores).
- ``accuracy_ci``: 95% percentile-bootstrap interval of that value over test examples (``acc_ci``).
- ``paired_difference``: metric of A minus metric of B with a paired bootstrap interval over the same
  examples, and a p-value: exact McNemar for 0/1 outcomes, a paired sign-flip permutation test for float
  scores. ``real`` is True only when the interval excludes 0.
- ``describe``: the one sentence the report and README print for a difference.
- ``pack_correct`` / ``unpack_correct``: a per-example vector as compact text for JSON rows.
- Rank agreement (``spearman``, ``spearman_ci``) lives in ``rlprune.measure.ranking``: how alike two numbers rank
  the same items, with a bootstrap interval over the items.

How to read them: all numbers are in the metric's points (accuracy points 0-100 for 0/1 outcomes; the score's
own units for floats, e.g. dB for PSNR). An interval of [-0.3, +0.9] means the data are consistent with
method A being slightly worse or about a point better; call the difference real only when the whole interval
lies on one side of 0. Pairing matters: both methods see the same examples, so examples on which they score
alike carry no information about which is better, and only the examples where they differ (for 0/1: one
right, the other wrong) move the difference; an unpaired interval would be several times too wide.

Numpy only (no torch, no Ray), so reports and tests import it cheaply.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

_MIN_BOOT = 100
# Elements per resampling chunk (index or sign matrix): 4M entries keep a chunk near 50 MB, so n = 10,000
# examples with n_boot = 10,000 never materialises the 10^8-entry matrix (~1 GB) at once.
_CHUNK = 1 << 22
_F32_MAX = float(np.finfo(np.float32).max)


def _check_values(values: Any, name: str) -> np.ndarray:
    """Validate one per-example vector; returns bool (0/1 outcomes) or float64 (scores)."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D per-example vector of 0/1 outcomes or float scores, got shape "
                         f"{arr.shape}; flatten it (one entry per test example)")
    if arr.size == 0:
        raise ValueError(f"{name} is empty; pass one 0/1 (or bool) outcome or float score per test example")
    if arr.dtype == bool:
        return arr
    numeric = np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    if numeric and np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr)
        if bad.any():
            where = np.flatnonzero(bad)[:3].tolist()
            raise ValueError(f"{name} holds {int(bad.sum())} NaN/inf value(s) (first at index {where}); values "
                             f"must be only 0/1 or bool outcomes, or finite float scores. Fix the metric so "
                             f"every example gets a finite score (e.g. define IoU of two empty masks), or "
                             f"drop those examples from every method alike")
    if numeric and np.isin(arr, (0, 1)).all():
        return arr.astype(bool)
    if numeric and np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float64)
    # Integers other than 0/1 are almost always labels or predictions passed by mistake, so they are refused
    # rather than averaged; genuine integer-valued scores can be passed as floats.
    bad = arr[~np.isin(arr, (0, 1))][:3] if numeric else arr[:3]
    raise ValueError(f"{name} must hold only 0/1 or bool (1 = example classified correctly) or float scores, "
                     f"found e.g. {bad.tolist()}; pass (pred == label), not logits or labels (integer-valued "
                     f"metric scores: pass them as floats)")


def check_options(level: float, n_boot: int) -> None:
    """Raise ValueError unless ``level`` is in (0, 1) and ``n_boot`` >= the minimum resamples."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level!r} must lie strictly between 0 and 1; use 0.95 for a 95% interval")
    if int(n_boot) != n_boot or n_boot < _MIN_BOOT:
        raise ValueError(f"n_boot={n_boot!r} must be an integer >= {_MIN_BOOT}; use 10_000 for stable "
                         f"2.5%/97.5% percentiles")


def excludes_zero(lo: float, hi: float) -> bool:
    """Whether an interval ``[lo, hi]`` excludes 0: the project's test of a difference (or a correlation) being
    real. A NaN bound never does."""
    return bool(lo > 0.0 or hi < 0.0)


def percentile_interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap ``samples``."""
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(samples, [tail, 1.0 - tail])
    return float(lo), float(hi)


def _points(arr: np.ndarray) -> float:
    return 100.0 * float(arr.mean()) if arr.dtype == bool else float(arr.mean())


def metric_points(values: Any) -> float:
    """The metric value of a per-example vector, in the metric's points.

    Args:
        values: per-example 0/1 outcomes (bool or numbers) or finite float scores.

    Returns:
        ``100 * mean`` for 0/1 outcomes (accuracy points), ``mean`` for float scores.

    Raises:
        ValueError: see :func:`accuracy_ci`.
    """
    return _points(_check_values(values, "values"))


def _bootstrap_means(x: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    # Textbook bootstrap (resample example indices, re-average), a chunk of rows at a time so memory stays
    # near _CHUNK entries whatever n and n_boot are; int32 indices halve the index matrix.
    n = x.size
    rows = max(1, _CHUNK // n)
    out = np.empty(n_boot)
    for start in range(0, n_boot, rows):
        stop = min(n_boot, start + rows)
        idx = rng.integers(0, n, size=(stop - start, n), dtype=np.int32)
        out[start:stop] = x[idx].mean(axis=1)
    return out


def accuracy_ci(correct: Any, level: float = 0.95, n_boot: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of the metric over examples, in points.

    Args:
        correct: per-example 0/1 outcomes (1/True where the model was right; interval in accuracy points
            0-100), or finite float scores (interval of their mean, in the scores' units).
        level: coverage of the interval, in (0, 1).
        n_boot: bootstrap resamples (>= 100).
        seed: seed of the resampling, so the same values always give the same interval.

    Returns:
        ``(lo, hi)`` in the metric's points.

    Raises:
        ValueError: empty or non-1-D vector, NaN/inf, integers other than 0/1, non-numeric values, level
            outside (0, 1), n_boot < 100.
    """
    arr = _check_values(correct, "correct")
    check_options(level, n_boot)
    n = arr.size
    rng = np.random.default_rng(seed)
    if arr.dtype == bool:
        # Resampling n images with replacement and counting the correct ones gives Binomial(n, k/n) exactly,
        # so drawing the counts is the nonparametric bootstrap of a 0/1 mean, in O(n_boot) time and memory
        # instead of an (n_boot x n) index matrix.
        hits = rng.binomial(n, arr.sum() / n, size=int(n_boot))
        return percentile_interval(100.0 * hits / n, level)
    if arr.min() == arr.max():  # every resample is the same vector; skip rounding noise in its mean
        return float(arr[0]), float(arr[0])
    return percentile_interval(_bootstrap_means(arr, int(n_boot), rng), level)


def _mcnemar_exact(a_only: int, b_only: int) -> float:
    # Exact two-sided McNemar: under H0 each discordant image is equally likely to favour either method, so
    # a_only ~ Binomial(a_only + b_only, 1/2); the null is symmetric, so doubling the smaller tail is the
    # same as summing outcomes no more likely than the observed one (scipy.stats.binomtest's rule).
    # Integer arithmetic keeps it exact for any test-set size.
    m, k = a_only + b_only, min(a_only, b_only)
    if m == 0 or 2 * k == m:
        return 1.0
    term, tail = 1, 1
    for i in range(k):
        term = term * (m - i) // (i + 1)
        tail += term
    return min(1.0, 2 * tail / 2**m)


def _sign_flip_p(d: np.ndarray, n_flips: int, rng: np.random.Generator) -> float:
    # Under H0 "no difference" each example's a - b is as likely to have either sign, so flipping signs
    # independently gives the null distribution of sum(d). Zero differences do not change under a flip, so
    # they are dropped (same p, less work).
    d = d[d != 0.0]
    m = d.size
    if m == 0:
        return 1.0
    observed = abs(float(d.sum()))
    # Sums of the same numbers in another order differ in the last bits; without a tolerance the identity
    # flip could count as "less extreme" than itself.
    threshold = observed - 1e-9 * float(np.abs(d).sum())
    total = float(d.sum())
    if 2**m <= n_flips:
        # Few nonzero differences: enumerate all 2^m sign patterns (identity included) for the exact p.
        bits = (np.arange(2**m)[:, None] >> np.arange(m)) & 1
        null = 2.0 * (bits.astype(np.float64) @ d) - total
        return float((np.abs(null) >= threshold).mean())
    rows = max(1, _CHUNK // m)
    extreme = 0
    for start in range(0, n_flips, rows):
        count = min(n_flips, start + rows) - start
        # One random bit per example says whether its sign is flipped: sum(s * d) = total - 2 * sum(flipped).
        bits = np.unpackbits(rng.integers(0, 256, size=(count, (m + 7) // 8), dtype=np.uint8), axis=1, count=m)
        null = total - 2.0 * (bits.astype(np.float64) @ d)
        extreme += int((np.abs(null) >= threshold).sum())
    # Monte Carlo p counting the observed labelling as one of the draws, so p is never 0 (Phipson & Smyth 2010).
    return (1 + extreme) / (n_flips + 1)


def paired_difference(correct_a: Any, correct_b: Any, level: float = 0.95, n_boot: int = 10_000,
                      seed: int = 0) -> dict[str, Any]:
    """Metric of method A minus method B on the same examples, with its uncertainty.

    The interval is a paired percentile bootstrap over examples (the same resampled examples score both
    methods). ``real`` follows the interval (it excludes 0); near the boundary the interval and the p-value
    can disagree, and the report uses the interval.

    0/1 outcomes (both vectors 0/1): the p-value is the exact two-sided McNemar test: under "no difference"
    each discordant image (exactly one method right) favours A or B with probability 1/2, and p = min(1, 2 *
    P(X <= min(a_only, b_only))) with X ~ Binomial(a_only + b_only, 1/2). Numbers are accuracy points.

    Float scores (either vector holds values other than 0/1; both are then read as scores): the difference
    is mean(a - b) in the scores' units, and the p-value comes from a two-sided paired sign-flip permutation
    test (not McNemar): under "no difference" each a - b is equally likely to be + or -, and p is the share
    of ``n_boot`` random sign flips (exact enumeration when there are at most log2(n_boot) nonzero
    differences) whose |mean| is at least the observed one, counting the observed labelling.

    Args:
        correct_a: per-example 0/1 outcomes or float scores of method A (e.g. the RL policy).
        correct_b: the same for method B (e.g. the best baseline), same examples, same order.
        level: coverage of the interval, in (0, 1).
        n_boot: bootstrap resamples, and sign flips for float scores (>= 100).
        seed: seed of the resampling and the sign flips.

    Returns:
        JSON-ready dict: ``diff`` (points), ``diff_ci`` ``[lo, hi]``, ``p_value``, ``real``, ``n``,
        ``a_only``, ``b_only`` (examples where A scores above B, and B above A), ``acc_a``, ``acc_b``
        (each method's metric in points) and ``level``.

    Raises:
        ValueError: as ``accuracy_ci``, or the two vectors differ in length.
    """
    a = _check_values(correct_a, "correct_a")
    b = _check_values(correct_b, "correct_b")
    if a.size != b.size:
        raise ValueError(f"correct_a has {a.size} examples but correct_b has {b.size}; a paired comparison "
                         f"needs both methods scored on the same test examples in the same order")
    check_options(level, n_boot)
    n = a.size
    rng = np.random.default_rng(seed)
    if a.dtype == bool and b.dtype == bool:
        a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
        # Per image, a - b is +1 (a_only), -1 (b_only) or 0, so a paired resample of n images is fully
        # described by its Multinomial(n, [a_only, b_only, same] / n) counts: exact, and O(n_boot) rather
        # than O(n * n_boot).
        probs = np.array([a_only, b_only, n - a_only - b_only], dtype=float) / n
        counts = rng.multinomial(n, probs, size=int(n_boot))
        lo, hi = percentile_interval(100.0 * (counts[:, 0] - counts[:, 1]) / n, level)
        diff, p_value = 100.0 * (a_only - b_only) / n, _mcnemar_exact(a_only, b_only)
        acc_a, acc_b = 100.0 * float(a.mean()), 100.0 * float(b.mean())
    else:
        # One side may be 0/1-valued scores (e.g. a metric that was exactly 0 or 1 everywhere); it is read
        # as the same scores, not as accuracy, so both sides share units.
        a, b = a.astype(np.float64), b.astype(np.float64)
        d = a - b
        a_only, b_only = int((a > b).sum()), int((b > a).sum())
        if a_only + b_only == 0:
            lo = hi = 0.0
        else:
            lo, hi = percentile_interval(_bootstrap_means(d, int(n_boot), rng), level)
        diff, p_value = float(d.mean()), _sign_flip_p(d, int(n_boot), rng)
        acc_a, acc_b = float(a.mean()), float(b.mean())
    return {
        "diff": diff,
        "diff_ci": [lo, hi],
        "p_value": p_value,
        "real": excludes_zero(lo, hi),
        "n": n,
        "a_only": a_only,
        "b_only": b_only,
        "acc_a": acc_a,
        "acc_b": acc_b,
        "level": level,
    }


def describe(diff: dict[str, Any]) -> str:
    """One sentence for reports, e.g. ``+0.42 points (95% CI -0.10 to +0.95, p = 0.12, n = 359): not a real
    difference at this sample size``.

    Args:
        diff: a ``paired_difference`` result (``level`` defaults to 0.95 if absent).

    Returns:
        The sentence, without a trailing full stop; "points" are the metric's points.
    """
    lo, hi = diff["diff_ci"]
    p = diff["p_value"]
    p_text = "p < 0.001" if p < 0.001 else f"p = {p:.2g}"
    n_text = f", n = {diff['n']}" if "n" in diff else ""
    verdict = "a real difference" if diff["real"] else "not a real difference at this sample size"
    return (f"{diff['diff']:+.2f} points ({100 * diff.get('level', 0.95):.0f}% CI {lo:+.2f} to {hi:+.2f}, "
            f"{p_text}{n_text}): {verdict}")


def pack_correct(correct: Any) -> str:
    """A per-example vector as compact text for JSON rows.

    0/1 outcomes: ``"<n>:<base64 of the packed bits>"`` (10,000 test images take 1.7 kB, so every validated
    candidate can carry its own outcomes and any two candidates can be compared pairwise later without
    re-running them). Float scores: ``"f<n>:<base64 of float32 little-endian>"`` (about 7 significant
    digits, ample for a bootstrap; 10,000 scores take 53 kB).

    Args:
        correct: per-example 0/1 outcomes or finite float scores.

    Returns:
        The text; :func:`unpack_correct` reads both formats.

    Raises:
        ValueError: see :func:`accuracy_ci`, or a score too large for float32.
    """
    arr = _check_values(correct, "correct")
    if arr.dtype == bool:
        return f"{arr.size}:{base64.b64encode(np.packbits(arr).tobytes()).decode()}"
    if np.abs(arr).max() > _F32_MAX:
        raise ValueError(f"correct holds a score of magnitude {np.abs(arr).max():.3g}, beyond float32 "
                         f"(~3.4e38), so it cannot be packed; rescale the metric")
    return f"f{arr.size}:{base64.b64encode(arr.astype('<f4').tobytes()).decode()}"


def unpack_correct(text: str) -> np.ndarray:
    """The vector :func:`pack_correct` wrote.

    Args:
        text: ``"<n>:<base64>"`` (0/1 bits) or ``"f<n>:<base64>"`` (float32 scores).

    Returns:
        A bool array for the bit format, a float64 array for the float format.

    Raises:
        ValueError: text in neither format, or whose payload does not hold exactly ``n`` entries (bits:
            at least ``n``, padded to a byte).
    """
    try:
        head, data = text.split(":", 1)
        raw = base64.b64decode(data, validate=True)
        is_float = head.startswith("f")
        n = int(head[1:] if is_float else head)
        if n < 0:
            raise ValueError(f"negative length {n}")
    except (ValueError, AttributeError) as e:
        raise ValueError(f"{str(text)[:40]!r} is not a packed outcome vector ('<n>:<base64>' or "
                         f"'f<n>:<base64>'); re-run the validation trial that wrote it") from e
    if is_float:
        if len(raw) != 4 * n:
            raise ValueError(f"packed outcome vector holds {len(raw)} bytes, its header says {n} float32 "
                             f"scores ({4 * n} bytes); re-run the trial")
        return np.frombuffer(raw, dtype="<f4").astype(np.float64)
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8))[:n]
    if bits.size != n:
        raise ValueError(f"packed outcome vector holds {bits.size} bits, its header says {n}; re-run the trial")
    return bits.astype(bool)
