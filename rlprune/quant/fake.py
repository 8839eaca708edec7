"""Per-output-channel symmetric weight fake quantization, with one bit width per quantizable layer.

For a layer's weight ``W`` (output channels first) at ``b`` bits, channel ``c`` gets the scale::

    qmax = 2**(b - 1) - 1                 # 127 at 8 bits, 1 at 2 bits (ternary)
    s_c  = max|W_c| / qmax                # 1.0 for an all-zero channel (any positive scale quantizes it to 0)
    Q_c  = clamp(round(W_c / s_c), -qmax, qmax)      # the stored integers
    W'_c = Q_c * s_c                                 # what the forward pass uses

The range is *restricted* symmetric (``-qmax .. qmax``, no ``-2**(b-1)``), so zero is exact and ``b = 2``
is ternary. The rounding and the gradient come from ``torch.fake_quantize_per_channel_affine``: its backward
passes gradients straight through inside the clamp range (which, with the scale set by the channel's
maximum, is every weight). The scale is detached: it follows the weights, it is not learned.

Which layers: every ``Conv1d/2d/3d`` and ``Linear`` weight, one bit width per layer, in ``named_modules``
order (ids ``layer_00`` ...). Unlike channel pruning, per-channel weight quantization couples no layers (a
residual addition sums activations, which stay fp32), so nothing has to share a bit width. Biases and
normalisation parameters stay fp32, and so do activations.

:func:`wrap` puts the fake quantizer on each weight with ``torch.nn.utils.parametrize`` (so the fp32 weight
stays the trained parameter: quantization-aware fine-tuning is plain training of the wrapped model);
:func:`bake` writes the quantized values into plain weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import parametrize

from rlprune.errors import ConfigError
from rlprune.quant.size import MAX_BITS, MIN_BITS, validate_bits

QUANT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
"""Layer types whose weights are quantized (output channels on dim 0)."""


def quant_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The quantizable layers of ``model``, in ``named_modules`` order.

    Args:
        model: any module (wrapped or not).

    Returns:
        ``[(qualified name, layer), ...]``; layer ``i`` is agent/column ``layer_{i:02d}``.
    """
    return [(name, m) for name, m in model.named_modules() if isinstance(m, QUANT_TYPES)]


def qmax(bits: int) -> int:
    """Largest stored integer at ``bits`` bits (restricted symmetric range ``-qmax .. qmax``)."""
    return 2 ** (int(bits) - 1) - 1


def channel_scales(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel scales ``max|W_c| / qmax`` (float32, detached; 1.0 for an all-zero channel).

    Args:
        weight: a weight with output channels on dim 0.
        bits: the layer's bit width.

    Returns:
        A float32 tensor of shape ``(out_channels,)``.
    """
    amax = weight.detach().abs().reshape(weight.shape[0], -1).amax(dim=1).float()
    return torch.where(amax > 0, amax / qmax(bits), torch.ones_like(amax))


def fake_quantize(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """``weight`` rounded to ``bits`` bits per output channel (module docstring); gradients pass straight through.

    Args:
        weight: a float weight with output channels on dim 0.
        bits: 2..8.

    Returns:
        A tensor like ``weight`` holding ``Q * s`` per channel.
    """
    scale = channel_scales(weight, bits).to(weight.device)
    zero = torch.zeros(weight.shape[0], dtype=torch.int32, device=weight.device)
    q = qmax(bits)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -q, q)


def quantize_ints(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The stored form of a weight: integers and per-channel scales with ``Q * s == fake_quantize(W)`` exactly.

    Args:
        weight: a float weight with output channels on dim 0.
        bits: 2..8.

    Returns:
        ``(Q, s)``: an int8 tensor shaped like ``weight`` and the float32 scales.
    """
    scale = channel_scales(weight, bits)
    fq = fake_quantize(weight.detach().float().cpu(), bits)
    view = scale.reshape(-1, *([1] * (weight.dim() - 1)))
    # fq is Q * s rounded to float32; dividing by s lands within an ulp of the integer Q, so round() recovers it.
    return torch.round(fq / view).to(torch.int8), scale


class WeightFakeQuant(nn.Module):
    """A parametrization: the layer's weight as seen by its forward pass, fake-quantized to ``bits`` bits."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = int(bits)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return fake_quantize(weight, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


def is_wrapped(model: nn.Module) -> bool:
    """Whether any quantizable layer of ``model`` carries a :class:`WeightFakeQuant`."""
    return any(_quantizer(m) is not None for _, m in quant_layers(model))


def bits_of(model: nn.Module) -> list[int]:
    """The bit widths of a wrapped model, in layer order.

    Raises:
        ConfigError: a layer without a quantizer (the model was not made by :func:`wrap`).
    """
    out = []
    for name, m in quant_layers(model):
        fq = _quantizer(m)
        if fq is None:
            raise ConfigError(f"layer {name!r} is not fake-quantized; wrap the model with rlprune.quant.fake.wrap")
        out.append(fq.bits)
    return out


def wrap(model: nn.Module, bits) -> nn.Module:
    """A copy of ``model`` whose every quantizable layer uses its bit width in forward.

    The fp32 weights stay the parameters (``parametrizations.weight.original``), so training the copy is
    quantization-aware training with straight-through gradients; the original model is untouched.

    Args:
        model: a (pruned or base) model that is not wrapped yet.
        bits: one integer in 2..8 per layer of :func:`quant_layers`.

    Returns:
        The wrapped copy, in the mode ``model`` was in.

    Raises:
        ConfigError: bad bits (see :func:`validate_bits`), or a model that is already wrapped.
    """
    if is_wrapped(model):
        raise ConfigError("the model is already fake-quantized; wrap the fp32 model (or bake() this one first)")
    layers = quant_layers(model)
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no conv or linear layer to quantize")
    arr = validate_bits(bits, len(layers))
    out = copy.deepcopy(model)
    for (_, m), b in zip(quant_layers(out), arr, strict=True):
        parametrize.register_parametrization(m, "weight", WeightFakeQuant(int(b)))
    return out


def bake(model: nn.Module) -> nn.Module:
    """A plain copy of a wrapped model whose weights hold the quantized values ``Q * s``.

    Args:
        model: a model made by :func:`wrap` (possibly fine-tuned since).

    Returns:
        A copy without parametrizations: same forward output, plain ``weight`` parameters.

    Raises:
        ConfigError: the model is not wrapped.
    """
    return unwrapped_copy(model, quantized=True)


def unwrapped_copy(model: nn.Module, quantized: bool) -> nn.Module:
    """A copy of a wrapped model without its fake quantizers.

    Not ``parametrize.remove_parametrizations`` on a deep copy: a deep copy shares the injected
    ``Parametrized<Layer>`` class with the original, and removing the parametrization deletes the class's
    ``weight`` property, which breaks the original model too (torch 2.13). Each copied layer gets its own
    class back instead.

    Args:
        model: a model made by :func:`wrap`.
        quantized: the copy's weights hold ``Q * s`` (True) or the fp32 weights being trained (False).

    Returns:
        The plain copy.

    Raises:
        ConfigError: the model is not wrapped.
    """
    bits_of(model)  # raises on an unwrapped model
    out = copy.deepcopy(model)
    for _, m in quant_layers(out):
        plist = m.parametrizations["weight"]
        with torch.no_grad():
            value = plist.original.detach().clone()
            if quantized:
                value = fake_quantize(value, _quantizer(m).bits)
        m.__class__ = type(m).__bases__[0]  # parametrize subclasses the layer's own class once
        del m._modules["parametrizations"]
        m._parameters["weight"] = nn.Parameter(value, requires_grad=plist.original.requires_grad)
    return out


def _quantizer(layer: nn.Module) -> WeightFakeQuant | None:
    if not parametrize.is_parametrized(layer, "weight"):
        return None
    found = [p for p in layer.parametrizations["weight"] if isinstance(p, WeightFakeQuant)]
    return found[0] if found else None


__all__ = ["MAX_BITS", "MIN_BITS", "QUANT_TYPES", "WeightFakeQuant", "bake", "bits_of", "channel_scales",
           "fake_quantize", "is_wrapped", "qmax", "quant_layers", "unwrapped_copy", "validate_bits", "wrap"]
