"""The ``rlprune`` command.

Every verb has ``--help`` with an example and ``--json`` for machine-readable output. User mistakes
(a bad ratio, an unknown task, a missing data folder) end with one line on stderr naming the value and the
fix, exit status 2, no traceback, and nothing written.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rlprune.errors import ConfigError, RlpruneError
from rlprune.run_cli import add_run_parsers, cmd_run, cmd_tune
from rlprune.sample_tune import add_sample_parser, cmd_sample
from rlprune.search import add_search_parser, cmd_search
from rlprune.spn_cli import add_spn_parser, cmd_spn
from rlprune.validate import add_baselines_parser, cmd_baselines

EPILOG_PRUNE = """examples:
  rlprune prune --task digits --uniform 0.3
  rlprune prune --task digits --ratios 0.5,0.2,0.2,0.4,0.1,0.3,0.3 --finetune-steps 200 --out runs/p1
  rlprune prune --model mypkg.nets:build --input-shape 3,32,32 --uniform 0.5 --json
"""


# ---------------------------------------------------------------------------------------- parsing
def parse_input_shape(text: str) -> tuple[int, int, int]:
    """``"3,32,32"`` -> ``(3, 32, 32)``.

    Raises:
        ConfigError: not three positive integers.
    """
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError as e:
        raise ConfigError(f"--input-shape {text!r} is not C,H,W; write e.g. 3,32,32") from e
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"--input-shape {text!r} must be three positive integers C,H,W, e.g. 3,32,32")
    return shape


def parse_ratios(text: str) -> list[float]:
    """``"0.5,0.2"`` -> ``[0.5, 0.2]`` (NaN and range are checked against the model later).

    Raises:
        ConfigError: a value that is not a number.
    """
    out = []
    for v in text.split(","):
        try:
            out.append(float(v))
        except ValueError as e:
            raise ConfigError(f"ratio {v.strip()!r} in --ratios is not a number; "
                              f"write comma-separated floats like 0.5,0.25") from e
    return out


def _add_target_args(p: argparse.ArgumentParser, with_task: bool = True) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    if with_task:
        src.add_argument("--task", help="task name (see `rlprune tasks`) or package.module:callable returning a Task")
    src.add_argument("--model", help="package.module:callable returning an nn.Module (structural work only)")
    p.add_argument("--input-shape", help="C,H,W of one input, required with --model (e.g. 3,32,32)")
    p.add_argument("--data-dir", help="data folder for tasks that read local data (cifar10); "
                                      "default $RLPRUNE_DATA")
    p.add_argument("--seed", type=int, default=0, help="task seed (default 0)")
    p.add_argument("--round-to", type=int, default=1, help="round kept channels down to a multiple (default 1)")
    p.add_argument("--max-ratio", type=float, default=0.9, help="largest ratio any group may take (default 0.9)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every verb."""
    parser = argparse.ArgumentParser(
        prog="rlprune",
        description="Find how much to prune each layer group of a trained network with multi-agent RL "
                    "against a learned world model, then prune it for real.",
        epilog="Start with `rlprune run --task digits --target-macs 0.5 --out runs/demo` (the whole job), or explore "
               "with `rlprune groups --task digits` and `rlprune prune --task digits --uniform 0.3`.",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True

    p = sub.add_parser("tasks", help="list the built-in tasks", description="List the built-in tasks.")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser(
        "groups", help="list a model's prunable groups (one agent each)",
        description="Trace the model with torch-pruning and list its prunable groups: layers whose channels "
                    "must shrink together (a residual stage is one group). One group = one ratio.",
        epilog="examples:\n  rlprune groups --task digits\n  rlprune groups --model mypkg.nets:build "
               "--input-shape 3,32,32 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_target_args(p)

    p = sub.add_parser(
        "prune", help="prune a model for real with given ratios",
        description="Prune every group by its ratio (fraction of channels removed), optionally fine-tune, and "
                    "report params, MACs and (with a task) test accuracy before and after.",
        epilog=EPILOG_PRUNE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_target_args(p)
    r = p.add_mutually_exclusive_group(required=True)
    r.add_argument("--ratios", help="one ratio per group, comma separated, in group order (see `rlprune groups`)")
    r.add_argument("--uniform", type=float, help="the same ratio for every group")
    p.add_argument("--importance", default="l1", help="channel criterion: l1, l2, taylor, bn_scale, random")
    p.add_argument("--finetune-steps", type=int, default=0, help="SGD steps on the train split after pruning")
    p.add_argument("--no-recalibrate", action="store_true",
                   help="skip BatchNorm recalibration on the calibration split before measuring")
    p.add_argument("--out", help="folder for pruned_model.pt and its manifest pruned_model.json")
    add_run_parsers(sub)
    add_sample_parser(sub)
    add_baselines_parser(sub)
    add_search_parser(sub)
    add_spn_parser(sub)
    return parser


# ---------------------------------------------------------------------------------------- helpers
def _load_target(args):
    """(task or None, model, example_input) from --task or --model/--input-shape."""
    import torch
    import torch.nn as nn

    from rlprune.tasks import get_task, load_callable

    if getattr(args, "task", None):
        if args.input_shape:
            raise ConfigError("--input-shape goes with --model; a task knows its own input shape")
        kwargs = {"seed": args.seed}
        if args.data_dir:
            kwargs["data_dir"] = args.data_dir
        task = get_task(args.task, **kwargs)
        return task, task.base_model(), task.example_input()
    if not args.input_shape:
        raise ConfigError("--model needs --input-shape C,H,W (e.g. 3,32,32)")
    shape = parse_input_shape(args.input_shape)
    factory = load_callable(args.model)
    try:
        model = factory()
    except Exception as e:  # noqa: BLE001 - user code may raise anything
        raise ConfigError(f"--model {args.model} raised {type(e).__name__}: {e}") from e
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--model {args.model} returned {type(model).__name__}; it must return a torch.nn.Module")
    return None, model.eval(), torch.randn(1, *shape)


def _space(args, model, example):
    from rlprune.pruning import PruningSpace

    return PruningSpace.from_model(model, example, round_to=args.round_to, max_ratio=args.max_ratio)


def _emit(args, obj: dict, lines: list[str]) -> None:
    if args.json:
        print(json.dumps(obj, indent=2, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
    else:
        print("\n".join(lines))


# ---------------------------------------------------------------------------------------- verbs
def cmd_tasks(args) -> int:
    from rlprune.tasks import list_tasks

    tasks = list_tasks()
    _emit(args, {"tasks": [{"name": n, "description": d} for n, d in tasks]},
          [f"{n:<10} {d}" for n, d in tasks] + ["", "or any package.module:callable returning a Task"])
    return 0


def cmd_groups(args) -> int:
    _, model, example = _load_target(args)
    space = _space(args, model, example)
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
    _emit(args, obj, lines)
    return 0


def cmd_prune(args) -> int:
    from rlprune.io import save_pruned
    from rlprune.pruning import count_ops_and_params
    from rlprune.sampling import prune_and_score
    from rlprune.validate import pruned_manifest

    if args.finetune_steps < 0:
        raise ConfigError(f"--finetune-steps {args.finetune_steps} must be >= 0")
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; pass a folder (it is created if missing)")
    task, model, example = _load_target(args)
    if args.finetune_steps and task is None:
        raise ConfigError("--finetune-steps needs --task (a model alone has no training data)")
    space = _space(args, model, example)
    ratios = [args.uniform] * space.n_groups if args.uniform is not None else parse_ratios(args.ratios)
    achieved = space.achieved(ratios)  # validates length, NaN and range before any work
    if args.importance == "taylor" and task is None:
        raise ConfigError("--importance taylor needs --task (it ranks channels with gradients on data)")
    t0 = time.perf_counter()
    if task is not None:
        base_acc = task.evaluate(model, "test")["acc"]
        pruned, scores = prune_and_score(task, space, achieved, importance=args.importance,
                                         recalibrate=not args.no_recalibrate, finetune_steps=args.finetune_steps,
                                         split="test")
    else:
        pruned = space.apply(achieved, importance=args.importance)
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
                                   importance=args.importance, finetune_steps=args.finetune_steps)
        result["manifest"] = str(save_pruned(pruned, out / "pruned_model.pt", manifest))
    lines = [f"params {params:,} ({result['params_ratio']:.3f} of base), "
             f"MACs {macs:,} ({result['macs_ratio']:.3f} of base)",
             "achieved ratios: " + ", ".join(f"{r:.3f}" for r in achieved)]
    if task is not None:
        lines.append(f"test accuracy {result['base_acc']:.2f}% -> {result['acc']:.2f}% "
                     f"(drop {result['acc_drop']:.2f} points)")
    if out is not None:
        lines.append(f"saved {out / 'pruned_model.pt'}")
    _emit(args, result, lines)
    return 0


COMMANDS = {
    "tasks": cmd_tasks,
    "groups": cmd_groups,
    "prune": cmd_prune,
    "sample": cmd_sample,
    "spn": cmd_spn,
    "search": cmd_search,
    "run": cmd_run,
    "tune": cmd_tune,
    "baselines": cmd_baselines,
}


def main(argv=None) -> int:
    """Entry point of the ``rlprune`` console script.

    Returns:
        The exit status: 0 on success, 2 on a user error (one line on stderr).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.verb](args)
    except RlpruneError as e:
        print(f"rlprune {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rlprune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["build_parser", "main", "parse_input_shape", "parse_ratios"]
