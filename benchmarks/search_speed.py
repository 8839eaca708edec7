"""Search speed: what the SPN buys per env step, and end to end as time-to-accuracy curves (50% MACs).

How to run:
    python benchmarks/search_speed.py --quick     # 3 seeds, 2 iterations each: ~1.5-2 min on 2 cores
    python benchmarks/search_speed.py             # 3 seeds, each search capped at 10 min: up to ~1 h, the stop
                                                  # rule usually ends the searches well before the cap

Part 1, per env step: the same ``LayerPruningEnv`` (digits, simultaneous mode, wall at 50% MACs, the same
seeded random actions, one torch thread) is stepped with ``reward="spn"`` (seed 0's transformer SPN from part
2) and with ``reward="real"`` (prune, BatchNorm recalibration, calibration-split accuracy: what an AMC-style
search pays per episode). The ratio of the two rates is the per-step speedup.

Part 2, end to end, like for like, per seed:

- SPN pipeline: real samples (Ray Tune, 2 workers) + transformer SPN training + the online RL search (PPO;
  every ``online_every`` iterations the top candidates are evaluated for real and the SPN is fine-tuned; quick
  mode runs it offline, a smoke run's budget being too small for a round to matter).
- AMC-style: the same PPO search with the real-evaluation reward and no SPN
  (``SearchConfig(reward="real", online=False)``).
- Both searches run in one process each and are watched the same way: after every PPO iteration the search's
  current best vector is pruned for real, BatchNorm-recalibrated and scored on the VALIDATION split without
  fine-tuning (a short fine-tune lifts nearly every sensible vector to ~98-99% on digits). That time is
  excluded from both walls; everything else is measured: the search's set-up (task, base model, PPO build),
  its iterations and checkpoints, and for the SPN pipeline its sampling and SPN training before the search.
- The same stop rule for both, on validation only: stop when the best validation accuracy so far has not
  improved for ``patience`` iterations, when the search's own wall passes ``cap_s``, or after ``max_iters``.
- Time-to-accuracy curve (``search_speed_curves[_quick].csv``): at every iteration, the wall so far against
  the best validation accuracy so far, with the counted SPN calls and real evaluations so far.
- Speedup at equal validation accuracy: the level is the best validation accuracy BOTH methods reached (the
  lower of their two final bests); each method's time is when its best-so-far first reached that level;
  speedup = AMC-style time / SPN pipeline time. Reported per seed, and over seeds as the median with the
  spread (min..max). Real evaluations are counts (``SearchConfig`` counts every reward call; the sampler
  counts its samples), never episodes times a constant.
- The vector each method ends with (its best by validation) is also scored on the test split (accuracy
  with a 95% bootstrap interval): reported, never used to choose or to stop.

Ray is started before anything is timed (neither method pays for it). Targets (reported, not asserted):
>= 1000x per env step; >= 50x end to end. Full mode merges ``spn_vs_real_step_speedup``,
``end_to_end_speedup`` (median over seeds) with ``_min``/``_max``/``_seeds``, ``end_to_end_level_val_acc`` and
``real_evals_ratio`` (median over seeds, at the level) into ``summary.json``.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import common

FIELDS = ["section", "seed", "method", "iterations", "episodes", "spn_calls", "real_evals", "wall_s",
          "env_steps_per_s", "val_acc", "acc", "acc_ci_lo", "acc_ci_hi", "macs_ratio", "params_ratio", "level",
          "time_spn_s", "time_amc_s", "speedup", "real_evals_spn", "real_evals_amc", "note"]
CURVE_FIELDS = ["seed", "method", "iteration", "episodes", "wall_s", "val_acc", "best_val_acc", "spn_calls",
                "real_evals"]
SPN, AMC = "spn_pipeline", "amc_real"


@dataclass(frozen=True)
class StopRule:
    """One stop rule for every search: no gain in best validation accuracy for ``patience`` iterations, the
    search's own wall past ``cap_s``, or ``max_iters`` iterations."""

    patience: int
    cap_s: float
    max_iters: int

    def done(self, curve: list[dict], search_s: float) -> bool:
        """Whether a search should stop now.

        Args:
            curve: its curve so far, one row per iteration (``best_val_acc``).
            search_s: its own measured wall so far (validation excluded).

        Returns:
            True when the rule fires.
        """
        if len(curve) >= self.max_iters or search_s >= self.cap_s:
            return True
        return len(curve) > self.patience and curve[-1]["best_val_acc"] <= curve[-1 - self.patience]["best_val_acc"]


class _Stop(Exception):
    """Raised from a search's iteration callback when the stop rule fires (the search is checkpointed)."""


def watched_search(cfg, rule: StopRule, validate, seed: int, method: str, offset_s: float = 0.0,
                   evals0: int = 0) -> dict:
    """Run one search, validating its best vector after every iteration, until ``rule`` stops it.

    Args:
        cfg: the ``SearchConfig`` (``iters`` is raised to ``rule.max_iters``).
        rule: when to stop.
        validate: ``ratios -> validation accuracy`` (its time is excluded from the walls).
        seed, method: recorded in the curve rows.
        offset_s: wall already spent before the search (the SPN pipeline's sampling and SPN training).
        evals0: real evaluations already spent before the search (the SPN pipeline's samples).

    Returns:
        ``{"curve", "result", "search_s", "best"}``: the curve rows, the search's result (counted
        ``spn_calls``/``real_evals``), its measured wall, and the vector with the best validation accuracy.
    """
    import dataclasses

    from rlprune.search.rl import Search

    cfg = dataclasses.replace(cfg, iters=rule.max_iters)
    curve: list[dict] = []
    seen: dict[tuple, float] = {}
    state = {"excluded": 0.0, "spn": 0, "real": evals0, "episodes": 0, "best": None}
    t0 = time.perf_counter()
    search = Search(cfg)

    def on_iteration(row: dict) -> None:
        t1 = time.perf_counter()
        search_s = t1 - t0 - state["excluded"]
        ratios = [float(x) for x in search.pool.best["ratios"]]
        key = tuple(round(x, 6) for x in ratios)
        if key not in seen:  # the best vector often stays the same: validate each vector once
            seen[key] = validate(ratios)
        # Counted by the search: reward calls hit the SPN or, for the AMC-style search, a real evaluation.
        calls = int(row.get("reward_calls", 0))
        state["spn" if cfg.reward == "spn" else "real"] += calls
        state["real"] += int((row.get("online") or {}).get("n_real", 0))
        state["episodes"] += int(row["episodes"])
        if state["best"] is None or seen[key] > seen[state["best"]]:
            state["best"] = key
        curve.append({"seed": seed, "method": method, "iteration": int(row["iteration"]),
                      "episodes": state["episodes"], "wall_s": round(offset_s + search_s, 2),
                      "val_acc": round(seen[key], 4), "best_val_acc": round(seen[state["best"]], 4),
                      "spn_calls": state["spn"], "real_evals": state["real"]})
        print(f"{method} seed {seed}: iteration {row['iteration']}, {offset_s + search_s:.0f} s, best validation "
              f"{seen[state['best']]:.2f}", file=sys.stderr, flush=True)
        state["excluded"] += time.perf_counter() - t1
        if rule.done(curve, search_s):
            raise _Stop

    try:
        search.run(progress=False, on_iteration=on_iteration)
    except _Stop:
        pass  # the iteration was checkpointed before the callback; run() closed the algorithm
    search_s = curve[-1]["wall_s"] - offset_s
    return {"curve": curve, "result": search.result(), "search_s": search_s, "best": list(state["best"])}


def time_to(curve: list[dict], level: float) -> dict | None:
    """When a curve first reaches an accuracy.

    Args:
        curve: one row per iteration, ``best_val_acc`` non-decreasing.
        level: validation accuracy (%).

    Returns:
        The first row whose best validation accuracy reaches ``level``; None if none does.
    """
    return next((r for r in curve if r["best_val_acc"] >= level - 1e-9), None)


def speedup_row(seed: int, spn_curve: list[dict], amc_curve: list[dict]) -> dict:
    """Speedup at the best validation accuracy both curves reached.

    Args:
        seed: recorded in the row.
        spn_curve, amc_curve: the two methods' curves (non-empty).

    Returns:
        ``{"section": "speedup", "seed", "level", "time_spn_s", "time_amc_s", "speedup", "real_evals_spn",
        "real_evals_amc", "note"}``; ``note`` says which method's final best set the level.
    """
    spn_best, amc_best = spn_curve[-1]["best_val_acc"], amc_curve[-1]["best_val_acc"]
    level = min(spn_best, amc_best)
    s, a = time_to(spn_curve, level), time_to(amc_curve, level)
    note = ("AMC-style did not reach the SPN pipeline's best" if amc_best < spn_best else
            "the SPN pipeline did not reach AMC-style's best" if spn_best < amc_best else "both ended level")
    return {"section": "speedup", "seed": seed, "method": "amc / spn", "level": level, "time_spn_s": s["wall_s"],
            "time_amc_s": a["wall_s"], "speedup": round(a["wall_s"] / s["wall_s"], 3),
            "real_evals_spn": s["real_evals"], "real_evals_amc": a["real_evals"], "note": note}


def step_speed(task: str, spn_path: Path, n_spn: int, n_real: int) -> list[dict]:
    """Part 1: env steps/s with the SPN reward and with the real-evaluation reward, same env and actions.

    Args:
        task: task name.
        spn_path: the SPN checkpoint for the SPN reward.
        n_spn, n_real: episodes timed with each reward.

    Returns:
        Two ``section == "step"`` rows.
    """
    from rlprune.spn.nets import one_thread

    env = {"task": task, "target": 0.5}
    rows = []
    with one_thread():
        for reward, n, extra in (("spn", n_spn, {"spn": str(spn_path)}), ("real", n_real, {})):
            r = common.episodes_per_s({**env, "reward": reward, **extra}, n)
            rows.append({"section": "step", "method": reward, "episodes": n,
                         "env_steps_per_s": round(r["env_steps_per_s"], 3)})
    return rows


def run_seed(task_name: str, seed: int, work: Path, b: dict) -> tuple[list[dict], list[dict], Path]:
    """Part 2 for one seed: both searches watched to the same stop rule.

    Args:
        task_name: task name.
        seed: seeds the task, the sampling and both searches.
        work: a scratch folder.
        b: the budgets (``n_samples``, ``spn_batch``, ``online``, ``online_every``, ``amc_batch``, ``patience``,
            ``cap_s``, ``max_iters``).

    Returns:
        ``(rows, curve rows, SPN path)``: the table's pipeline/amc/speedup rows, both curves, seed's SPN.
    """
    from rlprune.measure.recipe import measure_base, measure_candidate, prune_and_score
    from rlprune.measure.spec import MeasureSpec
    from rlprune.search.rl import SearchConfig
    from rlprune.spn.nets import one_thread
    from rlprune.tasks import get_task

    spec = MeasureSpec(finetune_steps=0)
    task = get_task(task_name, seed=seed)
    with one_thread():  # trained before anything is timed; on 2 shared cores torch's threads spin-wait
        model = task.base_model()
    space = spec.space_of(model, task.example_input())

    def validate(ratios) -> float:
        return float(prune_and_score(task, space, space.achieved(ratios), spec, split="validation")[1]["acc"])

    rule = StopRule(b["patience"], b["cap_s"], b["max_iters"])
    work = work / f"seed{seed}"
    pre = common.samples_and_spn(task_name, b["n_samples"], work, seed)
    spn = watched_search(SearchConfig(spn=str(pre["spn"]), out=str(work / "search"), task=task_name, target=0.5,
                                      train_batch=b["spn_batch"], online=b["online"], online_every=b["online_every"],
                                      samples=str(pre["store"]), seed=seed),
                         rule, validate, seed, SPN, offset_s=pre["sample_s"] + pre["fit_s"], evals0=pre["real_evals"])
    amc = watched_search(SearchConfig(spn=None, reward="real", online=False, out=str(work / "amc"), task=task_name,
                                      target=0.5, train_batch=b["amc_batch"], seed=seed), rule, validate, seed, AMC)
    base = measure_base(task, model, spec)
    rows = [{"section": "pipeline", "seed": seed, "method": f"spn_{k}", "wall_s": round(v, 1), "note": note}
            for k, v, note in (("sample", pre["sample_s"], f"{pre['real_evals']} real samples, 2 workers"),
                               ("fit", pre["fit_s"], "transformer SPN"),
                               ("search", spn["search_s"], f"{'online ' if b['online'] else ''}RL search, "
                                                           f"{b['spn_batch']} episodes/iter"))]
    for method, w in ((SPN, spn), (AMC, amc)):
        # The test split only reports: the vector was chosen on validation, and the search stopped on it.
        m, _ = measure_candidate(task, space, w["best"], base, spec, method=method)
        last = w["curve"][-1]
        rows.append({"section": "pipeline" if method == SPN else "amc", "seed": seed, "method": method,
                     "iterations": last["iteration"], "episodes": last["episodes"],
                     "spn_calls": w["result"]["spn_calls"],
                     "real_evals": w["result"]["real_evals"] + (pre["real_evals"] if method == SPN else 0),
                     "wall_s": last["wall_s"], "val_acc": round(m["val_acc"], 2), "acc": round(m["acc"], 2),
                     "acc_ci_lo": round(m["acc_ci"][0], 2), "acc_ci_hi": round(m["acc_ci"][1], 2),
                     "macs_ratio": round(m["macs_ratio"], 4), "params_ratio": round(m["params_ratio"], 4),
                     "note": "stopped by the rule"})
    rows.append(speedup_row(seed, spn["curve"], amc["curve"]))
    return rows, spn["curve"] + amc["curve"], pre["spn"]


def main(argv=None) -> None:
    """Measure both parts and write ``search_speed[_quick].csv/.md``, the curves' CSV (and summary.json in
    full mode)."""
    p = common.parser(__doc__)
    p.add_argument("--task", default="digits")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    p.add_argument("--cap-s", type=float, default=None, help="each search's wall cap (default 600; quick 20)")
    args = p.parse_args(argv)
    q = args.quick
    n_spn, n_real = (100, 6) if q else (2000, 40)
    # Each method keeps its own episodes per iteration (an AMC-style episode costs one real evaluation);
    # the stop rule, the validation and the clock are the same for both. Quick mode skips the online rounds:
    # starting the world-model actor and the evaluation workers would double a smoke run's time.
    b = ({"n_samples": 10, "spn_batch": 32, "online": False, "online_every": 2, "amc_batch": 8, "patience": 1,
          "max_iters": 2} if q else
         {"n_samples": 256, "spn_batch": 256, "online": True, "online_every": 5, "amc_batch": 64, "patience": 5,
          "max_iters": 60})
    b["cap_s"] = args.cap_s or (20.0 if q else 600.0)

    from rlprune.orchestration import init_ray

    t_start = time.perf_counter()
    init_ray(None, 2)  # before any clock starts: neither method pays for it
    rows, curves = [], []
    with tempfile.TemporaryDirectory() as tmp:
        spn_paths = {}
        for seed in args.seeds:
            r, c, spn_paths[seed] = run_seed(args.task, seed, Path(tmp), b)
            rows += r
            curves += c
        rows = step_speed(args.task, spn_paths[args.seeds[0]], n_spn, n_real) + rows
    fig = headline(rows)
    common.write_csv(args.results_dir, common.stem("search_speed_curves", q), curves, CURVE_FIELDS)
    setup = {"mode": "quick" if q else "full", **b, "seeds": args.seeds, "wall": time.perf_counter() - t_start}
    common.write_results(args.results_dir, common.stem("search_speed", q), rows,
                         markdown(args.task, rows, setup, fig), FIELDS)
    if not q:
        common.update_summary(args.results_dir, fig, "search_speed", retired=("end_to_end_speedup_is_lower_bound",),
                              label=args.task)


def headline(rows: list[dict]) -> dict:
    """The summary.json figures, from the table rows.

    Args:
        rows: the ``search_speed`` rows (as written, or read back from the CSV).

    Returns:
        Per-step speedup; end-to-end speedup at equal validation accuracy over seeds (median, min, max, seeds,
        levels) and the real-evaluation ratio at that level (median).
    """
    rate = {r["method"]: float(r["env_steps_per_s"]) for r in rows if r["section"] == "step"}
    sp = [r for r in rows if r["section"] == "speedup"]
    speed = [float(r["speedup"]) for r in sp]
    evals = [float(r["real_evals_amc"]) / float(r["real_evals_spn"]) for r in sp]
    return {"spn_vs_real_step_speedup": round(rate["spn"] / rate["real"], 1),
            "end_to_end_speedup": round(statistics.median(speed), 3), "end_to_end_speedup_min": min(speed),
            "end_to_end_speedup_max": max(speed), "end_to_end_seeds": len(sp),
            "end_to_end_level_val_acc": [round(float(r["level"]), 2) for r in sp],
            "end_to_end_selection_split": "validation", "real_evals_ratio": round(statistics.median(evals), 3)}


def markdown(task: str, rows: list[dict], s: dict, fig: dict) -> str:
    """The printed report: the tables, the speedups with their spread, and how they compare with the targets."""
    step, e2e = fig["spn_vs_real_step_speedup"], fig["end_to_end_speedup"]
    lo, hi = fig["end_to_end_speedup_min"], fig["end_to_end_speedup_max"]
    online = f"online round every {s['online_every']}" if s["online"] else "no online rounds in quick mode"
    final = [r for r in rows if r["section"] in ("pipeline", "amc")]
    cols = ["seed", "method", "iterations", "episodes", "spn_calls", "real_evals", "wall_s", "val_acc", "acc",
            "acc_ci_lo", "acc_ci_hi", "macs_ratio", "params_ratio", "note"]
    sp_cols = ["seed", "level", "time_spn_s", "time_amc_s", "speedup", "real_evals_spn", "real_evals_amc", "note"]
    lines = [f"# Search speed ({task}, {s['mode']})", "", common.stamp() + ".", "",
             "## Per env step (same env, same random actions, simultaneous mode, wall at 50% MACs)", "",
             *common.md_table([r for r in rows if r["section"] == "step"], ["method", "episodes", "env_steps_per_s"],
                              ["reward", "episodes", "env steps/s"]), "",
             f"SPN vs real per-step speedup: {common.ratio_text(step)} (target >= 1000x: {common.met(step >= 1000)})",
             "", "## End to end at 50% MACs: time to equal validation accuracy", "",
             f"Seeds {s['seeds']}. Both searches validated after every iteration (validation split, BN recalibrated, "
             "no fine-tune; outside the walls) and stopped by the same rule: no gain in best validation accuracy "
             f"for {s['patience']} iteration(s), {s['cap_s']:.0f} s of search wall, or {s['max_iters']} iterations. "
             f"SPN pipeline: {s['n_samples']} real samples, SPN training, RL search of {s['spn_batch']} episodes "
             f"per iteration ({online}); AMC-style: real reward, "
             f"{s['amc_batch']} episodes per iteration. `wall_s` includes the SPN pipeline's sampling and SPN "
             "training; `real_evals` and `spn_calls` are counted. `acc` (test, 95% CI) only reports the vector "
             "each method chose on validation. Curves: `search_speed_curves*.csv`.", "",
             *common.md_table(final, cols), "",
             "Speedup = AMC-style time / SPN pipeline time to the level, the best validation accuracy both reached:",
             "", *common.md_table([r for r in rows if r["section"] == "speedup"], sp_cols), "",
             f"End-to-end speedup at equal validation accuracy: {common.ratio_text(e2e)} median over "
             f"{fig['end_to_end_seeds']} seeds (spread {common.ratio_text(lo)} to {common.ratio_text(hi)}; target "
             f">= 50x: {common.met(e2e >= 50)}). Real evaluations to the level, AMC-style / SPN pipeline: "
             f"{fig['real_evals_ratio']:g}x (median). Where one evaluation costs far more than a PPO step the "
             "end-to-end speedup tends to this ratio; on digits an evaluation takes ~0.1-0.2 s, so fixed costs "
             "(PPO start-up, sampling, SPN training) weigh as much.", "",
             f"Total benchmark wall: {s['wall']:.0f} s."]
    return "\n".join(lines)


if __name__ == "__main__":
    common.main_guard(main)
