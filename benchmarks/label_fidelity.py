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
from fidelity_spn import BUDGET_SHARE, comparison_cached, fidelity_markdown
from label_fidelity_tables import METRICS, headline, markdown, summarise

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


ROW_FILES = ("t*-v*.json",)
"""The glob of :func:`run`'s finished rows in its ``work`` folder (``t<target>-v<vector>.json``)."""


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
