"""The ``rlprune`` command: every verb's parser and handler, and nothing else.

Every verb has ``--help`` with an example and ``--json`` for machine-readable output. User mistakes
(a bad ratio, an unknown task, a missing data folder) end with one line on stderr naming the value and the
fix, exit status 2, no traceback, and nothing written. The logic lives in the library; these modules only
parse, call and print.
"""

from __future__ import annotations

import argparse
import os
import sys

from rlprune.cli.common import resolve_task
from rlprune.cli.model import add_model_parsers, cmd_groups, cmd_prune, cmd_tasks
from rlprune.cli.policy import add_policy_parser, cmd_policy
from rlprune.cli.quantize import add_quantize_parser, cmd_quantize
from rlprune.cli.run import add_run_parsers, cmd_run, cmd_tune
from rlprune.cli.sample import add_sample_parser, cmd_sample
from rlprune.cli.search import add_baselines_parser, add_search_parser, cmd_baselines, cmd_search
from rlprune.cli.spn import add_spn_parser, cmd_spn
from rlprune.cli.train import add_train_parser, cmd_train
from rlprune.errors import RlpruneError

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
    "train": cmd_train,
    "policy": cmd_policy,
    "quantize": cmd_quantize,
}


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
    add_model_parsers(sub)
    add_train_parser(sub)
    add_run_parsers(sub)
    add_sample_parser(sub)
    add_baselines_parser(sub)
    add_search_parser(sub)
    add_spn_parser(sub)
    add_policy_parser(sub)
    add_quantize_parser(sub)
    return parser


def main(argv=None) -> int:
    """Entry point of the ``rlprune`` console script.

    Returns:
        The exit status: 0 on success, 2 on a user error (one line on stderr).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    # Your modules named by --model/--data/--task specs import from where you run rlprune, as with `python -m`.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        resolve_task(args)
        return COMMANDS[args.verb](args)
    except RlpruneError as e:
        print(f"rlprune {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rlprune: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `rlprune groups ... | head`: the reader left; exit quietly like other Unix tools, and point stdout
        # at devnull so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["COMMANDS", "build_parser", "main"]
