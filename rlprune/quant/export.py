"""One file per quantized model: bit-packed integer weights, float32 scales, float32 rest; and its loader.

Layout (a ``torch.save`` dict, written atomically)::

    {"format": "rlprune-quantized", "version": 1,
     "layers":  [{"name", "bits", "shape", "packed": uint8[ceil(n * bits / 8)], "scale": float32[C]}, ...],
     "fp32":    {param name: float32 tensor}      # biases, BN affine: every parameter not quantized
     "buffers": {buffer name: tensor}             # BN running statistics (not counted in size_ratio)
     "skeleton": the module tree on the meta device (structure only: no weight data)
     "manifest": {...}}                           # bits, size_ratio, space record, whatever the caller adds

The *payload* (packed weights + scales + float32 parameters) is what :mod:`rlprune.quant.size` counts;
:func:`payload_bits` measures it from a file. Integers are stored offset by ``qmax`` (``0 .. 2 * qmax``, so
non-negative) with ``bits`` bits each, least significant bit first. The skeleton is pickled because a
pruned model's layer shapes no longer match its class's constructor (as ``rlprune.io.save_pruned`` does);
on the meta device it carries no tensor data, so the integers are the only copy of the weights.

Loading dequantizes ``Q * s`` in float32, the same product ``torch.fake_quantize_per_channel_affine`` forms,
so the loaded model computes exactly what the fake-quantized one did (tested on the digits test split).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rlprune.errors import CheckpointError
from rlprune.io import atomic_write_bytes
from rlprune.quant.fake import bits_of, fake_quantize, qmax, quant_layers, quantize_ints, unwrapped_copy

FORMAT = "rlprune-quantized"
"""The ``format`` entry of an exported file."""
VERSION = 1
"""The layout version this module writes and reads."""


def pack_ints(q: np.ndarray, bits: int) -> np.ndarray:
    """Pack integers in ``-qmax .. qmax`` into ``bits`` bits each (little-endian bit order).

    Args:
        q: integer array (any shape; flattened in C order).
        bits: 2..8.

    Returns:
        A uint8 array of ``ceil(q.size * bits / 8)`` bytes.
    """
    u = (np.asarray(q, dtype=np.int16).reshape(-1) + qmax(bits)).astype(np.uint8)
    planes = (u[:, None] >> np.arange(bits, dtype=np.uint8)) & 1
    return np.packbits(planes.reshape(-1), bitorder="little")


def unpack_ints(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Invert :func:`pack_ints`: the first ``count`` integers (int64)."""
    planes = np.unpackbits(np.asarray(packed, dtype=np.uint8), count=count * bits, bitorder="little")
    return planes.reshape(count, bits).astype(np.int64) @ (1 << np.arange(bits, dtype=np.int64)) - qmax(bits)


def export_quantized(model: nn.Module, path: str | os.PathLike, manifest: dict | None = None) -> dict:
    """Write a fake-quantized model as integers and scales in one file (atomically).

    Args:
        model: a model made by :func:`rlprune.quant.fake.wrap` (fine-tuned or not); its current fp32 weights
            are quantized with its bit widths, exactly as its forward pass does.
        path: the file to write, e.g. ``out/quantized_model.pt``; its folder is created.
        manifest: JSON-serialisable facts to store with it (accuracies, task, ...).

    Returns:
        The stored manifest (with ``bits``, ``layers`` and ``payload_bits`` added).

    Raises:
        ConfigError: the model is not wrapped.
    """
    bits = bits_of(model)
    layers, quantized = [], set()
    for (name, m), b in zip(quant_layers(model), bits, strict=True):
        weight = m.parametrizations["weight"].original.detach().cpu()
        q, scale = quantize_ints(weight, b)
        # Internal invariant: the integers reproduce the forward pass's weight bit for bit.
        assert torch.equal(q.float() * scale.reshape(-1, *([1] * (q.dim() - 1))), fake_quantize(weight.float(), b))
        layers.append({"name": name, "bits": int(b), "shape": list(q.shape),
                       "packed": torch.from_numpy(pack_ints(q.numpy(), b)), "scale": scale.clone()})
        quantized.add(f"{name}.weight")
    plain = unwrapped_copy(model, quantized=False).eval()
    state = plain.state_dict()
    param_names = {n for n, _ in plain.named_parameters()}
    fp32 = {n: t.detach().float().clone() for n, t in state.items() if n in param_names and n not in quantized}
    buffers = {n: t.detach().clone() for n, t in state.items() if n not in param_names}
    full = dict(manifest or {})
    full.update(bits=[int(b) for b in bits], layers=[entry["name"] for entry in layers])
    obj = {"format": FORMAT, "version": VERSION, "layers": layers, "fp32": fp32, "buffers": buffers,
           "skeleton": plain.to("meta"), "manifest": full}
    full["payload_bits"] = _payload_bits(obj)
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())
    return full


def load_quantized(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """Rebuild the model stored by :func:`export_quantized`: dequantized float32 weights, in eval mode.

    The file holds a pickled module skeleton: load only files you trust (ones this tool wrote).

    Args:
        path: the file, or a folder holding ``quantized_model.pt`` (what ``rlprune quantize --out`` writes).

    Returns:
        ``(model, manifest)``; the model is a plain module (no fake quantizers) on the CPU.

    Raises:
        CheckpointError: a missing, unreadable or foreign file.
    """
    obj, path = _read(path)
    model = obj["skeleton"].to_empty(device="cpu")
    state = dict(obj["fp32"])
    state.update(obj["buffers"])
    for entry in obj["layers"]:
        shape = tuple(entry["shape"])
        q = unpack_ints(entry["packed"].numpy(), entry["bits"], int(np.prod(shape)))
        scale = entry["scale"].float()
        state[f"{entry['name']}.weight"] = torch.from_numpy(q).float().reshape(shape) * scale.reshape(
            -1, *([1] * (len(shape) - 1)))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        reason = str(e).splitlines()[0]
        raise CheckpointError(f"{path} does not rebuild its own skeleton ({reason}); re-export it") from e
    return model.eval(), dict(obj["manifest"])


def payload_bits(path: str | os.PathLike) -> int:
    """The stored payload of an exported file, counted from its tensors: packed weight bytes x 8, plus 32
    per scale and per float32 parameter (buffers excluded, as in ``rlprune.quant.size``).

    Raises:
        CheckpointError: as for :func:`load_quantized`.
    """
    return _payload_bits(_read(path)[0])


def _payload_bits(obj: dict) -> int:
    packed = sum(8 * e["packed"].numel() for e in obj["layers"])
    scales = sum(8 * e["scale"].element_size() * e["scale"].numel() for e in obj["layers"])
    rest = sum(8 * t.element_size() * t.numel() for t in obj["fp32"].values())
    return int(packed + scales + rest)


def _read(path: str | os.PathLike) -> tuple[dict, Path]:
    path = Path(path)
    if path.is_dir():
        path = path / "quantized_model.pt"
    if not path.is_file():
        raise CheckpointError(f"no quantized model at {path}; write one with `rlprune quantize --out DIR` "
                              "or rlprune.quant.export.export_quantized")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - a torn or foreign file raises anything from unpickling
        raise CheckpointError(f"cannot read {path} ({type(e).__name__}); re-export it") from e
    if not isinstance(obj, dict) or obj.get("format") != FORMAT or obj.get("version") != VERSION:
        raise CheckpointError(f"{path} is not an rlprune quantized model (format {FORMAT!r} v{VERSION}); "
                              "export it with rlprune.quant.export.export_quantized")
    return obj, path


__all__ = ["FORMAT", "VERSION", "export_quantized", "load_quantized", "pack_ints", "payload_bits", "unpack_ints"]
