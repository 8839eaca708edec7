"""Scaling: sample throughput with 1 and 2 workers, SPN inference and cost-model rates, env steps/s per mode.

How to run (``--task/--arch/--data-dir/--model-seed`` choose the workload, as in quality.py; default digits):
    python benchmarks/scaling.py --quick     # ~1 min: 8 samples per worker setting, small batches
    python benchmarks/scaling.py             # ~2 min: 64 samples per worker setting, 65,536-vector batches
    python benchmarks/scaling.py --task fashion-mnist --arch resnet56 --quick   # ~3-5 min: 16 real samples
    python benchmarks/scaling.py --task fashion-mnist --arch resnet56   # ~15-20 min: 128 real samples at ~6 s

What it measures (on the chosen task's committed base model unless said otherwise):
- sample throughput: real samples per second (prune, BN recalibration, calibration-split scoring) generated
  by ``rlprune.samples.tune.run_sampling`` with 1 and with 2 Ray Tune workers into fresh stores; the task's
  keyword arguments (``--arch``, ``--model-seed``, ``--data-dir``) reach every worker.
  ``samples_per_s`` counts only the time the workers spend evaluating (Ray start-up and each worker's model
  load are excluded and shown as ``wall_s``), so it is the rate a long run settles at; on 2 idle cores 2
  workers approach 2x one (the old sample_throughput.py measured 1.68x).
- SPN inference: ratio vectors per second through ``SPN.predict`` for one large batch (best of 3), and the
  latency of one vector (what one env step pays), for the transformer, mlp and linear SPNs fitted on the
  2-worker samples (the weights do not change the speed).
- cost model: exact (params, MACs) of ratio vectors per second (``CostModel.cost_batch``) and of the wall
  projection onto 50% MACs (``project_to_budget``, what the env does every episode) for the task's base model
  (its group count in the row); on digits (6 groups) also an untrained CIFAR ResNet-56 (30 groups), to show
  the rate at a real net's size, which any other task measures on its own net.
- env: random-action episodes of ``LayerPruningEnv`` with the SPN reward in simultaneous mode (one step per
  episode) and sequential mode (one step per group, each re-projecting the budget and querying the SPN for the
  partial choice).

Everything measured in-process runs on one torch thread. Nothing is asserted. Results go to
``scaling[_<task>_<arch>][_quick].csv/.md`` (digits: ``scaling.csv``). Full mode merges
``sample_throughput_2_vs_1``, ``cost_model_vectors_per_s`` (the task's net; ``_resnet56`` too on digits),
``spn_inference_vectors_per_s`` (transformer) and the env rates into ``summary.json`` for fashion-mnist/resnet56
(the headline workload), else ``summary_<workload>.json`` (digits: ``summary_digits.json``).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import common
import numpy as np
import record

SEED = 0
"""Scaling has no seeds: the base model of seed 0 (digits: its own, trained in seconds; any other task: the
committed one, unless ``--model-seed`` says otherwise), and seed 0 for sampling."""
FIELDS = ["section", "name", "workers", "n", "samples_per_s", "wall_s", "speedup_vs_1", "n_groups", "batch",
          "vectors_per_s", "single_ms", "project_vectors_per_s", "mode", "episodes", "env_steps",
          "episodes_per_s", "env_steps_per_s"]


def sample_throughput(task: str, n: int, workers: int, store: Path, task_kwargs: dict | None = None,
                      label: str | None = None) -> dict:
    """``n`` real samples with ``workers`` Tune trials into a fresh ``store``.

    Args:
        task: the task name, built in every worker.
        n, workers: samples wanted and Tune trials (one CPU each).
        store: a fresh sample store folder.
        task_kwargs: the task's keyword arguments (:func:`common.task_choice`: ``arch``, ``seed``, ``data_dir``);
            passed to every worker, so the workers evaluate the same base model as the driver.
        label: the row's ``name`` (default ``task``; e.g. ``fashion-mnist/resnet56``).

    Returns:
        The table row (``section == "samples"``).
    """
    from rlprune.samples.tune import run_sampling

    res = run_sampling(task, n, workers, store, progress=False, seed=SEED,
                       task_kwargs={"seed": SEED, **(task_kwargs or {})})
    return {"section": "samples", "name": label or task, "workers": workers, "n": res["n_new"],
            "samples_per_s": round(res["samples_per_s"], 3), "wall_s": round(res["wall_s"], 1)}


def spn_inference(store: Path, n_vectors: int, work: Path) -> tuple[list[dict], Path]:
    """Rates of every SPN architecture fitted on ``store``; also saves the transformer for the env rows."""
    from rlprune.samples.spaces import read_spaces
    from rlprune.samples.store import read_samples
    from rlprune.spn.predictor import save_spn
    from rlprune.spn.train import FitConfig, fit

    df, spaces = read_samples(store), read_spaces(store)
    fp = df["model_fingerprint"].iloc[0]
    R = np.random.default_rng(0).uniform(0, 0.9, size=(n_vectors, len(df["ratios"].iloc[0]))).astype(np.float32)
    rows, spn_path = [], work / "spn.pt"
    for arch in ("transformer", "mlp", "linear"):
        spn = fit(arch, df, spaces, FitConfig(max_steps=100))  # a short fit: speed does not depend on the weights
        if arch == "transformer":
            save_spn(spn, spn_path)
        spn.predict(R[:1024], fp)  # warm-up
        best = max(_rate(n_vectors, spn.predict, R, fp) for _ in range(3))
        one = []
        for i in range(200):
            t0 = time.perf_counter()
            spn.predict(R[i], fp)
            one.append(time.perf_counter() - t0)
        rows.append({"section": "spn", "name": arch, "batch": n_vectors, "vectors_per_s": round(best),
                     "single_ms": round(1000 * statistics.median(one), 3)})
    return rows, spn_path


def _rate(n: int, fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return n / (time.perf_counter() - t0)


def cost_model_speed(name: str, space, n_vectors: int) -> dict:
    """Vectors/s of the exact cost model and of the wall projection onto 50% MACs for one space."""
    cm = space.cost_model
    R = np.random.default_rng(0).uniform(0, cm.max_ratio, size=(n_vectors, cm.n_groups))
    cm.cost_batch(R[:256])  # warm-up (folds the terms once)
    cost = max(_rate(n_vectors, cm.cost_batch, R) for _ in range(3))
    n_proj = max(256, n_vectors // 8)  # the projection bisects: a smaller batch keeps the run short
    proj = max(_rate(n_proj, cm.project_to_budget, R[:n_proj], 0.5) for _ in range(2))
    return {"section": "cost_model", "name": name, "n_groups": cm.n_groups, "batch": n_vectors,
            "vectors_per_s": round(cost), "project_vectors_per_s": round(proj)}


def cost_model_spaces(task_name: str, label: str, task) -> dict:
    """The spaces whose cost model is timed, by row name: the task's base model, and on digits also an
    untrained CIFAR ResNet-56 (its 30 groups against digits' 6; any other task is a real net of its own)."""
    from rlprune.space.pruning import PruningSpace

    spaces = {label: PruningSpace.from_model(task.base_model(), task.example_input())}
    if task_name == "digits":
        import torch

        from rlprune.models import resnet56

        spaces["resnet56"] = PruningSpace.from_model(resnet56(), torch.randn(1, 3, 32, 32))
    return spaces


def env_speed(task: str, spn_path: Path, mode: str, episodes: int, task_kwargs: dict | None = None,
              label: str | None = None) -> dict:
    """Random-action episodes per second with the SPN reward in ``mode`` on ``task`` (built with
    ``task_kwargs``); the row's ``name`` is ``label`` (default ``task``)."""
    env = {"task": task, "task_kwargs": {"seed": SEED, **(task_kwargs or {})}, "reward": "spn",
           "spn": str(spn_path), "target": 0.5, "mode": mode}
    r = common.episodes_per_s(env, episodes)
    return {"section": "env", "name": label or task, "mode": mode, "episodes": episodes, "env_steps": r["env_steps"],
            "episodes_per_s": round(r["episodes_per_s"], 1), "env_steps_per_s": round(r["env_steps_per_s"], 1)}


def markdown(rows: list[dict], quick: bool, label: str = "digits") -> str:
    """Four small tables and the headline ratios, titled with the workload ``label``."""
    sec = {s: [r for r in rows if r["section"] == s] for s in ("samples", "spn", "cost_model", "env")}
    sim, seq = (next(r for r in sec["env"] if r["mode"] == m) for m in ("simultaneous", "sequential"))
    lines = [f"# Scaling ({label}, {'quick' if quick else 'full'})", "", record.stamp() + ".", "",
             "## Sample throughput (real samples, Ray Tune workers)", "",
             *record.md_table(sec["samples"], ["workers", "n", "samples_per_s", "wall_s", "speedup_vs_1"],
                              ["workers", "samples", "samples/s (evaluating)", "wall s (incl. Ray start)",
                               "speedup vs 1"]), "",
             "## SPN inference (one thread)", "",
             *record.md_table(sec["spn"], ["name", "batch", "vectors_per_s", "single_ms"],
                              ["arch", "batch", "vectors/s", "one vector (ms)"]), "",
             "## Cost model (one thread)", "",
             *record.md_table(sec["cost_model"], ["name", "n_groups", "batch", "vectors_per_s",
                                                  "project_vectors_per_s"],
                              ["model", "groups", "batch", "exact cost, vectors/s", "projection, vectors/s"]), "",
             "Projection: raising a vector until it meets 50% MACs (the env's wall, every episode).", "",
             "## Env with the SPN reward (one thread, random actions)", "",
             *record.md_table(sec["env"], ["mode", "episodes", "env_steps", "episodes_per_s", "env_steps_per_s"]),
             "", f"2 vs 1 sample workers: {common.ratio_text(sec['samples'][1]['speedup_vs_1'])}; sequential vs "
                 f"simultaneous episodes/s: {common.ratio_text(seq['episodes_per_s'] / sim['episodes_per_s'])}; "
                 f"SPN inference target >= 50,000 vectors/s: "
                 f"{common.met(sec['spn'][0]['vectors_per_s'] >= 50_000)}"]
    return "\n".join(lines)


def parse_args(argv=None):
    """The command line: ``--quick``, ``--results-dir`` and the workload (:func:`common.add_task_args`)."""
    p = common.parser(__doc__)
    common.add_task_args(p)
    return p.parse_args(argv)


def measure(task_name: str, kw: dict, label: str, quick: bool) -> list[dict]:
    """Every row of the four sections for one workload.

    Args:
        task_name, kw, label: the task, its keyword arguments and its label (:func:`common.task_choice`).
        quick: the smoke sizes (8 samples per worker setting, small batches, few episodes).

    Returns:
        The rows: ``samples`` (1 and 2 workers), ``spn`` (three archs), ``cost_model``, ``env`` (two modes).
    """
    from rlprune.spn.nets import one_thread

    n_samples, n_vectors = (8, 8192) if quick else (64, 65_536)
    n_sim, n_seq = (100, 20) if quick else (2000, 300)
    task = common.task_of(task_name, SEED, kw)
    task.base_model()  # trained (digits) or loaded (committed) once, outside the timings
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows = [sample_throughput(task_name, n_samples, w, work / f"samples-{w}", kw, label) for w in (1, 2)]
        one = rows[0]["samples_per_s"]
        for r in rows:
            r["speedup_vs_1"] = round(r["samples_per_s"] / one, 2) if one else float("nan")
        with one_thread():
            spn_rows, spn_path = spn_inference(work / "samples-2", n_vectors, work)
            rows += spn_rows
            rows += [cost_model_speed(name, space, n_vectors)
                     for name, space in cost_model_spaces(task_name, label, task).items()]
            rows += [env_speed(task_name, spn_path, mode, n, kw, label) for mode, n in (("simultaneous", n_sim),
                                                                                      ("sequential", n_seq))]
    return rows


def save(results_dir: Path, rows: list[dict], label: str, quick: bool) -> Path:
    """Write ``scaling[_<task>_<arch>][_quick].csv/.md``; in full mode also merge :func:`headline` into the
    workload's summary (``summary.json`` for the headline workload, else ``summary_<workload>.json``).

    Returns:
        The markdown's path.
    """
    md = record.write_results(results_dir, record.stem(record.result_name("scaling", label), quick), rows,
                              markdown(rows, quick, label), FIELDS)
    if not quick:
        record.update_summary(results_dir, headline(rows), "scaling", label=label)
    return md


def main(argv=None) -> None:
    """Measure the four sections on the chosen workload and write its results (and its summary in full mode)."""
    args = parse_args(argv)
    kw, label = common.task_choice(args)  # a missing data folder fails now, before Ray starts
    save(args.results_dir, measure(args.task, kw, label, args.quick), label, args.quick)


def headline(rows: list[dict]) -> dict:
    """The summary figures from the rows (as measured, or read back from the CSV).

    Returns:
        ``sample_throughput_2_vs_1``, ``cost_model_vectors_per_s`` (the task's net), ``_resnet56`` where a
        ``resnet56`` row was measured (digits), ``spn_inference_vectors_per_s`` (transformer) and
        ``env_steps_per_s_simultaneous`` / ``_sequential``.
    """
    def pick(section, name=None, mode=None, workers=None):
        return next((r for r in rows if r["section"] == section and name in (None, r.get("name"))
                     and mode in (None, r.get("mode")) and workers in (None, r.get("workers"))), None)

    task = pick("samples")["name"]
    out = {"sample_throughput_2_vs_1": float(pick("samples", workers=2)["speedup_vs_1"]),
           "cost_model_vectors_per_s": float(pick("cost_model", task)["vectors_per_s"])}
    if (r56 := pick("cost_model", "resnet56")) is not None:
        out["cost_model_vectors_per_s_resnet56"] = float(r56["vectors_per_s"])
    return {**out, "spn_inference_vectors_per_s": float(pick("spn", "transformer")["vectors_per_s"]),
            "env_steps_per_s_simultaneous": float(pick("env", task, "simultaneous")["env_steps_per_s"]),
            "env_steps_per_s_sequential": float(pick("env", task, "sequential")["env_steps_per_s"])}


if __name__ == "__main__":
    common.main_guard(main)
