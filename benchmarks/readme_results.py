"""The README's headline table, rendered from ``benchmarks/results/summary.json`` so it can never go stale.

How to run:
    python benchmarks/readme_results.py            # rewrite the block between the README's two markers
    python benchmarks/readme_results.py --check    # exit 1 if the README's block is not summary.json's

What it renders. One line per figure the real-workload benchmarks exist to produce (:data:`FIGURES`, issue 19's
table): its value, its 95% interval where the benchmark measured one (and whether that interval excludes 0, the
only case a difference is called real), the workload and the day its script last wrote it (``workload`` and
``updated`` in summary.json), and the command that produces it. A figure not in summary.json yet says so and
names the command, rather than showing an older number from another workload. Below the table, the plots
``benchmarks/plots.py`` drew for the fashion-mnist results. The narrative around the block (what each figure
shows and why) is written by hand; only the numbers are generated, and the test suite runs ``--check`` so a
summary.json updated without the README fails CI.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from record import HEADLINE_WORKLOAD

from rlprune.measure.stats import excludes_zero

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BEGIN, END = "<!-- results-table:begin (benchmarks/readme_results.py) -->", "<!-- results-table:end -->"

FIGURES: tuple[tuple[str, str, str], ...] = (
    ("spn_vs_real_step_speedup", "search_speed", "env steps/s with the SPN reward / with the real reward"),
    ("end_to_end_speedup", "search_speed", "wall time to equal validation accuracy, AMC-style / SPN pipeline, "
                                           "3-target sweep (median over seeds; range)"),
    ("rl_minus_best_baseline_acc_at_0.3", "quality", "RL minus the best baseline chosen on validation, test "
                                                     "accuracy after the same fine-tune, 30% MACs (points)"),
    ("rl_minus_best_baseline_acc_at_0.5", "quality", "the same at 50% MACs (points)"),
    ("params_removed_ratio_vs_best_rule", "quality", "params removed by RL / by the best rule at equal accuracy "
                                                     "drop"),
    ("spn_spearman_at_512", "spn_fidelity", "SPN Spearman on held-out samples, 512 training samples"),
    ("spn_mae_at_512", "spn_fidelity", "SPN mean absolute error on held-out samples (points)"),
    ("spn_within_budget_spearman_at_512", "spn_fidelity", "SPN Spearman with the final validated accuracy "
                                                          "within one MACs target"),
    ("adaptive_bn_within_budget_spearman", "spn_fidelity", "the same for adaptive-BN accuracy (no training)"),
    ("spn_transfer_spearman_after_64", "spn_fidelity", "SPN from ResNet-20 fine-tuned on 64 target samples"),
    ("spn_scratch_spearman_after_64", "spn_fidelity", "SPN trained on those 64 alone"),
    ("conditioned_minus_per_target_cem_acc", "targets", "one target-conditioned policy minus per-target CEM, "
                                                        "test accuracy (points)"),
    ("unseen_target_answer_s", "targets", "seconds to answer an unseen target"),
    ("quant_rl_minus_best_baseline_acc", "quantize", "bit widths: RL minus the best baseline at size <= 0.125 "
                                                     "(points)"),
    ("quant_acc_drop_vs_fp32", "quantize", "bit widths: accuracy drop of RL's model vs fp32 (points)"),
    ("sample_throughput_2_vs_1", "scaling", "real samples per second, 2 Tune workers / 1"),
    ("cost_model_vectors_per_s", "scaling", "exact cost model, vectors per second"),
)
"""(summary.json key, the script that writes it, what it is)."""


def _number(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int | float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"
    return str(v)


def _row(summary: dict, key: str, script: str, what: str, workloads: dict[str, str]) -> str:
    arch = workloads.get(script, "").split("/")[-1]
    command = f"`python benchmarks/{script}.py --task fashion-mnist --arch {arch}`"
    if key not in summary:
        return f"| {what} | `{key}` | not measured yet | | | | {command} |"
    ci, spread = summary.get(f"{key}_ci"), summary.get(f"{key}_range")
    shown = _number(summary[key]) + (f" (range {_number(spread[0])}-{_number(spread[1])})" if spread else "")
    interval = f"[{_number(ci[0])}, {_number(ci[1])}]" if ci else ""
    real = ("yes" if excludes_zero(*ci) else "no") if ci else ""
    where = summary.get("workload", {}).get(script, "")
    day = str(summary.get("updated", {}).get(script, ""))[:10]
    return f"| {what} | `{key}` | {shown} | {interval} | {real} | {where} {day} | {command} |"


def render(summary: dict, plots: list[str]) -> str:
    """The block's markdown (markers included).

    Args:
        summary: summary.json's content.
        plots: the PNG file names to show (relative to ``benchmarks/results``).

    Returns:
        The block, from :data:`BEGIN` to :data:`END`.
    """
    lines = [BEGIN, "", "| figure | key | value | 95% interval | real? | workload, date | produced by |",
             "|---|---|---|---|---|---|---|"]
    lines += [_row(summary, k, s, w, HEADLINE_WORKLOAD) for k, s, w in FIGURES]
    missing = sum(k not in summary for k, _, _ in FIGURES)
    lines += ["", f"{len(FIGURES) - missing} of {len(FIGURES)} figures measured on the real workload; "
              "`real?`: the paired 95% interval excludes 0.", ""]
    lines += [f"![{Path(p).stem}](benchmarks/results/{p})" for p in plots]
    return "\n".join([*lines, "", END])


def block_of(readme: str) -> str | None:
    """The README's current block (markers included), or None if it has no markers."""
    if BEGIN not in readme or END not in readme:
        return None
    return readme[readme.index(BEGIN):readme.index(END) + len(END)]


def current(results: Path = RESULTS) -> str:
    """:func:`render` of the committed summary.json and the fashion-mnist plots in ``results``."""
    summary = json.loads((results / "summary.json").read_text())
    plots = sorted(p.name for p in results.glob("*fashionmnist*.png"))
    return render(summary, plots)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if the README's block differs; write nothing")
    p.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = p.parse_args(argv)
    text = args.readme.read_text()
    old, new = block_of(text), current()
    if old is None:
        print(f"{args.readme} has no results block; put the two lines\n{BEGIN}\n{END}\nwhere it belongs",
              file=sys.stderr)
        return 1
    if args.check:
        if old != new:
            print(f"{args.readme}'s results table is not summary.json's; run python benchmarks/readme_results.py",
                  file=sys.stderr)
            return 1
        return 0
    if old != new:
        tmp = args.readme.with_suffix(".tmp")
        tmp.write_text(text.replace(old, new))
        tmp.replace(args.readme)
    print(f"{args.readme}: results table {'rewritten' if old != new else 'already current'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
