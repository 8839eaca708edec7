"""Targets: one target-conditioned RL policy against per-target searches, at K training targets and 2 unseen ones.

How to run:
    python benchmarks/targets.py --quick        # ~2-3 min on 2 cores: digits, seed 0, K=2 (0.3, 0.7) + 0.45, 0.65
    python benchmarks/targets.py                # digits, seeds 0 1 2, K=5 (0.3 0.4 0.5 0.6 0.7) + 0.45, 0.65
    python benchmarks/targets.py --task fashion-mnist --arch resnet20      # the real workload (hours)

With ``--work W`` a finished seed's rows stay in W and a rerun reads them back (``--keep-rows
benchmarks/results/raw/targets_<workload>``: a committed copy, for a fresh machine); a seed killed midway keeps
its samples and SPN and runs its searches again. On fashion-mnist a seed took ~40 min (ResNet-20) and ~1.7 h
(ResNet-56) on 2 cores shared with another run, samples not counted.

What a policy can do and a black-box search cannot: learn, in one training, how to prune for every budget,
then answer a new budget at once. Per task and seed, after one shared stage (real samples, 2 Tune workers,
then a transformer SPN on them), every method gets the SAME world model and the same total of SPN calls:

- ``conditioned_rl``: ONE PPO training over the whole range [min K, max K] (each episode draws its target;
  the target is in every observation), offline against the SPN; its counted SPN calls are N. Every target,
  training or unseen, is answered by the saved policy folder (``rlprune.policy.load(...).apply(t)``: greedy
  vector, projected onto the target from below): no search, 2 SPN calls per answer.
- ``per_target_rl``: one PPO search per target (the same settings, fixed target), with ``iters / K``
  iterations each (about N/K SPN calls, counted); an unseen target needs a new search.
- ``random_search`` and ``cem``: N/K SPN calls per target (so the K training targets cost N in all, like the
  one training), and a new search of N/K for each unseen target.

"Unseen" means: no method searched at that target before it was asked. The conditioned policy trained on the
continuous range, so 0.45 and 0.65 lie inside it; it never optimised a vector for them. Every search here is
offline (no online real evaluations), so the real evaluations are the shared samples plus one validation
measurement per method and target, the same for all.

Every method puts ONE vector forward per target, projected onto the target from below with the same
``CostModel.project_to_budget(relax=True)`` (equal MACs within 1%), pruned for real, BatchNorm-recalibrated,
fine-tuned the same (``--finetune-steps``) and scored on the VALIDATION split (which chooses: the ``chosen``
column names the method validation picks at each target) and the test split (which only reports: accuracy
with a 95% bootstrap interval over its images). Columns: ``spn_calls`` and ``search_s`` are what producing that
target's vector cost (conditioned RL: the answer only; its one training is the ``train`` row), ``answer_s``
the time from asking for a target to having its vector (for an unseen target: the time to answer it).

Reading it: the summary table gives per method the total SPN calls and wall over all targets, mean test
accuracy at the training and at the unseen targets (over seeds), and the median time to answer an unseen
target; below it, conditioned RL minus CEM over every target and seed with a 95% paired interval (test images
resampled, each with its outcome at every target; rows keep their per-image outcomes, ``test_correct``).
Nothing is asserted. A full run merges its figures (``targets_*``, ``conditioned_minus_per_target_cem_acc``,
``unseen_target_answer_s``) into the results folder's summary (``record.update_summary``).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import common
import numpy as np
import record

METHODS = ("conditioned_rl", "per_target_rl", "random_search", "cem")
UNSEEN = (0.45, 0.65)
FIELDS = ["task", "seed", "target", "kind", "method", "macs_ratio", "params_ratio", "val_acc", "acc", "acc_ci_lo",
          "acc_ci_hi", "predicted_acc_drop", "spn_calls", "search_s", "answer_s", "projected", "chosen", "ratios",
          "test_correct"]
BUDGET = "macs"


def seed_unit(task_name: str, task_kwargs: dict, seed: int, train_targets: list[float], n_samples: int,
              iters: int, train_batch: int, finetune_steps: int, work: Path, label: str,
              label_steps: int | None = None) -> list[dict]:
    """One seed's rows (:func:`run_seed`), read back from its work folder when that seed finished before.

    A finished seed leaves ``rows-<settings>.json`` beside its samples (what ``--keep-rows`` copies). A seed
    killed midway keeps its samples and SPN (their cost is not in any figure) but runs every search again:
    a search resumed from its checkpoint would report the wall of its last part only.

    Returns:
        The seed's rows, stamped with when, where and from which commit they were measured.
    """
    from rlprune.io import atomic_write_json

    k = common.label_spec(task_name, label_steps).label_steps
    seed_dir = Path(work) / f"{label.replace('/', '-')}-{seed}{common.label_suffix(k)}"
    settings = (f"t{'_'.join(f'{t:g}' for t in train_targets)}-n{n_samples}-i{iters}-b{train_batch}"
                f"-ft{finetune_steps}")
    done = seed_dir / f"rows-{settings}.json"
    if done.is_file():
        return json.loads(done.read_text())
    for d in (*seed_dir.glob("per-target-*"), seed_dir / "conditioned"):
        shutil.rmtree(d, ignore_errors=True)
    rows = record.stamped(run_seed(task_name, task_kwargs, seed, train_targets, n_samples, iters, train_batch,
                                   finetune_steps, seed_dir, label, label_steps))
    atomic_write_json(done, rows)
    return rows


def run_seed(task_name: str, task_kwargs: dict, seed: int, train_targets: list[float], n_samples: int, iters: int,
             train_batch: int, finetune_steps: int, work: Path, label: str,
             label_steps: int | None = None) -> list[dict]:
    """Every method at every target (training and unseen) for one task and seed, in the seed's folder
    ``work``; ``label_steps``: the samples' label (default: the task's, as ``rlprune run`` has it).

    Returns:
        One row per (target, method), plus one ``kind="train"`` row per method with its whole cost.
    """
    from rlprune.io import model_fingerprint
    from rlprune.measure.recipe import measure_base, measure_candidate
    from rlprune.policy import load
    from rlprune.search.blackbox import cem, random_search
    from rlprune.search.rl import SearchConfig, run_search
    from rlprune.spn.local import spn_predictor
    from rlprune.spn.nets import one_thread

    spec = common.label_spec(task_name, label_steps)
    work = Path(work)
    task = common.task_of(task_name, seed, task_kwargs)
    with one_thread():  # on 2 shared cores torch's own threads spin-wait and train 10-30x slower
        model = task.base_model()
    space = spec.space_of(model, task.example_input())
    cm = space.cost_model
    base = measure_base(task, model, spec)
    stages = common.samples_and_spn(task_name, n_samples, work, seed, task_kwargs, spec)
    targets = [*train_targets, *UNSEEN]
    K = len(train_targets)
    search = dict(spn=str(stages["spn"]), task=task_name, task_kwargs=task_kwargs, train_batch=train_batch,
                  online=False, samples=str(stages["store"]), seed=seed, measure=spec)

    t0 = time.perf_counter()
    cond = run_search(SearchConfig(out=str(work / "conditioned"), target=(min(train_targets), max(train_targets)),
                                   iters=iters, **search), progress=False)
    cond_s = time.perf_counter() - t0
    n_total = int(cond["spn_calls"])
    per_target = max(1, n_total // K)
    policy = load(cond["policy"], fingerprint=model_fingerprint(model))
    predict = spn_predictor(stages["spn"], space, model_fingerprint(model))

    found: dict[tuple[str, float], dict] = {}
    for t in targets:
        t1 = time.perf_counter()
        a = policy.apply(t)
        found["conditioned_rl", t] = {"ratios": a["ratios"], "predicted": a["predicted_acc_drop"], "spn_calls": 2,
                                      "search_s": 0.0, "answer_s": time.perf_counter() - t1}
        t1 = time.perf_counter()
        res = run_search(SearchConfig(out=str(work / f"per-target-{t:g}"), target=t, iters=max(1, iters // K),
                                      **search), progress=False)
        s = time.perf_counter() - t1
        found["per_target_rl", t] = {"ratios": res["ratios"], "predicted": res["predicted_acc_drop"],
                                     "spn_calls": int(res["spn_calls"]), "search_s": s, "answer_s": s}
        for name, fn in (("random_search", random_search), ("cem", cem)):
            t1 = time.perf_counter()
            ratios, extra = fn(predict, cm, t, BUDGET, n_calls=per_target, seed=seed)
            s = time.perf_counter() - t1
            found[name, t] = {"ratios": ratios, "predicted": extra["predicted_acc_drop"],
                              "spn_calls": int(extra["predictor_calls"]), "search_s": s, "answer_s": s}

    ft_spec = dataclasses.replace(spec, finetune_steps=finetune_steps)
    rows = [{"task": label, "seed": seed, "target": "", "kind": "train", "method": "conditioned_rl",
             "spn_calls": n_total, "search_s": round(cond_s, 2), "answer_s": ""}]
    for t in targets:
        kind = "unseen" if t in UNSEEN else "trained"
        mine = []
        for method in METHODS:
            got = found[method, t]
            ratios = cm.project_to_budget(np.asarray(got["ratios"], dtype=np.float64), t, BUDGET, relax=True)
            row, _ = measure_candidate(task, space, ratios, base, ft_spec, method=method)
            ci = row.get("acc_ci") or [float("nan")] * 2
            mine.append({"task": label, "seed": seed, "target": t, "kind": kind, "method": method,
                         "macs_ratio": round(row["macs_ratio"], 5), "params_ratio": round(row["params_ratio"], 5),
                         "val_acc": round(row["val_acc"], 4), "acc": round(row["acc"], 4),
                         "acc_ci_lo": round(ci[0], 4), "acc_ci_hi": round(ci[1], 4),
                         "predicted_acc_drop": round(float(got["predicted"]), 3), "spn_calls": got["spn_calls"],
                         "search_s": round(got["search_s"], 3), "answer_s": round(got["answer_s"], 4),
                         "projected": not np.allclose(cm.achieved(np.asarray(got["ratios"])), row["ratios"]),
                         "ratios": " ".join(f"{x:.4f}" for x in row["ratios"]),
                         "test_correct": row.get("test_correct")})  # packed per-image outcomes: paired intervals
        chosen = max(mine, key=lambda r: (r["val_acc"], -r["params_ratio"], r["method"]))["method"]
        rows += [{**r, "chosen": chosen} for r in mine]
        print(f"{label} seed {seed} target {t:g}: done (validation picks {chosen})", file=sys.stderr, flush=True)
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Per method: total SPN calls and wall (mean over seeds), mean test accuracy at trained and unseen targets
    (with the mean interval), how often validation picked it, the median time to answer an unseen target."""
    out = []
    seeds = sorted({r["seed"] for r in rows})
    for m in METHODS:
        mine = [r for r in rows if r["method"] == m and r["kind"] != "train"]
        train = [r for r in rows if r["method"] == m and r["kind"] == "train"]
        per_seed_calls = [sum(int(r["spn_calls"]) for r in mine + train if r["seed"] == s) for s in seeds]
        per_seed_wall = [sum(float(r["search_s"] or 0) for r in mine + train if r["seed"] == s) for s in seeds]
        row = {"method": m, "spn_calls": statistics.mean(per_seed_calls), "wall_s": statistics.mean(per_seed_wall)}
        for kind in ("trained", "unseen"):
            k = [r for r in mine if r["kind"] == kind]
            row[f"acc_{kind}"] = statistics.mean(float(r["acc"]) for r in k)
            row[f"acc_{kind}_ci"] = (f"{statistics.mean(float(r['acc_ci_lo']) for r in k):.2f}-"
                                     f"{statistics.mean(float(r['acc_ci_hi']) for r in k):.2f}")
        row["chosen"] = sum(r["chosen"] == m for r in mine)
        row["unseen_answer_s"] = statistics.median(float(r["answer_s"]) for r in mine if r["kind"] == "unseen")
        out.append(row)
    return out


def headline(rows: list[dict]) -> dict:
    """The figures a full run merges into ``summary.json``."""
    s = {r["method"]: r for r in summarise(rows)}
    best_other = max((m for m in METHODS if m != "conditioned_rl"), key=lambda m: s[m]["acc_unseen"])
    c = s["conditioned_rl"]
    return {"targets_selection_split": "validation",
            "targets_conditioned_acc_unseen": c["acc_unseen"],
            "targets_conditioned_minus_best_other_acc_unseen": c["acc_unseen"] - s[best_other]["acc_unseen"],
            "targets_best_other_unseen": best_other,
            "targets_conditioned_minus_best_other_acc_trained":
                c["acc_trained"] - max(s[m]["acc_trained"] for m in METHODS if m != "conditioned_rl"),
            "targets_unseen_answer_s_conditioned": c["unseen_answer_s"],
            "targets_unseen_answer_s_per_target_rl": s["per_target_rl"]["unseen_answer_s"],
            "targets_unseen_answer_s_cem": s["cem"]["unseen_answer_s"],
            "targets_spn_calls_conditioned": c["spn_calls"],
            # Issue 19's names: mean over every target (trained and unseen) and seed, with each seed's own
            # difference (the spread), and the time to answer an unseen target.
            "conditioned_minus_per_target_cem_acc": _mean_acc(rows, "conditioned_rl") - _mean_acc(rows, "cem"),
            "conditioned_minus_per_target_cem_acc_per_seed": [
                round(_mean_acc(rows, "conditioned_rl", seed) - _mean_acc(rows, "cem", seed), 3)
                for seed in sorted({r["seed"] for r in rows})],
            "unseen_target_answer_s": c["unseen_answer_s"],
            **_paired_figure(rows, "conditioned_rl", "cem", "conditioned_minus_per_target_cem_acc")}


def paired_over_targets(rows: list[dict], a: str, b: str) -> dict | None:
    """Method ``a`` minus ``b``, mean test accuracy over every target and seed, with a paired interval.

    Per seed, each test image scores ``100 x`` the share of the targets at which a method got it right (so the
    mean over images is the mean accuracy over the targets); the images of every seed are pooled and
    ``rlprune.measure.stats.paired_difference`` resamples them, each image with all its targets (the same
    images serve every target of a seed, so resampling (image, target) pairs would treat them as independent
    and narrow the interval).

    Returns:
        ``paired_difference``'s dict, or None when a row lacks its per-image outcomes (rows of an older run).
    """
    from rlprune.measure.stats import paired_difference, unpack_correct

    mine = sorted((r for r in rows if r["kind"] != "train" and r["method"] in (a, b)), key=lambda r: float(r["target"]))
    if not mine or any(not isinstance(r.get("test_correct"), str) for r in mine):
        return None
    per_method: dict[str, list[np.ndarray]] = {a: [], b: []}
    for seed in sorted({r["seed"] for r in mine}):
        for m in (a, b):
            outcomes = [unpack_correct(r["test_correct"]) for r in mine if r["seed"] == seed and r["method"] == m]
            per_method[m].append(100.0 * np.mean(outcomes, axis=0))
    return paired_difference(np.concatenate(per_method[a]), np.concatenate(per_method[b]))


def _paired_figure(rows: list[dict], a: str, b: str, key: str) -> dict:
    got = paired_over_targets(rows, a, b)
    if got is None:
        return {f"{key}_ci": None, f"{key}_real": None}
    return {f"{key}_ci": [round(x, 3) for x in got["diff_ci"]], f"{key}_real": got["real"]}


def _mean_acc(rows: list[dict], method: str, seed=None) -> float:
    """Mean test accuracy of ``method`` over every target (and seed, or only ``seed``)."""
    return statistics.mean(float(r["acc"]) for r in rows if r["method"] == method and r["kind"] != "train"
                           and (seed is None or r["seed"] == seed))


def markdown(rows: list[dict], header: str) -> str:
    """The per-target table and the per-method summary."""
    from rlprune.measure.stats import describe

    per_target = sorted((r for r in rows if r["kind"] != "train"), key=lambda r: (r["seed"], r["target"], r["method"]))
    cols = ["seed", "target", "kind", "method", "macs_ratio", "val_acc", "acc", "acc_ci_lo", "acc_ci_hi", "spn_calls",
            "answer_s", "projected", "chosen"]
    summary = summarise(rows)
    scols = ["method", "spn_calls", "wall_s", "acc_trained", "acc_trained_ci", "acc_unseen", "acc_unseen_ci",
             "chosen", "unseen_answer_s"]
    lines = [header, "", "## Per method (means over seeds)", "", *record.md_table(summary, scols), ""]
    got = paired_over_targets(rows, "conditioned_rl", "cem")
    if got is not None:
        lines += ["Conditioned RL minus CEM, mean test accuracy over every target and seed, 95% paired interval "
                  f"(test images resampled, each with all its targets): {describe(got)}.", ""]
    lines += ["## Per target", "", *record.md_table(per_target, cols)]
    return "\n".join(lines)


def main(argv=None) -> None:
    """Run every seed and write ``targets[_<task>_<arch>][_quick].csv/.md`` (digits full: summary.json)."""
    p = common.parser(__doc__)
    common.add_task_args(p)
    p.add_argument("--train-targets", type=float, nargs="+", default=None,
                   help="the K MACs targets searched for (default 0.3 0.4 0.5 0.6 0.7; quick 0.3 0.7)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1 2; quick 0)")
    p.add_argument("--finetune-steps", type=int, default=None, help="the same fine-tune for every vector "
                                                                    "(default 100; quick 0: BN recalibration)")
    p.add_argument("--samples", type=int, help="real samples per seed for the SPN (default 256; quick 32)")
    p.add_argument("--iters", type=int, help="iterations of the conditioned training (default 40; quick 2); "
                                             "per-target RL gets iters / K per target")
    p.add_argument("--work", type=Path, help="keep samples, SPNs, searches, policies and each finished seed's "
                                             "rows here; rerunning with it resumes (default: a temporary folder, "
                                             "deleted at the end)")
    common.add_keep_rows_arg(p)
    common.add_label_arg(p)
    args = p.parse_args(argv)
    q = args.quick
    train_targets = args.train_targets or ([0.3, 0.7] if q else [0.3, 0.4, 0.5, 0.6, 0.7])
    seeds = args.seeds or ([0] if q else [0, 1, 2])
    ft = args.finetune_steps if args.finetune_steps is not None else (0 if q else 100)
    n_samples, iters, batch = (32, 2, 32) if q else (256, 40, 256)
    n_samples, iters = args.samples or n_samples, args.iters or iters
    kw, label = common.task_choice(args)
    t0 = time.perf_counter()
    rows = common.run_seeds(lambda seed, work: seed_unit(args.task, kw, seed, train_targets, n_samples, iters,
                                                         batch, ft, work, label, args.label_steps),
                            seeds, args.work, args.keep_rows, keep_stores=True)
    k = common.label_spec(args.task, args.label_steps).label_steps
    header = (f"# Targets ({label}, {'quick' if q else 'full'}: {n_samples} samples labelled after {k} fine-tune "
              f"steps, conditioned RL {iters} "
              f"iterations x {batch} episodes over [{min(train_targets):g}, {max(train_targets):g}], K="
              f"{len(train_targets)} training targets {train_targets} + unseen {list(UNSEEN)}, seeds {seeds}, "
              f"fine-tune {ft} steps)\n\n{record.stamp()}; total {time.perf_counter() - t0:.0f} s. `val_acc` "
              "(validation, which chooses: `chosen`) and `acc` (test, which only reports) in %; `acc_ci_lo`-"
              "`acc_ci_hi`: 95% bootstrap interval over the test images. Every vector is projected onto its MACs "
              "target from below. `spn_calls`/`answer_s`: what producing that target's vector cost (conditioned RL: "
              "its answer; its one training is counted in the per-method totals).")
    md = markdown(rows, header)
    record.write_results(args.results_dir, record.stem(record.result_name("targets", label), q), rows, md, FIELDS)
    if not q:
        record.update_summary(args.results_dir, headline(rows), "targets", label=label)


if __name__ == "__main__":
    common.main_guard(main)
