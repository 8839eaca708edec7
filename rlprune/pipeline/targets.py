"""The list form of ``rlprune run`` (``--target-macs 0.3,0.5,0.7``): one sweep, every method at every target.

Sweep (``rlprune.pipeline.run``): each trial trains ONE target-conditioned policy over ``[min, max]`` of the
targets (``SearchConfig(target=(lo, hi))``), not one search per target, and saves it as a policy folder
(``rlprune.policy``); its result carries its per-target-bin bests and that folder.

Validation (:func:`validate_targets`), per target ``t``, in its own folder ``validate/<key>/t<t>/`` and its own
Tune experiment ``validate-<key>-t<t>``:

- RL: each sweep trial's vector at ``t`` is its policy's answer, ``rlprune.policy.load(policy).apply(t)``. The
  trials are ranked as in the single-target run (``select.rank_rl``: the real calibration drop where an online
  round measured that very vector, else the prediction of the SPN the policy was last trained against); the
  best ``rl_top`` go forward through the same projection onto ``t`` every method goes through.
- Baselines: ``stages.search_baselines`` at ``t``.

Equal counted budgets. One training answered all K targets, so each black-box search (random search, CEM)
gets 1/K of the sweep's totals per target: with N the SPN calls of every sweep search together (as in the
single-target run) and R their real evaluations, target i (in increasing order) gets ``N // K`` SPN calls,
plus one for the first ``N % K`` targets, and never fewer than 64; likewise ``R // K`` real evaluations (plus
one for the first ``R % K``), in as many online rounds as one RL search had. Summed over the targets that is
what RL's sweep spent (more only where the 64-call floor applies). ``validate.n_calls``, when set, replaces N
(a total, split the same way). Each RL row reports the whole sweep's spending and ``targets_shared`` = K.

Report (:func:`report_targets`): per target, the winner (best validation score within ``t``) saved as
``out/t<t>/pruned_model.pt`` with its manifest, and RL against the best baseline (``select.comparison``: both
chosen on validation, paired on the test images); ``results.csv`` with a ``target`` column; the figure
``figures/acc_vs_targets.png`` (test score against the achieved cost, one line per method across the targets,
95% intervals as error bars); ``report.md``/``.html``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rlprune.errors import ConfigError
from rlprune.orchestration import merge_placements
from rlprune.pipeline.select import comparison, pick_winner, rank_rl

MIN_CALLS = 64
"""The fewest SPN calls a black-box search gets per target (as in the single-target run)."""
BUDGET_RULE = ("per target: the sweep's SPN calls // K (+1 for the first calls % K targets, at least 64) and "
               "its real evaluations // K (+1 for the first evals % K), in as many online rounds as one RL search")


def target_dir(t: float) -> str:
    """The folder name of target ``t`` (``t0.4``), under ``validate/<key>/`` and ``out/``."""
    return f"t{t:g}"


def split_budget(total: int, k: int) -> list[int]:
    """``total`` shared over ``k`` targets: ``total // k`` each, one more for the first ``total % k``."""
    return [total // k + (1 if i < total % k else 0) for i in range(k)]


# ====================================================================== validation
def policy_answers(trials: list[dict], t: float, fingerprint: str) -> list[dict]:
    """Every sweep trial's answer at ``t``, shaped like a single-target sweep trial for ``select.rank_rl``.

    Args:
        trials: the sweep stage's trials (each with ``policy`` and ``per_target``).
        t: the target.
        fingerprint: the base model's; a policy trained for another model is refused.

    Returns:
        ``{"tag", "ratios", "predicted_acc_drop", "real_acc_drop", "macs_ratio", "params_ratio",
        "policy_ratios", "projected", "answer_s"}`` per trial that saved a policy; ``real_acc_drop`` is the
        online rounds' measurement of that very vector (a bin's best the policy reproduced), else None.

    Raises:
        ConfigError: no trial saved a policy, or a policy of another model.
    """
    from rlprune.policy import load
    from rlprune.search.candidates import key

    out = []
    for trial in trials:
        if not trial.get("policy"):
            continue
        a = load(trial["policy"], fingerprint=fingerprint).apply(t)
        measured = {key(b["ratios"]): b.get("real_acc_drop") for b in trial.get("per_target") or []
                    if b.get("ratios") is not None}
        out.append({"tag": trial["tag"], "ratios": a["ratios"], "predicted_acc_drop": a["predicted_acc_drop"],
                    "real_acc_drop": measured.get(key(a["ratios"])), "macs_ratio": a["macs_ratio"],
                    "params_ratio": a["params_ratio"], "policy_ratios": a["policy_ratios"],
                    "projected": a["projected"], "answer_s": a["apply_s"]})
    if not out:
        raise ConfigError("no sweep trial saved a policy folder; a list of targets needs SPN-reward searches")
    return out


def validate_targets(run) -> dict:
    """The validate stage of the list form: every method at every target (see the module docstring).

    Args:
        run: the pipeline's ``_Run`` (config, finished stages' outputs, Ray).

    Returns:
        ``{"dir", "targets": [{"target", "dir", "rows", "n_calls", "n_real", "rounds"}], "n_calls", "n_real",
        "rounds", "rule", "files"}``: ``n_calls``/``n_real`` are the totals shared over the targets.

    Raises:
        ConfigError: no trial's answer fits a target. TrialsFailed: a validation trial failed (finished rows
        are kept; rerun to resume).
    """
    from rlprune.pipeline.stages import run_validation, search_baselines

    cfg, v = run.cfg, run.cfg.validate
    trials = run.done["sweep"]["trials"]
    task = run.task()
    space = cfg.measure.task_space(task)
    cm = space.cost_model
    fp = run.done["base"]["fingerprint"]
    k = len(cfg.targets)
    # RL's budget is the whole sweep's (the searches that lost it were spent too), and it served every target.
    spent = {"spn_calls": sum(int(t["spn_calls"]) for t in trials),
             "real_evals": sum(int(t["real_evals"] or 0) for t in trials),
             "search_s": float(sum(t["wall_s"] for t in trials)), "targets_shared": k}
    calls = [max(MIN_CALLS, c) for c in split_budget(v.n_calls or spent["spn_calls"], k)]
    reals = split_budget(spent["real_evals"], k)
    rounds = max([1] + [len(t.get("online_rounds") or []) for t in trials])
    run.ray()
    key = run.key("validate")
    root = run.out / "validate" / key
    base = {n: run.done["base"][n] for n in ("acc", "val_acc", "loss", "latency_ms", "fingerprint")}
    per_target, placements = [], []
    for i, t in enumerate(cfg.targets):
        ranked = rank_rl(policy_answers(trials, t, fp), t, cfg.budget)
        if not ranked:
            raise ConfigError(f"no sweep policy's answer met the {cfg.budget} target {t:g}; use enforce: [wall]")
        forward = ranked[: v.rl_top]
        # The policy's answer is already on the target; the one projection every method shares is applied
        # again, as in the single-target run, so every candidate comes out of the same function.
        cands = [{"method": a["tag"], "target": t, "source": "rl", "searched_ratios": a["policy_ratios"],
                  "ratios": [float(r) for r in cm.achieved(cm.project_to_budget(np.asarray(a["ratios"]), t,
                                                                                  cfg.budget, relax=True))],
                  "predicted_acc_drop": a["predicted_acc_drop"], "answer_s": a["answer_s"],
                  "sweep_trials": len(trials), "candidates": len(forward), **spent} for a in forward]
        val_dir = root / target_dir(t)
        spec = {**run.spec(), "target": t, "task_kwargs": run.task_kwargs(), "base": base}
        found = search_baselines(task, space, cfg.measure, spec, val_dir, spn=run.done["spn"]["path"],
                                 store=cfg.sample_dir, methods=v.baselines, n_calls=calls[i], n_real=reals[i],
                                 rounds=rounds, workers=cfg.sweep.search_workers, steps=cfg.sweep.online_steps,
                                 seed=cfg.seed)
        cands += [{**b, "target": t, "source": "baseline", "candidates": 1} for b in found]
        rows, placement = run_validation(spec, cands, val_dir, run.out / "tune", f"validate-{key}-{target_dir(t)}",
                                         cfg.workers, run.progress)
        placements.append(placement)
        per_target.append({"target": t, "dir": str(val_dir), "rows": rows, "n_calls": calls[i],
                           "n_real": reals[i], "rounds": rounds})
    files = [str(Path(p["dir"]) / "rows" / f"{r['method']}.json") for p in per_target for r in p["rows"]]
    return {"dir": str(root), "targets": per_target, "n_calls": sum(calls), "n_real": spent["real_evals"],
            "rounds": rounds, "rule": BUDGET_RULE, "files": files, "placement": merge_placements(*placements)}


# ====================================================================== report and summary
def report_targets(run) -> dict:
    """The report stage of the list form: one pruned model per target, ``results.csv``, the report.

    Returns:
        ``{"winners": {target dir: method}, "pruned_models", "report_md", "report_html", "figures", "files"}``.

    Raises:
        ConfigError: a target where no validated candidate is feasible.
    """
    from rlprune.io import load_pruned, save_pruned
    from rlprune.pipeline.report.multi_target import write_targets_report
    from rlprune.pipeline.results import results_frame, write_csv

    cfg = run.cfg
    winners, models = {}, []
    for p in run.done["validate"]["targets"]:
        t, rows = p["target"], p["rows"]
        winner = pick_winner(rows, t, cfg.budget)
        model, manifest = load_pruned(Path(p["dir"]) / "models" / f"{winner['method']}.pt")
        manifest = {k: v for k, v in manifest.items() if k not in ("weights_file", "weights_sha256", "fingerprint",
                                                                    "saved_at", "manifest_version")}
        path = run.out / target_dir(t) / "pruned_model.pt"
        save_pruned(model, path, {**manifest, "selected_from": [r["method"] for r in rows],
                                  "targets": list(cfg.targets)})
        winners[target_dir(t)] = winner["method"]
        models.append(str(path))
    rows = [r for p in run.done["validate"]["targets"] for r in p["rows"]]
    df = results_frame(rows)
    df.insert(0, "target", [r["target"] for r in rows])
    write_csv(df, run.out / "results.csv")
    files = write_targets_report(run.out, cfg, run.done, winners)
    return {"winners": winners, "pruned_models": models, **files,
            "files": [*models, files["report_md"], files["report_html"], *files["figures"]]}


def targets_summary(run) -> dict:
    """``summary.json``'s list-form part: ``targets``, every row (``methods``, each with its ``target``), the
    budget rule and totals (``search_budget``) and ``per_target``: ``{"target", "winner", "pruned_model",
    "comparison", "search_budget", "methods"}`` per target."""
    from rlprune.pipeline.results import method_rows

    cfg, d = run.cfg, run.done
    val = d.get("validate", {})
    per = []
    for p in val.get("targets", []):
        t = p["target"]
        rows = method_rows(p["rows"], t, cfg.budget)
        per.append({"target": t, "winner": d.get("report", {}).get("winners", {}).get(target_dir(t)),
                    "pruned_model": str(run.out / target_dir(t) / "pruned_model.pt") if "report" in d else None,
                    "comparison": comparison(p["rows"], t, cfg.budget),
                    "search_budget": {k: p[k] for k in ("n_calls", "n_real", "rounds")},
                    # RL rows also say how many targets shared the sweep's spending they report.
                    "methods": [{"target": t, **m} | ({"targets_shared": raw["targets_shared"]}
                                                      if "targets_shared" in raw else {})
                                for m, raw in zip(rows, p["rows"], strict=True)]})
    return {"targets": list(cfg.targets),
            "methods": [m for p in per for m in p["methods"]],
            "search_budget": {k: val.get(k) for k in ("n_calls", "n_real", "rounds", "rule")} if per else None,
            "per_target": per}


__all__ = ["BUDGET_RULE", "MIN_CALLS", "policy_answers", "report_targets", "split_budget", "target_dir",
           "targets_summary", "validate_targets"]
