"""The search-speed benchmark's readings and tables: time to a validation level on a curve, the per-target and
sweep speedups of the SPN pipeline over the AMC-style search, the markdown and the summary.json figures
(``search_speed.py`` measures the curves)."""

from __future__ import annotations

import statistics

import common
import record

SPN, AMC = "spn_pipeline", "amc_real"


def time_to(curve: list[dict], level: float) -> dict | None:
    """When a curve first reaches an accuracy.

    Args:
        curve: one row per iteration, ``best_val_acc`` non-decreasing.
        level: validation accuracy (%).

    Returns:
        The first row whose best validation accuracy reaches ``level``; None if none does.
    """
    return next((r for r in curve if r["best_val_acc"] >= level - 1e-9), None)


def speedup_row(seed: int, spn_curve: list[dict], amc_curve: list[dict], target: float | None = None) -> dict:
    """Speedup at the best validation accuracy both curves reached (one target).

    Args:
        seed, target: recorded in the row.
        spn_curve, amc_curve: the two methods' curves (non-empty).

    Returns:
        ``{"section": "speedup", "seed", "target", "level", "time_spn_s", "time_amc_s", "speedup",
        "real_evals_spn", "real_evals_amc", "note"}``; ``note`` says which method's final best set the level.
    """
    spn_best, amc_best = spn_curve[-1]["best_val_acc"], amc_curve[-1]["best_val_acc"]
    level = min(spn_best, amc_best)
    s, a = time_to(spn_curve, level), time_to(amc_curve, level)
    note = ("AMC-style did not reach the SPN pipeline's best" if amc_best < spn_best else
            "the SPN pipeline did not reach AMC-style's best" if spn_best < amc_best else "both ended level")
    return {"section": "speedup", "seed": seed, "target": target, "method": "amc / spn", "level": level,
            "time_spn_s": s["wall_s"], "time_amc_s": a["wall_s"], "speedup": round(a["wall_s"] / s["wall_s"], 3),
            "real_evals_spn": s["real_evals"], "real_evals_amc": a["real_evals"], "note": note}


def _swept(reached: list[dict], col: str, shared_col: str) -> float:
    """The shared part once plus every search's own part of ``col`` at the rows where each reached its level."""
    shared = {float(r.get(shared_col, 0) or 0) for r in reached}
    if len(shared) != 1:
        raise ValueError(f"the sweep's searches disagree on their shared {shared_col}: {sorted(shared)}")
    once = shared.pop()
    return once + sum(float(r[col]) - once for r in reached)


def sweep_row(seed: int, pairs: dict[float, tuple[list[dict], list[dict]]]) -> dict:
    """The sweep's speedup at equal validation accuracy for one seed (see the module docstring).

    Args:
        seed: recorded in the row.
        pairs: target -> (SPN pipeline curve, AMC-style curve), each non-empty; a curve's rows carry
            ``shared_s``/``shared_real_evals`` (what the SPN pipeline spent once for every target; 0 or absent
            for the AMC-style search), included in their ``wall_s``/``real_evals``.

    Returns:
        ``{"section": "sweep", "seed", "method", "time_spn_s", "time_amc_s", "speedup", "real_evals_spn",
        "real_evals_amc", "note"}``: each method's sweep time = its shared time once + the sum over targets of
        its search's own time to that target's level (the lower of the two final bests); ``note`` lists the
        levels.

    Raises:
        ValueError: one method's searches disagree on their shared time or evaluations.
    """
    levels, reached = {}, {SPN: [], AMC: []}
    for t, (spn, amc) in sorted(pairs.items()):
        levels[t] = min(spn[-1]["best_val_acc"], amc[-1]["best_val_acc"])
        reached[SPN].append(time_to(spn, levels[t]))
        reached[AMC].append(time_to(amc, levels[t]))
    wall = {m: _swept(rs, "wall_s", "shared_s") for m, rs in reached.items()}
    evals = {m: _swept(rs, "real_evals", "shared_real_evals") for m, rs in reached.items()}
    return {"section": "sweep", "seed": seed, "method": "amc / spn", "time_spn_s": round(wall[SPN], 2),
            "time_amc_s": round(wall[AMC], 2), "speedup": round(wall[AMC] / wall[SPN], 3),
            "real_evals_spn": int(evals[SPN]), "real_evals_amc": int(evals[AMC]),
            "note": "levels " + ", ".join(f"{t:g}: {v:.2f}" for t, v in levels.items())}


def headline(rows: list[dict]) -> dict:
    """The summary figures, from the table rows.

    Args:
        rows: the ``search_speed`` rows (as written, or read back from the CSV).

    Returns:
        Per-step speedup; the sweep's end-to-end speedup at equal validation accuracy over seeds (median, range,
        min, max, per seed, seeds), the targets, the levels per seed and target, and the sweep's real-evaluation
        ratio (median).
    """
    rate = {r["method"]: float(r["env_steps_per_s"]) for r in rows if r["section"] == "step"}
    sweep = [r for r in rows if r["section"] == "sweep"]
    per = [r for r in rows if r["section"] == "speedup"]
    speed = [float(r["speedup"]) for r in sweep]
    evals = [float(r["real_evals_amc"]) / float(r["real_evals_spn"]) for r in sweep]
    targets = sorted({float(r["target"]) for r in per})
    levels = [[round(float(r["level"]), 2) for t in targets for r in per if r["seed"] == s["seed"]
               and float(r["target"]) == t] for s in sweep]
    return {"spn_vs_real_step_speedup": round(rate["spn"] / rate["real"], 1),
            "end_to_end_speedup": round(statistics.median(speed), 3),
            "end_to_end_speedup_range": [min(speed), max(speed)], "end_to_end_speedup_min": min(speed),
            "end_to_end_speedup_max": max(speed), "end_to_end_speedup_per_seed": speed,
            "end_to_end_seeds": len(sweep), "end_to_end_targets": targets, "end_to_end_level_val_acc": levels,
            "end_to_end_selection_split": "validation", "real_evals_ratio": round(statistics.median(evals), 3)}


def markdown(label: str, rows: list[dict], s: dict, fig: dict) -> str:
    """The printed report: the tables, the speedups with their spread, and how they compare with the targets."""
    step, e2e = fig["spn_vs_real_step_speedup"], fig["end_to_end_speedup"]
    lo, hi = fig["end_to_end_speedup_range"]
    online = f"online round every {s['online_every']}" if s["online"] else "no online rounds in quick mode"
    targets = " ".join(f"{t:g}" for t in s["targets"])
    final = [r for r in rows if r["section"] in ("pipeline", "amc")]
    cols = ["seed", "target", "method", "iterations", "episodes", "spn_calls", "real_evals", "wall_s", "val_acc",
            "acc", "acc_ci_lo", "acc_ci_hi", "macs_ratio", "params_ratio", "note"]
    sp_cols = ["seed", "target", "level", "time_spn_s", "time_amc_s", "speedup", "real_evals_spn", "real_evals_amc",
               "note"]
    lines = [f"# Search speed ({label}, {s['mode']})", "", record.stamp() + ".", "",
             "## Per env step (same env, same random actions, simultaneous mode, wall at 50% MACs)", "",
             *record.md_table([r for r in rows if r["section"] == "step"], ["method", "episodes", "env_steps_per_s"],
                              ["reward", "episodes", "env steps/s"]), "",
             f"SPN vs real per-step speedup: {common.ratio_text(step)} (target >= 1000x: {common.met(step >= 1000)})",
             "", f"## End to end, a sweep of MACs targets {targets}: time to equal validation accuracy", "",
             f"Seeds {s['seeds']}. Every search validated after every iteration (validation split, BN recalibrated, "
             "no fine-tune; outside the walls) and stopped by the same rule: no gain in best validation accuracy "
             f"for {s['patience']} iteration(s), {s['cap_s']:.0f} s of search wall, or {s['max_iters']} iterations. "
             f"SPN pipeline: {s['n_samples']} real samples and SPN training once per seed, then per target an RL "
             f"search of {s['spn_batch']} episodes per iteration ({online}); AMC-style: per target a real-reward "
             f"search of {s['amc_batch']} episodes per iteration. The SPN pipeline's `wall_s` and `real_evals` "
             "include its sampling and SPN training (`spn_sample`, `spn_fit`; `spn_search` is each search's own "
             "wall); `spn_calls` are counted. `acc` (test, 95% CI) only reports the vector each search chose on "
             "validation. Curves: `search_speed_curves*.csv`.", "",
             *record.md_table(final, cols), "",
             "Per target, speedup = AMC-style time / SPN pipeline time to the level, the best validation accuracy "
             "both reached at that target (the SPN pipeline's time includes all of its sampling and SPN training, "
             "as a single-target run would):", "",
             *record.md_table([r for r in rows if r["section"] == "speedup"], sp_cols), "",
             "The sweep, per seed: each method's time = (SPN pipeline: sampling + SPN training, once) + the sum over "
             "the targets of each search's own time to that target's level; speedup = AMC-style / SPN pipeline:", "",
             *record.md_table([r for r in rows if r["section"] == "sweep"],
                              ["seed", "time_spn_s", "time_amc_s", "speedup", "real_evals_spn", "real_evals_amc",
                               "note"]), "",
             f"End-to-end speedup of the sweep at equal validation accuracy: {common.ratio_text(e2e)} median over "
             f"{fig['end_to_end_seeds']} seeds (spread {common.ratio_text(lo)} to {common.ratio_text(hi)}; target "
             f">= 50x: {common.met(e2e >= 50)}). Real evaluations to the levels, AMC-style / SPN pipeline: "
             f"{fig['real_evals_ratio']:g}x (median). Where one evaluation costs far more than a PPO step the "
             "end-to-end speedup tends to this ratio; where it is cheap (digits: ~0.1-0.3 s) fixed costs (PPO "
             "start-up, sampling, SPN training) weigh as much.", "",
             f"Total benchmark wall: {s['wall']:.0f} s."]
    return "\n".join(lines)
