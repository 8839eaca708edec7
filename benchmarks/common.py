"""What every benchmark script shares: the command line, the task and label choice, seeds run resumably, the
sample stage, env speed. Where rows and figures go (result files, provenance, ``summary.json``) is :mod:`record`.

Each script in this folder runs as ``python benchmarks/<name>.py [--quick] [--results-dir DIR]``; nothing here
asserts on a figure: the scripts print honest ratios against baselines measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from pathlib import Path

import numpy as np
from record import RESULTS


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
    """``--keep-rows DIR``: the committed copies of finished units (:func:`keeping`)."""
    p.add_argument("--keep-rows", type=Path, metavar="DIR",
                   help="a folder to commit with copies of every finished unit's rows (e.g. "
                        "benchmarks/results/raw/<name>; quality, targets and spn_fidelity also keep their sample "
                        "stores), refreshed every few minutes while the run goes: a run on a fresh machine resumes "
                        "from them")


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


def run_seeds(run_seed, seeds, work: Path | None, keep: Path | None = None,
              keep_stores: bool = False) -> list[dict]:
    """Every seed's rows from ``run_seed(seed, work)``, with Ray started once before any search is timed (no
    method's wall includes Ray's start-up) and ``work`` (None: a temporary folder, deleted at the end).

    ``keep`` (``--keep-rows``) is a folder, meant to be committed, of copies of the finished units' rows files
    (``rows-*.json``, at their paths under ``work``), kept by :func:`keeping`: a fresh machine resumes where a
    lost one stopped. With ``keep_stores`` the seeds' sample stores (``<seed folder>/samples``) are kept the same
    way, for benchmarks whose sampling alone outlasts a machine (fashion-mnist ResNet-56: ~2 h a seed).
    """
    import tempfile

    from rlprune.orchestration import init_ray

    init_ray(None, 2)
    with tempfile.TemporaryDirectory() as tmp:
        root, rows = Path(work or tmp), []
        kept = [(root, Path(keep), KEPT_ROWS + (KEPT_STORE if keep_stores else ()))] if keep else []
        with keeping(kept):
            for seed in seeds:
                rows += run_seed(seed, root)
        return rows


KEEP_EVERY_S = 300.0
"""How often :func:`keeping` copies a running benchmark's finished files to its ``--keep-rows`` folder."""
KEPT_ROWS = ("**/rows-*.json",)
"""A benchmark's finished units (quality's targets, targets' seeds), at any depth of its ``--work``."""
STORE_FILES = ("manifest.json", "spaces/*.json", "shards/*.parquet")
"""A sample store's finished files, not Tune's logs. A writer renames a shard into place from a temp name ending
in ``.tmp`` (``rlprune.io``), so a killed writer's half shard matches none of these."""
KEPT_STORE = tuple(f"*/samples/{g}" for g in STORE_FILES)
"""The seeds' sample stores in a quality or targets ``--work`` (``<seed folder>/samples``)."""


@contextlib.contextmanager
def keeping(kept: list[tuple[Path, Path, tuple[str, ...]]], every: float = KEEP_EVERY_S):
    """For each ``(work, keep, patterns)``: first copy ``keep``'s files into ``work`` (a fresh machine resumes
    from a committed copy), then, within the block, copy ``work``'s back every ``every`` seconds (a daemon
    thread) and once more on leaving it, normally or by an exception; all by :func:`copy_kept`.

    Args:
        kept: the folders and their patterns; empty: the block runs as it is.
        every: seconds between copies.
    Raises:
        Nothing from the thread: a failed copy (a file gone between listing and reading) is reported on stderr
        and tried again next time, never allowed to stop the run it protects.
    """
    if not kept:
        yield
        return
    for work, keep, patterns in kept:
        copy_kept(keep, work, patterns)
    stop = threading.Event()

    def copy_all() -> None:
        for work, keep, patterns in kept:
            copy_kept(work, keep, patterns)

    def loop() -> None:
        while not stop.wait(every):
            try:
                copy_all()
            except OSError as e:
                print(f"warning: copying kept files failed ({e}); trying again in {every:g} s",
                      file=sys.stderr, flush=True)

    thread = threading.Thread(target=loop, name="keep-copying", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        copy_all()


def copy_kept(src: Path, dst: Path, patterns: tuple[str, ...] = KEPT_ROWS) -> None:
    """Copy ``src``'s files matching ``patterns`` (globs relative to ``src``) that ``dst`` lacks or holds other
    bytes of, to the same paths, each atomically (a copy killed midway leaves no half file)."""
    from rlprune.io import atomic_write_bytes

    if not src.is_dir():
        return
    for f in sorted({f for g in patterns for f in src.glob(g) if f.is_file()}):
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
    # A store resumed from kept shards (another machine's, or a killed run's) was not sampled in one timed piece:
    # its wall is left out rather than reported as the last part's.
    resumed = got["n_total"] > got["n_new"]
    return {"store": store, "spn": spn_path, "sample_s": None if resumed else t1 - t0,
            "fit_s": time.perf_counter() - t1, "real_evals": int(got["n_new"])}


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


def keep_main(argv=None) -> None:
    """``python benchmarks/common.py WORK DIR``: copy a running benchmark's finished rows and sample-store files
    from its ``--work`` to its ``--keep-rows`` folder now (:func:`copy_kept`), e.g. before its machine goes away."""
    p = argparse.ArgumentParser(description="Copy a running quality/targets benchmark's finished rows and sample "
                                            "shards from its --work folder to its --keep-rows folder, to commit.")
    p.add_argument("work", type=Path, help="the benchmark's --work folder")
    p.add_argument("keep", type=Path, help="its --keep-rows folder")
    args = p.parse_args(argv)
    if not args.work.is_dir():
        raise SystemExit(f"error: --work folder {args.work} does not exist; name the folder the benchmark runs in")
    copy_kept(args.work, args.keep, KEPT_ROWS + KEPT_STORE)


def main_guard(main) -> None:
    """Run ``main()`` and turn a one-line rlprune user error (e.g. a missing data folder) into exit status 2."""
    from rlprune.errors import RlpruneError

    try:
        main()
    except RlpruneError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    keep_main()
