"""Quality: the RL search against every baseline at MACs targets 0.3, 0.5 and 0.7, all measured for real.

How to run:
    python benchmarks/quality.py --quick                    # ~1-2 min: 32 samples, 2 RL iterations, target 0.5
    python benchmarks/quality.py                            # ~20-30 min: targets 0.3 0.5 0.7, seeds 0 1 2
    python benchmarks/quality.py --task fashion-mnist --arch resnet20 --work ~/bench/q-fm20   # hours; resumable
    python benchmarks/quality.py ... --work W --samples-only   # each seed's samples and SPN only (see --help)

Per task and seed: real samples (2 Tune workers) -> transformer SPN -> per target, one online RL search (PPO,
simultaneous mode, wall at the target) and every baseline: uniform, larger-group and depth rules, global L1,
random search and CEM. Equal budgets, counted: random search and CEM start from RL's SPN and spend the RL
search's counted ``spn_calls`` and ``real_evals`` (calibration split) in as many online rounds, each with a
world model of its own (``rlprune.pipeline.stages.search_baselines``, as in ``rlprune run``) and its own copy
of the store as sampling left it. Every method puts one vector forward (``candidates``), pruned for real,
BN-recalibrated and scored on validation and test, without and after the same fine-tune (``--finetune-steps``).

Choices and statistics: the VALIDATION split chooses, the test split only reports.

- Best baseline: per seed, the baseline with the best validation accuracy among those within the target
  (``rlprune.pipeline.select.comparison``, the rule ``rlprune run`` uses). RL minus it on the same test images:
  a paired bootstrap interval and McNemar p-value per seed; over seeds, the same over all seeds' test images
  together (each seed's chosen baseline against RL of that seed), with the spread (min..max) of the per-seed
  differences. A difference is called real only when its interval excludes 0.
- Accuracy per method over seeds: mean, std over seeds, and a 95% bootstrap interval over all seeds' test
  images together.
- Params removed at equal accuracy drop, RL vs the best rule: each handcrafted rule is a curve through its
  (drop, params removed) points at the measured targets, joined by straight lines and anchored at the unpruned
  model; the rule's figure is the most params removed on that curve with drop <= RL's drop. The best rule is
  the one removing the most at RL's VALIDATION drop on its validation curve (means over seeds); the reported
  ratio is RL's params removed / that rule's figure on the TEST curve at RL's test drop. Above 1: RL removes
  more parameters for the same accuracy.

Nothing is asserted. Full mode merges ``rl_minus_best_baseline_acc_at_<t>`` (pooled over seeds, after the
fine-tune) with ``_ci``, ``_real`` and ``_spread``, ``params_removed_ratio_vs_best_rule`` (at 0.5) and
``quality_selection_split`` into ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import common
import record
from quality_tables import RULES, comparisons, headline, markdown, params_at_equal_drop, rounded, summarise

BASELINES = (*RULES, "global_l1", "random_search", "cem")
FIELDS = ["task", "seed", "target", "finetune_steps", "method", "source", "macs_ratio", "params_ratio", "val_acc",
          "val_drop", "acc", "acc_ci_lo", "acc_ci_hi", "acc_drop", "predicted_acc_drop", "latency_ms",
          "latency_ratio", "spn_calls", "real_evals", "candidates", "search_s", "sample_s", "ratios", "test_correct"]
BUDGET = "macs"


def run_seed(task_name: str, task_kwargs: dict, seed: int, targets, n_samples: int, iters: int, train_batch: int,
             finetune_steps: int, work: Path, label: str | None = None, label_steps: int | None = None,
             samples_only: bool = False) -> list[dict]:
    """Every method at every target for one task and seed; resumable target by target.

    Each finished target's rows are written to ``work`` atomically, and a rerun with the same ``work`` folder
    reads them back instead of measuring again (the samples and the SPN are kept too), so a long benchmark
    killed midway loses at most the target in flight.

    Args:
        task_name, task_kwargs, seed: the task and the seed of everything (task, sampling, searches).
        targets, n_samples, iters, train_batch: MACs targets, the SPN's samples, the RL search's size.
        finetune_steps, work: the fine-tune every method gets (rows also without it), the work folder.
        label: the rows' ``task`` (default ``task_name``; e.g. ``fashion-mnist/resnet20``).
        label_steps: the samples' and online rounds' label (default: the task's, as ``rlprune run`` has it).
        samples_only: make the seed's samples and SPN only, and return no rows.

    Returns:
        One row per (target, fine-tune, method): the ``FIELDS``.
    """
    from rlprune.io import atomic_write_json
    from rlprune.measure.recipe import measure_base, measure_candidate
    from rlprune.search.rl import SearchConfig, run_search
    from rlprune.spn.nets import one_thread

    label = label or task_name
    spec = common.label_spec(task_name, label_steps)
    work = Path(work) / f"{label.replace('/', '-')}-{seed}{common.label_suffix(spec.label_steps)}"
    if samples_only:
        _stages(task_name, n_samples, work, seed, task_kwargs, spec)
        return []
    done = {t: work / f"rows-target{t:g}-ft{finetune_steps}.json" for t in targets}
    rows = [r for t in targets if done[t].is_file() for r in json.loads(done[t].read_text())]
    todo = [t for t in targets if not done[t].is_file()]
    if not todo:
        return rows
    task = common.task_of(task_name, seed, task_kwargs)
    # A --model-seed fixes the base model for every seed; each seed still fine-tunes with its own data order, so
    # a rule's fixed vector gets a replicate per seed too (its spread is then the fine-tune's, not zero).
    task.finetune_seed = seed
    with one_thread():  # on 2 shared cores torch's own threads spin-wait and train 10-30x slower
        model = task.base_model()
    space = spec.space_of(model, task.example_input())
    stages = _stages(task_name, n_samples, work, seed, task_kwargs, spec)
    pristine = stages["pristine"]
    base = measure_base(task, model, spec)
    for target in todo:
        out = work / f"search-{target}"
        for partial in (out, work / f"baselines-{target}"):  # what a killed attempt at this target left
            shutil.rmtree(partial, ignore_errors=True)
        t1 = time.perf_counter()
        res = run_search(SearchConfig(spn=str(stages["spn"]), out=str(out), task=task_name, task_kwargs=task_kwargs,
                                      target=target, iters=iters, train_batch=train_batch,
                                      samples=str(_copy(pristine, out / "samples")), online_every=min(5, iters),
                                      seed=seed, measure=spec), progress=False)
        rl = {"method": "rl", "source": "rl", "ratios": res["ratios"], "predicted_acc_drop": res["predicted_acc_drop"],
              "spn_calls": res["spn_calls"], "real_evals": res["real_evals"], "candidates": 1,
              "search_s": time.perf_counter() - t1}
        found = [rl, *baselines(task, space, spec, task_name, task_kwargs, seed, target, stages["spn"], pristine,
                                res, work / f"baselines-{target}")]
        mine = []
        for ft in sorted({0, finetune_steps}):
            ft_spec = dataclasses.replace(spec, finetune_steps=ft)
            for c in found:
                row, _ = measure_candidate(task, space, c["ratios"], base, ft_spec, method=c["method"])
                mine.append(_row(label, seed, target, ft, row, c, stages["sample_s"]))
        mine = record.stamped(mine)  # measured now: a resumed run keeps this date, commit and load
        atomic_write_json(done[target], mine)
        rows += mine
        print(f"{label} seed {seed} target {target}: done ({rl['search_s']:.0f} s RL search)", file=sys.stderr,
              flush=True)
    return rows


def _stages(task_name: str, n_samples: int, work: Path, seed: int, task_kwargs: dict, spec) -> dict:
    """The samples, the SPN and the pristine copy of the store, made once per work folder (resumed if killed)."""
    from rlprune.io import atomic_write_json

    record = work / "stages.json"
    if record.is_file():
        got = json.loads(record.read_text())
        return {k: Path(v) if k in ("store", "spn", "pristine") else v for k, v in got.items()}
    stages = common.samples_and_spn(task_name, n_samples, work, seed, task_kwargs, spec)
    pristine = work / "samples-pristine"
    shutil.rmtree(pristine, ignore_errors=True)
    _copy(stages["store"], pristine)  # every search starts from the store as sampling left it
    stages["pristine"] = pristine
    atomic_write_json(record, {k: str(v) if isinstance(v, Path) else v for k, v in stages.items()})
    return stages


def _copy(src: Path, dst: Path) -> Path:
    # The shards and the manifest; Tune's experiment folder is a log, not samples.
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("tune"))
    return dst


def baselines(task, space, spec, task_name: str, task_kwargs: dict, seed: int, target: float, spn: Path,
              pristine: Path, res: dict, folder: Path) -> list[dict]:
    """Every baseline's vector at ``target``; random search and CEM with the RL search's counted budget.

    Args:
        task, space, spec: the task, its base model's ``PruningSpace`` and the ``MeasureSpec``.
        task_name, task_kwargs, seed, target: as the RL search had them.
        spn, pristine, folder: the SPN and the sample store as sampling left them; a scratch folder.
        res: the RL search's result (its counted ``spn_calls``, ``real_evals``, ``online_rounds``).

    Returns:
        ``{"method", "source": "baseline", "ratios", "spn_calls", "real_evals", "candidates", "search_s", ...}``.
    """
    from rlprune.io import model_fingerprint
    from rlprune.pipeline.stages import search_baselines
    from rlprune.search.rl import SearchConfig

    vspec = {"task": task_name, "task_kwargs": {"seed": seed, **task_kwargs}, "target": target, "budget": BUDGET,
             "base": {"fingerprint": model_fingerprint(space.model)}}
    budget = {"n_calls": max(1, int(res["spn_calls"])), "n_real": int(res["real_evals"]),
              "rounds": max(1, len(res["online_rounds"]))}
    found = []
    # One call per black-box search, each with a store and a folder of its own; the rules touch neither.
    for group in ((*RULES, "global_l1"), ("random_search",), ("cem",)):
        where = folder / group[0]
        store = pristine if group[0] in RULES else _copy(pristine, where / "samples")
        found += search_baselines(task, space, spec, vspec, where, spn=str(spn), store=store, methods=group,
                                  workers=2, steps=SearchConfig.online_steps, seed=seed, **budget)
    return [{**b, "source": "baseline", "candidates": 1} for b in found]


def _row(task: str, seed: int, target: float, ft: int, row: dict, cand: dict, sample_s: float | None) -> dict:
    ci = row.get("acc_ci") or [None, None]
    return {"task": task, "seed": seed, "target": target, "finetune_steps": ft, "method": row["method"],
            "source": cand["source"], "macs_ratio": row["macs_ratio"], "params_ratio": row["params_ratio"],
            "val_acc": round(row["val_acc"], 4), "val_drop": round(row["val_drop"], 4), "acc": round(row["acc"], 4),
            "acc_ci_lo": rounded(ci[0]), "acc_ci_hi": rounded(ci[1]), "acc_drop": round(row["acc_drop"], 4),
            "predicted_acc_drop": rounded(cand.get("predicted_acc_drop")), "latency_ms": round(row["latency_ms"], 3),
            "latency_ratio": round(row["latency_ratio"], 3), "spn_calls": int(cand.get("spn_calls") or 0),
            "real_evals": int(cand.get("real_evals") or 0), "candidates": int(cand["candidates"]),
            "search_s": round(float(cand.get("search_s") or 0.0), 2),
            "sample_s": round(sample_s, 1) if cand["source"] == "rl" and sample_s is not None else "",
            "ratios": " ".join(f"{x:.4f}" for x in row["ratios"]), "test_correct": row["test_correct"]}


def main(argv=None) -> None:
    """Run every seed of one task and write ``quality[_<task>_<arch>][_quick].csv/.md`` (digits full: summary.json)."""
    p = common.parser(__doc__)
    common.add_task_args(p)
    p.add_argument("--targets", type=float, nargs="+", default=None, help="MACs targets (default 0.3 0.5 0.7)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1 2; quick 0)")
    p.add_argument("--finetune-steps", type=int, default=None,
                   help="the same short fine-tune for every method (default 100; quick 20)")
    p.add_argument("--samples", type=int, help="real samples per seed for the SPN (default 256; quick 32)")
    p.add_argument("--iters", type=int, help="RL iterations per search (default 30; quick 2)")
    p.add_argument("--work", type=Path,
                   help="keep samples, SPNs and finished targets here; rerunning with it resumes (default: a "
                        "temporary folder, deleted at the end)")
    common.add_keep_rows_arg(p)
    common.add_label_arg(p)
    p.add_argument("--samples-only", action="store_true",
                   help="only make each seed's samples and SPN in --work (and keep the samples with --keep-rows), "
                        "then stop: sampling is resumable sample by sample, a target's searches are not, so the "
                        "last part of a machine's time is best spent sampling")
    args = p.parse_args(argv)
    if args.samples_only and not args.work:
        p.error("--samples-only needs --work (the samples would be deleted with a temporary folder)")
    q = args.quick
    targets = args.targets or ([0.5] if q else [0.3, 0.5, 0.7])
    seeds = args.seeds or ([0] if q else [0, 1, 2])
    ft = args.finetune_steps if args.finetune_steps is not None else (20 if q else 100)
    n_samples, iters, batch = (32, 2, 64) if q else (256, 30, 256)
    n_samples, iters = args.samples or n_samples, args.iters or iters
    kw, label = common.task_choice(args)
    t0 = time.perf_counter()
    rows = common.run_seeds(lambda seed, work: run_seed(args.task, kw, seed, targets, n_samples, iters, batch, ft,
                                                        work, label, args.label_steps, args.samples_only),
                            seeds, args.work, args.keep_rows, keep_stores=True)
    if args.samples_only:
        print(f"samples and SPNs of seeds {seeds} are in {args.work}", file=sys.stderr)
        return
    k = common.label_spec(args.task, args.label_steps).label_steps
    header = (f"# Quality ({label}, {'quick' if q else 'full'}: {n_samples} samples labelled after {k} fine-tune "
              f"steps, "
              f"{iters} RL iterations x {batch} episodes, seeds {seeds}, fine-tune {ft} steps)\n\n"
              f"{record.stamp()}; total {time.perf_counter() - t0:.0f} s"
              f"{' (this call; finished targets were read back from --work)' if args.work else ''}. "
              "`val_acc` (validation, which chooses) and "
              "`acc` (test, which only reports) in %, after BN recalibration (finetune_steps 0) or after the "
              "fine-tune; `acc_ci_lo`-`acc_ci_hi`: 95% bootstrap interval over all seeds' test images together; "
              "`acc_std`: std over seeds. Every method meets the same MACs target from below; random search and CEM "
              "spend the RL search's counted `spn_calls` and `real_evals`; `search_s` is each method's measured "
              "search wall; `latency_ms` is batch-1 CPU latency.")
    md = markdown(summarise(rows), comparisons(rows), params_at_equal_drop(rows, ft), header)
    record.write_results(args.results_dir, record.stem(record.result_name("quality", label), q), rows, md, FIELDS)
    if not q:
        record.update_summary(args.results_dir, headline(rows), "quality", label=label)


if __name__ == "__main__":
    common.main_guard(main)
