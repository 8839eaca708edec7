"""Search speed: what the SPN buys per env step, and end to end at equal validated accuracy (50% MACs).

How to run:
    python benchmarks/search_speed.py --quick     # ~1.5 min: tiny budgets, the AMC-style search capped at 20 s
    python benchmarks/search_speed.py             # ~5-22 min: mostly the AMC-style search (capped at 15 min)

Part 1, per env step: the same ``LayerPruningEnv`` (digits, simultaneous mode, wall at 50% MACs, the same
seeded random actions, one torch thread) is stepped with ``reward="spn"`` (the transformer SPN of part 2) and
with ``reward="real"`` (prune, BatchNorm recalibration, calibration-split accuracy: what an AMC-style search
pays per episode). The ratio of the two rates is the per-step speedup.

Part 2, end to end at 50% MACs:
- SPN pipeline: real samples (Ray Tune, 2 workers) + transformer SPN training + the online RL search (PPO; every
  5 iterations the top candidates are evaluated for real and the SPN is fine-tuned on them). Its wall is all
  three, measured.
- Validation (outside every timed wall): the vector is pruned for real, BatchNorm-recalibrated on the
  calibration split and scored on the TEST split without fine-tuning (``rlprune.measure.recipe.measure_candidate``,
  ``finetune_steps=0``). A short fine-tune lifts nearly every sensible vector to ~98-99% on digits, which would
  make any bar trivially reachable.
- The bar: the SPN pipeline's VALIDATION-split accuracy minus ``--tolerance`` points (default 0.5); the stop rule
  reads the validation split too, never the test split.
- AMC-style: the same PPO search with the real-evaluation reward and no SPN
  (``SearchConfig(reward="real", online=False)``), resumed chunk by chunk (``--amc-chunk`` iterations of
  ``--amc-batch`` episodes); after each chunk its best vector (by real calibration reward) is validated the same
  way, until it reaches the bar or its search wall passes ``--amc-cap-s``. Its wall: the first call's whole wall
  (algorithm build included) plus the per-iteration wall of later chunks (re-building the algorithm to resume is
  an artifact of chunking). Ray is already up when it starts, which favours AMC by a few seconds.
- end-to-end speedup = AMC wall to the bar / SPN pipeline wall; when the cap is hit first it is a lower bound
  (printed as ``>= x``).

Targets (reported, not asserted): >= 1000x per env step; >= 50x end to end at equal validated accuracy.
Full mode merges ``spn_vs_real_step_speedup``, ``end_to_end_speedup`` (and whether it is a lower bound) into
``summary.json``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import common

FIELDS = ["section", "method", "episodes", "iterations", "real_evals", "wall_s", "env_steps_per_s", "acc",
          "macs_ratio", "params_ratio", "note"]


def step_speed(task: str, spn_path: Path, n_spn: int, n_real: int) -> list[dict]:
    """Part 1: env steps/s with the SPN reward and with the real-evaluation reward, same env and actions."""
    from rlprune.spn.nets import one_thread

    env = {"task": task, "target": 0.5}
    rows = []
    with one_thread():
        for reward, n, extra in (("spn", n_spn, {"spn": str(spn_path)}), ("real", n_real, {})):
            r = common.episodes_per_s({**env, "reward": reward, **extra}, n)
            rows.append({"section": "step", "method": reward, "episodes": n,
                         "env_steps_per_s": round(r["env_steps_per_s"], 3)})
    return rows


def spn_pipeline(task: str, work: Path, n_samples: int, iters: int, batch: int, seed: int) -> dict:
    """Samples + SPN training + online RL search, each stage timed; returns walls, the result and the SPN path."""
    from rlprune.search.rl import SearchConfig, run_search

    t0 = time.perf_counter()
    out = common.samples_and_spn(task, n_samples, work, seed)
    t1 = time.perf_counter()
    res = run_search(SearchConfig(spn=str(out["spn"]), out=str(work / "search"), task=task, target=0.5, iters=iters,
                                  train_batch=batch, online_every=min(5, iters), samples=str(out["store"]),
                                  seed=seed), progress=False)
    return {**out, "search_s": time.perf_counter() - t1, "wall_s": time.perf_counter() - t0, "result": res}


def amc_until(task: str, out: Path, bar: float, validate, batch: int, chunk: int, cap_s: float,
              seed: int) -> list[dict]:
    """AMC-style real-reward search, resumed ``chunk`` iterations at a time until its validated best vector
    reaches ``bar`` or its wall passes ``cap_s``; returns one row per chunk (the last says whether it got there)."""
    from rlprune.search.rl import SearchConfig, run_search

    rows, wall, prev, iters = [], 0.0, 0.0, 0
    while True:
        iters += chunk
        t0 = time.perf_counter()
        res = run_search(SearchConfig(spn=None, reward="real", online=False, out=str(out), task=task, target=0.5,
                                      iters=iters, train_batch=batch, seed=seed), progress=False)
        # The first call pays the algorithm build; a resumed call's rebuild is an artifact of chunking.
        wall += (time.perf_counter() - t0) if not rows else res["wall_s"] - prev
        prev = res["wall_s"]
        v = validate(res["ratios"])
        rows.append({"section": "amc", "method": "amc_real", "episodes": iters * batch, "iterations": iters,
                     "real_evals": iters * batch, "wall_s": round(wall, 1), "acc": round(v["acc"], 2),
                     "macs_ratio": round(v["macs_ratio"], 4), "params_ratio": round(v["params_ratio"], 4),
                     "note": "reached" if v["val_acc"] >= bar else ("cap" if wall >= cap_s else "")})
        print(f"amc: {iters} iterations, {wall:.0f} s, validation {v['val_acc']:.2f} (bar {bar:.2f})",
              file=sys.stderr, flush=True)
        if v["val_acc"] >= bar or wall >= cap_s:
            return rows


def main(argv=None) -> None:
    """Measure both parts and write ``search_speed[_quick].csv/.md`` (and summary.json in full mode)."""
    p = common.parser(__doc__)
    p.add_argument("--task", default="digits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tolerance", type=float, default=0.5, help="bar = SPN pipeline's validated acc - this")
    p.add_argument("--amc-cap-s", type=float, default=None, help="AMC-style search wall cap (default 900; quick 20)")
    args = p.parse_args(argv)
    q = args.quick
    n_spn, n_real = (200, 10) if q else (2000, 40)
    n_samples, iters, batch = (32, 2, 64) if q else (256, 30, 256)
    amc_batch, amc_chunk = (32, 1) if q else (64, 2)
    cap = args.amc_cap_s or (20.0 if q else 900.0)

    from rlprune.measure.recipe import measure_base, measure_candidate
    from rlprune.measure.spec import MeasureSpec
    from rlprune.tasks import get_task

    spec = MeasureSpec(finetune_steps=0)
    task = get_task(args.task, seed=args.seed)
    model = task.base_model()
    space = spec.space_of(model, task.example_input())
    base = measure_base(task, model, spec)

    def validate(ratios) -> dict:
        return measure_candidate(task, space, ratios, base, spec, method="validate")[0]

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        spn = spn_pipeline(args.task, Path(tmp), n_samples, iters, batch, args.seed)
        v = validate(spn["result"]["ratios"])
        bar = v["val_acc"] - args.tolerance  # the bar and the stop rule use validation, never test
        rows = step_speed(args.task, spn["spn"], n_spn, n_real)
        rows += [{"section": "pipeline", "method": f"spn_{k}", "wall_s": round(spn[f"{k}_s"], 1),
                  "note": note} for k, note in (("sample", f"{n_samples} real samples, 2 workers"),
                                                 ("fit", "transformer SPN"),
                                                 ("search", f"online RL search, {iters} x {batch} episodes"))]
        # Real evaluations the SPN pipeline paid: its samples plus the online rounds' candidates.
        evals = n_samples + sum(int(r.get("n_real", 0)) for r in spn["result"]["online_rounds"])
        rows.append({"section": "pipeline", "method": "spn_pipeline", "episodes": iters * batch, "iterations": iters,
                     "real_evals": evals, "wall_s": round(spn["wall_s"], 1), "acc": round(v["acc"], 2),
                     "macs_ratio": round(v["macs_ratio"], 4), "params_ratio": round(v["params_ratio"], 4),
                     "note": f"bar = {bar:.2f}"})
        amc = amc_until(args.task, Path(tmp) / "amc", bar, validate, amc_batch, amc_chunk, cap, args.seed)
        rows += amc
    fig = headline(rows)
    setup = {"mode": "quick" if q else "full", "tolerance": args.tolerance, "amc_batch": amc_batch,
             "amc_chunk": amc_chunk, "cap": cap, "wall": time.perf_counter() - t_start}
    common.write_results(args.results_dir, common.stem("search_speed", q), rows, markdown(args.task, rows, setup, fig),
                         FIELDS)
    if not q:
        common.update_summary(args.results_dir, fig, "search_speed")


def headline(rows: list[dict]) -> dict:
    """The summary.json figures, from the table rows: per-step and end-to-end speedups."""
    rate = {r["method"]: float(r["env_steps_per_s"]) for r in rows if r["section"] == "step"}
    wall = next(float(r["wall_s"]) for r in rows if r["method"] == "spn_pipeline")
    last = [r for r in rows if r["section"] == "amc"][-1]
    evals = next(int(r["real_evals"]) for r in rows if r["method"] == "spn_pipeline")
    return {"spn_vs_real_step_speedup": round(rate["spn"] / rate["real"], 1),
            "end_to_end_speedup": round(float(last["wall_s"]) / wall, 2),
            "real_evals_ratio": round(int(last["real_evals"]) / evals, 2),
            "end_to_end_speedup_is_lower_bound": last["note"] != "reached"}


def markdown(task: str, rows: list[dict], s: dict, fig: dict) -> str:
    """The printed report: both tables, the two speedups and how they compare with the targets."""
    step, e2e = fig["spn_vs_real_step_speedup"], fig["end_to_end_speedup"]
    reached = not fig["end_to_end_speedup_is_lower_bound"]
    # A lower bound at or above the target still shows it; one below says nothing either way.
    e2e_target = common.met(e2e >= 50) if reached or e2e >= 50 else "not shown (a lower bound below 50x)"
    pipeline = [r for r in rows if r["section"] == "pipeline"]
    amc = [r for r in rows if r["section"] == "amc"]
    amc_cols = ["iterations", "episodes", "real_evals", "wall_s", "acc", "macs_ratio", "params_ratio", "note"]
    lines = [f"# Search speed ({task}, {s['mode']})", "", common.stamp() + ".", "",
             "## Per env step (same env, same random actions, simultaneous mode, wall at 50% MACs)", "",
             *common.md_table(rows[:2], ["method", "episodes", "env_steps_per_s"],
                              ["reward", "episodes", "env steps/s"]), "",
             f"SPN vs real per-step speedup: {common.ratio_text(step)} (target >= 1000x: {common.met(step >= 1000)})",
             "", "## End to end at 50% MACs, equal validated accuracy", "",
             "Validated = pruned for real, BN recalibrated, test-split accuracy, no fine-tune (outside the timed "
             f"walls). Bar = the SPN pipeline's validated accuracy - {s['tolerance']:g} points.", "",
             *common.md_table(pipeline, ["method", "real_evals", "wall_s", "acc", "macs_ratio", "params_ratio",
                                         "note"]), "",
             f"AMC-style search (real reward, {s['amc_batch']} episodes per iteration, validated every "
             f"{s['amc_chunk']} iteration(s), cap {s['cap']:.0f} s of search wall):", "",
             *common.md_table(amc, amc_cols), "",
             f"End-to-end speedup: {common.ratio_text(e2e, lower_bound=not reached)} "
             f"({'AMC reached the bar' if reached else 'AMC did NOT reach the bar before the cap: a lower bound'}; "
             f"target >= 50x: {e2e_target})", "",
             f"Real evaluations to the bar, AMC-style / SPN pipeline: {fig['real_evals_ratio']:g}x. Where one "
             "evaluation costs far more than a PPO step (large models, large validation sets) the end-to-end "
             "speedup tends to this ratio; on digits an evaluation takes ~0.1-0.2 s, so fixed costs (Ray and PPO "
             "start-up, SPN training) weigh as much.", "", f"Total benchmark wall: {s['wall']:.0f} s."]
    return "\n".join(lines)


if __name__ == "__main__":
    common.main_guard(main)
