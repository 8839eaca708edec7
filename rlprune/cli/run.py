"""The ``rlprune run`` and ``rlprune tune`` verbs (the pipeline itself lives in ``rlprune.pipeline.run``)."""

from __future__ import annotations

import argparse
import json

from rlprune.cli.common import (
    add_json_arg,
    add_measure_args,
    add_target_list_args,
    add_task_args,
    measure_overrides,
    read_target_list,
    task_options,
)
from rlprune.errors import ConfigError

RUN_EPILOG = """examples:
  rlprune run --task digits --target-macs 0.5 --out runs/demo
  rlprune run --task digits --target-params 0.4 --preset standard --out runs/p40
  rlprune run --task digits --target-macs 0.3,0.5,0.7 --out runs/multi   # one conditioned sweep, 3 models
  rlprune run --task digits --target-macs 0.5 --importance l2 --eval-batches 2 --out runs/l2
  rlprune run --task digits --target-macs 0.5 --quantize --target-size 0.125 --out runs/pq   # + weight bits
  rlprune run --model mynet:build --weights mynet.pt --data mynet:datasets --target-macs 0.5 --out runs/mine
  rlprune run --task cifar10 --data-dir ~/data/cifar10 --target-macs 0.5 --preset full --out runs/c10 \\
      --address ray-head:6379 --samples /shared/samples
presets (--preset): tiny ~1 min smoke run; quick (default) <= 10 min on 2 cores for digits;
standard and full sweep more reward weightings and modes and fine-tune longer.
measurement flags override the preset's and apply to every stage (samples, online rounds, validation).
Rerun the same command after an interruption: finished stages are reused, killed ones resume.
"""

TUNE_EPILOG = """examples:
  rlprune tune tune_configs/sample.yaml
  rlprune tune tune_configs/reward_sweep.yaml --out runs/sweep1
  rlprune tune tune_configs/full.yaml --address ray-head:6379
a config's top-level keys are `rlprune run` settings; its sections sample/spn/sweep/validate map onto
rlprune.pipeline.config's dataclasses; `until` names the last stage (base, samples, spn, sweep, validate, report,
quantize); a `quantize:` section with `target_size` adds the second stage.
"""


def add_run_parsers(sub) -> None:
    """Add the ``run`` and ``tune`` verbs to the CLI's subparsers."""
    from rlprune.pipeline.config import PRESETS, STAGES

    p = sub.add_parser(
        "run", help="the whole job: samples -> SPN -> RL sweep -> validation -> report (resumable)",
        description="Find per-group pruning ratios for a trained model and prune it: real samples, an SPN world "
                    "model, a Tune sweep of online RL searches over reward weightings, Tune validation trials "
                    "(the best RL strategy and every baseline pruned for real and fine-tuned the same), and "
                    "a report. Writes summary.json, results.csv, pruned_model.pt, report.md and report.html.",
        epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_task_args(p, default="digits")
    add_target_list_args(p, default_macs=0.5)
    p.add_argument("--out", required=True, help="output folder (rerun with the same folder to resume)")
    p.add_argument("--preset", default="quick", choices=list(PRESETS), help="how much work each stage does")
    # `budget` means macs or params everywhere; the old preset flag only explains where it went.
    p.add_argument("--budget", dest="old_budget", help=argparse.SUPPRESS)
    p.add_argument("--workers", type=int, default=2, help="parallel sampling/validation trials (default 2)")
    p.add_argument("--samples", help="sample store folder (default OUT/samples; a shared path on a cluster)")
    p.add_argument("--until", choices=list(STAGES), help="stop after this stage (default: the last one)")
    p.add_argument("--quantize", action="store_true",
                   help="second stage: choose weight bits (2..8) per layer of the pruned output model, with rules, "
                        "RL, random search and CEM, the same quantization-aware fine-tune (rlprune quantize)")
    p.add_argument("--target-size", type=float, metavar="R",
                   help="with --quantize: stored size relative to the pruned fp32 model (default 0.125, about 4 "
                        "bits per weight); giving it implies --quantize")
    p.add_argument("--address", help="Ray cluster to run on (host:port); default: a local one")
    add_measure_args(p)
    add_json_arg(p, "summary.json instead of a table")

    p = sub.add_parser(
        "tune", help="run a Tune experiment from a tune_configs/*.yaml file",
        description="Run the pipeline stages a YAML experiment names (sampling, reward sweep, validation, or "
                    "all of them), with Tune experiment folders under OUT/tune.",
        epilog=TUNE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="YAML file, e.g. tune_configs/reward_sweep.yaml")
    p.add_argument("--out", help="override the config's output folder")
    p.add_argument("--task", help="override the config's task")
    p.add_argument("--data-dir", help="data folder for tasks that read local data")
    p.add_argument("--address", help="Ray cluster to run on (host:port)")
    add_json_arg(p, "summary.json instead of a table")


def cmd_run(args) -> int:
    """Run ``rlprune run``."""
    from rlprune.pipeline.config import RunConfig
    from rlprune.pipeline.run import run_pipeline

    if args.old_budget is not None:
        raise ConfigError(f"--budget {args.old_budget} is now --preset {args.old_budget} (tiny, quick, standard, "
                          f"full); the budget is what --target-macs / --target-params constrain")
    target, budget = read_target_list(args, default_macs=0.5)
    extra = {"until": args.until} if args.until else {}
    if args.quantize or args.target_size is not None:
        extra["quantize"] = {"target_size": 0.125 if args.target_size is None else args.target_size}
    cfg = RunConfig.preset_config(
        args.preset, out=args.out, task=args.task, target=target, budget=budget, workers=args.workers,
        samples=args.samples, seed=args.seed, measure=measure_overrides(args), task_kwargs=task_options(args),
        **extra)
    _print(run_pipeline(cfg, address=args.address, progress=not args.json), args.json)
    return 0


def cmd_tune(args) -> int:
    """Run ``rlprune tune CONFIG``."""
    from rlprune.pipeline.config import load_yaml
    from rlprune.pipeline.run import run_pipeline

    cfg = load_yaml(args.config, out=args.out, task=args.task)
    if args.data_dir:
        import dataclasses

        cfg = dataclasses.replace(cfg, task_kwargs={**cfg.task_kwargs, "data_dir": args.data_dir})
    _print(run_pipeline(cfg, address=args.address, progress=not args.json), args.json)
    return 0


def _print(summary: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    for stage, t in summary["stages"].items():
        print(f"{stage:<9} {t['wall_s']:8.1f} s  {t['status']}")
    if "per_target" in summary:
        _print_targets(summary)
        return
    if summary["methods"]:
        # Sorted by validation accuracy, the split every choice is made on; the test columns only report.
        metric = (summary.get("metric") or "accuracy")[:8]  # the task's metric, in points
        print(f"\n{'method':<34} {'val':>8} {'test':>8} {'95% CI':>13} {'params':>7} {'macs':>6} {'lat ms':>7}")
        print(f"{'':<34} {metric:>8} {metric:>8}")
        for m, ci in _by_validation(summary["methods"]):
            print(f"{m['method']:<34} {m['val_acc']:>8.2f} {m['acc']:>8.2f} {ci:>13} {m['params_ratio']:>7.3f} "
                  f"{m['macs_ratio']:>6.3f} {m['latency_ms']:>7.2f}")
    if summary.get("comparison"):
        from rlprune.measure.stats import describe

        c = summary["comparison"]
        said = describe(c) if c.get("diff_ci") else f"{c['diff']:+.2f} points ({c['note']})"
        print(f"\nRL ({c['rl']}) minus best baseline ({c['best_baseline']}), chosen on validation, on the same "
              f"test images: {said}")
    if summary.get("winner"):
        print(f"\nwinner (best validation {summary.get('metric') or 'accuracy'}): {summary['winner']} -> "
              f"{summary['pruned_model']}")
        if summary.get("quantize"):
            _print_quantize(summary["quantize"])
        print(f"report: {summary['out']}/report.html (and report.md)")
    else:
        print(f"\nstopped after {list(summary['stages'])[-1]}; outputs in {summary['out']}")


def _by_validation(methods: list[dict]):
    """Method rows, best validation score first (the split every choice is made on), each with its 95% CI text."""
    for m in sorted(methods, key=lambda m: -m["val_acc"]):
        yield m, f"{m['acc_ci'][0]:.1f}-{m['acc_ci'][1]:.1f}" if m.get("acc_ci") else "n/a"


def _print_quantize(q: dict) -> None:
    """The second stage: each bit vector by validation score, sizes over the pruned and the unpruned model."""
    print(f"\nsecond stage: weight bits at size <= {q['target_size']:g} of the pruned model")
    print(f"  {'method':<14} {'size':>7} {'vs fp32':>8} {'val':>7} {'test':>7} {'95% CI':>11} {'mean bits':>9}")
    for m, ci in _by_validation(q["methods"]):
        print(f"  {m['method']:<14} {m['size_ratio']:>7.4f} {m['size_ratio_base']:>8.4f} {m['val_acc']:>7.2f} "
              f"{m['acc']:>7.2f} {ci:>11} {sum(m['bits']) / len(m['bits']):>9.2f}")
    c = q.get("comparison")
    if c:
        from rlprune.measure.stats import describe

        print(f"  RL bits minus best baseline ({c['best_baseline']}), on the same test images: {describe(c)}")
    print(f"  output (best validation score): {q['winner']} -> {q['model']}")


def _print_targets(summary: dict) -> None:
    """The list form: per target, the methods by validation score, the comparison and the output model."""
    from rlprune.measure.stats import describe

    metric = summary.get("metric") or "accuracy"
    for p in summary["per_target"]:
        budget = summary["budget"]
        print(f"\ntarget {p['target']:g} ({budget}, {metric})")
        print(f"  {'method':<34} {'val':>7} {'test':>7} {'95% CI':>11} {budget:>6}")
        for m, ci in _by_validation(p["methods"]):
            print(f"  {m['method']:<34} {m['val_acc']:>7.2f} {m['acc']:>7.2f} {ci:>11} {m[budget + '_ratio']:>6.3f}")
        c = p.get("comparison")
        if c:
            said = describe(c) if c.get("diff_ci") else f"{c['diff']:+.2f} points ({c['note']})"
            print(f"  RL ({c['rl']}) minus best baseline ({c['best_baseline']}), on the same test images: {said}")
        if p.get("winner"):
            print(f"  output (best validation {metric}): {p['winner']} -> {p['pruned_model']}")
    if summary["per_target"] and summary["per_target"][-1].get("winner"):
        print(f"\nreport: {summary['out']}/report.html (and report.md)")
    else:
        print(f"\nstopped after {list(summary['stages'])[-1]}; outputs in {summary['out']}")
