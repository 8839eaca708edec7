"""Search speed: what the SPN buys per env step, and end to end, for a sweep of MACs targets, as time to accuracy.

How to run:
    python benchmarks/search_speed.py --quick     # digits, 3 seeds, target 0.5, 2 iterations: ~2 min on 2 cores
    python benchmarks/search_speed.py             # digits, 3 seeds, targets 0.3 0.5 0.7: ~20-40 min (each
                                                  # search capped at 10 min; the stop rule ends them sooner)
    python benchmarks/search_speed.py --task fashion-mnist --arch resnet20   # the real workload (below)

The real workload is Fashion-MNIST ResNet-20 (the committed base checkpoint under ``checkpoints/``, data in
``/usr/share/datasets/fashion-mnist`` or ``--data-dir``). There one real evaluation (prune, BN recalibration,
5,000 calibration images) costs ~4-6 s on 2 idle cores, and so does every AMC-style episode and every real
sample. A full run, per seed: 256 samples on 2 workers ~11 min idle (50 min was measured under load), SPN
training a few minutes, three SPN searches (at most ``--cap-s`` each), and three AMC-style searches of ~5 min per
iteration (64 real episodes), which the default 600 s cap stops after 2-3 iterations each (every ~5 min more of
``--cap-s`` buys each one more iteration); validation (~5 s per new vector) comes on top, outside the
walls. Plan on 1-1.5 h per seed, 3-4.5 h for 3 seeds, with nothing else running (twice that under load). It
resumes per seed: with ``--work DIR`` a finished seed's rows and curves are kept there (and with ``--keep-rows
benchmarks/results/raw/search_speed_<workload>`` a committed copy too, for a fresh machine); a seed killed midway
is run again from its start, since a restart inside it would put a gap into its clocks.
``--quick --task fashion-mnist --arch resnet20 --seeds 0`` is a smoke run of it
(~5 min idle; 11.5 min was measured at a load of 12-15, a real episode then costing ~12 s).

Part 1, per env step: the same ``LayerPruningEnv`` (the task's base model, simultaneous mode, wall at 50% MACs,
the same seeded random actions, one torch thread) is stepped with ``reward="spn"`` (the first seed's transformer
SPN from part 2) and with ``reward="real"`` (prune, BatchNorm recalibration, calibration-split accuracy: what an
AMC-style search pays per episode). The ratio of the two rates is ``spn_vs_real_step_speedup``.

Part 2, end to end, like for like, per seed, for a sweep of targets (``--targets``; full mode 0.3 0.5 0.7, the
real use: one run, several budgets):

- SPN pipeline: real samples (Ray Tune, 2 workers) + transformer SPN training, ONCE per seed, then one online
  RL search (PPO; every ``online_every`` iterations the top candidates are evaluated for real and the SPN is
  fine-tuned) per target, each from its own copy of the samples as sampling left them (the targets' searches
  are independent, their order does not matter). Quick mode runs the searches offline, a smoke run's budget
  being too small for a round to matter.
- AMC-style: per target, the same PPO search with the real-evaluation reward and no SPN
  (``SearchConfig(reward="real", online=False)``).
- Every search runs in its own process and is watched the same way (``stop_rule.watched_search``): after every
  PPO iteration its current best vector is pruned for real, BatchNorm-recalibrated and scored on the VALIDATION
  split without fine-tuning. That time is excluded from every wall; everything else is measured: the search's
  set-up (task, base model, PPO build), its iterations and checkpoints, and the SPN pipeline's sampling and SPN
  training before its searches.
- The same stop rule for every search, on validation only: stop when the best validation accuracy so far has
  not improved for ``patience`` iterations, when the search's own wall passes ``cap_s``, or after ``max_iters``.
- Time-to-accuracy curves (``search_speed_curves*.csv``, one per seed, method and target): at every iteration
  the wall so far (the SPN pipeline's includes its shared sampling and SPN training, ``shared_s``) against the
  best validation accuracy so far, with the counted SPN calls and real evaluations so far (the SPN pipeline's
  include its samples, ``shared_real_evals``).
- Per target, speedup at equal validation accuracy: the level is the best validation accuracy BOTH methods
  reached at that target (the lower of their two final bests); each method's time is when its best-so-far
  first reached it; speedup = AMC-style time / SPN pipeline time (a single-target run's figure: the SPN
  pipeline pays all of its sampling and SPN training there).
- The sweep's time to equal validation accuracy (the headline): per target the level as above; a method's
  sweep time = (SPN pipeline only: sampling + SPN training, once) + the sum over the targets of each search's
  own measured time to reach that target's level; sweep speedup = AMC-style sweep time / SPN pipeline sweep
  time. Real evaluations are summed the same way (the SPN pipeline's samples once). Reported per seed, and
  over seeds as the median with its spread (min..max). Real evaluations are counts (``SearchConfig`` counts
  every reward call; the sampler counts its samples), never episodes times a constant.
- The vector each search ends with (its best by validation) is also scored on the test split (accuracy with a
  95% bootstrap interval): reported, never used to choose or to stop.

Ray is started before anything is timed (neither method pays for it). Targets (reported, not asserted):
>= 1000x per env step; >= 50x end to end. Full mode merges ``spn_vs_real_step_speedup``, ``end_to_end_speedup``
(the sweep's, median over seeds) with ``_range`` ([min, max]), ``_min``/``_max``/``_per_seed``,
``end_to_end_seeds``, ``end_to_end_targets``, ``end_to_end_level_val_acc`` (per seed, per target) and
``real_evals_ratio`` (the sweep's, median over seeds) into ``summary.json`` (Fashion-MNIST ResNet-20, the
headline workload) or ``summary_<workload>.json`` (any other: ``summary_digits.json``).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import common
import record
from search_speed_tables import AMC, SPN, headline, markdown, speedup_row, sweep_row
from stop_rule import StopRule, watched_search

FIELDS = ["section", "seed", "target", "method", "iterations", "episodes", "spn_calls", "real_evals", "wall_s",
          "env_steps_per_s", "val_acc", "acc", "acc_ci_lo", "acc_ci_hi", "macs_ratio", "params_ratio", "level",
          "time_spn_s", "time_amc_s", "speedup", "real_evals_spn", "real_evals_amc", "note"]
CURVE_FIELDS = ["seed", "method", "target", "iteration", "episodes", "wall_s", "val_acc", "best_val_acc",
                "spn_calls", "real_evals", "shared_s", "shared_real_evals"]


def step_speed(task: str, task_kwargs: dict, spn_path: Path, n_spn: int, n_real: int, spec=None) -> list[dict]:
    """Part 1: env steps/s with the SPN reward and with the real-evaluation reward, same env and actions.

    Args:
        task, task_kwargs: the task (``task_kwargs`` holds the base model's ``seed``).
        spn_path: the SPN checkpoint for the SPN reward.
        n_spn, n_real: episodes timed with each reward.
        spec: the ``MeasureSpec`` of the real reward (its label: the one the SPN learned; default ``MeasureSpec()``).

    Returns:
        Two ``section == "step"`` rows.
    """
    from rlprune.spn.nets import one_thread

    env = {"task": task, "task_kwargs": task_kwargs, "target": 0.5, **({"measure": spec.to_dict()} if spec else {})}
    rows = []
    with one_thread():
        for reward, n, extra in (("spn", n_spn, {"spn": str(spn_path)}), ("real", n_real, {})):
            r = common.episodes_per_s({**env, "reward": reward, **extra}, n)
            rows.append({"section": "step", "method": reward, "episodes": n,
                         "env_steps_per_s": round(r["env_steps_per_s"], 3)})
    return rows


def _final_row(method: str, seed: int, target: float, w: dict, m: dict, extra_evals: int) -> dict:
    """One search's table row: its counted budgets and its chosen vector's validation and test scores."""
    last = w["curve"][-1]
    return {"section": "pipeline" if method == SPN else "amc", "seed": seed, "target": target, "method": method,
            "iterations": last["iteration"], "episodes": last["episodes"], "spn_calls": w["result"]["spn_calls"],
            "real_evals": w["result"]["real_evals"] + extra_evals, "wall_s": last["wall_s"],
            "val_acc": round(m["val_acc"], 2), "acc": round(m["acc"], 2), "acc_ci_lo": round(m["acc_ci"][0], 2),
            "acc_ci_hi": round(m["acc_ci"][1], 2), "macs_ratio": round(m["macs_ratio"], 4),
            "params_ratio": round(m["params_ratio"], 4), "note": "stopped by the rule"}


def run_seed(task_name: str, task_kwargs: dict, seed: int, targets: list[float], work: Path,
             b: dict) -> tuple[list[dict], list[dict], Path]:
    """Part 2 for one seed: the SPN pipeline (samples + SPN once, a search per target) and an AMC-style search
    per target, every search watched to the same stop rule.

    Args:
        task_name, task_kwargs: the task (a ``seed`` in ``task_kwargs`` fixes the base model).
        seed: seeds the sampling, the SPN and every search (and the base model unless ``task_kwargs`` has one).
        targets: the sweep's MACs targets.
        work: a scratch folder.
        b: the budgets (``n_samples``, ``spn_batch``, ``online``, ``online_every``, ``amc_batch``, ``patience``,
            ``cap_s``, ``max_iters``).

    Returns:
        ``(rows, curve rows, SPN path)``: the table's pipeline/amc/speedup/sweep rows, every curve, the SPN.
    """
    from rlprune.measure.recipe import measure_base, measure_candidate, prune_and_score
    from rlprune.search.rl import SearchConfig
    from rlprune.spn.nets import one_thread

    spec = common.label_spec(task_name, b.get("label_steps"), finetune_steps=0)
    task = common.task_of(task_name, seed, task_kwargs)
    with one_thread():  # trained before anything is timed; on 2 shared cores torch's threads spin-wait
        model = task.base_model()
    space = spec.space_of(model, task.example_input())

    def validate(ratios) -> float:
        return float(prune_and_score(task, space, space.achieved(ratios), spec, split="validation")[1]["acc"])

    rule = StopRule(b["patience"], b["cap_s"], b["max_iters"])
    work = work / f"seed{seed}{common.label_suffix(spec.label_steps)}"
    pre = common.samples_and_spn(task_name, b["n_samples"], work, seed, task_kwargs, spec)
    shared = {"offset_s": pre["sample_s"] + pre["fit_s"], "evals0": pre["real_evals"]}
    searches = {}
    for t in targets:
        # Each target's search starts from the store as sampling left it (online rounds add to their copy).
        store = shutil.copytree(pre["store"], work / f"samples-{t:g}", ignore=shutil.ignore_patterns("tune"))
        cfg = SearchConfig(spn=str(pre["spn"]), out=str(work / f"search-{t:g}"), task=task_name,
                           task_kwargs=task_kwargs, target=t, train_batch=b["spn_batch"], online=b["online"],
                           online_every=b["online_every"], samples=str(store), seed=seed, measure=spec)
        searches[SPN, t] = watched_search(cfg, rule, validate, seed, SPN, **shared)
    for t in targets:
        cfg = SearchConfig(spn=None, reward="real", online=False, out=str(work / f"amc-{t:g}"), task=task_name,
                           task_kwargs=task_kwargs, target=t, train_batch=b["amc_batch"], seed=seed, measure=spec)
        searches[AMC, t] = watched_search(cfg, rule, validate, seed, AMC)
    base = measure_base(task, model, spec)
    rows = [{"section": "pipeline", "seed": seed, "method": f"spn_{k}", "wall_s": round(v, 1), "note": note}
            for k, v, note in (("sample", pre["sample_s"], f"{pre['real_evals']} real samples, 2 workers, once"),
                               ("fit", pre["fit_s"], "transformer SPN, once"))]
    rows += [{"section": "pipeline", "seed": seed, "target": t, "method": "spn_search",
              "wall_s": round(searches[SPN, t]["search_s"], 1),
              "note": f"{'online ' if b['online'] else ''}RL search, {b['spn_batch']} episodes/iter"} for t in targets]
    for (method, t), w in searches.items():
        # The test split only reports: the vector was chosen on validation, and the search stopped on it.
        m, _ = measure_candidate(task, space, w["best"], base, spec, method=method)
        rows.append(_final_row(method, seed, t, w, m, pre["real_evals"] if method == SPN else 0))
    rows += [speedup_row(seed, searches[SPN, t]["curve"], searches[AMC, t]["curve"], t) for t in targets]
    rows.append(sweep_row(seed, {t: (searches[SPN, t]["curve"], searches[AMC, t]["curve"]) for t in targets}))
    return rows, [r for w in searches.values() for r in w["curve"]], pre["spn"]


def budgets(quick: bool, cap_s: float | None) -> dict:
    """The searches' budgets and the stop rule's settings.

    Each method keeps its own episodes per iteration (an AMC-style episode costs one real evaluation); the stop
    rule, the validation and the clock are the same for both.

    Args:
        quick: ``--quick``'s tiny budgets.
        cap_s: ``--cap-s``, each search's wall cap; None for the mode's default (quick 20 s, full 600 s).

    Returns:
        ``{"n_samples", "spn_batch", "online", "online_every", "amc_batch", "patience", "max_iters", "cap_s"}``
        (``main`` adds ``label_steps``, the label every real evaluation and sample gets).
    """
    # Quick mode skips the online rounds: starting the world-model actor and the evaluation workers would double
    # a smoke run's time.
    b = ({"n_samples": 10, "spn_batch": 32, "online": False, "online_every": 2, "amc_batch": 8, "patience": 1,
          "max_iters": 2} if quick else
         {"n_samples": 256, "spn_batch": 256, "online": True, "online_every": 5, "amc_batch": 64, "patience": 5,
          "max_iters": 60})
    return {**b, "cap_s": cap_s or (20.0 if quick else 600.0)}


def main(argv=None) -> None:
    """Measure both parts and write ``search_speed[_<task>_<arch>][_quick].csv/.md``, the curves' CSV (and, in
    full mode, the summary: ``summary.json`` for Fashion-MNIST ResNet-20)."""
    p = common.parser(__doc__)
    common.add_task_args(p)
    p.add_argument("--targets", type=float, nargs="+", default=None,
                   help="the sweep's MACs targets (default 0.3 0.5 0.7; quick 0.5)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    p.add_argument("--cap-s", type=float, default=None, help="each search's wall cap (default 600; quick 20)")
    p.add_argument("--work", type=Path,
                   help="keep each finished seed here; rerunning with it resumes (a seed killed midway is run again "
                        "from its start: its clocks must not include a restart; default: a temporary folder)")
    common.add_keep_rows_arg(p)
    common.add_label_arg(p)
    args = p.parse_args(argv)
    q = args.quick
    kw, label = common.task_choice(args)
    targets = sorted(args.targets or ([0.5] if q else [0.3, 0.5, 0.7]))
    b = {**budgets(q, args.cap_s), "label_steps": common.label_spec(args.task, args.label_steps).label_steps}
    t_start = time.perf_counter()
    # Ray starts in run_seeds, before any clock: neither method pays for it.
    units = common.run_seeds(lambda seed, work: [seed_unit(args.task, kw, label, seed, args.seeds[0], targets, b, q,
                                                           work)], args.seeds, args.work, args.keep_rows)
    rows = [r for u in units if u["seed"] == args.seeds[0] for r in u["step"]]
    rows += [r for u in units for r in u["rows"]]
    curves = [c for u in units for c in u["curves"]]
    fig = headline(rows)
    name = record.result_name("search_speed", label)
    record.write_csv(args.results_dir, record.stem(record.result_name("search_speed_curves", label), q), curves,
                     CURVE_FIELDS)
    setup = {"mode": "quick" if q else "full", **b, "seeds": args.seeds, "targets": targets,
             "wall": time.perf_counter() - t_start}
    record.write_results(args.results_dir, record.stem(name, q), rows, markdown(label, rows, setup, fig), FIELDS)
    if not q:
        record.update_summary(args.results_dir, fig, "search_speed", retired=("end_to_end_speedup_is_lower_bound",),
                              label=label)


def seed_unit(task: str, kw: dict, label: str, seed: int, first: int, targets: list[float], b: dict, quick: bool,
              work: Path) -> dict:
    """One seed's rows and curves (and, for the ``first`` seed, part 1's step rows, on its SPN), read back from
    ``work`` when that seed finished before.

    Returns:
        ``{"seed", "rows", "curves", "step"}``, as kept in ``work/seed<seed>/rows-<settings>.json``.
    """
    from rlprune.io import atomic_write_json

    settings = (f"{'quick' if quick else 'full'}-{label.replace('/', '-')}-t{'_'.join(f'{t:g}' for t in targets)}"
                f"-cap{b['cap_s']:g}")
    done = Path(work) / f"seed{seed}{common.label_suffix(b['label_steps'])}" / f"rows-{settings}.json"
    if done.is_file():
        return json.loads(done.read_text())
    shutil.rmtree(done.parent, ignore_errors=True)  # what a killed attempt left: its samples would skew the clock
    rows, curves, spn = run_seed(task, kw, seed, targets, Path(work), b)
    n_spn, n_real = (100, 6) if quick else (2000, 40)
    spec = common.label_spec(task, b["label_steps"], finetune_steps=0)
    step = step_speed(task, {"seed": seed, **kw}, spn, n_spn, n_real, spec) if seed == first else []
    unit = {"seed": seed, "rows": record.stamped(rows), "curves": record.stamped(curves), "step": record.stamped(step)}
    atomic_write_json(done, unit)
    return unit


if __name__ == "__main__":
    common.main_guard(main)
