"""Ratio-vector samplers: where in ``[0, max_ratio]^n_groups`` the world model gets its training data.

Every sampler is a function with one signature, registered by name::

    fn(n, cost_model, features, rng, cfg, centers) -> (n, n_groups) float64 array in [0, max_ratio]

- ``uniform``: iid uniform ratios (covers the cube, but every vector prunes ~max_ratio/2 on average).
- ``sobol``: scrambled Sobol points (scipy), an even cover of the cube with fewer gaps than ``uniform``.
- ``rules``: the handcrafted families a human would try (the same ratio everywhere, larger groups pruned
  more, deeper groups pruned more), each at a random strength with per-group noise.
- ``budget``: random directions scaled so the exact MACs (or params) ratio lands in ``cfg.band``; this
  concentrates samples where the search will look (rejection + vectorised bisection on the cost model).
- ``around``: Gaussian perturbations of given vectors (``centers``), for refinement near a policy.
- ``mixed`` (the default): a blend of the above, in the proportions of ``cfg.mix``.

Numpy only: the cost model is numpy and ``features`` is the ``PruningSpace.features()`` matrix.

    cfg = SamplerConfig(name="budget", band=(0.3, 0.7))
    R = cfg.draw(64, space.cost_model, space.features(), np.random.default_rng(0))
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from scipy.stats import qmc

from rlprune.errors import ConfigError
from rlprune.space.costmodel import CostModel

#: Column of ``PruningSpace.features()`` holding depth in [0, 1] (``FEATURE_NAMES[0]`` in rlprune.space.pruning,
#: not imported here because that module needs torch).
DEPTH_FEATURE = 0

#: The handcrafted rule families of the ``rules`` sampler.
RULES = ("uniform", "larger_group", "depth")

SamplerFn = Callable[..., np.ndarray]
SAMPLERS: dict[str, SamplerFn] = {}


def register_sampler(name: str):
    """Decorator adding a sampler function to ``SAMPLERS`` under ``name``."""

    def deco(fn: SamplerFn) -> SamplerFn:
        SAMPLERS[name] = fn
        return fn

    return deco


@dataclass(frozen=True)
class SamplerConfig:
    """Which sampler to use and its knobs (validated on construction)."""

    name: str = "mixed"
    """Registered sampler name: uniform, sobol, rules, budget, around or mixed."""
    max_ratio: float | None = None
    """Largest ratio drawn; None = the cost model's ``max_ratio`` (a larger value is capped to it)."""
    noise: float = 0.05
    """Std of the per-group Gaussian noise of ``rules``, as a fraction of ``max_ratio``."""
    band: tuple[float, float] = (0.3, 0.7)
    """``budget``: the accepted range of the pruned/original cost ratio."""
    budget: str = "macs"
    """``budget``: which cost the band applies to, ``macs`` or ``params``."""
    sigma: float = 0.05
    """``around``: std of the Gaussian perturbation, in ratio units."""
    mix: tuple[tuple[str, float], ...] = (("uniform", 0.15), ("sobol", 0.15), ("rules", 0.3), ("budget", 0.4))
    """``mixed``: (sampler, weight) pairs; weights are normalised. ``around`` joins only when centers are given."""
    max_tries: int = 50
    """``budget``: rounds of rejection before the band is declared unreachable."""

    def __post_init__(self):
        if self.name not in SAMPLERS:
            raise ValueError(f"SamplerConfig.name={self.name!r} is unknown; use one of {', '.join(SAMPLERS)}")
        if self.max_ratio is not None and not 0 < self.max_ratio < 1:
            raise ValueError(f"SamplerConfig.max_ratio={self.max_ratio!r} must lie in (0, 1) or be None")
        for field in ("noise", "sigma"):
            if not getattr(self, field) >= 0:
                raise ValueError(f"SamplerConfig.{field}={getattr(self, field)!r} must be >= 0, e.g. 0.05")
        lo, hi = self.band
        if not 0 < lo < hi <= 1:
            raise ValueError(f"SamplerConfig.band={self.band!r} must satisfy 0 < low < high <= 1, e.g. (0.3, 0.7)")
        if self.budget not in ("macs", "params"):
            raise ValueError(f"SamplerConfig.budget={self.budget!r} must be 'macs' or 'params'")
        if self.max_tries < 1:
            raise ValueError(f"SamplerConfig.max_tries={self.max_tries!r} must be >= 1")
        names = [m for m, _ in self.mix]
        bad = [m for m in names if m not in SAMPLERS or m == "mixed"]
        if bad or not self.mix:
            raise ValueError(f"SamplerConfig.mix names {bad or 'nothing'}; use (name, weight) pairs of "
                             f"{', '.join(s for s in SAMPLERS if s != 'mixed')}")
        weights = [w for _, w in self.mix]
        if min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"SamplerConfig.mix weights {weights} must be >= 0 with a positive sum")

    def cap(self, cost_model: CostModel) -> float:
        """The largest ratio drawn for this cost model."""
        return min(self.max_ratio or cost_model.max_ratio, cost_model.max_ratio)

    def draw(self, n: int, cost_model: CostModel, features=None, rng=None, centers=None) -> np.ndarray:
        """Draw ``n`` ratio vectors with this sampler (see :func:`sample`)."""
        _check_n(n)
        rng = np.random.default_rng(rng)
        if n == 0:
            return np.zeros((0, cost_model.n_groups))
        R = SAMPLERS[self.name](int(n), cost_model, features, rng, self, centers)
        assert R.shape == (n, cost_model.n_groups), R.shape
        return np.clip(R, 0.0, self.cap(cost_model))


def _check_n(n) -> None:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
        raise ConfigError(f"number of samples {n!r} must be a non-negative integer")


def sample(name: str, n: int, cost_model: CostModel, features=None, rng=None, centers=None, **opts) -> np.ndarray:
    """Draw ``n`` ratio vectors with a named sampler.

    Args:
        name: a key of ``SAMPLERS``.
        n: number of vectors.
        cost_model: the model's ``CostModel`` (group count, ``max_ratio``, exact costs).
        features: optional ``(n_groups, F)`` group features; ``rules`` reads depth from it.
        rng: a ``numpy.random.Generator`` or a seed; the same seed gives the same vectors.
        centers: ``(m, n_groups)`` vectors that ``around`` perturbs (and ``mixed`` then includes).
        **opts: any other ``SamplerConfig`` field.

    Returns:
        A float64 array of shape ``(n, n_groups)`` with values in ``[0, max_ratio]``.

    Raises:
        ValueError: a bad option (names the field); ``ConfigError`` for an unreachable budget band or
            ``around`` without centers.
    """
    return SamplerConfig(name=name, **opts).draw(n, cost_model, features, rng, centers)


# ---------------------------------------------------------------------------------------- samplers
@register_sampler("uniform")
def _uniform(n, cm, features, rng, cfg, centers):
    return rng.uniform(0.0, cfg.cap(cm), size=(n, cm.n_groups))


@register_sampler("sobol")
def _sobol(n, cm, features, rng, cfg, centers):
    engine = qmc.Sobol(d=cm.n_groups, scramble=True, rng=rng)
    # Sobol's balance holds for powers of two: draw the next one up and keep the first n.
    m = max(0, int(np.ceil(np.log2(n))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pts = engine.random_base2(m)[:n]
    return pts * cfg.cap(cm)


def rule_directions(cm: CostModel, features=None) -> dict[str, np.ndarray]:
    """The per-group shape of each handcrafted rule, scaled so its largest entry is 1.

    Args:
        cm: the cost model (channel counts).
        features: optional group features; their depth column is used when given, else group order.

    Returns:
        ``{rule: (n_groups,) array}`` for every rule in ``RULES``.
    """
    G = cm.n_groups
    if features is not None:
        depth = np.asarray(features, dtype=np.float64)[:, DEPTH_FEATURE]
    else:
        depth = np.arange(G) / max(1, G - 1)
    size = np.log2(cm.channels.astype(np.float64) + 1)
    return {
        "uniform": np.ones(G),
        "larger_group": size / size.max(),
        # (depth + 1) / 2 keeps the first group prunable instead of pinning it at exactly 0
        "depth": (depth + 1.0) / 2.0,
    }


@register_sampler("rules")
def _rules(n, cm, features, rng, cfg, centers):
    dirs = np.stack(list(rule_directions(cm, features).values()))  # (n_rules, G)
    which = rng.integers(0, len(dirs), size=n)
    cap = cfg.cap(cm)
    strength = rng.uniform(0.0, cap, size=(n, 1))
    noise = rng.normal(0.0, cfg.noise * cap, size=(n, cm.n_groups))
    return strength * dirs[which] + noise


@register_sampler("budget")
def _budget(n, cm, features, rng, cfg, centers):
    col = 0 if cfg.budget == "params" else 1
    base = cm.base[col]
    lo, hi = cfg.band
    cap = cfg.cap(cm)
    out: list[np.ndarray] = []
    have = 0
    for _ in range(cfg.max_tries):
        k = 2 * (n - have) + 8  # oversample: some rows miss the band after rounding
        # Random directions of varied sharpness: power 1 is uniform, large powers favour a few groups.
        D = rng.uniform(0.0, 1.0, size=(k, cm.n_groups)) ** rng.uniform(0.3, 3.0, size=(k, 1))
        D /= D.max(axis=1, keepdims=True) + 1e-12
        target = rng.uniform(lo, hi, size=k)
        # Vectorised bisection on the scale s of each row: cost(clip(s * d)) decreases with s.
        s_lo, s_hi = np.zeros(k), np.full(k, cap)
        for _ in range(30):
            mid = 0.5 * (s_lo + s_hi)
            frac = cm.cost_batch(np.clip(mid[:, None] * D, 0.0, cap), validate=False)[col] / base
            above = frac > target
            s_lo = np.where(above, mid, s_lo)
            s_hi = np.where(above, s_hi, mid)
        R = np.clip(s_hi[:, None] * D, 0.0, cap)
        frac = cm.cost_batch(R, validate=False)[col] / base
        ok = R[(frac >= lo) & (frac <= hi)]
        out.append(ok)
        have += len(ok)
        if have >= n:
            return np.concatenate(out)[:n]
    reach = cm.cost_batch(np.full((1, cm.n_groups), cap), validate=False)[col][0] / base
    raise ConfigError(f"budget band {cfg.band} of the {cfg.budget} ratio is unreachable (max_ratio={cap:g} keeps "
                      f"{reach:.3f} at best; rounding may also skip the band); widen the band or raise max_ratio")


@register_sampler("around")
def _around(n, cm, features, rng, cfg, centers):
    if centers is None:
        raise ConfigError("sampler 'around' needs centers: the (m, n_groups) ratio vectors to perturb")
    C = np.atleast_2d(np.asarray(centers, dtype=np.float64))
    if C.shape[1] != cm.n_groups or len(C) == 0 or not np.isfinite(C).all():
        raise ConfigError(f"centers have shape {C.shape}; expected finite (m, {cm.n_groups}) ratio vectors")
    return C[rng.integers(0, len(C), size=n)] + rng.normal(0.0, cfg.sigma, size=(n, cm.n_groups))


@register_sampler("mixed")
def _mixed(n, cm, features, rng, cfg, centers):
    return _mixed_labelled(n, cm, features, rng, cfg, centers)[0]


def _mixed_labelled(n, cm, features, rng, cfg, centers) -> tuple[np.ndarray, np.ndarray]:
    mix = [(m, w) for m, w in cfg.mix if m != "around" or centers is not None]
    if centers is not None and all(m != "around" for m, _ in mix):
        mix.append(("around", sum(w for _, w in mix) / len(mix)))
    p = np.array([w for _, w in mix], dtype=np.float64)
    counts = rng.multinomial(n, p / p.sum())
    parts = [replace(cfg, name=m).draw(int(c), cm, features, rng, centers)
             for (m, _), c in zip(mix, counts, strict=True) if c]
    labels = np.concatenate([[m] * c for (m, _), c in zip(mix, counts, strict=True) if c])
    perm = rng.permutation(n)
    return np.concatenate(parts)[perm], labels[perm]


def draw_labelled(cfg: SamplerConfig, n: int, cost_model: CostModel, features=None, rng=None,
                  centers=None) -> tuple[np.ndarray, list[str]]:
    """Like :meth:`SamplerConfig.draw`, also naming the sampler behind each row.

    Returns:
        ``(R, names)``: the ``(n, n_groups)`` matrix and ``n`` sampler names (``mixed`` names its parts).
    """
    _check_n(n)
    if cfg.name != "mixed" or n == 0:
        return cfg.draw(n, cost_model, features, rng, centers), [cfg.name] * n
    R, labels = _mixed_labelled(n, cost_model, features, np.random.default_rng(rng), cfg, centers)
    return np.clip(R, 0.0, cfg.cap(cost_model)), [str(x) for x in labels]


__all__ = ["DEPTH_FEATURE", "RULES", "SAMPLERS", "SamplerConfig", "draw_labelled", "register_sampler",
           "rule_directions", "sample"]
