"""The space records of a sample store: what the samples of one base model are learned from without the model.

A sample is a ratio vector and its label; to learn from it an SPN needs the model's groups (their features,
channel counts) and the exact cost model, and the label's base accuracy. ``spaces/<fingerprint>-<measure_id>.json``
in the store holds that, one file per base model and ``MeasureSpec``, written by the sample generator and the
online searches and read by everything that trains or scores an SPN::

    write_space("runs/samples", space_record("digits", space, base_acc, base_loss, fp, spec))
    spaces = read_spaces("runs/samples", measure=spec)   # {fingerprint: record}
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from rlprune.errors import SampleStoreError
from rlprune.io import atomic_write_json
from rlprune.samples.store import SPACES_DIR, open_store


def space_record(task_name: str, space, base_acc: float, base_loss: float, fingerprint: str, spec,
                 metric: str = "accuracy") -> dict:
    """Describe a base model's pruning space, so samples can be learned from without the model.

    Args:
        task_name: task name.
        space: a ``rlprune.space.pruning.PruningSpace`` of the base model.
        base_acc: base accuracy (percent) on the split the samples are scored on (calibration).
        base_loss: base mean cross-entropy on that split.
        fingerprint: base model fingerprint (the samples' ``model_fingerprint``).
        spec: the ``MeasureSpec`` the space was traced and the samples measured with.
        metric: the task's metric: what the samples' ``acc`` and ``acc_drop`` hold (in points).

    Returns:
        A JSON-ready dict: ``fingerprint``, ``task``, ``n_groups``, ``group_ids``, ``feature_names``,
        ``features`` (``n_groups`` lists), ``channels``, ``cost_model`` (``CostModel.to_dict()``),
        ``base_acc``, ``base_loss``, ``metric``, ``measure_id``, ``measure`` (the spec's label fields).
    """
    from rlprune.space.pruning import FEATURE_NAMES  # imported here: this module stays torch-free otherwise

    return {
        "fingerprint": fingerprint,
        "task": task_name,
        "n_groups": space.n_groups,
        "group_ids": [g.id for g in space.groups],
        "feature_names": list(FEATURE_NAMES),
        "features": [[float(v) for v in g.features] for g in space.groups],
        "channels": [int(g.channels) for g in space.groups],
        "cost_model": space.cost_model.to_dict(),
        "base_acc": float(base_acc),
        "base_loss": float(base_loss),
        "metric": metric,
        "measure_id": spec.label_id(),
        "measure": spec.label(),
    }


def write_space(path: str | os.PathLike, record: dict) -> Path:
    """Store a :func:`space_record` as ``spaces/<fingerprint>-<measure_id>.json`` (atomic; no write if unchanged).

    One file per base model and spec: the base accuracy and the cost model's rounding belong to the spec.

    Returns:
        The file written (or already there).

    Raises:
        SampleStoreError: ``path`` is not a store of this schema, or the record has no fingerprint or spec.
    """
    store = open_store(path)
    fp, mid = record.get("fingerprint"), record.get("measure_id")
    if not (isinstance(fp, str) and fp and isinstance(mid, str) and mid):
        raise SampleStoreError("space record has no 'fingerprint' or 'measure_id'; build it with "
                               "rlprune.samples.spaces.space_record")
    target = store / SPACES_DIR / f"{fp}-{mid}.json"
    try:
        if json.loads(target.read_text()) == json.loads(json.dumps(record)):
            return target
    except (OSError, json.JSONDecodeError):
        pass  # missing or unreadable: (re)write it
    atomic_write_json(target, record)
    return target


def read_spaces(path: str | os.PathLike, measure=None) -> dict[str, dict]:
    """The space records of a store, keyed by fingerprint (unreadable files skipped with a warning).

    Args:
        path: the store folder.
        measure: keep only records of this spec (a ``MeasureSpec`` or its ``label_id()``); without it a
            model recorded under several specs gives the newest record (features are the same in all).

    Raises:
        SampleStoreError: ``path`` is missing or not a store of this schema.
    """
    store = open_store(path, create=False)
    want = measure if measure is None or isinstance(measure, str) else measure.label_id()
    found = []
    for f in (store / SPACES_DIR).glob("*.json"):
        try:
            rec = json.loads(f.read_text())
            found.append((f.stat().st_mtime_ns, rec["fingerprint"], rec))
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            warnings.warn(f"rlprune: skipping unreadable space record {f} ({e})", RuntimeWarning, stacklevel=2)
    return {fp: rec for _, fp, rec in sorted(found, key=lambda x: x[0])
            if want is None or rec.get("measure_id") == want}


__all__ = ["read_spaces", "space_record", "write_space"]
