"""Durable files: atomic writes, model fingerprints, and saving/loading pruned models.

A pruned model changes its layers' shapes, so it cannot be rebuilt from the original class and a
state_dict alone: the whole module is pickled (``torch.save(model)``), as torch-pruning recommends, and a
JSON manifest beside it records how it was made. Loading checks the manifest's sha256 of the weights
file first, so a truncated or swapped file is reported instead of unpickled.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from rlprune.errors import CheckpointError

MANIFEST_VERSION = 1


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never a partial one.

    Args:
        path: destination; its directory is created if needed.
        data: the bytes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared and served
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj, sort_keys: bool = True) -> None:
    """``json.dump`` through :func:`atomic_write_bytes` (indented, trailing newline; keys sorted unless the
    order means something, e.g. pipeline stages)."""
    text = json.dumps(obj, indent=2, sort_keys=sort_keys, default=json_default) + "\n"
    atomic_write_bytes(path, text.encode())


def json_default(o):
    """``json.dumps(default=...)`` for numpy values and paths."""
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def model_fingerprint(model: nn.Module) -> str:
    """Short stable hash of a model's weights and buffers (16 hex chars), used to key samples.

    Args:
        model: any module.

    Returns:
        The first 16 hex digits of the sha256 over every state_dict entry's name, shape and bytes.
    """
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        flat = t.detach().cpu().reshape(-1).contiguous()  # 0-dim buffers cannot be viewed as bytes
        h.update(flat.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def manifest_path(path: str | os.PathLike) -> Path:
    """The manifest beside a weights file: ``model.pt`` -> ``model.json``."""
    return Path(path).with_suffix(".json")


def save_pruned(model: nn.Module, path: str | os.PathLike, manifest: dict) -> Path:
    """Save a pruned model and its manifest atomically.

    Args:
        model: the (pruned) module; pickled whole because its layer shapes changed.
        path: weights file, e.g. ``out/pruned_model.pt``; the manifest goes to ``out/pruned_model.json``.
        manifest: what to record: ``ratios``, ``group_ids``, ``base_fingerprint``, ``params``, ``macs``,
            ``acc`` and anything else JSON-serialisable.

    Returns:
        The manifest path.
    """
    buf = io.BytesIO()
    torch.save(model, buf)
    data = buf.getvalue()
    full = dict(manifest)
    full.update({
        "manifest_version": MANIFEST_VERSION,
        "weights_file": Path(path).name,
        "weights_sha256": hashlib.sha256(data).hexdigest(),
        "fingerprint": model_fingerprint(model),
        "saved_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    })
    atomic_write_bytes(path, data)
    mpath = manifest_path(path)
    atomic_write_json(mpath, full)
    return mpath


def load_pruned(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """Load a model written by :func:`save_pruned`.

    The file is a pickle: load only files you trust (ones this tool wrote).

    Args:
        path: the weights file or its directory (then ``pruned_model.pt`` inside it).

    Returns:
        ``(model, manifest)``; the model is in eval mode.

    Raises:
        CheckpointError: missing files, a manifest that does not parse, or weights whose sha256 does not
            match the manifest (truncated or replaced).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "pruned_model.pt"
    mpath = manifest_path(path)
    if not path.is_file() or not mpath.is_file():
        raise CheckpointError(f"expected {path} and its manifest {mpath}; save with rlprune.save_pruned "
                              f"or point at the folder `rlprune run` wrote")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"manifest {mpath} is not valid JSON ({e}); re-save the model") from e
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != manifest.get("weights_sha256"):
        raise CheckpointError(f"{path} does not match the sha256 in {mpath} (truncated or replaced); "
                              f"re-save the model")
    try:
        model = torch.load(io.BytesIO(data), weights_only=False, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - unpickling raises anything
        raise CheckpointError(f"cannot unpickle {path}: {e}; "
                              f"the classes it was saved with must be importable") from e
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"{path} holds a {type(model).__name__}, not a torch.nn.Module")
    return model.eval(), manifest
