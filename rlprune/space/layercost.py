"""Per-layer cost formulas: how torch-pruning's counter prices one layer call, as a function of the
kept input and output channels.

Each formula is the ``(a, b, c, d)`` of ``a * in * out + b * in + c * out + d`` (see ``rlprune.space.costmodel``).
They mirror ``torch_pruning.utils.count_ops_and_params``: MACs per sample, parameters once per layer.
Layer kinds without a formula here are priced as constants and the groups that touch them are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORM = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)
ACT = (nn.ReLU, nn.PReLU, nn.ELU, nn.LeakyReLU, nn.ReLU6, nn.GELU)
POOL = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
)


@dataclass
class Call:
    """One forward call of a leaf module, recorded while torch-pruning traces the model."""

    name: str
    module: nn.Module
    in_shape: tuple
    out_shape: tuple
    out_grad_fn: object
    order: int


def separate_in_out(module) -> bool:
    """Whether the layer's input and output channel counts are independent (else one dim)."""
    if isinstance(module, CONV):
        return not is_depthwise(module)
    return isinstance(module, nn.Linear)


def is_depthwise(m) -> bool:
    return isinstance(m, CONV) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def known_cost(m) -> bool:
    return isinstance(m, (*CONV, nn.Linear, *NORM, nn.LayerNorm, *ACT, *POOL, nn.Upsample))


def evaluate(coef, xin, xout) -> float:
    return float(coef[0] * xin * xout + coef[1] * xin + coef[2] * xout + coef[3])


def batch_size(example_inputs) -> int:
    x = example_inputs
    if isinstance(x, dict):
        x = next(iter(x.values()))
    if isinstance(x, (tuple, list)):
        x = x[0]
    return int(x.shape[0]) if torch.is_tensor(x) and x.dim() > 0 else 1


def params_coef(m) -> np.ndarray:
    """(a, b, c, d) of a layer's own parameter count in (in_kept, out_kept)."""
    bias = 1.0 if getattr(m, "bias", None) is not None else 0.0
    if isinstance(m, CONV):
        k = float(np.prod(m.kernel_size))
        if is_depthwise(m):
            return np.array([0.0, 0.0, k + bias, 0.0])
        return np.array([k / m.groups, 0.0, bias, 0.0])
    if isinstance(m, nn.Linear):
        return np.array([1.0, 0.0, bias, 0.0])
    if isinstance(m, (*NORM, nn.LayerNorm)):
        n = sum(p.numel() for p in m.parameters(recurse=False))
        per = n / max(1, norm_channels(m))
        return np.array([0.0, 0.0, per, 0.0]) if isinstance(m, NORM) else np.array([0, 0, 0, float(n)])
    if isinstance(m, nn.PReLU) and m.num_parameters > 1:
        return np.array([0.0, 0.0, 1.0, 0.0])
    return np.array([0.0, 0.0, 0.0, float(sum(p.numel() for p in m.parameters(recurse=False)))])


def norm_channels(m) -> int:
    return getattr(m, "num_features", None) or getattr(m, "num_channels", 1)


def macs_coef(m, call: Call, batch: int) -> np.ndarray:
    """(a, b, c, d) of the MACs torch-pruning's counter gives this call, per sample."""
    out_n = float(np.prod(call.out_shape)) / batch
    in_n = float(np.prod(call.in_shape)) / batch
    out_c = call.out_shape[1] if len(call.out_shape) > 1 else 1
    in_c = call.in_shape[1] if len(call.in_shape) > 1 else 1
    if isinstance(m, CONV):
        k = float(np.prod(m.kernel_size))
        S = out_n / out_c  # output positions per sample
        bias = S if m.bias is not None else 0.0
        if is_depthwise(m):
            return np.array([0.0, 0.0, k * S + bias, 0.0])
        return np.array([k * S / m.groups, 0.0, bias, 0.0])
    if isinstance(m, nn.Linear):
        rows = in_n / call.in_shape[-1]
        # The counter adds the bias once per call (not per row) and then divides by the batch size.
        return np.array([rows, 0.0, 1.0 / batch if m.bias is not None else 0.0, 0.0])
    if isinstance(m, NORM):
        return np.array([0.0, 0.0, in_n / in_c * (2.0 if m.affine else 1.0), 0.0])
    if isinstance(m, nn.LayerNorm):
        return np.array([0.0, 0.0, 0.0, in_n * (2.0 if m.elementwise_affine else 1.0)])
    if isinstance(m, ACT) or isinstance(m, nn.Upsample):
        return np.array([0.0, 0.0, out_n / out_c, 0.0])
    if isinstance(m, POOL):
        return np.array([0.0, 0.0, in_n / in_c, 0.0])
    return np.zeros(4)


def channel_sizes(call: Call) -> tuple[int, int]:
    """(input, output) channel counts of a call: the last axis for Linear, axis 1 otherwise."""
    def ch(shape):
        if isinstance(call.module, nn.Linear):
            return shape[-1]
        return shape[1] if len(shape) > 1 else 1

    return ch(call.in_shape), ch(call.out_shape)
