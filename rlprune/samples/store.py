"""The sample schema and the durable sample store: a folder of append-only parquet shards.

One *sample* is a ratio vector really applied to a base model and really evaluated (see
``rlprune.measure.recipe``) under one ``MeasureSpec``, which every row names (``measure_id``) and spells
out (``measure``). The store keeps them so that nothing is lost to a killed run::

    DIR/manifest.json                {"schema_version": 2, "columns": [...SAMPLE_COLUMNS]}
    DIR/shards/<time>-<pid>-<rand>.parquet   immutable; written to a temp name, then os.replace'd
    DIR/spaces/<fingerprint>.json    one per base model: groups, features, cost model, base accuracy
                                     (``rlprune.samples.spaces``)

Shards are never rewritten, so concurrent writers (one per Ray worker) need no lock and a reader sees
whole shards only. A shard that is truncated or corrupt anyway (a full disk, a copy gone wrong) is
skipped with a warning naming it, never deleted. Rows with the same ``sample_id`` are stored once.

    append_samples("runs/samples", rows)
    df = read_samples("runs/samples", fingerprint=fp, measure=spec)  # one row per unique sample
    R = np.stack(df["ratios"])                           # (N, n_groups) achieved ratios
    mf = read_samples("runs/samples", measure=spec, across_fidelities=True)  # every label_steps of the spec

Fidelities. A label's fine-tune (``label_steps``, and ``finetune_lr`` when it has steps) is part of its spec,
so labels of different fidelity are filed under different ``measure_id``s and a plain read never mixes
them. A multi-fidelity SPN wants exactly that mix: ``across_fidelities=True`` reads back the rows whose label
differs from the spec's ONLY in its fine-tune (:func:`fidelity_family`), one label per number of steps;
anything else (importance, batches, the measuring code's hash) is still set aside.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import math
import os
import uuid
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from rlprune.errors import SampleStoreError
from rlprune.io import atomic_write_bytes, atomic_write_json

SCHEMA_VERSION = 2
"""2: ``importance``/``bn_recalibrated`` gave way to the whole measurement spec (``measure_id``, ``measure``)."""

#: Every column of a sample row, with its arrow type. Ratios are per group, in ``PruningSpace`` order.
_SCHEMA = pa.schema([
    ("sample_id", pa.string()),  # sha256(task, fingerprint, measure_id, achieved ratios)[:16]
    ("ratios", pa.list_(pa.float64())),  # achieved ratios (after round_to)
    ("requested_ratios", pa.list_(pa.float64())),  # what the sampler asked for
    ("params_ratio", pa.float64()),  # pruned / original params (exact, from the cost model)
    ("macs_ratio", pa.float64()),  # pruned / original MACs
    ("acc", pa.float64()),  # accuracy in percent on the calibration split
    ("acc_drop", pa.float64()),  # base acc minus acc, percentage points
    ("loss", pa.float64()),  # mean cross-entropy on the calibration split
    ("latency_ms", pa.float64()),  # median batch-1 CPU forward of the pruned model
    ("eval_s", pa.float64()),  # wall time of prune + recalibrate + evaluate + latency
    ("task", pa.string()),
    ("model_fingerprint", pa.string()),  # rlprune.io.model_fingerprint of the base model
    ("measure_id", pa.string()),  # MeasureSpec.label_id(): rows of one id are comparable
    ("measure", pa.string()),  # MeasureSpec.label_json(): how the label was measured
    ("sampler", pa.string()),  # which sampler proposed the ratios
    ("worker", pa.string()),  # which worker evaluated them
    ("created_at", pa.string()),  # ISO 8601, UTC
])
SAMPLE_COLUMNS: tuple[str, ...] = tuple(_SCHEMA.names)

FIDELITY_KEYS = ("label_steps", "finetune_lr")
"""The label fields that make its fidelity: a multi-fidelity read lets these (and only these) differ."""

_MANIFEST = "manifest.json"
_SHARDS = "shards"
SPACES_DIR = "spaces"

# Shards are immutable, so the ids each one holds can be cached per process by (path, size, mtime).
_ID_CACHE: dict[tuple[str, int, int], frozenset[str]] = {}


# ---------------------------------------------------------------------------------------- ids
def sample_id(task: str, fingerprint: str, measure_id: str, ratios) -> str:
    """The identity of a sample: what was pruned, to which ratios, measured how.

    Args:
        task: task name.
        fingerprint: base model fingerprint.
        measure_id: ``MeasureSpec.label_id()`` of the spec it was measured under.
        ratios: the ACHIEVED ratios (rounded to 6 decimals, so float noise does not split ids).

    Returns:
        The first 16 hex digits of a sha256.
    """
    text = "|".join([task, fingerprint, measure_id, ",".join(f"{float(r):.6f}" for r in ratios)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def now_iso() -> str:
    """Current UTC time as ISO 8601 (the ``created_at`` format)."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")


# ---------------------------------------------------------------------------------------- store
def open_store(path: str | os.PathLike, create: bool = True) -> Path:
    """Check that ``path`` is a sample store of this schema, creating an empty one if allowed.

    Args:
        path: the store folder.
        create: make the folder and its manifest when the folder is missing or empty.

    Returns:
        The store path.

    Raises:
        SampleStoreError: ``path`` is a file, a non-empty folder without a manifest, a store of another
            schema version or columns, or missing while ``create`` is False.
    """
    path, meta = open_shard_folder(path, {"schema_version": SCHEMA_VERSION, "columns": list(SAMPLE_COLUMNS)},
                                   "sample store", create, f"; create one with `rlprune sample --out {path}`")
    if meta is None:
        return path
    version = meta.get("schema_version") if isinstance(meta, dict) else None
    if version != SCHEMA_VERSION:
        raise SampleStoreError(f"{path} holds samples of schema version {version}, this rlprune reads version "
                               f"{SCHEMA_VERSION}; write to a new --out folder (or convert the old store)")
    if list(meta.get("columns", [])) != list(SAMPLE_COLUMNS):
        raise SampleStoreError(f"{path} has columns {meta.get('columns')} but schema version {SCHEMA_VERSION} "
                               f"expects {list(SAMPLE_COLUMNS)}; write to a new --out folder")
    return path


def open_shard_folder(path: str | os.PathLike, manifest: dict, what: str, create: bool,
                      missing_fix: str = "") -> tuple[Path, object]:
    """The layout every rlprune shard store shares: ``path/manifest.json`` and ``path/shards/``.

    Args:
        path: the store folder.
        manifest: what a new store's manifest holds.
        what: the store's name in errors ("sample store").
        create: make the folder and its manifest when the folder is missing or empty.
        missing_fix: appended to the error for a missing store with ``create`` False.

    Returns:
        ``(path, meta)``: the existing manifest's content, or None when this call created the store (the caller
        checks an existing manifest's format).

    Raises:
        SampleStoreError: ``path`` is a file, a non-empty folder without a manifest, an unreadable manifest, or
            missing while ``create`` is False.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SampleStoreError(f"{what} {path} is a file; pass a folder (it is created if missing)")
    file = path / _MANIFEST
    if not file.exists():
        if path.is_dir() and any(path.iterdir()):
            raise SampleStoreError(f"{path} is not a {what} (no {_MANIFEST}) and is not empty; "
                                   f"pass a new or empty folder")
        if not create:
            raise SampleStoreError(f"no {what} at {path}{missing_fix}")
        (path / _SHARDS).mkdir(parents=True, exist_ok=True)
        atomic_write_json(file, manifest)
        return path, None
    try:
        return path, json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SampleStoreError(f"{file} is not valid JSON ({e}); restore it or start a new store") from e


def shard_paths(folder: Path) -> list[Path]:
    """The shards of a folder, oldest first (what :func:`write_shard` wrote; readers keep the first copy of a
    duplicate). Temp files (".name.xxx.tmp") left by a killed writer do not end in .parquet and are ignored."""
    return sorted(p for p in Path(folder).glob("*.parquet") if not p.name.startswith("."))


def _read_shard(path: Path, columns=None) -> pa.Table | None:
    return read_shard(path, _SCHEMA, columns)


def read_shard(path: Path, schema: pa.Schema, columns=None) -> pa.Table | None:
    """One shard as ``schema`` (or its ``columns``); None, with a warning naming the file, when it is unreadable
    or does not match (a torn copy, a full disk): such a shard is skipped and left in place, never deleted."""
    try:
        table = pq.read_table(path, columns=columns)
    except Exception as e:  # noqa: BLE001 - any unreadable shard is skipped, never fatal
        warnings.warn(f"rlprune: skipping unreadable sample shard {path} ({type(e).__name__}: {e}); "
                      f"it is left in place", RuntimeWarning, stacklevel=3)
        return None
    try:
        return table.select(list(columns or schema.names)).cast(schema if columns is None else
                                                                 pa.schema([schema.field(c) for c in columns]))
    except (KeyError, pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as e:
        warnings.warn(f"rlprune: skipping sample shard {path}: it does not match the sample schema ({e}); "
                      f"it is left in place", RuntimeWarning, stacklevel=3)
        return None


def stored_ids(path: str | os.PathLike) -> set[str]:
    """Every ``sample_id`` in the store (unreadable shards skipped with a warning).

    Raises:
        SampleStoreError: see :func:`open_store`.
    """
    return shard_ids(open_store(path, create=False) / _SHARDS, _SCHEMA)


def shard_ids(folder: Path, schema: pa.Schema) -> set[str]:
    """Every ``sample_id`` in a folder of shards (unreadable shards skipped with a warning), reading only that
    column, once per shard and process (shards are immutable)."""
    ids: set[str] = set()
    for shard in shard_paths(folder):
        st = shard.stat()
        key = (str(shard), st.st_size, st.st_mtime_ns)
        if key not in _ID_CACHE:
            table = read_shard(shard, schema, ["sample_id"])
            if table is None:
                continue
            _ID_CACHE[key] = frozenset(table.column("sample_id").to_pylist())
        ids |= _ID_CACHE[key]
    return ids


def _check_row(i: int, row: dict) -> dict:
    if not isinstance(row, dict):
        raise SampleStoreError(f"row {i} is a {type(row).__name__}, not a dict of SAMPLE_COLUMNS")
    missing = [c for c in SAMPLE_COLUMNS if c not in row]
    extra = [k for k in row if k not in SAMPLE_COLUMNS]
    if missing or extra:
        raise SampleStoreError(f"row {i} ({row.get('sample_id', '?')}) has missing columns {missing} and unknown "
                               f"columns {extra}; rows must have exactly rlprune.samples.store.SAMPLE_COLUMNS")
    acc = row["acc"]
    if not isinstance(acc, (int, float, np.floating, np.integer)) or not math.isfinite(float(acc)):
        raise SampleStoreError(f"row {i} ({row['sample_id']}) has acc={acc!r}; accuracy must be a finite number")
    try:
        ratios = np.asarray(row["ratios"], dtype=np.float64)
        requested = np.asarray(row["requested_ratios"], dtype=np.float64)
    except (TypeError, ValueError):
        ratios = requested = np.full((1, 1), np.nan)  # reported just below
    if ratios.ndim != 1 or not np.isfinite(ratios).all() or requested.shape != ratios.shape:
        raise SampleStoreError(f"row {i} ({row['sample_id']}) has ratios {row['ratios']!r}; expected finite "
                               f"floats, one per group, as many as requested_ratios")
    out = dict(row)
    out["ratios"] = [float(r) for r in ratios]
    out["requested_ratios"] = [float(r) for r in requested]
    return out


def append_samples(path: str | os.PathLike, rows: list[dict]) -> int:
    """Store new sample rows as one new shard (atomically).

    Args:
        path: the store folder; created (with its manifest) if missing or empty.
        rows: dicts with exactly ``SAMPLE_COLUMNS``.

    Returns:
        How many rows were newly stored: rows whose ``sample_id`` is already in the store, or repeated
        within ``rows``, are dropped.

    Raises:
        SampleStoreError: a row with missing/unknown columns, a NaN accuracy or bad ratios (nothing is
            written), or a path that is not a store of this schema (see :func:`open_store`).
    """
    checked = [_check_row(i, r) for i, r in enumerate(rows)]
    store = open_store(path)
    if not checked:
        return 0
    seen = stored_ids(store)
    fresh = []
    for row in checked:
        if row["sample_id"] not in seen:
            seen.add(row["sample_id"])
            fresh.append(row)
    if not fresh:
        return 0
    try:
        table = pa.Table.from_pylist(fresh, schema=_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
        raise SampleStoreError(f"rows do not fit the sample schema ({e}); "
                               f"see rlprune.samples.store.SAMPLE_COLUMNS") from e
    write_shard(store / _SHARDS, table)
    return len(fresh)


def write_shard(folder: Path, table: pa.Table) -> Path:
    """Write ``table`` as a new immutable parquet shard in ``folder``, atomically (temp name, then rename).

    The name starts with a UTC timestamp (readers sort by it), then the writer's pid and a random tag, so
    concurrent writers never collide.

    Returns:
        The shard's path.
    """
    buf = io.BytesIO()
    pq.write_table(table, buf)
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    path = Path(folder) / f"{stamp}-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet"
    atomic_write_bytes(path, buf.getvalue())
    return path


def read_samples(path: str | os.PathLike, fingerprint: str | None = None, task: str | None = None,
                 measure=None, across_fidelities: bool = False) -> pd.DataFrame:
    """All unique samples of a store, optionally for one base model, task and measurement spec.

    Args:
        path: the store folder.
        fingerprint: keep only rows of this ``model_fingerprint``.
        task: keep only rows of this task.
        measure: keep only rows measured under this spec (a ``MeasureSpec`` or its ``label_id()``); the
            rows set aside are counted in a warning that names their specs, never mixed in silently.
        across_fidelities: with ``measure``, also keep the rows of every other label fidelity of that spec
            (see the module docstring): labels of any ``label_steps`` whose other fields and code hash are
            the spec's, and whose fine-tune rate (when they have steps) is the spec's ``finetune_lr`` (an id
            of a 0-step label does not name a rate: then any one, as long as each step count has one).

    Returns:
        A DataFrame with ``SAMPLE_COLUMNS``, one row per ``sample_id`` (the first stored copy), in the
        order shards were written; ``ratios``/``requested_ratios`` hold float arrays. An empty store gives
        an empty frame with the same columns.

    Raises:
        SampleStoreError: ``path`` is missing or not a store of this schema (see :func:`open_store`), or an
            across-fidelity read finds two labels of one step count (two rates) and cannot tell which.
    """
    store = open_store(path, create=False)
    tables = [t for t in (_read_shard(p) for p in shard_paths(store / _SHARDS)) if t is not None]
    df = pa.concat_tables(tables).to_pandas() if tables else _SCHEMA.empty_table().to_pandas()
    if fingerprint is not None:
        df = df[df["model_fingerprint"] == fingerprint]
    if task is not None:
        df = df[df["task"] == task]
    df = df.drop_duplicates("sample_id", keep="first")
    if measure is not None:
        want = measure if isinstance(measure, str) else measure.label_id()
        keep = df["measure_id"] == want
        if across_fidelities:
            keep = df["measure_id"].isin(_family_ids(df, measure))
            want = f"{want} or its other fidelities"
        other = df[~keep]
        if len(other):
            specs = "; ".join(f"{n} under {m}" for m, n in other["measure"].value_counts().items())
            warnings.warn(f"rlprune: {store} holds {len(other)} sample(s) measured under other specs ({specs}); "
                          f"set aside, only the {len(df) - len(other)} measured under {want} are used",
                          RuntimeWarning, stacklevel=2)
            df = df[keep]
    return df.reset_index(drop=True)


def fidelity_family(label: dict | str) -> str:
    """A 12-hex-digit id shared by the labels that differ only in their fine-tune (:data:`FIDELITY_KEYS`).

    Args:
        label: a ``MeasureSpec.label()`` dict or its JSON (a row's ``measure``).

    Returns:
        The first 12 hex digits of a sha256 of the label without its fine-tune fields.
    """
    d = json.loads(label) if isinstance(label, str) else dict(label)
    rest = {k: v for k, v in d.items() if k not in FIDELITY_KEYS}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:12]


def _family_ids(df: pd.DataFrame, measure) -> set[str]:
    """The measure ids of ``df`` that are ``measure``'s label at some fidelity (see :func:`read_samples`)."""
    if isinstance(measure, str):
        found = df.loc[df["measure_id"] == measure, "measure"]
        if found.empty:
            return set()  # an id the store does not hold: nothing is its family
        label = json.loads(found.iloc[0])
    else:
        label = measure.label()
        label["finetune_lr"] = measure.finetune_lr  # the spec names its rate even for a 0-step label
    family, lr = fidelity_family(label), label.get("finetune_lr")
    by_steps: dict[int, set[str]] = {}
    for mid, text in dict(zip(df["measure_id"], df["measure"], strict=True)).items():
        other = json.loads(text)
        steps = int(other.get("label_steps", 0))
        if fidelity_family(other) != family or (steps and lr is not None and other.get("finetune_lr") != lr):
            continue
        by_steps.setdefault(steps, set()).add(mid)
    clash = {k: ids for k, ids in by_steps.items() if len(ids) > 1}
    if clash:
        k, ids = next(iter(sorted(clash.items())))
        raise SampleStoreError(f"the store holds {len(ids)} labels of label_steps={k} ({', '.join(sorted(ids))}: "
                               f"other fine-tune rates), so a fidelity is ambiguous; pass the MeasureSpec (its "
                               f"finetune_lr picks one) or the measure_id of a label with steps")
    return set().union(*by_steps.values()) if by_steps else set()


__all__ = [
    "FIDELITY_KEYS",
    "SAMPLE_COLUMNS",
    "SCHEMA_VERSION",
    "append_samples",
    "fidelity_family",
    "now_iso",
    "open_shard_folder",
    "open_store",
    "read_samples",
    "read_shard",
    "sample_id",
    "shard_ids",
    "shard_paths",
    "stored_ids",
    "write_shard",
]
