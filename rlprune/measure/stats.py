"""Uncertainty for test accuracies and for the difference between two methods scored on the same images.

Why: a test set is a sample. On digits (359 test images) one image is 0.28 points of accuracy, so two
methods a couple of images apart have not been shown to differ; a claim of "better" needs an interval.

- ``accuracy_ci``: 95% percentile-bootstrap interval of one method's accuracy over test images (``acc_ci``).
- ``paired_difference``: ``acc_a - acc_b`` with a paired bootstrap interval over the same images and an exact
  McNemar p-value; ``real`` is True only when the interval excludes 0.
- ``describe``: the one sentence the report and README print for a difference.

How to read them: all numbers are accuracy points (0-100). An interval of [-0.3, +0.9] means the data are
consistent with method A being slightly worse or about a point better; call the difference real only when
the whole interval lies on one side of 0. Pairing matters: both methods see the same images, so images both
get right (or wrong) carry no information about which is better, and only the discordant images (one right,
the other wrong) move the difference; an unpaired interval would be several times too wide.

Numpy only (no torch, no Ray), so reports and tests import it cheaply.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

_MIN_BOOT = 100


def _check_correct(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D per-example vector of 0/1 outcomes, got shape {arr.shape}; "
                         f"flatten it (one entry per test image)")
    if arr.size == 0:
        raise ValueError(f"{name} is empty; pass one 0/1 (or bool) entry per test image")
    if arr.dtype != bool:
        if not np.issubdtype(arr.dtype, np.number) or not np.isin(arr, (0, 1)).all():
            bad = arr[~np.isin(arr, (0, 1))][:3] if np.issubdtype(arr.dtype, np.number) else arr[:3]
            raise ValueError(f"{name} must hold only 0/1 or bool (1 = image classified correctly), "
                             f"found e.g. {bad.tolist()}; pass (pred == label), not logits or labels")
    return arr.astype(bool)


def _check_options(level: float, n_boot: int) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level!r} must lie strictly between 0 and 1; use 0.95 for a 95% interval")
    if int(n_boot) != n_boot or n_boot < _MIN_BOOT:
        raise ValueError(f"n_boot={n_boot!r} must be an integer >= {_MIN_BOOT}; use 10_000 for stable "
                         f"2.5%/97.5% percentiles")


def _percentiles(samples: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(samples, [tail, 1.0 - tail])
    return float(lo), float(hi)


def accuracy_ci(correct: Any, level: float = 0.95, n_boot: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of accuracy over examples, in points (0-100).

    Args:
        correct: per-example outcomes, 1/True where the model was right.
        level: coverage of the interval, in (0, 1).
        n_boot: bootstrap resamples (>= 100).
        seed: seed of the resampling, so the same outcomes always give the same interval.

    Returns:
        ``(lo, hi)`` in accuracy points.

    Raises:
        ValueError: empty or non-1-D vector, values other than 0/1/bool, level outside (0, 1), n_boot < 100.
    """
    arr = _check_correct(correct, "correct")
    _check_options(level, n_boot)
    n = arr.size
    # Resampling n images with replacement and counting the correct ones gives Binomial(n, k/n) exactly,
    # so drawing the counts is the nonparametric bootstrap of a 0/1 mean, in O(n_boot) time and memory
    # instead of an (n_boot x n) index matrix.
    rng = np.random.default_rng(seed)
    hits = rng.binomial(n, arr.sum() / n, size=int(n_boot))
    return _percentiles(100.0 * hits / n, level)


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


def paired_difference(correct_a: Any, correct_b: Any, level: float = 0.95, n_boot: int = 10_000,
                      seed: int = 0) -> dict[str, Any]:
    """Accuracy difference of method A minus method B on the same examples, with its uncertainty.

    The interval is a paired percentile bootstrap over examples (the same resampled images score both
    methods). The p-value is the exact two-sided McNemar test: under "no difference" each discordant image
    (exactly one method right) favours A or B with probability 1/2, and p = min(1, 2 * P(X <= min(a_only,
    b_only))) with X ~ Binomial(a_only + b_only, 1/2). ``real`` follows the interval (it excludes 0); near
    the boundary the interval and the test can disagree, and the report uses the interval.

    Args:
        correct_a: per-example 0/1 outcomes of method A (e.g. the RL policy).
        correct_b: per-example 0/1 outcomes of method B (e.g. the best baseline), same examples, same order.
        level: coverage of the interval, in (0, 1).
        n_boot: bootstrap resamples (>= 100).
        seed: seed of the resampling.

    Returns:
        JSON-ready dict: ``diff`` (points), ``diff_ci`` ``[lo, hi]``, ``p_value``, ``real``, ``n``,
        ``a_only``, ``b_only`` (discordant counts), ``acc_a``, ``acc_b`` and ``level``.

    Raises:
        ValueError: as ``accuracy_ci``, or the two vectors differ in length.
    """
    a = _check_correct(correct_a, "correct_a")
    b = _check_correct(correct_b, "correct_b")
    if a.size != b.size:
        raise ValueError(f"correct_a has {a.size} examples but correct_b has {b.size}; a paired comparison "
                         f"needs both methods scored on the same test images in the same order")
    _check_options(level, n_boot)
    n = a.size
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    # Per image, a - b is +1 (a_only), -1 (b_only) or 0, so a paired resample of n images is fully described
    # by its Multinomial(n, [a_only, b_only, same] / n) counts: exact, and O(n_boot) rather than O(n * n_boot).
    rng = np.random.default_rng(seed)
    probs = np.array([a_only, b_only, n - a_only - b_only], dtype=float) / n
    counts = rng.multinomial(n, probs, size=int(n_boot))
    lo, hi = _percentiles(100.0 * (counts[:, 0] - counts[:, 1]) / n, level)
    return {
        "diff": 100.0 * (a_only - b_only) / n,
        "diff_ci": [lo, hi],
        "p_value": _mcnemar_exact(a_only, b_only),
        "real": bool(lo > 0.0 or hi < 0.0),
        "n": n,
        "a_only": a_only,
        "b_only": b_only,
        "acc_a": 100.0 * float(a.mean()),
        "acc_b": 100.0 * float(b.mean()),
        "level": level,
    }


def describe(diff: dict[str, Any]) -> str:
    """One sentence for reports, e.g. ``+0.42 points (95% CI -0.10 to +0.95, p = 0.12, n = 359): not a real
    difference at this sample size``.

    Args:
        diff: a ``paired_difference`` result (``level`` defaults to 0.95 if absent).

    Returns:
        The sentence, without a trailing full stop.
    """
    lo, hi = diff["diff_ci"]
    p = diff["p_value"]
    p_text = "p < 0.001" if p < 0.001 else f"p = {p:.2g}"
    n_text = f", n = {diff['n']}" if "n" in diff else ""
    verdict = "a real difference" if diff["real"] else "not a real difference at this sample size"
    return (f"{diff['diff']:+.2f} points ({100 * diff.get('level', 0.95):.0f}% CI {lo:+.2f} to {hi:+.2f}, "
            f"{p_text}{n_text}): {verdict}")


def pack_correct(correct: Any) -> str:
    """A per-example 0/1 vector as compact text for JSON rows: ``"<n>:<base64 of the packed bits>"``.

    10,000 test images take 1.7 kB, so every validated candidate can carry its own outcomes and any two
    candidates can be compared pairwise later without re-running them.

    Raises:
        ValueError: see :func:`accuracy_ci`.
    """
    arr = _check_correct(correct, "correct").astype(bool)
    return f"{arr.size}:{base64.b64encode(np.packbits(arr).tobytes()).decode()}"


def unpack_correct(text: str) -> np.ndarray:
    """The bool vector :func:`pack_correct` wrote.

    Raises:
        ValueError: text that is not ``"<n>:<base64>"`` of at least ``n`` bits.
    """
    try:
        n, data = text.split(":", 1)
        bits = np.unpackbits(np.frombuffer(base64.b64decode(data, validate=True), dtype=np.uint8))[: int(n)]
    except (ValueError, AttributeError) as e:
        raise ValueError(f"{str(text)[:40]!r} is not a packed outcome vector ('<n>:<base64>'); re-run the "
                         f"validation trial that wrote it") from e
    if bits.size != int(n):
        raise ValueError(f"packed outcome vector holds {bits.size} bits, its header says {n}; re-run the trial")
    return bits.astype(bool)

