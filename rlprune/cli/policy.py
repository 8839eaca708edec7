"""The ``rlprune policy`` verb: answer a budget with a saved target-conditioned policy (no Ray, no training)."""

from __future__ import annotations

import argparse

from rlprune.cli.common import add_json_arg, emit


def add_policy_parser(sub) -> None:
    """The ``rlprune policy apply`` verb."""
    p = sub.add_parser(
        "policy", help="use a trained policy folder: ratios for any budget in its range, in well under a second",
        description="A search saves its trained policy as a folder (out/policy): the RLModule's weights, the "
                    "pruning space, the exact cost model and the SPN. `policy apply` plays the policy once for "
                    "the target you give (inside the range it was trained on) and prints the ratio vector, its "
                    "exact MACs and params and the SPN's predicted accuracy drop; the vector is projected onto "
                    "the target from below when the policy's own vector misses it, and the output says so.",
        epilog="examples:\n  rlprune search --task digits --spn runs/spn.pt --targets 0.3:0.8 --out runs/cond\n"
               "  rlprune policy apply --policy runs/cond/policy --target 0.45\n"
               "  rlprune policy apply --policy runs/cond/policy --target 0.65 --task digits --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = p.add_subparsers(dest="policy_verb", metavar="ACTION")
    verbs.required = True
    a = verbs.add_parser("apply", help="ratios for one target")
    a.add_argument("--policy", required=True, help="the policy folder (a search's out/policy)")
    a.add_argument("--target", type=float, required=True,
                   help="pruned/original ratio of the budget the policy was trained on (MACs or params), e.g. 0.45")
    a.add_argument("--task", help="check that the policy was trained for this task's base model (fingerprint); "
                                  "builds the task's cached base model")
    a.add_argument("--arch", help="architecture of --task, if it has several")
    a.add_argument("--data-dir", help="data folder of --task, if it reads local data")
    a.add_argument("--seed", type=int, default=0, help="seed of --task's base model (default 0)")
    add_json_arg(a, "the answer as JSON")


def cmd_policy(args) -> int:
    """Run ``rlprune policy apply``."""
    from rlprune.policy import load

    fingerprint = None
    if args.task:
        from rlprune.io import model_fingerprint
        from rlprune.tasks import get_task

        opts = {k: v for k in ("arch", "data_dir") if (v := getattr(args, k, None))}
        fingerprint = model_fingerprint(get_task(args.task, seed=args.seed, **opts).base_model())
    answer = load(args.policy, fingerprint=fingerprint).apply(args.target)
    lines = [
        f"ratios: {' '.join(f'{r:.3f}' for r in answer['ratios'])}",
        f"{answer['budget']} target {answer['target']:g}: MACs {answer['macs_ratio']:.4f} ({answer['macs']:,}), "
        f"params {answer['params_ratio']:.4f} ({answer['params']:,}) of the base model; "
        f"{'meets' if answer['meets_target'] else 'does NOT meet'} the target from below",
        f"predicted accuracy drop (SPN): {answer['predicted_acc_drop']:.2f} points "
        f"(+- {answer['predicted_acc_drop_std']:.2f})",
        f"{'projected: ' if answer['projected'] else ''}{answer['note']}; answered in {answer['apply_s'] * 1e3:.0f} ms",
    ]
    emit(args, answer, lines)
    return 0


__all__ = ["add_policy_parser", "cmd_policy"]
