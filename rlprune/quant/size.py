"""Bit widths and the exact stored size of a mixed-precision model, from bit vectors alone (numpy, no torch).

For a bit vector ``b`` over the quantizable layers ``l`` (weight entries ``n_l``, output channels ``c_l``)::

    bits(b)     = sum_l n_l * b_l            # the packed integer weights
                + 32 * sum_l c_l             # one float32 scale per output channel (stored as float32)
                + 32 * other                 # every other parameter (biases, BN affine) stays float32
    size_ratio  = bits(b) / (32 * params)    # params: every parameter of the fp32 model

so a batch of bit vectors costs one matrix-vector product. Buffers (BN running statistics) are in neither
count: the fp32 reference excludes them too, and at deployment they fold into the BN affine. This is
exactly what :mod:`rlprune.quant.export` stores as its payload, up to rounding each layer's packed weights
up to whole bytes (fewer than 8 bits per layer; ``tests/test_quant.py`` checks the two against each other).

:class:`QuantSpace` holds the per-layer numbers and the layer features the bits env observes; it is built
from a model once (:meth:`QuantSpace.from_model`) and travels as a JSON record (env configs, manifests).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rlprune.errors import ConfigError

MIN_BITS = 2
"""Fewest weight bits a layer may get (ternary weights)."""
MAX_BITS = 8
"""Most weight bits a layer may get."""
SCALE_BITS = 32
"""Bits per stored per-channel scale (float32)."""
FP_BITS = 32
"""Bits per unquantized parameter and per parameter of the fp32 reference."""
_FIT_TOL = 1e-12  # float slack when comparing a size ratio (a quotient of exact integers) with its target
LAYER_FEATURES = ("log_params", "params_share", "log_channels", "fan_in", "is_linear", "position")
"""What the bits env shows each layer's agent, in this order (see :meth:`QuantSpace.features`)."""


@dataclass(frozen=True)
class QuantSpace:
    """The quantizable layers of one model and its exact size model.

    Attributes:
        names: qualified module names, in :func:`rlprune.quant.fake.quant_layers` order.
        kinds: ``"conv"`` or ``"linear"`` per layer.
        numel: weight entries per layer.
        channels: output channels per layer (one scale each).
        other_params: parameters that stay float32 (biases, normalisation affine, anything else).
    """

    names: tuple[str, ...]
    kinds: tuple[str, ...]
    numel: tuple[int, ...]
    channels: tuple[int, ...]
    other_params: int

    def __post_init__(self) -> None:
        n = len(self.names)
        if n == 0:
            raise ConfigError("a QuantSpace needs at least one conv or linear layer")
        for field in ("kinds", "numel", "channels"):
            if len(getattr(self, field)) != n:
                raise ConfigError(f"QuantSpace.{field} has {len(getattr(self, field))} entries for {n} layers; "
                                  "give one per layer")
        if any(int(v) < 1 for v in (*self.numel, *self.channels)):
            raise ConfigError("QuantSpace.numel and .channels must be positive integers")
        if int(self.other_params) < 0:
            raise ConfigError(f"QuantSpace.other_params={self.other_params} must be >= 0")

    # ----- construction and records ---------------------------------------------------------------
    @classmethod
    def from_model(cls, model) -> QuantSpace:
        """Read the quantizable layers of a (pruned or base, unwrapped) torch model.

        Raises:
            ConfigError: no conv or linear layer.
        """
        from rlprune.quant.fake import quant_layers  # deferred: the size model itself needs no torch

        layers = quant_layers(model)
        if not layers:
            raise ConfigError(f"{type(model).__name__} has no conv or linear layer to quantize")
        numel = tuple(int(m.weight.numel()) for _, m in layers)
        total = sum(int(p.numel()) for p in model.parameters())
        return cls(names=tuple(n for n, _ in layers),
                   kinds=tuple("linear" if type(m).__name__ == "Linear" else "conv" for _, m in layers),
                   numel=numel, channels=tuple(int(m.weight.shape[0]) for _, m in layers),
                   other_params=total - sum(numel))

    def to_record(self) -> dict:
        """A JSON-serialisable record (:meth:`from_record` inverts it)."""
        return {"names": list(self.names), "kinds": list(self.kinds), "numel": list(self.numel),
                "channels": list(self.channels), "other_params": int(self.other_params)}

    @classmethod
    def from_record(cls, record) -> QuantSpace:
        """Rebuild from :meth:`to_record`'s dict (or return a ``QuantSpace`` as is).

        Raises:
            ConfigError: missing or malformed keys.
        """
        if isinstance(record, QuantSpace):
            return record
        try:
            return cls(names=tuple(record["names"]), kinds=tuple(record["kinds"]),
                       numel=tuple(int(v) for v in record["numel"]),
                       channels=tuple(int(v) for v in record["channels"]), other_params=int(record["other_params"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"not a QuantSpace record ({type(e).__name__}: {e}); build one with "
                              "QuantSpace.from_model(model).to_record()") from e

    # ----- sizes ------------------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        """Quantizable layers (agents of the bits env)."""
        return len(self.names)

    @property
    def layer_ids(self) -> list[str]:
        """``layer_00`` ... in layer order."""
        return [f"layer_{i:02d}" for i in range(self.n_layers)]

    @property
    def params(self) -> int:
        """Every parameter of the model."""
        return int(sum(self.numel)) + int(self.other_params)

    @property
    def fp32_bits(self) -> int:
        """Stored bits of the fp32 reference: ``32 * params``."""
        return FP_BITS * self.params

    @property
    def fixed_bits(self) -> int:
        """Bits that do not depend on the bit vector: the scales and the float32 parameters."""
        return SCALE_BITS * int(sum(self.channels)) + FP_BITS * int(self.other_params)

    def size_bits(self, B, validate: bool = True) -> np.ndarray:
        """Stored bits of each row of a bit matrix (module docstring).

        Args:
            B: ``(N, n_layers)`` (or one ``(n_layers,)`` vector) of integers in 2..8.
            validate: check every row first (off for trusted inner loops).

        Returns:
            An int64 array of shape ``(N,)``.

        Raises:
            ConfigError: a bad row (wrong length, NaN, a fraction, outside 2..8).
        """
        B = self._matrix(B, validate)
        return B @ np.asarray(self.numel, dtype=np.int64) + self.fixed_bits

    def size_ratio(self, B, validate: bool = True) -> np.ndarray:
        """Stored size of each row relative to the fp32 model: ``size_bits / (32 * params)``.

        Args:
            B: as for :meth:`size_bits`.
            validate: as for :meth:`size_bits`.

        Returns:
            A float64 array of shape ``(N,)``.
        """
        return self.size_bits(B, validate) / float(self.fp32_bits)

    @property
    def min_ratio(self) -> float:
        """The smallest reachable ``size_ratio`` (every layer at 2 bits)."""
        return float(self.size_ratio(np.full(self.n_layers, MIN_BITS), validate=False)[0])

    def check_target(self, target: float) -> float:
        """Validate a size target and return it as float.

        Raises:
            ConfigError: not a number in (0, 1], or below :attr:`min_ratio` (names the smallest one).
        """
        try:
            t = float(target)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"target size {target!r} is not a number; pass a ratio in (0, 1], e.g. 0.125") from e
        if not np.isfinite(t) or not 0 < t <= 1:
            raise ConfigError(f"target size {t!r} is outside (0, 1]; pass the stored size relative to fp32, "
                              "e.g. 0.125 for about 4 bits per weight")
        if t < self.min_ratio - _FIT_TOL:
            raise ConfigError(f"target size {t:g} is unreachable: every layer at {MIN_BITS} bits keeps "
                              f"{self.min_ratio:.4f} of the fp32 size (scales and fp32 parameters included); "
                              f"use a target >= {np.ceil(self.min_ratio * 1e4) / 1e4:g}")
        return t

    def fits(self, B, target: float) -> np.ndarray:
        """Whether each row's ``size_ratio`` is at most ``target`` (exact-integer rounding slack only)."""
        return self.size_ratio(B, validate=False) <= target + _FIT_TOL

    def fit_to_budget(self, bits, target: float) -> np.ndarray:
        """Lower bits until a vector fits ``target``: one bit at a time from the layer with the most bits,
        the one with the most weights among those (so a uniform vector stays as uniform as the budget allows).

        Args:
            bits: one integer in 2..8 per layer.
            target: a reachable size ratio (see :meth:`check_target`).

        Returns:
            The fitted int64 vector (unchanged when it already fits).
        """
        return self.fit_many(validate_bits(bits, self.n_layers)[None], target)[0]

    def fit_many(self, B, target: float) -> np.ndarray:
        """:meth:`fit_to_budget` for every row of an ``(N, n_layers)`` bit matrix at once.

        Raises:
            ConfigError: an unreachable target, or entries outside 2..8.
        """
        B = self._matrix(B, validate=True).astype(np.int64)
        t = self.check_target(target)
        numel = np.asarray(self.numel, dtype=np.int64)
        # Most bits first, then most weights; argmax takes the first layer of a full tie, as a loop would.
        weight = numel.max() + 1
        rows = np.flatnonzero(~self.fits(B, t))
        while rows.size:
            key = B[rows] * weight + numel
            B[rows, np.argmax(key, axis=1)] -= 1
            rows = rows[~self.fits(B[rows], t)]
        return B

    # ----- features -----------------------------------------------------------------------------------
    def features(self) -> np.ndarray:
        """Per-layer features of :data:`LAYER_FEATURES`, about in [0, 1] (float32, ``(n_layers, 6)``)."""
        numel = np.asarray(self.numel, dtype=np.float64)
        ch = np.asarray(self.channels, dtype=np.float64)
        log_max = max(np.log(numel.max()), 1.0)
        pos = np.arange(self.n_layers) / max(self.n_layers - 1, 1)
        return np.stack([np.log(numel) / log_max, numel / numel.sum(), np.log2(ch) / 10.0,
                         np.log2(numel / ch) / 12.0, np.asarray([k == "linear" for k in self.kinds], float), pos],
                        axis=1).astype(np.float32)

    def _matrix(self, B, validate: bool) -> np.ndarray:
        B = np.asarray(B)
        if B.ndim == 1:
            B = B[None, :]
        if validate:
            if B.ndim != 2:
                raise ConfigError(f"bit matrix has shape {B.shape}; expected (N, {self.n_layers})")
            B = np.stack([validate_bits(row, self.n_layers) for row in B]) if len(B) else B.astype(np.int64)
        return B.astype(np.int64, copy=False)


def validate_bits(bits, n_layers: int) -> np.ndarray:
    """Check one bit vector and return it as int64.

    Args:
        bits: one integer in ``[MIN_BITS, MAX_BITS]`` per quantizable layer.
        n_layers: how many the model has.

    Returns:
        An int64 array of shape ``(n_layers,)``.

    Raises:
        ConfigError: wrong length, a non-number, NaN/inf, a fraction, or a value outside 2..8 (names it).
    """
    try:
        arr = np.asarray(bits, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bits {bits!r} are not numbers; pass one integer in {MIN_BITS}..{MAX_BITS} per layer") from e
    if arr.ndim != 1 or arr.shape[0] != n_layers:
        raise ConfigError(f"got {arr.size} bit widths but the model has {n_layers} quantizable layers (conv/linear); "
                          f"pass exactly {n_layers} integers in {MIN_BITS}..{MAX_BITS}")
    for j, v in enumerate(arr):
        if not np.isfinite(v) or v != round(v) or not MIN_BITS <= v <= MAX_BITS:
            raise ConfigError(f"bits {v:g} for layer_{j:02d} is not an integer in {MIN_BITS}..{MAX_BITS}; "
                              f"use a whole number of bits from {MIN_BITS} to {MAX_BITS}")
    return arr.astype(np.int64)


def uniform_bits(n_layers: int, bits: int) -> np.ndarray:
    """The vector with every layer at ``bits`` (2..8)."""
    return validate_bits([bits] * n_layers, n_layers)


__all__ = ["FP_BITS", "LAYER_FEATURES", "MAX_BITS", "MIN_BITS", "SCALE_BITS", "QuantSpace", "uniform_bits",
           "validate_bits"]
