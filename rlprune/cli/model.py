"""The ``rlprune tasks``, ``groups`` and ``prune`` verbs: look at a model and prune it by hand."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rlprune.cli.common import (
    add_json_arg,
    add_measure_args,
    add_task_args,
    emit,
    load_target,
    measure_spec,
    parse_ratios,
)
from rlprune.errors import ConfigError

EPILOG_PRUNE = """examples:
  rlprune prune --task digits --uniform 0.3
  rlprune prune --task digits --ratios 0.5,0.2,0.2,0.4,0.1,0.3,0.3 --finetune-steps 200 --out runs/p1
  rlprune prune --model mypkg.nets:build --input-shape 3,32,32 --uniform 0.5 --json
"""


def add_model_parsers(sub) -> None:
    """Add the ``tasks``, ``groups`` and ``prune`` verbs to the CLI's subparsers."""
    p = sub.add_parser("tasks", help="list the built-in tasks", description="List the built-in tasks.")
    add_json_arg(p)

    p = sub.add_parser(
        "groups", help="list a model's prunable groups (one agent each)",
        description="Trace the model with torch-pruning and list its prunable groups: layers whose channels "
                    "must shrink together (a residual stage is one group). One group = one ratio.",
        epilog="examples:\n  rlprune groups --task digits\n  rlprune groups --model mypkg.nets:build "
               "--input-shape 3,32,32 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_task_args(p, model_ok=True)
    add_measure_args(p, label=False, final=False)
    add_json_arg(p)

    p = sub.add_parser(
        "prune", help="prune a model for real with given ratios",
        description="Prune every group by its ratio (fraction of channels removed), recalibrate BatchNorm, "
                    "optionally fine-tune, and report params, MACs and (with a task) test accuracy before and "
                    "after.",
        epilog=EPILOG_PRUNE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_task_args(p, model_ok=True)
    r = p.add_mutually_exclusive_group(required=True)
    r.add_argument("--ratios", help="one ratio per group, comma separated, in group order (see `rlprune groups`)")
    r.add_argument("--uniform", type=float, help="the same ratio for every group")
    p.add_argument("--out", help="folder for pruned_model.pt and its manifest pruned_model.json")
    add_measure_args(p)
    add_json_arg(p)


# ---------------------------------------------------------------------------------------- verbs
def cmd_tasks(args) -> int:
    from rlprune.tasks import list_tasks

    tasks = list_tasks()
    emit(args, {"tasks": [{"name": n, "description": d} for n, d in tasks]},
          [f"{n:<{max(len(n) for n, _ in tasks)}}  {d}" for n, d in tasks]
          + ["", "or any package.module:callable returning a Task"])
    return 0


def cmd_groups(args) -> int:
    _, model, example = load_target(args, trained=False)  # groups depend on the structure, not the weights
    space = measure_spec(args).space_of(model, example)
    obj = {
        "n_groups": space.n_groups,
        "params": space.base_params,
        "macs": space.base_macs,
        "groups": [g.to_dict() for g in space.groups],
        "skipped": space.skipped,
    }
    lines = [f"{space.n_groups} prunable groups, {space.base_params:,} params, {space.base_macs:,} MACs", "",
             f"{'id':<9} {'root':<28} {'ch':>5} {'layers':>6} {'params':>10} {'MACs':>12}"]
    for g in space.groups:
        lines.append(f"{g.id:<9} {g.root:<28} {g.channels:>5} {len(g.layers):>6} {g.params:>10,} {g.macs:>12,}")
    lines += [f"skipped: {s}" for s in space.skipped]
    emit(args, obj, lines)
    return 0


def cmd_prune(args) -> int:
    from rlprune.io import save_pruned
    from rlprune.measure.recipe import prune_and_score, pruned_manifest
    from rlprune.space.pruning import count_ops_and_params

    spec = measure_spec(args, finetune_steps=0)  # by hand, nothing is fine-tuned unless asked
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; pass a folder (it is created if missing)")
    task, model, example = load_target(args)
    if spec.finetune_steps and task is None:
        raise ConfigError("--finetune-steps needs --task (a model alone has no training data)")
    if spec.importance == "taylor" and task is None:
        raise ConfigError("--importance taylor needs --task (it ranks channels with gradients on data)")
    space = spec.space_of(model, example)
    ratios = [args.uniform] * space.n_groups if args.uniform is not None else parse_ratios(args.ratios)
    achieved = space.achieved(ratios)  # validates length, NaN and range before any work
    t0 = time.perf_counter()
    if task is not None:
        base_acc = task.evaluate(model, "test")["acc"]
        pruned, scores = prune_and_score(task, space, achieved, spec, finetune=True, split="test")
    else:
        pruned = space.apply(achieved, importance=spec.importance)
    params, macs = count_ops_and_params(pruned, example)
    result = {
        "n_groups": space.n_groups,
        "achieved_ratios": [round(float(r), 6) for r in achieved],
        "params": params,
        "macs": macs,
        "params_ratio": params / space.base_params,
        "macs_ratio": macs / space.base_macs,
    }
    if task is not None:
        result.update(base_acc=base_acc, acc=scores["acc"], acc_drop=base_acc - scores["acc"])
    result["prune_s"] = round(time.perf_counter() - t0, 3)
    if out is not None:
        manifest = pruned_manifest(space, achieved, example, acc=result.get("acc"), task=args.task,
                                   importance=spec.importance, finetune_steps=spec.finetune_steps)
        result["manifest"] = str(save_pruned(pruned, out / "pruned_model.pt", manifest))
    lines = [f"params {params:,} ({result['params_ratio']:.3f} of base), "
             f"MACs {macs:,} ({result['macs_ratio']:.3f} of base)",
             "achieved ratios: " + ", ".join(f"{r:.3f}" for r in achieved)]
    if task is not None:
        lines.append(f"test accuracy {result['base_acc']:.2f}% -> {result['acc']:.2f}% "
                     f"(drop {result['acc_drop']:.2f} points)")
    if out is not None:
        lines.append(f"saved {out / 'pruned_model.pt'}")
    emit(args, result, lines)
    return 0
