"""Where every benchmark's rows and figures go: the result files, their provenance, ``summary.json``.

Each script

- writes ``<name>.csv`` (every measured row) and ``<name>.md`` (the table it prints) into ``--results-dir``
  (default ``benchmarks/results``), or ``<name>_quick.*`` with ``--quick`` so a smoke run never overwrites a
  full result; every CSV row carries its provenance (:data:`PROVENANCE`: when it was measured, the commit, the
  machine, the 1-min load), stamped when the row was measured where a run resumes from saved rows;
- in full mode merges its headline figures into ``<results-dir>/summary.json`` (other scripts' keys are kept;
  ``date`` and ``machine`` say when and where the latest figures were measured).
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import platform
import subprocess
import time
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import numpy as np

from rlprune.io import atomic_write_json

RESULTS = Path(__file__).resolve().parent / "results"
SUMMARY = "summary.json"
HEADLINE_WORKLOAD = {"search_speed": "fashion-mnist/resnet20", "quality": "fashion-mnist/resnet56",
                     "spn_fidelity": "fashion-mnist/resnet56", "scaling": "fashion-mnist/resnet56",
                     "targets": "fashion-mnist/resnet20", "quantize": "fashion-mnist/resnet20",
                     "label_fidelity": "fashion-mnist/resnet20"}
"""Per script, the workload whose full run supplies the headline figures of ``summary.json`` (the real workload;
the net each headline is defined on). Its full runs on any other workload keep their figures, under the same
keys, in ``summary_<workload>.json`` (e.g. ``summary_digits.json``), so no figure overwrites another workload's.
(label_fidelity's keys name their workload too; its headline is the study issue 15 chooses the default on.)"""
PROVENANCE = ("date", "commit", "machine", "load_1min")
"""The columns every results CSV row carries (see :func:`stamped`)."""
_ARCHIVED_COMMIT = "$Format:%H$"
"""Filled in by ``git archive`` (``.gitattributes``: export-subst): a snapshot to run benchmarks from has no .git."""


def stem(name: str, quick: bool) -> str:
    """The result file stem: ``name``, or ``name_quick`` for a quick run."""
    return f"{name}_quick" if quick else name


def _version(dist: str) -> str:
    # Package metadata, not ``import ray``: importing Ray just to stamp a table costs seconds.
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def machine() -> dict:
    """Where the figures were measured: platform, CPU count, load, Python/torch/ray versions."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "load_1min": round(load, 2), "python": platform.python_version(),
            "torch": _version("torch"), "ray": _version("ray"), "torch_pruning": _version("torch-pruning")}


def stamp() -> str:
    """One line for a table's heading: date, CPU, cores, current load and versions."""
    m = machine()
    return (f"{time.strftime('%Y-%m-%d %H:%M')}, {m['processor']}, {m['cpu_count']} CPUs, 1-min load "
            f"{m['load_1min']:.1f}, torch {m['torch']}, ray {m['ray']}")


@lru_cache(maxsize=1)
def commit() -> str:
    """The commit the benchmark code comes from (``-dirty`` when tracked files differ from it; ``unknown``
    outside a checkout or archive)."""
    if not _ARCHIVED_COMMIT.startswith("$"):
        return _ARCHIVED_COMMIT
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def provenance() -> dict:
    """:data:`PROVENANCE` now: date and time, commit, machine (CPU, cores, torch, ray), 1-min load."""
    m = machine()
    return {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "commit": commit(),
            "machine": f"{m['processor']}, {m['cpu_count']} CPUs, torch {m['torch']}, ray {m['ray']}",
            "load_1min": m["load_1min"]}


def stamped(rows: list[dict]) -> list[dict]:
    """``rows`` with :func:`provenance` added to those without one (a row measured earlier keeps its own)."""
    now = provenance()
    return [r if all(k in r for k in PROVENANCE) else {**r, **{k: r.get(k, v) for k, v in now.items()}}
            for r in rows]


def md_table(rows: list[dict], cols: list[str], headers: list[str] | None = None) -> list[str]:
    """Markdown lines of a table of ``rows`` restricted to ``cols`` (missing values print empty)."""
    lines = ["| " + " | ".join(headers or cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    return lines


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int | float | np.integer | np.floating) and abs(v) >= 1e4:
        return f"{v:,.0f}"  # rates: thousands separators, no spurious decimals
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_results(results_dir: Path, name: str, rows: list[dict], markdown: str,
                  fields: list[str] | None = None) -> Path:
    """Write ``<name>.csv`` (``rows``; columns ``fields`` or the union of the rows' keys in order) and
    ``<name>.md`` (``markdown``) into ``results_dir`` and print the markdown. Returns the md path."""
    write_csv(results_dir, name, rows, fields)
    md = Path(results_dir) / f"{name}.md"
    md.write_text(markdown.rstrip("\n") + "\n")
    print(markdown)
    return md


def write_csv(results_dir: Path, name: str, rows: list[dict], fields: list[str] | None = None) -> Path:
    """Write ``<name>.csv`` (``rows``; columns ``fields`` or the union of the rows' keys in order, then
    :data:`PROVENANCE`, stamped now on rows that do not carry it) into ``results_dir``. Returns its path."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    rows = stamped(rows)
    fields = list(fields) if fields is not None else list(dict.fromkeys(k for r in rows for k in r))
    fields += [k for k in PROVENANCE if k not in fields]
    path = results_dir / f"{name}.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def summary_name(source: str, label: str) -> str:
    """``summary.json`` when ``label`` is ``source``'s :data:`HEADLINE_WORKLOAD` (or it has none), else
    ``summary_<label as a slug>.json``."""
    want = HEADLINE_WORKLOAD.get(source)
    if want is None or want == label:
        return SUMMARY
    return f"summary_{label.replace('/', '_').replace('-', '')}.json"


def update_summary(results_dir: Path, figures: dict, source: str, retired: tuple[str, ...] = (),
                   label: str | None = None) -> Path:
    """Merge ``figures`` into ``<results_dir>/`` :func:`summary_name` without touching other scripts' keys.

    ``date`` and ``machine`` describe the latest update; ``updated`` records per script when it last wrote
    (so figures from different days stay traceable). Written to a temporary file and renamed into place, so a
    killed run leaves the old summary or the new one, never half of one.

    Args:
        results_dir: the folder holding ``summary.json``.
        figures: the script's headline figures (lists and plain scalars).
        source: the script's name.
        retired: keys this script wrote once but no longer measures; removed, so a stale figure never
            outlives the method that produced it.
        label: the workload measured (``digits``, ``fashion-mnist/resnet56``; ``common.task_choice``); None: the
            script's headline workload.

    Returns:
        The summary's path.
    """
    path = Path(results_dir) / (SUMMARY if label is None else summary_name(source, label))
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = json.loads(path.read_text()) if path.is_file() else {}
    now = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    for k in retired:
        summary.pop(k, None)
    summary.update({k: _plain(v) for k, v in figures.items()})
    summary["date"] = now
    if label is not None and source in HEADLINE_WORKLOAD:
        summary["task"] = label.split("/")[0]
        summary.setdefault("workload", {})[source] = label
    summary["machine"] = machine()
    summary.setdefault("updated", {})[source] = now
    atomic_write_json(path, summary)
    return path


def _plain(v):
    # numpy scalars and non-finite floats are not strict JSON
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def result_name(name: str, label: str) -> str:
    """``name`` for digits (the committed smoke results), else ``name_<task>_<arch>``.

    e.g. ``quality_fashionmnist_resnet20``."""
    return name if label == "digits" else f"{name}_{label.replace('/', '_').replace('-', '')}"
