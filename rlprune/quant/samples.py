"""The bits sample store: measured (bit vector -> accuracy drop) rows, in append-only parquet shards.

Like the pruning sample store (``rlprune.samples.store``, whose shard writer and reader it uses): a folder

    DIR/manifest.json                 {"format": "rlprune-bits-samples", "version": 1, "columns": [...]}
    DIR/shards/<time>-<pid>-<rand>.parquet   immutable; written to a temp name, then renamed

so concurrent writers need no lock, a killed writer loses at most the rows it had not flushed, and a torn or
corrupt shard is skipped with a warning naming it, never deleted. A row is one bit vector applied to one fp32
model (``model_fingerprint``: the pruned model's, or the base model's) by ``rlprune.quant.fake.wrap`` and
scored without fine-tuning on ``split`` (``max_batches`` of 128 images, -1 for all); ``acc_drop`` is
``ref_acc - acc`` in points. Rows with the same ``sample_id`` (model, split, batches, bits) are stored once.

    append_bits("runs/q/bits_samples", rows)
    df = read_bits("runs/q/bits_samples", fingerprint=fp)    # bits: int arrays, one per row
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from rlprune.errors import SampleStoreError
from rlprune.samples.store import open_shard_folder, read_shard, shard_ids, shard_paths, write_shard

FORMAT, VERSION = "rlprune-bits-samples", 1
_SCHEMA = pa.schema([
    ("sample_id", pa.string()),  # sha256(fingerprint, split, max_batches, bits)[:16]
    ("bits", pa.list_(pa.int64())),  # one width per quantizable layer, QuantSpace order
    ("size_ratio", pa.float64()),  # exact, rlprune.quant.size
    ("acc", pa.float64()),  # quantized model, percent on ``split``
    ("ref_acc", pa.float64()),  # the fp32 model on the same images
    ("acc_drop", pa.float64()),  # ref_acc - acc, points
    ("model_fingerprint", pa.string()),  # rlprune.io.model_fingerprint of the fp32 model
    ("split", pa.string()),
    ("max_batches", pa.int64()),  # -1: every batch of the split
    ("worker", pa.string()),
    ("created_at", pa.string()),
])
BITS_COLUMNS: tuple[str, ...] = tuple(_SCHEMA.names)


def bits_sample_id(fingerprint: str, split: str, max_batches: int | None, bits) -> str:
    """The id of one measurement: the same model, images and vector always get the same id."""
    key = json.dumps([fingerprint, split, -1 if max_batches is None else int(max_batches),
                      [int(b) for b in bits]])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def open_bits_store(path: str | os.PathLike, create: bool = True) -> Path:
    """Check that ``path`` is a bits sample store, creating an empty one if allowed.

    Raises:
        SampleStoreError: ``path`` is a file, a non-empty folder that is not a bits store, a store of another
            format or version, or missing while ``create`` is False.
    """
    path, meta = open_shard_folder(path, {"format": FORMAT, "version": VERSION, "columns": list(BITS_COLUMNS)},
                                   "bits sample store", create)
    mine = {"format": FORMAT, "version": VERSION}
    if meta is not None and (not isinstance(meta, dict) or {k: meta.get(k) for k in mine} != mine):
        raise SampleStoreError(f"{path} is not a version-{VERSION} bits sample store (its manifest says "
                               f"{meta!r:.120}); pass a new folder")
    return path


def append_bits(path: str | os.PathLike, rows: list[dict]) -> int:
    """Store new rows as one new shard (atomically).

    Args:
        path: the store folder (created if missing or empty).
        rows: dicts with exactly :data:`BITS_COLUMNS`.

    Returns:
        How many rows were new (ids already stored, or repeated in ``rows``, are dropped).

    Raises:
        SampleStoreError: a row with missing/unknown columns or a non-finite accuracy (nothing is written), or
            a path that is not a bits store.
    """
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or set(r) != set(BITS_COLUMNS):
            got = sorted(r) if isinstance(r, dict) else type(r).__name__
            raise SampleStoreError(f"bits row {i} has columns {got}; rows need exactly {list(BITS_COLUMNS)}")
        if not all(np.isfinite(float(r[k])) for k in ("acc", "ref_acc", "acc_drop", "size_ratio")):
            raise SampleStoreError(f"bits row {i} ({r['sample_id']}) has a non-finite accuracy or size; "
                                   f"measure it again")
    store = open_bits_store(path)
    seen = shard_ids(store / "shards", _SCHEMA)
    fresh = []
    for r in rows:
        if r["sample_id"] not in seen:
            seen.add(r["sample_id"])
            fresh.append({**r, "bits": [int(b) for b in r["bits"]]})
    if fresh:
        write_shard(store / "shards", pa.Table.from_pylist(fresh, schema=_SCHEMA))
    return len(fresh)


def read_bits(path: str | os.PathLike, fingerprint: str | None = None) -> pd.DataFrame:
    """Every unique row of a bits store (the first stored copy of an id), optionally for one fp32 model.

    Returns:
        A DataFrame with :data:`BITS_COLUMNS`; ``bits`` holds int64 arrays. An empty store gives an empty frame.

    Raises:
        SampleStoreError: ``path`` is missing or not a bits store.
    """
    store = open_bits_store(path, create=False)
    tables = [t for t in (read_shard(p, _SCHEMA) for p in shard_paths(store / "shards")) if t is not None]
    df = pa.concat_tables(tables).to_pandas() if tables else _SCHEMA.empty_table().to_pandas()
    if fingerprint is not None:
        df = df[df["model_fingerprint"] == fingerprint]
    df = df.drop_duplicates("sample_id", keep="first").reset_index(drop=True)
    df["bits"] = [np.asarray(b, dtype=np.int64) for b in df["bits"]]
    return df


__all__ = ["BITS_COLUMNS", "append_bits", "bits_sample_id", "open_bits_store", "read_bits"]
