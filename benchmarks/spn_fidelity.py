"""SPN fidelity: how well transformer, mlp and linear SPNs predict real accuracy drops, and rank vectors of one budget.

How to run:
    python benchmarks/spn_fidelity.py --quick     # digits, ~1 min: 16/32 samples, 1 seed (+ ~30 s for 104 samples)
    python benchmarks/spn_fidelity.py             # digits, ~6 min (+ ~5-10 min to generate 976 samples once)
    python benchmarks/spn_fidelity.py --task fashion-mnist --arch resnet56 --work ~/bench/spn-fm56   # hours; the
        # task's label (fashion-mnist: k=25, from the label-fidelity study); --label-steps 0 for adaptive-BN labels

The real workload (``--task fashion-mnist --arch resnet56``, transfer source ``--source-arch``, default
resnet20; committed base models, data in /usr/share/datasets/fashion-mnist) takes hours on 2 cores and resumes:
samples go into a store a rerun only extends, each within-budget vector's row is kept in ``--work``, and with
``--keep-rows benchmarks/results/raw/spn_fidelity_<workload>`` both are copied there every few minutes (the store to
``samples/``, the rows to ``within/``) and restored from there by a run on a fresh machine. Any store of samples of
the same base model and label counts (a quality seed's kept ``samples/`` copied in saves their hours). On 2 idle
cores a ResNet-56 sample (5,000 calibration images) costs ~6 s, a ResNet-20 one ~2-3 s, each label step ~0.6-0.9 s
more; a 100-step validation fine-tune ~60-90 s. With k=0 labels: 712 ResNet-56 samples ~70 min, 512 ResNet-20
ones ~20-25 min, 48 within-budget vectors (fine-tune, validation score, k=0 label) ~60-80 min, SPN fits (3 seeds
x 4 sizes x 3 architectures on 30 groups, and the transfer) ~20-40 min: ~3-4 h; k=25 labels add ~4 h of samples.
``--quick`` on another task scores labels on 1,024 calibration images (``eval_batches`` 8) and fine-tunes finals
10 steps: ~3 min on ResNet-20 (twice that on a loaded machine), a smoke run, not a figure.

What it measures (on held-out real samples; a label is the calibration-split accuracy after BN recalibration
and ``--label-steps`` fine-tune steps, ``MeasureSpec.label_steps``; default the task's, as ``rlprune run`` has it,
0 with ``--quick``):
- learning curve: each architecture trained on 64/128/256/512 samples (digits: the ResNet-8; another task:
  ``--arch``), scored on a fixed held-out set: MAE and RMSE (points), Spearman rho, R^2, mean ensemble std,
  and MAE over the held-out samples that lost at most 10 points (where a search at a sensible budget picks);
- transfer: a transformer trained on a source model scores a target it never saw, zero-shot and fine-tuned on
  64 target samples (``rlprune.spn.train.finetune``, replaying the source's), against mlp / linear / transformer
  trained from scratch on those 64, all on the same held-out target samples. Digits: the ResNet-8 to a digits
  VGG; another task: ``--source-arch`` to ``--arch`` (the curve's held-out samples, never trained on: with
  ``--source-arch`` equal to ``--arch`` the section only runs its code path);
- within budget (``spn_within_budget.py``; by default on tasks other than digits): ``--final-vectors`` vectors
  per MACs target 0.3 / 0.5 / 0.7, drawn and projected as ``label_fidelity.py`` draws them, each measured with
  the validation recipe (final accuracy after the ``finetune_steps`` fine-tune, validation split) and with
  adaptive BN (the k=0 label); the curve's largest transformer (-predicted drop, per SPN seed) and adaptive-BN
  accuracy are each ranked against the final accuracy within every target (Spearman, 95% bootstrap interval
  over vectors): what a search must get right, since a drop before fine-tuning need not rank like accuracy after.

On digits (2 shared cores) the transformer beats mlp and linear at every size; at 512 samples Spearman ~0.98,
MAE ~3.4 points; zero-shot it ranks the VGG's samples well (rho ~0.92) but misjudges their level (MAE ~20),
64 samples bring it to ~3.7. Targets (reported, not asserted): transformer Spearman >= 0.9 and MAE <= 3 points
with <= 512 samples. Samples come from ``rlprune.samples.generator.SampleGenerator`` (mixed sampler), kept per
model and label spec in ``--store`` (default ``$RLPRUNE_CACHE/benchmarks/spn_fidelity``).

Writes ``spn_fidelity[_<task>_<arch>][_quick].csv`` and ``.md`` into ``--results-dir`` (curve, transfer and
within-budget rows), ``spn_points[...]`` (seed 0's largest transformer on the held-out samples: ``real_drop``,
``predicted_drop``, ``macs_ratio``, for ``benchmarks/plots.py``) and ``spn_within_budget[...]`` (one row per
vector). A full run merges ``spn_spearman_at_512``, ``spn_mae_at_512``, ``spn_transfer_spearman_after_64``
against ``spn_scratch_spearman_after_64``, ``spn_within_budget_spearman_at_512`` (seed 0's SPN, the points'
one; ``_seeds``: every seed's) and ``adaptive_bn_within_budget_spearman`` (with ``_ci``) and ``spn_label_steps``
into summary.json (fashion-mnist/resnet56) or ``summary_<workload>.json``.
"""

from __future__ import annotations

import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import common
import label_fidelity
import numpy as np
import pandas as pd
import record
import spn_within_budget as within_budget
import torch

from rlprune.measure.spec import MeasureSpec
from rlprune.models import vgg_small
from rlprune.samples.generator import SampleGenerator
from rlprune.samples.spaces import read_spaces
from rlprune.samples.store import read_samples
from rlprune.spn.frames import metrics, predict_frame
from rlprune.spn.train import FitConfig, finetune, fit
from rlprune.tasks import DigitsTask, cache_dir

ARCHS = ("transformer", "mlp", "linear")
METRICS = ("mae", "rmse", "spearman", "r2", "mean_std", "mae_low")
LOW_DROP = 10.0
"""``mae_low``: MAE over test samples whose real drop is at most this many points, the region a search
at a sensible budget chooses in (large drops are where samples disagree most and matter least)."""
SOURCE_ARCH = {"fashion-mnist": "resnet20"}
"""``--source-arch``'s default per task (digits transfers to its VGG instead)."""
QUICK_EVAL_BATCHES = 8
"""A quick run on a task other than digits scores each label on this many calibration batches of 128."""
FIELDS = ["section", "arch", "n_train", "seed", *METRICS, "fit_s", "note", "scope", "lo", "hi", "n_vectors",
          "label_steps"]
"""The CSV's columns (then the provenance)."""


class DigitsVGGTask(DigitsTask):
    """Digits with a small VGG (plain conv stack, 7 groups): the architecture the SPN never trains on."""

    name = "digits_vgg"
    description = "digits with vgg_small: the transfer target of the SPN fidelity benchmark"

    def build_model(self):
        """An untrained ``vgg_small`` for 1x32x32 inputs."""
        return vgg_small(num_classes=self.num_classes, in_channels=1)

    @property
    def cache_params(self):
        """The architecture name (part of the base-model cache key)."""
        return {"arch": "vgg_small"}


@dataclass
class Workload:
    """The sample frames one run measures (each a fixed shuffle of its model's samples)."""

    task: object
    """The task of the learning curve's model (and of the within-budget vectors)."""
    curve: pd.DataFrame
    """The curve's samples: the first ``n_test`` are held out."""
    source: pd.DataFrame
    """The transfer source's training pool (never one of the target's held-out samples)."""
    target_test: pd.DataFrame
    """The transfer target's held-out samples."""
    target_pool: pd.DataFrame
    """The transfer target's samples the few-shot SPNs draw from."""
    describe: str
    """The samples, in words (for the markdown)."""
    transfer_title: str
    """The transfer section's heading."""


def ensure_samples(task, store: Path, n: int, seed: int, spec: MeasureSpec | None = None,
                   task_kwargs: dict | None = None) -> tuple[pd.DataFrame, str]:
    """At least ``n`` real samples of ``task``'s base model under ``spec`` in ``store``, generating only the
    missing ones (a killed run resumes: the seeded sampler proposes the stored vectors first and skips them).

    Args:
        task: a task, or a task name built with ``task_kwargs`` (``common.task_of``).
        store: the sample store folder.
        n: samples wanted.
        seed: seeds the sampler.
        spec: how each sample is measured (default ``MeasureSpec()``); only rows of its label are read.
        task_kwargs: keyword arguments for a task given by name (``arch``, ``data_dir``, ``seed``).

    Returns:
        ``(samples, fingerprint)``: every stored sample of that model and label, in a fixed shuffle.

    Raises:
        RlpruneError: an unknown task or missing data (the task's message), or a store of another schema.
    """
    task = common.task_of(task, 0, task_kwargs or {}) if isinstance(task, str) else task
    spec = spec or MeasureSpec()
    gen = SampleGenerator(task, store, spec, worker=f"bench-{task.name}", seed=seed)
    fp = gen.base.fingerprint
    have = len(read_samples(store, fingerprint=fp, measure=spec))
    if have < n:
        t0 = time.perf_counter()
        print(f"generating {n - have} {task.name} samples ({have} cached) ...", file=sys.stderr, flush=True)
        # The replayed draws of the stored vectors count against max_draws: allow for them.
        for progress in gen.run(n - have, max_draws=have + 20 * (n - have) + 100):
            print(f"  {have + progress['n_new']}/{n} ({progress['samples_per_s']:.2f}/s)", end="\r",
                  file=sys.stderr, flush=True)
        print(f"\n  done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    df = read_samples(store, fingerprint=fp, measure=spec)
    return df.sample(frac=1.0, random_state=0).reset_index(drop=True), fp  # a fixed shuffle


def digits_workload(store: Path, spec: MeasureSpec, n_curve: int, n_test: int, n_vgg_test: int, n_few: int,
                    model_seed: int = 0) -> Workload:
    """The digits ResNet-8's samples (curve, transfer source) and the digits VGG's (transfer target)."""
    digits, vgg = DigitsTask(seed=model_seed), DigitsVGGTask(seed=model_seed)
    df, _ = ensure_samples(digits, store, n_curve, seed=1, spec=spec)
    vdf, _ = ensure_samples(vgg, store, n_vgg_test + n_few, seed=2, spec=spec)
    return Workload(digits, df, df.iloc[n_test:], vdf.iloc[:n_vgg_test], vdf.iloc[n_vgg_test:],
                    f"{len(df)} ResNet-8 samples ({n_test} held out), {len(vdf)} VGG samples",
                    "Transfer to the digits VGG (never seen in training)")


def task_workload(args, kw: dict, label: str, store: Path, spec: MeasureSpec, n_curve: int, n_test: int,
                  n_source: int) -> Workload:
    """``--arch``'s samples (curve and transfer target, one held-out set) and ``--source-arch``'s (source)."""
    source_label = f"{args.task}/{args.source_arch}"
    task = common.task_of(args.task, 0, kw)
    df, _ = ensure_samples(task, store, n_curve, seed=1, spec=spec)
    test = df.iloc[:n_test]
    sdf, _ = ensure_samples(args.task, store, n_source, seed=2, spec=spec, task_kwargs={**kw, "arch": args.source_arch})
    source = sdf[~sdf["sample_id"].isin(test["sample_id"])]  # never train on a held-out sample
    return Workload(task, df, source, test, df.iloc[n_test:],
                    f"{len(df)} {label} samples ({n_test} held out), {len(source)} {source_label} samples "
                    f"(transfer source)", f"Transfer from {source_label} to {label}")


def row(section: str, arch: str, n_train: int, seed: int, m: dict, **extra) -> dict:
    """One CSV row: where it comes from, the rounded metrics and any extra columns."""
    out = {"section": section, "arch": arch, "n_train": n_train, "seed": seed}
    out.update({k: round(float(m[k]), 4) for k in METRICS if k in m})
    out.update(extra)
    return out


def score(spn, test, spaces=None) -> dict:
    """Held-out metrics of ``spn`` on ``test`` (see ``rlprune.spn.frames.metrics``) plus ``mean_std``, ``mae_low``."""
    mean, std = predict_frame(spn, test, spaces)
    y = test["acc_drop"].to_numpy()
    low = y <= LOW_DROP
    return {**metrics(y, mean), "mean_std": float(std.mean()),
            "mae_low": float(np.abs(mean - y)[low].mean()) if low.any() else float("nan")}


def learning_curve(df, spaces, sizes, n_test, seeds) -> tuple[list[dict], dict]:
    """Every architecture trained on ``sizes`` samples per seed, scored on the first ``n_test`` rows.

    Returns:
        ``(rows, largest)``: the CSV rows, and per seed the transformer trained on the most samples.
    """
    test, pool = df.iloc[:n_test], df.iloc[n_test:]
    rows, largest = [], {}
    for seed in seeds:
        order = pool.sample(frac=1.0, random_state=seed)
        for n in sizes:
            for arch in ARCHS:
                t0 = time.perf_counter()
                spn = _fit(arch, order.iloc[:n], spaces, seed)
                rows.append(row("curve", arch, n, seed, score(spn, test), fit_s=round(time.perf_counter() - t0, 1)))
                print(_fmt(rows[-1]), file=sys.stderr, flush=True)
                if arch == "transformer" and n == max(sizes):
                    largest[seed] = spn
    return rows, largest


def _fit(arch, df, spaces, seed):
    return fit(arch, df, spaces, FitConfig(seed=seed))


def transfer(src_df, test, few_pool, spaces, n_src, n_few, seeds, steps) -> list[dict]:
    """The source-trained transformer on the target's held-out ``test``: zero-shot, after ``n_few`` samples of
    ``few_pool``, and every architecture from scratch on those ``n_few``."""
    rows = []
    for seed in seeds:
        src = src_df.sample(frac=1.0, random_state=seed).iloc[:n_src]
        few = few_pool.sample(frac=1.0, random_state=seed).iloc[:n_few]
        spn = _fit("transformer", src, spaces, seed)
        rows.append(row("transfer", "transformer", 0, seed, score(spn, test, spaces), note="zero-shot"))
        t0 = time.perf_counter()
        tuned = finetune(spn, few, src, steps=steps, spaces=spaces, lr=3e-3, seed=seed)  # as `rlprune spn finetune`
        rows.append(row("transfer", "transformer", n_few, seed, score(tuned, test),
                        note=f"few-shot ({steps} steps, replay)", fit_s=round(time.perf_counter() - t0, 1)))
        for arch in ARCHS:
            rows.append(row("transfer", arch, n_few, seed, score(_fit(arch, few, spaces, seed), test),
                            note="from scratch"))
        for r in rows[-5:]:
            print(_fmt(r), file=sys.stderr, flush=True)
    return rows


def points(spn, test) -> list[dict]:
    """``spn``'s prediction for every held-out sample (the plot's ``spn_points`` rows)."""
    mean, std = predict_frame(spn, test)
    return [{"sample_id": sid, "real_drop": round(float(y), 4), "predicted_drop": round(float(m), 4),
             "predicted_std": round(float(s), 4), "macs_ratio": round(float(c), 6)}
            for sid, y, m, s, c in zip(test["sample_id"], test["acc_drop"], mean, std, test["macs_ratio"],
                                       strict=True)]


def _fmt(r: dict) -> str:
    return (f"{r['section']:<8} {r['arch']:<11} n={r['n_train']:<4} seed={r['seed']} mae={r['mae']:.2f} "
            f"rmse={r['rmse']:.2f} rho={r['spearman']:.3f} r2={r['r2']:.3f} {r.get('note', '')}")


def _mean_sd(values) -> str:
    vals = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.3g}"
    return f"{statistics.mean(vals):.3g} ± {statistics.stdev(vals):.2g}"


def markdown(rows, quick: bool, meta) -> str:
    """Learning-curve and transfer tables (mean ± sd over seeds) and the target lines."""
    df = pd.DataFrame(rows)
    lines = [f"# SPN fidelity ({meta['label']}, {'quick' if quick else 'full'})", "",
             f"{meta['describe']}; labels after {meta['label_steps']} fine-tune steps; seeds {meta['seeds']}; "
             f"mean ± sd over seeds. {record.stamp()}.", "",
             "## Learning curve (held-out acc_drop, points)", "",
             f"MAE low: MAE over test samples whose real drop is <= {LOW_DROP:g} points.", "",
             "| arch | n_train | MAE | RMSE | Spearman | R^2 | mean std | MAE low |",
             "|---|---|---|---|---|---|---|---|"]
    curve = df[df.section == "curve"]
    for (n, arch), g in sorted(curve.groupby(["n_train", "arch"]), key=lambda kv: (kv[0][0], ARCHS.index(kv[0][1]))):
        lines.append(f"| {arch} | {int(n)} | " + " | ".join(_mean_sd(g[k].tolist()) for k in METRICS) + " |")
    lines += ["", f"## {meta['transfer_title']}", "",
              "| arch | n target samples | how | MAE | RMSE | Spearman | R^2 | mean std | MAE low |",
              "|---|---|---|---|---|---|---|---|---|"]
    tr = df[df.section == "transfer"]
    for (note, arch, n), g in tr.groupby(["note", "arch", "n_train"], sort=False):
        lines.append(f"| {arch} | {int(n)} | {note} | " + " | ".join(_mean_sd(g[k].tolist()) for k in METRICS) + " |")
    fig = figures(rows)
    n = int(curve.n_train.max())
    lines += ["", *(meta["within"] + [""] if "within" in meta else []), "## Targets", "",
              f"- transformer Spearman at {n} samples: {fig['spearman']:.3f} (target >= 0.9 at <= 512 samples: "
              f"{common.met(fig['spearman'] >= 0.9)})",
              f"- transformer MAE at {n} samples: {fig['mae']:.2f} points (target <= 3: {common.met(fig['mae'] <= 3)})"]
    return "\n".join(lines) + "\n"


def figures(rows) -> dict:
    """Headline figures: the transformer's mean Spearman and MAE at the largest size, and its transfer."""
    df = pd.DataFrame(rows)
    curve = df[(df.section == "curve") & (df.arch == "transformer")]
    best = curve[curve.n_train == curve.n_train.max()]
    tr = df[(df.section == "transfer") & (df.arch == "transformer")]
    zero, few = tr[tr.n_train == 0], tr[(tr.n_train > 0) & tr.note.str.startswith("few-shot")]
    scratch = tr[(tr.n_train > 0) & tr.note.str.startswith("from scratch")]
    return {"spearman": float(best.spearman.mean()), "mae": float(best.mae.mean()),
            "zero_shot_spearman": float(zero.spearman.mean()), "zero_shot_mae": float(zero.mae.mean()),
            "few_shot_mae": float(few.mae.mean()), "few_shot_spearman": float(few.spearman.mean()),
            "scratch_spearman": float(scratch.spearman.mean()), "few_shot_n": int(few.n_train.max())}


def headline(rows: list[dict]) -> dict:
    """The summary.json figures: the transformer at the largest size, its transfer (after the few-shot
    fine-tune, against one trained on those samples alone), the within-budget Spearman and the label's k."""
    f = figures(rows)
    n, k = int(max(r["n_train"] for r in rows if r["section"] == "curve")), f["few_shot_n"]
    out = {f"spn_spearman_at_{n}": round(f["spearman"], 4), f"spn_mae_at_{n}": round(f["mae"], 3),
           "spn_transfer_zero_shot_spearman": round(f["zero_shot_spearman"], 4),
           "spn_transfer_zero_shot_mae": round(f["zero_shot_mae"], 3),
           f"spn_transfer_mae_after_{k}": round(f["few_shot_mae"], 3),
           f"spn_transfer_spearman_after_{k}": round(f["few_shot_spearman"], 4),
           f"spn_scratch_spearman_after_{k}": round(f["scratch_spearman"], 4),
           **within_budget.headline(rows)}
    steps = {r.get("label_steps") for r in rows} - {None}
    if len(steps) == 1:
        out["spn_label_steps"] = int(next(iter(steps)))
    return out


def _parser():
    p = common.parser(__doc__)
    common.add_task_args(p)
    p.add_argument("--store", type=Path, default=None,
                   help="sample store to use/extend (default $RLPRUNE_CACHE/benchmarks/spn_fidelity)")
    p.add_argument("--source-arch", help="the transfer source's architecture on a task other than digits (default "
                                         + ", ".join(f"{a} on {t}" for t, a in SOURCE_ARCH.items()) + ")")
    common.add_label_arg(p)  # --label-steps; --quick uses 0 unless given (a smoke run)
    p.add_argument("--final-vectors", type=int, metavar="N",
                   help="within-budget vectors per MACs target (default 16, quick 3; 0 on digits unless given)")
    p.add_argument("--work", type=Path, help="keep each finished within-budget vector's row here; rerunning with "
                                             "it resumes (default: a temporary folder, deleted at the end)")
    common.add_keep_rows_arg(p)
    return p


def main(argv=None) -> None:
    """Generate (or reuse) the samples, run the curve, the transfer and the within-budget section, write tables."""
    p = _parser()
    args = p.parse_args(argv)
    kw, label = common.task_choice(args)  # a missing data folder fails now, with the task's message
    digits = args.task == "digits"
    if digits and args.source_arch:
        p.error("--source-arch is for tasks other than digits (digits transfers to its VGG)")
    args.source_arch = args.source_arch or SOURCE_ARCH.get(args.task)
    if not digits and not args.source_arch:
        p.error(f"name the transfer source with --source-arch (no default for {args.task})")
    # One intra-op thread: the SPN runs single-threaded anyway, and sample generation on a shared 2-core
    # machine is several times faster without two threads spinning against other processes.
    torch.set_num_threads(1)
    q = args.quick
    sizes = (16, 32) if q else (64, 128, 256, 512)
    seeds = (0,) if q else (0, 1, 2)
    n_test, n_vgg_test, n_few = ((32, 24, 16) if digits else (24, 24, 16)) if q else (200, 200, 64)
    n_final = args.final_vectors if args.final_vectors is not None else 0 if digits else 3 if q else 16
    spec = common.label_spec(args.task, 0 if q and args.label_steps is None else args.label_steps,
                             finetune_steps=10 if q else MeasureSpec().finetune_steps,
                             eval_batches=QUICK_EVAL_BATCHES if q and not digits else None)
    args.label_steps = spec.label_steps  # the rows and the header say which label was measured
    store = args.store or cache_dir() / "benchmarks" / "spn_fidelity"
    if args.keep_rows and not args.work:
        p.error("--keep-rows needs --work: it keeps the store and --work's within-budget rows")
    kept = [(store, args.keep_rows / "samples", common.STORE_FILES),
            (args.work, args.keep_rows / "within", label_fidelity.ROW_FILES)] if args.keep_rows else []
    # Only the measuring needs keeping: the fits and tables below are minutes and are redone by any rerun.
    with common.keeping(kept), tempfile.TemporaryDirectory() as tmp:
        n_curve = n_test + max(sizes)
        wl = (digits_workload(store, spec, n_curve, n_test, n_vgg_test, n_few, kw.get("seed", 0)) if digits
              else task_workload(args, kw, label, store, spec, n_curve, n_test, max(sizes)))
        vectors, read = (within_budget.measure(wl.task, label, spec, n_final, 0, args.work or Path(tmp))
                         if n_final else ([], 0))
    spaces = read_spaces(store)
    rows, largest = learning_curve(wl.curve, spaces, sizes, n_test, seeds)
    rows += transfer(wl.source, wl.target_test, wl.target_pool, spaces, max(sizes), n_few, seeds,
                     steps=100 if q else 300)
    meta = {"label": label, "describe": wl.describe, "label_steps": args.label_steps, "seeds": list(seeds),
            "transfer_title": wl.transfer_title}
    if vectors:
        rows += within_budget.within_rows(vectors, largest, max(sizes))
        meta["within"] = within_budget.markdown(vectors, [r for r in rows if r["section"] == "within"], read)
        record.write_csv(args.results_dir, record.stem(record.result_name("spn_within_budget", label), q),
                         within_budget.vector_rows(vectors, largest[0]), within_budget.FIELDS)
    rows = [{**r, "label_steps": args.label_steps} for r in rows]
    record.write_csv(args.results_dir, record.stem(record.result_name("spn_points", label), q),
                     points(largest[0], wl.curve.iloc[:n_test]))
    record.write_results(args.results_dir, record.stem(record.result_name("spn_fidelity", label), q), rows,
                         markdown(rows, q, meta), FIELDS)
    if not q:
        record.update_summary(args.results_dir, headline(rows), "spn_fidelity", label=label)

if __name__ == "__main__":
    common.main_guard(main)
