"""The ``rlprune quantize`` verb: per-layer weight bits at a size budget (rules, RL, QAT, export)."""

from __future__ import annotations

import argparse

from rlprune.cli.common import add_json_arg, add_task_args, emit, task_options
from rlprune.errors import ConfigError
from rlprune.quant.size import validate_bits

EPILOG = """what it does:
  1. the fp32 model: the task's base model, or --pruned DIR (the --out folder of `rlprune prune` / `rlprune run`)
  2. a one-shot sensitivity scan (each layer alone at 2 bits, calibration split) and the rules at the budget:
     uniform8 / uniform6 / uniform4 (fitted down to the budget) and sensitivity (HAQ-style greedy)
  3. --samples measured (bits -> accuracy drop) samples (a Tune experiment of --workers trials into
     DIR/bits_samples; rerunning measures only what is missing) and a world model on three quarters: the SPN's
     transformer, one token per layer (default), or --world-model mlp; both kinds' held-out Spearman/MAE shown
  4. an RL search: one agent per conv/linear layer, shared PPO policy, the wall on size_ratio; after each
     iteration its --online-top best vectors are measured for real and its world model is refined on them;
     then random search and CEM on the same world model with as many world-model calls and real
     evaluations (in as many rounds) as the RL search counted, each refining a world model of its own
  5. every candidate fine-tuned --qat-steps steps with fake-quantized weights (QAT), scored on validation
     (which chooses the winner) and test (which reports, with a 95% bootstrap interval)
  6. the winner saved as DIR/quantized_model.pt (integer weights + scales; rlprune.load_quantized(DIR))
     and everything in DIR/summary.json

size_ratio = stored size / fp32 size, counting packed weights at their bits, one float32 scale per output
channel and every other parameter (biases, BatchNorm) at 32 bits. Activations stay fp32.

examples:
  rlprune quantize --task digits --target-size 0.125 --out runs/q
  rlprune quantize --task digits --pruned runs/p1 --target-size 0.15 --out runs/pq --json
  rlprune quantize --task digits --target-size 0.2 --bits 8,4,4,4,4,4,4,4,4,8 --out runs/q2
  rlprune quantize --task fashion-mnist --arch resnet20 --target-size 0.125 --out runs/q-fm
"""


def add_quantize_parser(sub) -> None:
    """Add the ``quantize`` verb to the CLI's subparsers."""
    p = sub.add_parser(
        "quantize", help="choose per-layer weight bits (2-8) at a size budget: rules, RL, QAT, export",
        description="Choose a weight bit width (2..8) for every conv/linear layer of a trained (optionally pruned) "
                    "model so its stored size is at most --target-size of the fp32 model, with baselines and an "
                    "RL search compared after the same quantization-aware fine-tune.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_task_args(p, default="digits")
    p.add_argument("--pruned", metavar="DIR", help="folder with pruned_model.pt from `rlprune prune --out` or "
                                                   "`rlprune run` (default: the task's unpruned base model)")
    p.add_argument("--target-size", type=float, required=True, metavar="R",
                   help="stored size relative to fp32, in (0, 1]; 0.125 is about 4 bits per weight")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for quantized_model.pt and summary.json")
    p.add_argument("--bits", help="your own bit vector, one integer in 2..8 per conv/linear layer, comma separated; "
                                  "validated as one more candidate ('given')")
    p.add_argument("--samples", type=int, default=64, help="measured samples for the world model (default 64)")
    p.add_argument("--rl-iters", type=int, default=3, help="PPO iterations of the RL search (default 3)")
    p.add_argument("--rl-batch", type=int, default=64, help="episodes per PPO iteration (default 64)")
    p.add_argument("--workers", type=int, default=2,
                   help="Tune trials measuring the samples into OUT/bits_samples, one CPU each (default 2; a rerun "
                        "measures only what is missing); 0: in this process, nothing stored")
    p.add_argument("--online-top", type=int, default=2, metavar="K",
                   help="vectors measured for real after each RL iteration to refine the world model (default 2; "
                        "0: offline)")
    p.add_argument("--world-model", choices=("spn", "mlp"), default="spn",
                   help="the searches' (bits -> drop) model: the SPN's transformer (default) or a small MLP")
    p.add_argument("--qat-steps", type=int, default=100,
                   help="quantization-aware fine-tune steps, the same for every candidate (default 100)")
    add_json_arg(p, "the summary as one JSON object instead of a table")


def parse_bits(text: str | None) -> tuple[int, ...] | None:
    """``"8,4,4"`` -> ``(8, 4, 4)``; the length is checked against the model later.

    Raises:
        ConfigError: an entry that is not a number, NaN, a fraction or outside 2..8 (names it and its layer).
    """
    if text is None:
        return None
    out = []
    for item in text.split(","):
        try:
            value = float(item)
        except ValueError as e:
            raise ConfigError(f"--bits entry {item.strip()!r} is not a number; pass integers in 2..8 separated by "
                              "commas, one per conv/linear layer") from e
        out.append(value)
    return tuple(int(v) for v in validate_bits(out, len(out)))  # the range now; the length once the model is known


def cmd_quantize(args) -> int:
    from rlprune.quant.pipeline import QuantizeConfig, run_quantize

    cfg = QuantizeConfig(task=args.task, task_kwargs=task_options(args), target=args.target_size, out=args.out,
                         pruned=args.pruned, seed=args.seed,
                         samples=args.samples, rl_iters=args.rl_iters, rl_batch=args.rl_batch,
                         qat_steps=args.qat_steps, bits=parse_bits(args.bits), world_model=args.world_model,
                         workers=args.workers, online_top=args.online_top)
    summary = run_quantize(cfg, log=(lambda line: None) if args.json else print, progress=not args.json)
    fp32 = summary["fp32"]
    lines = ["", f"{'method':<12} {'size_ratio':>10} {'val':>7} {'test':>7} {'95% CI':>15}  bits per layer",
             f"{'fp32':<12} {1.0:>10.4f} {fp32['val_acc']:>7.2f} {fp32['acc']:>7.2f} {'':>15}  32 everywhere"]
    for name, row in summary["methods"].items():
        lo, hi = row.get("acc_ci", (float("nan"), float("nan")))
        mark = "*" if name == summary["winner"] else " "
        lines.append(f"{name + mark:<12} {row['size_ratio']:>10.4f} {row['val_acc']:>7.2f} {row['acc']:>7.2f} "
                     f"[{lo:6.2f},{hi:6.2f}]  {','.join(map(str, row['bits']))}")
    wm = summary["world_model"]
    lines += ["", f"* winner (best validation accuracy within the target {summary['target']:g}); "
                  f"QAT {summary['config']['qat_steps']} steps each; activations fp32",
              f"world model ({wm['kind']}) held-out: Spearman {wm['spearman']:.3f}, MAE {wm['mae']:.2f} points "
              f"(n={wm['n']}); {summary['rl']['real_evals']} real evaluations per search in "
              f"{summary['rl']['online_rounds']} online rounds",
              f"saved {summary['model']} (rlprune.load_quantized) and {args.out}/summary.json"]
    slim = {**summary, "methods": {k: {kk: vv for kk, vv in v.items() if kk != "correct"}
                                   for k, v in summary["methods"].items()}}
    emit(args, slim, lines)
    return 0


__all__ = ["add_quantize_parser", "cmd_quantize", "parse_bits"]
