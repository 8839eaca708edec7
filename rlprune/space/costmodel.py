"""Exact params/MACs of a pruned model, computed from ratios alone (numpy, batched, no torch).

The model is reduced to *dims* (a channel dimension of some layer: a conv's input, a BatchNorm's
features, a ReLU's tensor) and *terms* (one per layer call). Removing ``k`` channels of group ``g``
removes ``A[d, g] * k`` entries of dim ``d`` (``A`` is 1 for plain channels and ``H*W`` where a flatten
feeds a Linear layer). Every layer's cost is bilinear in the kept sizes of its input and output dims::

    cost(term) = a * in_kept * out_kept + b * in_kept + c * out_kept + d

which is how ``torch_pruning.utils.count_ops_and_params`` counts convs, linears, norms, activations and
pools. So a whole batch of ratio vectors costs two small matrix products.

``rlprune.space.pruning`` builds a :class:`CostModel` from torch-pruning's dependency graph; everything else
(the env, the SPN, baselines) uses it without importing torch or torch-pruning.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rlprune.errors import ConfigError

_FIT_TOL = 1e-12  # float slack when comparing a cost ratio with its target
_CHUNK = 2048  # rows per block in cost_batch
_GRID = 33  # scales scored per row and round in project_to_budget

TARGET_SLACK = 0.01
"""How far below its target a method may land and still *meet* it (relative): a method meets target ``t``
when ``t * (1 - TARGET_SLACK) <= budget_ratio <= t``.

Relative, because what a comparison is about is the compute each pruned model keeps: an absolute 0.01 would
be 1.4% of the kept MACs at ``t = 0.7`` but 10% at ``t = 0.1``, so low targets would let a method hide a
much larger head start in compression. With 1% of ``t``, every method keeps at least 99% of what the target
allows. Checked by :func:`meets_target`; :meth:`CostModel.project_to_budget` with ``relax=True`` lands
rows in this band (channel counts permitting)."""


def meets_target(budget_ratio, target: float) -> bool | np.ndarray:
    """Whether ``budget_ratio`` reaches ``target`` from below within :data:`TARGET_SLACK` (relative).

    ``target * (1 - TARGET_SLACK) <= budget_ratio <= target``, each side with an exact-ratio float
    tolerance of 1e-12 (a cost ratio is a quotient of exact integer counts, so this is rounding only).

    Args:
        budget_ratio: pruned/original MACs or params: a float or an array of them.
        target: the wanted ratio, in (0, 1].

    Returns:
        A bool for a scalar, a bool array shaped like ``budget_ratio`` otherwise.
    """
    r = np.asarray(budget_ratio, dtype=np.float64)
    ok = (r <= target + _FIT_TOL) & (r >= target * (1.0 - TARGET_SLACK) - _FIT_TOL)
    return bool(ok) if ok.ndim == 0 else ok


def bisect_first(fits: Callable[[int], bool], lo: int, hi: int) -> int:
    """Smallest integer in ``[lo, hi)`` where a monotone predicate holds (False ... False, True ... True).

    The one scalar bisection of the package (``scale_to_target``, ``global_threshold_ratios``); it uses
    ``bisect`` from the standard library, so ``fits`` runs about ``log2(hi - lo)`` times.

    Args:
        fits: the predicate; once it holds it must hold for every larger integer.
        lo: first candidate.
        hi: end of the range (not evaluated: callers check it themselves).

    Returns:
        The first integer ``i`` with ``fits(i)``, or ``hi`` when none in ``[lo, hi)`` fits.
    """
    return lo + bisect.bisect_left(range(lo, hi), True, key=fits)


def validate_ratios(ratios, n_groups: int, max_ratio: float) -> np.ndarray:
    """Check a single ratio vector and return it as float64.

    Args:
        ratios: sequence of per-group ratios (fraction of channels removed).
        n_groups: expected length.
        max_ratio: largest allowed ratio.

    Returns:
        A float64 array of shape ``(n_groups,)``.

    Raises:
        ConfigError: wrong length, NaN/inf, or a value outside ``[0, max_ratio]``.
    """
    try:
        arr = np.asarray(ratios, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"ratios {ratios!r} are not numbers; pass one float per group") from e
    if arr.ndim != 1 or arr.shape[0] != n_groups:
        raise ConfigError(
            f"got {arr.size} ratios but the model has {n_groups} prunable groups; "
            f"pass exactly {n_groups} values (see `rlprune groups`)"
        )
    return validate_ratio_matrix(arr[None, :], n_groups, max_ratio)[0]


def validate_ratio_matrix(R, n_groups: int, max_ratio: float) -> np.ndarray:
    """Vectorised :func:`validate_ratios` for an ``(N, n_groups)`` array.

    Raises:
        ConfigError: wrong shape, NaN/inf, or a value outside ``[0, max_ratio]`` (names the first one).
    """
    R = np.asarray(R, dtype=np.float64)
    if R.ndim != 2 or R.shape[1] != n_groups:
        raise ConfigError(
            f"ratio matrix has shape {R.shape}; expected (N, {n_groups}), one column per prunable group"
        )
    bad = ~np.isfinite(R)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ConfigError(f"ratio for group_{j:02d} is {R[i, j]}; every ratio must be a finite number")
    out = (R < 0) | (R > max_ratio + 1e-9)
    if out.any():
        i, j = np.argwhere(out)[0]
        raise ConfigError(
            f"ratio {R[i, j]:g} for group_{j:02d} is outside [0, {max_ratio:g}]; "
            f"use values in that range (max_ratio is configurable)"
        )
    return R


def keep_counts(R: np.ndarray, channels: np.ndarray, round_to: int, max_ratio: float = 1.0) -> np.ndarray:
    """Channels kept per group for ratio matrix ``R`` (torch-pruning's rounding rule).

    ``floor(ratio * C)`` channels are removed, then the kept count is rounded *down* to a multiple of
    ``round_to`` (0.3 of 16 channels with ``round_to=8`` keeps 8), never below one block. Where rounding
    down would remove more than ``max_ratio`` of the group, it rounds up instead, so achieved ratios stay
    valid ratios (and ``achieved(achieved(r)) == achieved(r)``).

    Returns:
        Integer array shaped like ``R``.
    """
    C = channels[None, :].astype(np.int64)
    removed = np.floor(R * C + 1e-9).astype(np.int64)
    keep = C - removed
    if round_to > 1:
        down = keep - keep % round_to
        too_far = (C - down) > np.floor(max_ratio * C + 1e-9)
        keep = np.where(too_far, np.minimum(down + round_to, C), down)
    floor_ = np.minimum(C, max(1, round_to))
    return np.maximum(keep, floor_)


@dataclass(frozen=True)
class CostModel:
    """Batched exact cost of ratio vectors.

    Attributes:
        channels: ``(G,)`` channel count per group.
        dim_size: ``(D,)`` original size of every dim.
        dim_coef: ``(D, G)`` entries of dim ``d`` removed per channel removed from group ``g``.
        term_in, term_out: ``(T,)`` dim index of each term's input/output (-1: a constant size of 1).
        params_coef, macs_coef: ``(T, 4)`` the ``(a, b, c, d)`` of each term for params and MACs.
        round_to: kept channels are rounded down to a multiple of this.
        max_ratio: largest ratio a group may take.
    """

    channels: np.ndarray
    dim_size: np.ndarray
    dim_coef: np.ndarray
    term_in: np.ndarray
    term_out: np.ndarray
    params_coef: np.ndarray
    macs_coef: np.ndarray
    round_to: int = 1
    max_ratio: float = 0.9

    def __post_init__(self):
        G, D, T = len(self.channels), len(self.dim_size), len(self.term_in)
        if self.dim_coef.shape != (D, G):
            raise ValueError(f"dim_coef has shape {self.dim_coef.shape}, expected {(D, G)}")
        for name in ("params_coef", "macs_coef"):
            if getattr(self, name).shape != (T, 4):
                raise ValueError(f"{name} has shape {getattr(self, name).shape}, expected {(T, 4)}")
        if not 0 < self.max_ratio < 1:
            raise ValueError(f"max_ratio={self.max_ratio} must lie in (0, 1)")
        if self.round_to < 1:
            raise ValueError(f"round_to={self.round_to} must be >= 1")

    @property
    def n_groups(self) -> int:
        return len(self.channels)

    @functools.cached_property
    def base(self) -> tuple[float, float]:
        """(params, MACs) of the unpruned model."""
        p, m = self.cost_batch(np.zeros((1, self.n_groups)), validate=False)
        return float(p[0]), float(m[0])

    def achieved(self, R) -> np.ndarray:
        """Ratios after rounding, for a vector or a matrix (same shape out)."""
        R = np.asarray(R, dtype=np.float64)
        single = R.ndim == 1
        if single:
            R2 = validate_ratios(R, self.n_groups, self.max_ratio)[None, :]
        else:
            R2 = validate_ratio_matrix(R, self.n_groups, self.max_ratio)
        keep = keep_counts(R2, self.channels, self.round_to, self.max_ratio)
        out = 1.0 - keep / self.channels[None, :]
        return out[0] if single else out

    def cost(self, ratios) -> tuple[int, int]:
        """Exact (params, MACs) of the model pruned with ``ratios``.

        Raises:
            ConfigError: invalid ratio vector (see :func:`validate_ratios`).
        """
        r = validate_ratios(ratios, self.n_groups, self.max_ratio)
        p, m = self.cost_batch(r[None, :], validate=False)
        return int(round(p[0])), int(round(m[0]))

    def cost_batch(self, R, validate: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Exact params and MACs for each row of an ``(N, G)`` ratio matrix.

        Returns:
            Two float64 arrays of shape ``(N,)``.
        """
        R = validate_ratio_matrix(R, self.n_groups, self.max_ratio) if validate else np.asarray(R)
        removed = self.channels[None, :] - keep_counts(R, self.channels, self.round_to, self.max_ratio)
        bilinear, linear, const = self._folded
        out = np.empty((len(R), 2))
        for i in range(0, len(R), _CHUNK):  # chunks keep the (rows, dims) temporaries in cache
            kept = np.ones((len(removed[i:i + _CHUNK]), len(self.dim_size) + 1))  # dim -1: constant size 1
            kept[:, :-1] = self.dim_size[None, :] - removed[i:i + _CHUNK] @ self.dim_coef.T
            out[i:i + _CHUNK] = (kept[:, self.term_in] * kept[:, self.term_out]) @ bilinear + kept @ linear + const
        return out[:, 0], out[:, 1]

    @functools.cached_property
    def _folded(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The terms folded for two matrix products: ``(T, 2)`` bilinear weights, ``(D + 1, 2)`` per-dim
        linear weights (every term's ``b`` added to its input dim, ``c`` to its output dim), ``(2,)``
        constants; column 0 params, column 1 MACs."""
        coef = np.stack([self.params_coef, self.macs_coef], axis=-1)  # (T, 4, 2)
        linear = np.zeros((len(self.dim_size) + 1, 2))
        np.add.at(linear, self.term_in, coef[:, 1])
        np.add.at(linear, self.term_out, coef[:, 2])
        return coef[:, 0], linear, coef[:, 3].sum(axis=0)

    def ratios_of(self, R) -> tuple[np.ndarray, np.ndarray]:
        """(params_ratio, macs_ratio) = pruned / original for each row of ``R``."""
        p0, m0 = self.base
        p, m = self.cost_batch(np.atleast_2d(R))
        return p / p0, m / m0

    def to_dict(self) -> dict:
        """Plain-python form (for checkpoints and shipping to Ray workers)."""
        return {
            "channels": self.channels.tolist(),
            "dim_size": self.dim_size.tolist(),
            "dim_coef": self.dim_coef.tolist(),
            "term_in": self.term_in.tolist(),
            "term_out": self.term_out.tolist(),
            "params_coef": self.params_coef.tolist(),
            "macs_coef": self.macs_coef.tolist(),
            "round_to": self.round_to,
            "max_ratio": self.max_ratio,
        }

    @classmethod
    def from_dict(cls, d: dict) -> CostModel:
        """Inverse of :meth:`to_dict`."""
        G = len(d["channels"])
        return cls(
            channels=np.asarray(d["channels"], dtype=np.int64),
            dim_size=np.asarray(d["dim_size"], dtype=np.float64),
            dim_coef=np.asarray(d["dim_coef"], dtype=np.float64).reshape(-1, G),
            term_in=np.asarray(d["term_in"], dtype=np.int64),
            term_out=np.asarray(d["term_out"], dtype=np.int64),
            params_coef=np.asarray(d["params_coef"], dtype=np.float64).reshape(-1, 4),
            macs_coef=np.asarray(d["macs_coef"], dtype=np.float64).reshape(-1, 4),
            round_to=int(d["round_to"]),
            max_ratio=float(d["max_ratio"]),
        )

    def uniform_for_target(self, target: float, budget: str = "macs", tol: float = 1e-4) -> float:
        """The single ratio that, applied to every group, lands closest to ``target`` without exceeding it.

        Args:
            target: wanted pruned/original ratio of ``budget`` (e.g. 0.5).
            budget: ``"macs"`` or ``"params"``.

        Returns:
            The uniform ratio (bisection on the exact cost; rounding makes the cost a step function).
        """
        return float(self.scale_to_target(np.ones(self.n_groups), target, budget, tol))

    def scale_to_target(self, direction, target: float, budget: str = "macs", tol: float = 1e-4) -> float:
        """Largest-cost scale ``s`` with ``clip(s * direction)`` meeting ``target`` (bisection).

        Returns:
            The scale ``s``; ``s * direction`` (clipped to ``[0, max_ratio]``) is the ratio vector.

        Raises:
            ConfigError: unknown budget, or the target cannot be reached even at ``max_ratio``.
        """
        col = _budget_col(budget)
        direction = np.asarray(direction, dtype=np.float64)
        base = self.base[col]

        def frac(s):
            r = np.clip(s * direction, 0.0, self.max_ratio)
            return self.cost_batch(r[None, :], validate=False)[col][0] / base

        if not (direction >= 0).all() or direction.max() <= 0:
            raise ConfigError("a ratio direction needs non-negative entries, at least one positive")
        # Large enough that every group with a positive direction saturates at max_ratio.
        hi = self.max_ratio / direction[direction > 0].min()
        if frac(hi) > target + 1e-12:
            raise ConfigError(
                f"target {budget} ratio {target:g} is unreachable: even max_ratio={self.max_ratio:g} "
                f"keeps {frac(hi):.3f}; raise the target or max_ratio"
            )
        # Bisect on a grid of 2**n steps of hi / 2**n (at most ``tol`` apart); s = 0 is never returned.
        n = max(8, int(math.log2(hi / tol)) + 1)
        step = hi / 2**n
        return bisect_first(lambda k: frac(k * step) <= target, 1, 2**n) * step

    @functools.cached_property
    def _floor(self) -> np.ndarray:
        """(params, MACs) ratio with every group at ``max_ratio``: the most any target can ask."""
        p, m = self.cost_batch(np.full((1, self.n_groups), self.max_ratio), validate=False)
        return np.array([p[0] / self.base[0], m[0] / self.base[1]])

    def budget_ratio(self, R, budget: str = "macs", validate: bool = True) -> np.ndarray:
        """Pruned/original ``budget`` (``"macs"`` or ``"params"``) for each row of ``R``."""
        col = _budget_col(budget)
        return self.cost_batch(np.atleast_2d(R), validate=validate)[col] / self.base[col]

    def project_to_budget(self, R, target: float, budget: str = "macs", rounds: int = 4,
                          relax: bool = False) -> np.ndarray:
        """Raise each row's ratios by the least amount that meets ``target`` (the AMC-style wall).

        First ``r + s * (max_ratio - r)`` with the smallest ``s`` in [0, 1] whose exact cost meets the
        target (grid bisection, all rows at once). Moving every group together makes their channel-rounding
        steps coincide, so the result can undershoot the target by several steps; each raised group then
        steps back, in forward order, to its lowest channel breakpoint (or its request) that still meets
        the target. Rows that already meet it are returned unchanged; every ratio stays >= its request.

        With ``relax``, every row is brought onto the target from below, also rows pruned past it: those
        are first scaled down, ``s * r``, to the last scale on the bisection grid that misses the target,
        and that vector is raised and given back as above; then each group in turn, one channel per pass,
        keeps one more channel while the target still holds. A row keeps its shape up to a few channels
        and ends within the smallest one-channel step of its pruned groups below the target: within
        :data:`TARGET_SLACK` wherever channel granularity allows (:func:`meets_target` says whether it
        did). This is how the baselines land on the target; the env's wall leaves rows that fit alone.

        Args:
            R: ``(N, G)`` or ``(G,)`` ratios in ``[0, max_ratio]``.
            target: wanted pruned/original ratio of ``budget``.
            budget: ``"macs"`` or ``"params"``.
            rounds: grid-bisection rounds (4 rounds of a 33-point grid resolve ``s`` to ~1e-6, far below
                one channel; the give-back step then lands exactly on channel breakpoints).
            relax: land every row on the target from below (ratios may fall below their requests).

        Returns:
            Projected ratios, same shape as ``R``.

        Raises:
            ConfigError: the target is unreachable even with every group at ``max_ratio``.
        """
        R = np.asarray(R, dtype=np.float64)
        single = R.ndim == 1
        R2 = np.atleast_2d(R)
        floor = self._floor[_budget_col(budget)]
        if floor > target + _FIT_TOL:
            raise ConfigError(f"target {budget} ratio {target:g} is unreachable: every group at max_ratio="
                              f"{self.max_ratio:g} keeps {floor:.4f}; raise the target or max_ratio")
        ratio = self.budget_ratio(R2, budget, validate=False)
        if relax:
            low = np.flatnonzero(ratio < target - _FIT_TOL)
            if len(low):
                R2 = R2.copy()
                # Scale s * r falls in cost as s grows; the last infeasible s of the bracket is the request.
                R2[low] *= self._bisect_path(np.zeros_like(R2[low]), R2[low], target, budget, rounds)[0][:, None]
                ratio[low] = self.budget_ratio(R2[low], budget, validate=False)
        top = self.max_ratio - R2
        need = np.flatnonzero(ratio > target + _FIT_TOL)
        out = R2.copy()
        if len(need):
            hi = self._bisect_path(R2[need], top[need], target, budget, rounds)[1]
            out[need] = np.clip(R2[need] + hi[:, None] * top[need], 0.0, self.max_ratio)
        out = self._give_back(R2, out, target, budget)
        if relax:
            out = self._fill(out, target, budget)
        return out[0] if single else out

    def _bisect_path(self, start, step, target, budget, rounds) -> tuple[np.ndarray, np.ndarray]:
        """Per row, the bracket ``(lo, hi)`` in [0, 1] of the least ``s`` with ``start + s * step`` meeting target.

        Batched grid bisection: every round scores ``_GRID`` scales per row in one cost call and keeps the
        bracket [last infeasible, first feasible]; the cost must fall monotonically as ``s`` grows and the
        rows must meet the target at ``s = 1``.
        """
        n = len(start)
        lo, hi = np.zeros(n), np.ones(n)
        steps = np.linspace(0.0, 1.0, _GRID)
        for _ in range(rounds):
            S = lo[:, None] + (hi - lo)[:, None] * steps[None, :]  # (n, _GRID)
            trial = start[:, None, :] + S[..., None] * step[:, None, :]
            fits = self._fits(trial.reshape(-1, self.n_groups), target, budget)
            j = np.maximum(1, np.argmax(fits.reshape(n, _GRID), axis=1))
            lo, hi = S[np.arange(n), j - 1], S[np.arange(n), j]
        return lo, hi

    def _give_back(self, requested, enforced, target, budget) -> np.ndarray:
        """Lower each raised entry to its least breakpoint ``k / C`` (or its request) still meeting target.

        Cost never rises with a group's ratio, so the least fitting breakpoint is found by a bisection on
        ``k`` per entry (all rows of a group at once), after one check of the request itself.
        """
        out = enforced.copy()
        for g in range(self.n_groups):
            rows = np.flatnonzero(out[:, g] > requested[:, g] + 1e-12)
            if len(rows) == 0:
                continue
            C = int(self.channels[g])
            req, cur = requested[rows, g], out[rows, g]
            # An entry raised within its channel step costs the same as its request: give it back for free.
            trial = out[rows].copy()
            trial[:, g] = req
            back = (_removed(cur, C) == _removed(req, C)) | self._fits(trial, target, budget)
            out[rows[back], g] = req[back]
            rows, req, cur = rows[~back], req[~back], cur[~back]
            # Least k in (removed(req), removed(cur)] whose k / C fits; k = removed(cur) fits (same cost as cur).
            lo, hi = _removed(req, C) + 1, _removed(cur, C)
            while len(live := np.flatnonzero(lo < hi)):
                mid = (lo[live] + hi[live]) // 2
                trial = out[rows[live]].copy()
                trial[:, g] = mid / C
                fits = self._fits(trial, target, budget)
                hi[live] = np.where(fits, mid, hi[live])
                lo[live] = np.where(fits, lo[live], mid + 1)
            out[rows, g] = np.minimum(hi / C, cur)
        return out

    def _fits(self, R, target, budget) -> np.ndarray:
        """Which rows of ``R`` meet ``target`` (exact cost, float slack ``_FIT_TOL``)."""
        return self.budget_ratio(R, budget, validate=False) <= target + _FIT_TOL

    def _fill(self, R, target, budget) -> np.ndarray:
        """Keep one more channel per group and pass, in forward order, while the row still meets the target.

        The give-back only lowers entries to their requests, so after the relax step a gap of up to one
        coarse channel step can remain. Each pass gives every group that still fits one channel back, so a
        group moves by a channel or two, not more, and the row ends where no single channel fits any more.
        """
        out = R.copy()
        rows = np.arange(len(out))
        while len(rows):
            moved = np.zeros(len(rows), dtype=bool)
            for g in range(self.n_groups):
                C = int(self.channels[g])
                k = _removed(out[rows, g], C)
                trial = out[rows].copy()
                trial[:, g] = np.maximum(k - 1, 0) / C
                ok = (k > 0) & self._fits(trial, target, budget)
                out[rows[ok], g] = trial[ok, g]
                moved |= ok
            rows = rows[moved]
        return out


def _removed(r: np.ndarray, C: int) -> np.ndarray:
    """Channels ``floor(r * C)`` removed at ratio ``r`` (before rounding to ``round_to``)."""
    return np.floor(r * C + 1e-9).astype(np.int64)


def _budget_col(budget: str) -> int:
    if budget not in ("params", "macs"):
        raise ConfigError(f"budget {budget!r} is unknown; use 'macs' or 'params'")
    return 0 if budget == "params" else 1
