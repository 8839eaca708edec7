"""What every benchmark script shares: the command line, the machine stamp, the result files, summary.json.

Each script in this folder runs as ``python benchmarks/<name>.py [--quick] [--results-dir DIR]`` and

- writes ``<name>.csv`` (every measured row) and ``<name>.md`` (the table it prints) into ``--results-dir``
  (default ``benchmarks/results``), or ``<name>_quick.*`` with ``--quick`` so a smoke run never overwrites a
  full result; every CSV row carries its provenance (:data:`PROVENANCE`: when it was measured, the commit, the
  machine, the 1-min load), stamped when the row was measured where a run resumes from saved rows;
- in full mode merges its headline figures into ``<results-dir>/summary.json`` (other scripts' keys are kept;
  ``date`` and ``machine`` say when and where the latest figures were measured).

Nothing here asserts on a figure: the scripts print honest ratios against baselines measured in the same run.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
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


def parser(doc: str) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with ``--quick`` and ``--results-dir``, described by ``doc``'s first line."""
    p = argparse.ArgumentParser(description=doc.strip().split("\n")[0],
                                epilog="\n".join(doc.strip().split("\n")[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny budgets (a smoke run of a minute or two)")
    p.add_argument("--results-dir", type=Path, default=RESULTS,
                   help=f"where the csv/md (and, in full mode, summary.json) go (default {RESULTS})")
    return p


def add_keep_rows_arg(p: argparse.ArgumentParser) -> None:
    """``--keep-rows DIR``: the committed copies of finished units (:func:`run_seeds`)."""
    p.add_argument("--keep-rows", type=Path, metavar="DIR",
                   help="a folder to commit with copies of every finished unit's rows (e.g. "
                        "benchmarks/results/raw/<name>): a run on a fresh machine resumes from them")


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
        label: the workload measured (``digits``, ``fashion-mnist/resnet56``; :func:`task_choice`); None: the
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


def add_task_args(p: argparse.ArgumentParser) -> None:
    """``--task`` (default digits), ``--arch`` and ``--data-dir``: which workload a benchmark measures."""
    p.add_argument("--task", default="digits",
                   help="digits (default, embedded), fashion-mnist (the real workload; with --arch) or cifar10 "
                        "(with --data-dir)")
    p.add_argument("--arch", help="the task's architecture (fashion-mnist: resnet20, resnet56, mobilenet)")
    p.add_argument("--data-dir", help="the task's data folder (cifar10; fashion-mnist when not in the default place)")
    p.add_argument("--model-seed", type=int,
                   help="the base model's seed (its training and its data splits) for every benchmark seed, which "
                        "then seeds sampling, the SPN and the searches only (default: each seed its own base model "
                        "on digits, which trains in seconds; seed 0's on other tasks, whose base models take an "
                        "hour to train and are committed)")


def add_label_arg(p: argparse.ArgumentParser) -> None:
    """``--label-steps K``: the label of every sample, online round and real reward a benchmark measures."""
    from rlprune.measure.spec import TASK_LABEL_STEPS

    studied = ", ".join(f"{t} {k}" for t, k in TASK_LABEL_STEPS.items())
    p.add_argument("--label-steps", type=int, metavar="K",
                   help="fine-tune steps each sample's label gets (MeasureSpec.label_steps; default: the task's, "
                        f"as `rlprune run` uses it: {studied}; other tasks 0)")


def label_spec(task_name: str, label_steps: int | None = None, **fields):
    """The ``MeasureSpec`` a benchmark measures with: the task's default label (what ``rlprune run`` uses, from
    ``TASK_LABEL_STEPS``) unless ``label_steps`` is given, and ``fields``.

    Raises:
        ConfigError: a field out of its range.
    """
    from rlprune.measure.spec import MeasureSpec, task_measure_defaults

    chosen = {} if label_steps is None else {"label_steps": label_steps}
    return MeasureSpec(**{**task_measure_defaults(task_name), **chosen, **fields})


def label_suffix(label_steps: int) -> str:
    """A work folder's suffix for a label of ``label_steps``: empty for k=0 (folders made before labels had steps
    keep their names), ``-k<k>`` otherwise, so work measured under one label is never read back under another."""
    return f"-k{label_steps}" if label_steps else ""


def task_choice(args) -> tuple[dict, str]:
    """The task's keyword arguments and its label (``fashion-mnist/resnet20``) from :func:`add_task_args`' flags.

    The keyword arguments hold ``seed`` when the base model is shared by every benchmark seed (``--model-seed``);
    every consumer gives it precedence over the benchmark seed (``{"seed": seed, **kw}``).

    Raises:
        RlpruneError: an unknown task or architecture, or missing data: checked now, before any work, with the
            task's own message.
    """
    from rlprune.tasks import get_task

    data_dir = args.data_dir and str(Path(args.data_dir).expanduser().resolve())
    kw = {k: v for k, v in (("arch", args.arch), ("data_dir", data_dir)) if v}
    model_seed = args.model_seed if args.model_seed is not None else (None if args.task == "digits" else 0)
    if model_seed is not None:
        kw["seed"] = model_seed
    get_task(args.task, **kw)
    return kw, f"{args.task}/{args.arch}" if args.arch else args.task


def task_of(name: str, seed: int, task_kwargs: dict):
    """The task for benchmark ``seed``; a ``seed`` in ``task_kwargs`` (``--model-seed``) takes precedence."""
    from rlprune.tasks import get_task

    return get_task(name, **{"seed": seed, **task_kwargs})


def result_name(name: str, label: str) -> str:
    """``name`` for digits (the committed smoke results), else ``name_<task>_<arch>``.

    e.g. ``quality_fashionmnist_resnet20``."""
    return name if label == "digits" else f"{name}_{label.replace('/', '_').replace('-', '')}"


def run_seeds(run_seed, seeds, work: Path | None, keep: Path | None = None) -> list[dict]:
    """Every seed's rows from ``run_seed(seed, work)``, with Ray started once before any search is timed (no
    method's wall includes Ray's start-up) and ``work`` (None: a temporary folder, deleted at the end).

    ``keep`` (``--keep-rows``) is a folder, meant to be committed, of copies of the finished units' rows files
    (``rows-*.json``, at their paths under ``work``): the ones ``work`` lacks are copied in first, so a fresh
    machine resumes where a lost one stopped, and ``work``'s are copied back after every seed, finished or not.
    """
    import tempfile

    from rlprune.orchestration import init_ray

    init_ray(None, 2)
    with tempfile.TemporaryDirectory() as tmp:
        root, rows = Path(work or tmp), []
        if keep:
            _copy_rows(Path(keep), root)
        for seed in seeds:
            try:
                rows += run_seed(seed, root)
            finally:
                if keep:
                    _copy_rows(root, Path(keep))
        return rows


def _copy_rows(src: Path, dst: Path) -> None:
    """Copy ``src``'s ``rows-*.json`` files that ``dst`` lacks (or holds other bytes of) to the same paths."""
    from rlprune.io import atomic_write_bytes

    for f in sorted(src.rglob("rows-*.json")) if src.is_dir() else []:
        target = dst / f.relative_to(src)
        data = f.read_bytes()
        if not target.is_file() or target.read_bytes() != data:
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(target, data)


def samples_and_spn(task: str, n: int, work: Path, seed: int = 0, task_kwargs: dict | None = None,
                    spec=None) -> dict:
    """The first two stages of every SPN pipeline here: ``n`` real samples (2 Tune workers, measured under
    ``spec``; default ``MeasureSpec()``) into ``work/samples``, then a transformer SPN on them (one torch thread)
    saved as ``work/spn.pt``.

    Returns:
        ``{"store", "spn", "sample_s", "fit_s", "real_evals"}``: the paths, each stage's measured wall and the
        real evaluations the samples cost (counted by the sampler: the new unique samples).
    """
    from rlprune.samples.spaces import read_spaces
    from rlprune.samples.store import read_samples
    from rlprune.samples.tune import run_sampling
    from rlprune.spn.nets import one_thread
    from rlprune.spn.predictor import save_spn
    from rlprune.spn.train import fit

    work = Path(work)
    store, spn_path = work / "samples", work / "spn.pt"
    t0 = time.perf_counter()
    got = run_sampling(task, n, 2, store, progress=False, seed=seed,
                       task_kwargs={"seed": seed, **(task_kwargs or {})}, spec=spec)
    t1 = time.perf_counter()
    with one_thread():
        save_spn(fit("transformer", read_samples(store), read_spaces(store)), spn_path)
    return {"store": store, "spn": spn_path, "sample_s": t1 - t0, "fit_s": time.perf_counter() - t1,
            "real_evals": int(got["n_new"])}


def episodes_per_s(env_config: dict, episodes: int, seed: int = 0) -> dict:
    """Random-action episodes of one ``LayerPruningEnv`` per second (after one warm-up episode).

    Returns:
        ``{"episodes", "env_steps", "episodes_per_s", "env_steps_per_s"}``; a simultaneous episode is one env
        step, a sequential one ``n_groups`` steps.
    """
    from rlprune.envs import LayerPruningEnv

    env = LayerPruningEnv(env_config)
    rng = np.random.default_rng(seed)

    def episode() -> int:
        obs, _ = env.reset()
        steps = 0
        while True:  # the acting agents are the ones that got an observation
            steps += 1
            obs, _, term, _, _ = env.step({a: rng.uniform(0, env.max_ratio, 1) for a in obs})
            if term["__all__"]:
                return steps

    env.reset(seed=seed)
    episode()  # warm-up: the first real evaluation measures the baseline, the first SPN call builds caches
    t0 = time.perf_counter()
    steps = sum(episode() for _ in range(episodes))
    dt = time.perf_counter() - t0
    return {"episodes": episodes, "env_steps": steps, "episodes_per_s": episodes / dt, "env_steps_per_s": steps / dt}


def ratio_text(x: float, lower_bound: bool = False) -> str:
    """``195x`` or ``>= 3.1x`` for a speed or size ratio."""
    if x is None or not np.isfinite(x):
        return "n/a"
    body = f"{x:,.0f}x" if x >= 100 else f"{x:.2f}x"
    return (">= " if lower_bound else "") + body


def met(ok: bool) -> str:
    """``met`` / ``NOT met`` for a target line."""
    return "met" if ok else "NOT met"


def main_guard(main) -> None:
    """Run ``main()`` and turn a one-line rlprune user error (e.g. a missing data folder) into exit status 2."""
    from rlprune.errors import RlpruneError

    try:
        main()
    except RlpruneError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
