"""The ``rlprune search`` and ``rlprune baselines`` verbs."""

from __future__ import annotations

import argparse
import json
import sys

from rlprune.cli.common import (
    add_json_arg,
    add_measure_args,
    add_target_args,
    add_task_args,
    measure_spec,
    read_target,
    task_kwargs,
    task_options,
)
from rlprune.errors import ConfigError
from rlprune.io import json_default


def add_search_parser(sub) -> None:
    """The ``rlprune search`` verb."""
    p = sub.add_parser(
        "search", help="RL search for per-group ratios against the SPN (online, resumable)",
        description="Train a shared policy (RLlib PPO, one agent per prunable group) against the SPN world model "
                    "at a MACs or params budget. Online (default): every few iterations the best candidates are "
                    "evaluated for real (measured like the samples the SPN learned from: pass the same "
                    "measurement flags) and the SPN is fine-tuned on them. Rerun the same command to resume.",
        epilog="examples:\n  rlprune search --task digits --spn runs/spn.pt --target-macs 0.5 --out runs/search\n"
               "  rlprune search --task digits --spn runs/spn.pt --target-params 0.4 --mode sequential "
               "--iters 40 --no-online --out runs/s2 --json\n"
               "  rlprune search --task digits --spn runs/spn.pt --targets 0.3:0.8 --out runs/cond   # one policy, "
               "every budget\n  rlprune policy apply --policy runs/cond/policy --target 0.45",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_task_args(p, default="digits")
    add_target_args(p, required=False)
    p.add_argument("--targets", metavar="LO:HI",
                   help="train ONE target-conditioned policy for every target in [LO, HI] (each episode draws its "
                        "own); saved as OUT/policy for `rlprune policy apply`. Instead of --target-macs/-params")
    p.add_argument("--budget", choices=["macs", "params"], default="macs",
                   help="what --targets constrains (default macs)")
    p.add_argument("--spn", help="SPN checkpoint from `rlprune spn train` (required unless --reward real)")
    p.add_argument("--reward", default="spn", choices=["spn", "real"],
                   help="accuracy term: the SPN (default) or real evaluation every episode (AMC-style, slow)")
    p.add_argument("--out", required=True, help="folder for checkpoints and result.json (rerun to resume)")
    p.add_argument("--iters", type=int, default=20, help="training iterations in total (default 20)")
    p.add_argument("--train-batch", type=int, default=256, help="env steps per iteration (default 256)")
    p.add_argument("--mode", default="simultaneous", choices=["simultaneous", "sequential"])
    p.add_argument("--enforce", default="wall", choices=["wall", "penalty"], help="budget enforcement")
    p.add_argument("--attention", action="store_true", help="agents attend over every group's features")
    p.add_argument("--online", action=argparse.BooleanOptionalAction, default=True,
                   help="evaluate top candidates for real and fine-tune the SPN during the search")
    p.add_argument("--online-every", type=int, default=5, help="iterations between online rounds")
    p.add_argument("--online-top", type=int, default=4, help="candidates evaluated for real per round")
    p.add_argument("--w-acc", type=float, default=1.0, help="reward weight per accuracy point")
    p.add_argument("--w-cost", type=float, default=10.0, help="reward weight of the compression")
    p.add_argument("--w-violation", type=float, default=100.0, help="reward weight of a target violation")
    add_measure_args(p, final=False)
    add_json_arg(p, "the result as JSON")


def cmd_search(args) -> int:
    """Run ``rlprune search``."""
    from rlprune.search.rl import SearchConfig, run_search

    target, budget = search_target(args)
    cfg = SearchConfig(
        spn=args.spn, out=args.out, task=args.task, reward=args.reward,
        task_kwargs=task_options(args),  # the search adds its seed
        target=target, budget=budget, mode=args.mode, enforce=args.enforce, iters=args.iters,
        train_batch=args.train_batch, attention=args.attention, w_acc=args.w_acc, w_cost=args.w_cost,
        w_violation=args.w_violation, online=args.online and args.reward == "spn",
        online_every=args.online_every, online_top=args.online_top, seed=args.seed, measure=measure_spec(args),
    )
    result = run_search(cfg, progress=not args.json)
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "top"}, indent=2, default=json_default))
    elif result["conditioned"]:
        print(f"one policy for {budget} targets {target[0]:g}..{target[1]:g}; best found per target bin:")
        print(f"{'targets':<13} {'macs':>6} {'params':>7} {'drop':>6}  ratios")
        for b in result["per_target"]:
            span = f"{b['target_lo']:.3f}-{b['target_hi']:.3f}"
            if b["ratios"] is None:
                print(f"{span:<13} (nothing found yet)")
                continue
            print(f"{span:<13} {b['macs_ratio']:>6.3f} {b['params_ratio']:>7.3f} {b['predicted_acc_drop']:>6.2f}  "
                  f"{' '.join(f'{r:.2f}' for r in b['ratios'])}")
        print(f"{result['iterations']} iterations, {result['wall_s']:.1f} s, {result['spn_calls']} SPN calls, "
              f"{result['real_evals']} real evaluations")
        print(f"policy: {result['policy']}  (rlprune policy apply --policy {result['policy']} --target "
              f"{(target[0] + target[1]) / 2:g})")
    else:
        print(f"best ratios: {' '.join(f'{r:.3f}' for r in result['ratios'])}")
        print(f"MACs {result['macs_ratio']:.3f}, params {result['params_ratio']:.3f} of base; predicted drop "
              f"{result['predicted_acc_drop']:.2f} points; {result['iterations']} iterations, "
              f"{result['wall_s']:.1f} s; SPN fine-tuned {len(result['online_rounds'])} times")
        print(f"checkpoint: {result['checkpoint']}")
    return 0


def search_target(args) -> tuple[float | tuple[float, float], str]:
    """``(target or (lo, hi), budget)`` from ``--targets LO:HI [--budget]`` or ``--target-macs/-params``.

    Raises:
        ConfigError: both forms, neither, or a range that does not parse or is empty.
    """
    if args.targets is None:
        return read_target(args)
    if args.target_macs is not None or args.target_params is not None:
        raise ConfigError("give either --targets LO:HI (one policy for a range, with --budget) or "
                          "--target-macs/--target-params (one target), not both")
    try:
        lo, hi = (float(x) for x in args.targets.split(":"))
    except ValueError as e:
        raise ConfigError(f"--targets {args.targets!r} must be LO:HI, e.g. 0.3:0.8") from e
    if not 0 < lo < hi <= 1:
        raise ConfigError(f"--targets {args.targets} must satisfy 0 < LO < HI <= 1, e.g. 0.3:0.8")
    return (lo, hi), args.budget


def add_baselines_parser(sub) -> None:
    """The ``rlprune baselines`` verb."""
    p = sub.add_parser(
        "baselines", help="every baseline at one budget, measured for real",
        description="Handcrafted rules (uniform, larger-group, depth), global L1 magnitude pruning and, with "
                    "--spn, random search and CEM against the SPN, all held to the same MACs (or params) "
                    "budget by the exact cost model; each is pruned for real, BatchNorm-recalibrated, "
                    "fine-tuned the same and scored on the validation and test splits (test accuracy with a "
                    "95% bootstrap interval).",
        epilog="examples:\n  rlprune baselines --task digits --target-macs 0.5\n"
               "  rlprune baselines --task digits --target-params 0.4 --spn runs/spn.pt --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_task_args(p)
    add_target_args(p)
    p.add_argument("--spn", help="SPN checkpoint: adds random search and CEM against it")
    p.add_argument("--n-calls", type=int, default=2048, help="SPN calls per search baseline (default 2048)")
    add_measure_args(p)
    add_json_arg(p, "JSON")


def cmd_baselines(args) -> int:
    """Run ``rlprune baselines``."""
    from rlprune.search.baselines import measure_baselines
    from rlprune.tasks import get_task

    target, budget = read_target(args)
    if args.n_calls < 1:
        raise ConfigError(f"--n-calls {args.n_calls} must be >= 1")
    spec = measure_spec(args, finetune_steps=0)  # BN recalibration only, unless asked
    task = get_task(args.task, **task_kwargs(args))
    space = spec.task_space(task)
    rows = measure_baselines(task, space, target, spec, budget, args.spn, args.n_calls, args.seed,
                             progress=lambda m: print(f"measuring {m} ...", file=sys.stderr))
    if args.json:
        print(json.dumps([{**r, "target": target, "budget": budget} for r in rows], indent=2))
        return 0
    print(f"{'method':<14} {'macs':>6} {'params':>7} {'acc':>7} {'drop':>6}  ratios")
    for r in rows:
        print(f"{r['method']:<14} {r['macs_ratio']:>6.3f} {r['params_ratio']:>7.3f} {r['acc']:>7.2f} "
              f"{r['acc_drop']:>6.2f}  {' '.join(f'{x:.2f}' for x in r['ratios'])}")
    return 0


__all__ = ["add_baselines_parser", "add_search_parser", "cmd_baselines", "cmd_search", "search_target"]
