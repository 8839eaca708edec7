"""Label fidelity: does a cheap sample label rank ratio vectors like the accuracy the user gets after fine-tuning?

How to run:
    python benchmarks/label_fidelity.py --quick     # ~2-3 min on digits: 4 vectors x 3 targets, k 0 10 25
    python benchmarks/label_fidelity.py             # ~20-30 min on digits: 24 vectors x 3 targets, k 0 10 25 50 100
    python benchmarks/label_fidelity.py --task fashion-mnist --arch resnet20 --work ~/bench/lf-fm20   # hours on
    python benchmarks/label_fidelity.py --task fashion-mnist --arch resnet56 --work ~/bench/lf-fm56   # 2 cores
    python benchmarks/label_fidelity.py ... --work W --shard 0/2 & ... --shard 1/2; then without --shard: tables

What it measures. Per MACs target (``--targets``), ``--vectors`` ratio vectors are drawn from the samplers the
sample store is filled with (``mixed``: uniform, Sobol, rule families, budget directions; each vector from its
own seeded draw) and projected onto the target from below (``CostModel.project_to_budget``, as every method's
vector is). For each vector:

- the LABEL after k fine-tune steps, for every k in ``--steps``: exactly the sample row ``rlprune sample``
  would store with ``measure.label_steps = k`` (``rlprune.measure.recipe.evaluate_ratios``: prune, recalibrate
  BatchNorm, k SGD steps on the train split with a cosine rate from ``finetune_lr`` to 0, score the whole
  CALIBRATION split), its accuracy, its loss and the seconds it cost. Every k is fine-tuned separately from the
  freshly pruned and recalibrated model, never as the continuation of a shorter label: a cosine schedule over
  10 steps is not the first 10 steps of one over 100, and the pipeline measures each k that way;
- the FINAL accuracy of the validation recipe: the same pruning and recalibration, then the spec's
  ``finetune_steps`` (``--finetune-steps``) at its cosine rate, scored on the VALIDATION split (never test),
  for two fine-tune seeds (the benchmark's ``--seed`` + 1 and + 2: shuffling, augmentation; the labels use
  ``--seed`` itself, so neither final shares its batches with a label).

How to read it. The table has one line per label (k steps; ``acc`` = accuracy, ``loss`` = negated loss, so
higher ranks better for both) and the seconds one label costs. Each Spearman is against the final accuracy
(mean of the two seeds' finals), with a 95% bootstrap interval over vectors: ``overall`` pools every target
(flattered: any label ranks a 30% model below a 70% one), ``within`` is the mean of the per-target correlations
(resampled within each target: the number that matters, since a search compares vectors at one budget), then
each target alone. The last line is the final recipe against itself: seed 1's finals vs seed 2's (rho_ff). The
finals' own noise caps what any label can reach: even a label ranking exactly like the noise-free final would
correlate only about sqrt(2 rho_ff / (1 + rho_ff)) with the two seeds' mean (Spearman-Brown, approximate for
ranks), so a label near rho_ff is about as good as this final can tell. The "cheapest label" line applies the
rule of issue 15 target by target: the cheapest label that, at EVERY target, has a Spearman >= 0.8 or within 0.1
of that target's rho_ff. (Per target, because the bound differs by target: where the finals of a budget barely
differ, rho_ff is low and any label is "within 0.1" of it; averaged with the other targets, that would excuse a
label that ranks clearly worse than the final at a budget where the final does discriminate.) Nothing
is asserted; with the quick mode's 4 vectors per target every interval is wide and the ranking is noise.

Section 2: can many cheap labels plus a few finals stand in for many finals? The same rows, used as sample
rows of known cost: 4-fold cross-validation over vectors, and per fold a sample-generation budget (the summed
measured seconds of the finals of ``--spn-share`` of the training vectors). At that budget a finals-only SPN,
an SPN per cheap k (as many of that label as the budget buys) and a multi-fidelity SPN (half the finals, the
rest in cheap labels, the fidelity as an input, predicting at the final's) are trained
(``rlprune.spn.train.fit``) and each held-out vector's final accuracy is predicted; the table gives each
SPN's within-target Spearman with it (bootstrap intervals). Only labels cheaper than the final (k below
``--finetune-steps``) count as cheap. With the quick mode's 4 vectors per target the section only runs the
code path, and says so.

Resuming: with ``--work DIR`` each finished vector's row is written there atomically as it finishes, and a
rerun with the same settings reads it back (more ``--steps`` or ``--vectors`` measure only what is missing);
without it a temporary folder is used. Writes ``label_fidelity[_<task>_<arch>][_quick].csv`` (one row per
vector: ``acc_k<k>``, ``loss_k<k>``, ``s_k<k>``, ``final_acc_1/2``, ``final_split``) and ``.md`` into
``--results-dir``, and section 2's table as ``label_fidelity[...]_spn[_quick].csv`` (one row per SPN and
scope; cached in ``--work`` too); a full run merges its headline figures (``label_fidelity_<task>_...``) into
summary.json (fashion-mnist ResNet-20, the study the default label is chosen on) or ``summary_<workload>.json``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import common
import numpy as np
import record
from fidelity_spn import BUDGET_SHARE, comparison_cached, fidelity_markdown, rho_cell

METRICS = ("acc", "loss")
RULE_RHO, RULE_GAP = 0.8, 0.1
"""Issue 15's choice of the default label: at every target, Spearman >= 0.8 or within 0.1 of the final recipe's
own seed-to-seed agreement at that target (:func:`cheapest`)."""
BUDGET = "macs"


def reseeded(task, seed: int):
    """The same task (same base model, same splits) whose fine-tunes shuffle, augment and draw with ``seed``.

    ``Task.finetune`` draws its data order and augmentation from ``task.finetune_seed`` alone, so a shallow copy
    with another one is the validation recipe under another seed (same splits, same base model).
    """
    task.base_model()  # load the weights first, so the copy shares them instead of looking for other ones
    other = copy.copy(task)
    other.finetune_seed = seed
    return other


def draw_vectors(space, targets, n: int, seed: int) -> list[dict]:
    """``n`` sampler vectors per target, projected onto it from below; vector ``i`` is its own seeded draw.

    Returns:
        ``{"target", "vector", "sampler", "ratios"}`` per vector, target by target.
    """
    from rlprune.samples.samplers import SamplerConfig, draw_labelled

    cm, feats = space.cost_model, space.features()
    out = []
    for t in targets:
        cfg = SamplerConfig(band=(max(0.01, t - 0.1), min(1.0, t + 0.1)), budget=BUDGET)
        for i in range(n):
            # One draw per vector, so asking for more vectors later keeps the first ones.
            R, names = draw_labelled(cfg, 1, cm, feats, np.random.default_rng([seed, round(1000 * t), i]))
            ratios = space.achieved(cm.project_to_budget(R, t, BUDGET, relax=True)[0])
            out.append({"target": t, "vector": i, "sampler": names[0], "ratios": [round(float(r), 6) for r in ratios]})
    return out


def measure_vector(task, space, base, spec, vec: dict, steps, finals, row: dict | None) -> tuple[dict, bool]:
    """Every label of ``steps`` and every final of one vector, measuring only what ``row`` does not hold yet.

    Args:
        task, space, base, spec: the task, its base model's space and :class:`Baseline`, the measure spec.
        vec: a :func:`draw_vectors` entry.
        steps: the labels' fine-tune steps k.
        finals: ``(seed, task reseeded with it)`` per final fine-tune.
        row: what an earlier run measured of this vector (None: nothing).

    Returns:
        ``(row, changed)``.
    """
    from rlprune.measure.recipe import evaluate_ratios, prune_and_score

    row = dict(row or vec)
    changed = False
    for k in steps:
        if f"acc_k{k}" not in row:
            r = evaluate_ratios(task, space, vec["ratios"], base, dataclasses.replace(spec, label_steps=k))
            row.update({f"acc_k{k}": r["acc"], f"loss_k{k}": r["loss"], f"s_k{k}": round(r["eval_s"], 3),
                        "macs_ratio": r["macs_ratio"], "params_ratio": r["params_ratio"]})
            changed = True
    for j, (s, final_task) in enumerate(finals, 1):
        if f"final_acc_{j}" not in row:
            t0 = time.perf_counter()
            _, val = prune_and_score(final_task, space, vec["ratios"], spec, finetune=True, split="validation")
            row.update({f"final_acc_{j}": float(val["acc"]), f"final_seed_{j}": s, f"final_n_{j}": int(val["n"]),
                        f"final_s_{j}": round(time.perf_counter() - t0, 3)})
            changed = True
    row.update(final_split="validation", final_steps=spec.finetune_steps,
               final_acc=float(np.mean([row[f"final_acc_{j}"] for j in range(1, len(finals) + 1)])))
    return row, changed


def run(task, label: str, spec, targets, n: int, steps, seed: int, work: Path,
        finals: int = 2, shard: tuple[int, int] = (0, 1)) -> tuple[list[dict], int]:
    """Measure (or read back from ``work``) every vector's row; each finished row is written atomically.

    Args:
        task, label, spec: the task, its workload name (``fashion-mnist/resnet20``) and the measure spec (its
            ``label_steps`` is ignored: ``steps`` names the labels).
        targets, n, seed: the MACs targets, vectors per target and the seed of :func:`draw_vectors`.
        steps: the labels' fine-tune steps k.
        work: where each finished row is kept; rows measured by any caller with the same task, spec and seed
            are shared (``spn_within_budget`` measures the k=0 label and the first final of the same vectors).
        finals: how many of the two final fine-tunes (seeds ``seed + 1``, ``seed + 2``) to measure; a row's
            ``final_acc`` is their mean.
        shard: ``(i, m)``: only the vectors whose index is ``i`` modulo ``m`` (several processes sharing ``work``
            measure disjoint vectors; each row is one file, so they never write the same one).

    Returns:
        ``(rows, read)``: every vector's row (of this shard), and how many were read back whole from ``work``.
    """
    from rlprune.io import atomic_write_json
    from rlprune.measure.recipe import measure_baseline

    model = task.base_model()
    space = spec.space_of(model, task.example_input())
    base = measure_baseline(task, model, spec)
    final_seeds = (seed + 1, seed + 2)
    tasks = [(s, reseeded(task, s)) for s in final_seeds[:finals]]
    # What a finished row depends on besides its own vector and k (the label code's hash included); the final
    # seeds are fixed by ``seed``, so a row with one final and a row with two share the key.
    fixed = {"task": label, "seed": seed, "fingerprint": base.fingerprint, "final_seeds": final_seeds,
             "spec": {**spec.to_dict(), "label_steps": None}, "code": spec.label()["code"]}
    rows, read, t_start = [], 0, time.perf_counter()
    for vec in draw_vectors(space, targets, n, seed):
        if vec["vector"] % shard[1] != shard[0]:
            continue
        key = hashlib.sha256(json.dumps([fixed, vec], sort_keys=True).encode()).hexdigest()[:16]
        path = work / f"t{vec['target']:g}-v{vec['vector']:03d}.json"
        saved = json.loads(path.read_text()) if path.is_file() else None
        saved = saved if saved and saved.get("key") == key else None
        row, changed = measure_vector(task, space, base, spec, vec, steps, tasks, saved)
        row.update(key=key, task=label, seed=seed, fingerprint=base.fingerprint)
        read += not changed
        if changed:
            row.update(record.provenance())  # when, where and from which commit this row was (last) measured
            work.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, row)
            print(f"{label} target {vec['target']:g} vector {vec['vector']}: labels "
                  + " ".join(f"k{k}={row[f'acc_k{k}']:.1f}" for k in steps)
                  + ", final " + "/".join(f"{row[f'final_acc_{j}']:.1f}" for j in range(1, finals + 1))
                  + f" ({time.perf_counter() - t_start:.0f} s so far)", file=sys.stderr, flush=True)
        rows.append(row)
    return rows, read


def _series(rows, k, metric) -> np.ndarray:
    if k == "final":
        return np.array([r["final_acc_1"] for r in rows], dtype=float)
    sign = -1.0 if metric == "loss" else 1.0  # lower loss ranks higher
    return sign * np.array([r[f"{metric}_k{k}"] for r in rows], dtype=float)


def summarise(rows: list[dict], steps=None) -> list[dict]:
    """Per label (k, metric) and for the final recipe's seed-to-seed agreement: cost and Spearman per scope.

    Args:
        rows: the vectors' rows.
        steps: the k to summarise (default: every ``acc_k<k>`` column).

    Returns:
        One dict per (label, scope): ``label``, ``k`` (or ``"final"``), ``metric``, ``cost_s``, ``scope``
        (``all``, ``within`` or a target), ``rho``, ``lo``, ``hi`` (95% bootstrap interval over vectors), ``n``.
    """
    from rlprune.measure.ranking import spearman_ci

    steps = steps if steps is not None else sorted(int(c[5:]) for c in rows[0] if c.startswith("acc_k"))
    targets = np.array([float(r["target"]) for r in rows])
    final = np.array([r["final_acc"] for r in rows], dtype=float)
    labels = [(k, m, f"s_k{k}") for k in steps for m in METRICS] + [("final", "acc", None)]
    out = []
    for k, metric, cost_col in labels:
        x = _series(rows, k, metric)
        y = np.array([r["final_acc_2"] for r in rows], dtype=float) if k == "final" else final
        cost = np.mean([r[cost_col] for r in rows]) if cost_col else np.mean(
            [(r["final_s_1"] + r["final_s_2"]) / 2 for r in rows])
        name = "final seed 1 vs seed 2" if k == "final" else f"k={k} {metric}"
        scopes = [("all", np.ones(len(rows), bool), None), ("within", np.ones(len(rows), bool), targets)]
        scopes += [(f"{t:g}", targets == t, None) for t in dict.fromkeys(targets.tolist())]
        for scope, mask, groups in scopes:
            s = spearman_ci(x[mask], y[mask], groups=groups)
            out.append({"label": name, "k": k, "metric": metric, "cost_s": round(float(cost), 3), "scope": scope,
                        "rho": s["rho"], "lo": s["ci"][0], "hi": s["ci"][1], "n": s["n"]})
    return out


def cheapest(summary: list[dict]) -> dict | None:
    """The cheapest label meeting issue 15's rule at every target (see :data:`RULE_RHO`), or None.

    Args:
        summary: :func:`summarise`'s rows (the labels to choose among, and the final's seed-vs-seed rows).

    Returns:
        The chosen label's ``within`` row (its mean within-target Spearman, for the report), or None.
    """
    rows = {(s["k"], s["metric"], s["scope"]): s for s in summary}
    targets = [sc for (k, _, sc) in rows if k == "final" and sc not in ("all", "within")]

    def meets(k, metric, target) -> bool:
        rho, bound = rows[(k, metric, target)]["rho"], rows[("final", "acc", target)]["rho"]
        if not np.isfinite(bound):  # the finals of this target are all equal: nothing to rank against
            return True
        return bool(np.isfinite(rho) and (rho >= RULE_RHO or rho >= bound - RULE_GAP))

    ok = [s for (k, m, sc), s in rows.items() if sc == "within" and k != "final"
          and all(meets(k, m, t) for t in targets)]
    return min(ok, key=lambda s: (s["cost_s"], s["k"]), default=None)


def markdown(rows: list[dict], summary: list[dict], header: str) -> str:
    """The Spearman table, the accuracy levels per target and the cheapest label meeting the rule."""
    scopes = list(dict.fromkeys(s["scope"] for s in summary))
    by = {(s["label"], s["scope"]): s for s in summary}
    names = list(dict.fromkeys(s["label"] for s in summary))
    heads = ["label", "cost s", *("within-target (mean)" if c == "within" else "overall" if c == "all"
                                  else f"target {c}" for c in scopes)]
    lines = [header, "", "## Spearman with the final accuracy (95% bootstrap interval over vectors)", "",
             "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for name in names:
        first = by[(name, scopes[0])]
        cells = " | ".join(rho_cell(by[(name, c)]) for c in scopes)
        lines.append(f"| {name} | {first['cost_s']:.2f} | {cells} |")
    best = cheapest(summary)
    bound = by[(names[-1], "within")]
    lines += ["", f"Cheapest label whose Spearman at every target is >= {RULE_RHO} or within {RULE_GAP} of the "
              f"final recipe's own at that target (seed 1 vs seed 2, last line; within-target {rho_cell(bound)}): "
              + (f"**{best['label']}** ({best['cost_s']:.2f} s, {rho_cell(best)})." if best else "**none**."), "",
              "## Accuracy levels (mean over vectors; min-max of the final)", ""]
    steps = sorted(int(c[5:]) for c in rows[0] if c.startswith("acc_k"))
    heads = ["target", "vectors", "MACs ratio", *(f"label k={k}" for k in steps), "final (validation)"]
    lines += ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for t in dict.fromkeys(r["target"] for r in rows):
        g = [r for r in rows if r["target"] == t]
        fin = [r["final_acc"] for r in g]
        lines.append(f"| {t:g} | {len(g)} | {np.mean([r['macs_ratio'] for r in g]):.3f} | "
                     + " | ".join(f"{np.mean([r[f'acc_k{k}'] for r in g]):.1f}" for k in steps)
                     + f" | {np.mean(fin):.1f} ({min(fin):.1f}-{max(fin):.1f}) |")
    return "\n".join(lines) + "\n"


def headline(rows: list[dict], comparison: list[dict] | None = None) -> dict:
    """The summary.json figures: the final recipe's seed-to-seed and today's label's (k=0 accuracy) within-target
    Spearman with intervals, and the k of the cheapest label meeting the rule (None if none does); with section
    2's ``comparison``, the finals-only, the best single-k and the multi-fidelity SPN's within-target Spearman."""
    summary = summarise(rows)
    within = {(s["k"], s["metric"]): s for s in summary if s["scope"] == "within"}
    slug = str(rows[0]["task"]).replace("/", "_").replace("-", "")
    best = cheapest(summary)
    out = {}
    for name, s in (("final_seed_spearman", within[("final", "acc")]), ("k0_acc_spearman", within.get((0, "acc")))):
        if s is not None:
            out[f"label_fidelity_{slug}_{name}"] = round(s["rho"], 4)
            out[f"label_fidelity_{slug}_{name}_ci"] = [round(s["lo"], 4), round(s["hi"], 4)]
    out[f"label_fidelity_{slug}_cheapest_k"] = None if best is None else int(best["k"])
    out[f"label_fidelity_{slug}_cheapest_metric"] = None if best is None else best["metric"]
    within = {c["arm"]: c for c in comparison or () if c["scope"] == "within"}
    singles = [c for a, c in within.items() if a.startswith("k=") and np.isfinite(c["rho"])]
    best_k = max(singles, key=lambda c: c["rho"], default=None)
    for name, c in (("final", within.get("final")), ("best_k", best_k), ("multi", within.get("multi"))):
        if c is not None:
            out[f"label_fidelity_{slug}_spn_{name}_spearman"] = round(c["rho"], 4)
            out[f"label_fidelity_{slug}_spn_{name}_spearman_ci"] = [round(c["lo"], 4), round(c["hi"], 4)]
    if best_k is not None:
        out[f"label_fidelity_{slug}_spn_best_k"] = int(best_k["arm"][2:])
    return out


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/M"`` -> ``(I, M)`` with ``0 <= I < M``.

    Raises:
        argparse.ArgumentTypeError: anything else, naming the value.
    """
    try:
        i, m = (int(x) for x in text.split("/"))
    except ValueError:
        i, m = -1, 0
    if not 0 <= i < m:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: want I/M with 0 <= I < M, e.g. 0/2 and 1/2")
    return i, m


def main(argv=None) -> None:
    """Measure every vector's labels and finals (resuming from ``--work``), then write the tables."""
    p = common.parser(__doc__)
    common.add_task_args(p)
    p.add_argument("--targets", type=float, nargs="+", default=[0.3, 0.5, 0.7], help="MACs targets")
    p.add_argument("--vectors", type=int, help="ratio vectors per target (default 24; quick 4)")
    p.add_argument("--steps", type=int, nargs="+", help="label fine-tune steps k (default 0 10 25 50 100; "
                                                        "quick 0 10 25)")
    p.add_argument("--finetune-steps", type=int, help="the validation recipe's fine-tune steps (default: "
                                                      "MeasureSpec's; quick 30)")
    p.add_argument("--seed", type=int, default=0, help="seeds the task, the vectors and the labels' fine-tunes")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared 2-core machine)")
    p.add_argument("--work", type=Path, help="keep finished vectors' rows here; rerunning with it resumes "
                                             "(default: a temporary folder, deleted at the end)")
    p.add_argument("--spn-share", type=float, help="section 2's budget: what finals of this share of a fold's "
                                                   f"training vectors cost (default {BUDGET_SHARE:.2f}; quick 0.9)")
    p.add_argument("--spn-steps", type=int, help="section 2's SPN optimiser steps at most (default 4000; quick 600)")
    p.add_argument("--shard", type=parse_shard, default=(0, 1), metavar="I/M",
                   help="measure only the vectors whose index is I modulo M into --work and stop (no tables): run "
                        "M shards side by side, one core each, then once without --shard to write the tables")
    args = p.parse_args(argv)
    if args.shard != (0, 1) and args.work is None:
        p.error("--shard needs --work: the shards' rows meet there")
    import torch

    from rlprune.measure.spec import MeasureSpec

    torch.set_num_threads(args.threads)
    q = args.quick
    n = args.vectors or (4 if q else 24)
    steps = sorted(set(args.steps if args.steps else ((0, 10, 25) if q else (0, 10, 25, 50, 100))))
    ft = args.finetune_steps if args.finetune_steps is not None else (30 if q else MeasureSpec().finetune_steps)
    spec = MeasureSpec(finetune_steps=ft)
    kw, label = common.task_choice(args)  # a missing data folder fails now, with the task's message
    task = common.task_of(args.task, args.seed, kw)
    share = args.spn_share if args.spn_share is not None else (0.9 if q else BUDGET_SHARE)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        rows, read = run(task, label, spec, args.targets, n, steps, args.seed, work, shard=args.shard)
        if args.shard != (0, 1):
            print(f"shard {args.shard[0]}/{args.shard[1]}: {len(rows)} vectors in {work} ({read} read back); run "
                  "again without --shard for the tables", file=sys.stderr)
            return
        t1 = time.perf_counter()
        features = spec.task_space(task).features()
        comparison = comparison_cached(rows, features, share, args.seed, args.spn_steps or (600 if q else 4000), work)
    fields = ["task", "seed", "target", "vector", "sampler", "macs_ratio", "params_ratio",
              *(f"{m}_k{k}" for k in steps for m in (*METRICS, "s")), "final_split", "final_steps",
              "final_acc", *(f"final_{c}_{j}" for c in ("acc", "seed", "n", "s") for j in (1, 2)), "ratios",
              *record.PROVENANCE]
    rows = [{f: r.get(f) for f in fields} for r in rows]
    header = (f"# Label fidelity ({label}, {'quick' if q else 'full'}: {n} vectors x targets "
              f"{' '.join(f'{t:g}' for t in args.targets)}, label steps {' '.join(map(str, steps))})\n\n"
              f"{record.stamp()}; total {time.perf_counter() - t0:.0f} s"
              f"{f' (this call; {read} finished vectors read back from --work)' if read else ''}. Labels: "
              f"calibration split after BN recalibration and k SGD steps (cosine from lr {spec.finetune_lr:g}); "
              f"final: validation split after the validation recipe ({ft} steps, cosine from lr "
              f"{spec.finetune_lr:g}), seeds {args.seed + 1} and {args.seed + 2}, their mean. `cost s`: seconds "
              f"per label (prune, recalibrate, fine-tune, score), or per final fine-tune.")
    md = markdown(rows, summarise(rows, steps), header)
    md += f"\n{fidelity_markdown(comparison, rows, share)}\nSection 2 took {time.perf_counter() - t1:.0f} s.\n"
    name = record.result_name("label_fidelity", label)
    record.write_csv(args.results_dir, record.stem(f"{name}_spn", q), comparison)
    record.write_results(args.results_dir, record.stem(name, q), rows, md, fields)
    if not q:
        record.update_summary(args.results_dir, headline(rows, comparison), "label_fidelity", label=label)


if __name__ == "__main__":
    common.main_guard(main)
