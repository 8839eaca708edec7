"""The ``rlprune spn`` verb: train, evaluate and fine-tune state predictor networks on a sample store.

Heavy imports (torch, pandas) happen inside the commands so ``rlprune --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from rlprune.errors import ConfigError, SampleStoreError

EPILOG = """examples:
  rlprune sample --task digits --n 640 --out runs/samples
  rlprune spn train --samples runs/samples --task digits --out runs/spn.pt
  rlprune spn train --samples runs/samples --fingerprint 6ffb851f66430c1a --arch mlp --out runs/mlp.pt --json
  rlprune spn train --samples runs/samples --task digits --multi-fidelity --out runs/spn_mf.pt
      (a store holding labels of several fidelities, e.g. `rlprune sample --n 640` plus
       `rlprune sample --n 64 --label-steps 100` into the same --out: one SPN learns both and predicts at
       label_steps 100 by default)
  rlprune spn eval --spn runs/spn.pt --samples runs/samples
  rlprune spn finetune --spn runs/spn.pt --samples runs/other_model --n 64 --out runs/spn_other.pt
"""
METRIC_KEYS = ("mae", "rmse", "spearman", "r2", "mean_std")


def add_spn_parser(sub) -> None:
    """Add the ``spn`` verb (sub-verbs ``train``, ``eval``, ``finetune``) to the CLI's subparsers."""
    p = sub.add_parser(
        "spn", help="train / evaluate / fine-tune the state predictor network (the world model)",
        description="The SPN predicts a pruned model's accuracy drop from its groups and ratios, replacing real "
                    "evaluation during the search. Metrics are on held-out real samples: MAE and RMSE in "
                    "points, Spearman rho, R^2.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ss = p.add_subparsers(dest="spn_verb", metavar="SUBVERB")
    ss.required = True

    t = ss.add_parser("train", help="train an SPN and compare it with the other architectures on the same split",
                      epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_samples_args(t)
    t.add_argument("--arch", default="transformer", choices=("transformer", "mlp", "linear"),
                   help="architecture to save (default transformer); the other two are reported as baselines")
    t.add_argument("--test-frac", type=float, default=0.2, help="held-out share of each model's samples (0.2)")
    t.add_argument("--seed", type=int, default=0, help="seeds the split, init and minibatches (default 0)")
    t.add_argument("--no-baselines", action="store_true", help="skip training the other two architectures")
    t.add_argument("--max-steps", type=int, default=4000, help="optimiser steps at most (early stopping ends "
                                                               "sooner; default 4000)")
    t.add_argument("--out", required=True, help="checkpoint file to write, e.g. runs/spn.pt")

    e = ss.add_parser("eval", help="score a saved SPN on the samples it did not train on")
    e.add_argument("--spn", required=True, help="checkpoint written by `rlprune spn train`")
    _add_samples_args(e)
    e.add_argument("--all", action="store_true", help="also score rows the SPN trained on")

    f = ss.add_parser("finetune", help="adapt an SPN to a model or data set with a few samples (transfer)")
    f.add_argument("--spn", required=True, help="checkpoint to adapt")
    _add_samples_args(f)
    f.add_argument("--n", type=int, default=64, help="samples of the target used for fine-tuning (default 64)")
    f.add_argument("--steps", type=int, default=300, help="optimiser steps (default 300)")
    f.add_argument("--lr", type=float, default=3e-3, help="learning rate (default 3e-3)")
    f.add_argument("--seed", type=int, default=0, help="seeds the choice of the n samples (default 0)")
    f.add_argument("--out", required=True, help="checkpoint file to write")


def _add_samples_args(p) -> None:
    p.add_argument("--samples", required=True, help="sample store folder written by `rlprune sample`")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--task", help="use only this task's samples")
    which.add_argument("--fingerprint", action="append", help="use only this model's samples (repeatable)")
    p.add_argument("--measure-id", help="use only samples measured under this spec (the store's measure_id); "
                                        "needed when the store holds several")
    p.add_argument("--multi-fidelity", action="store_true",
                   help="use the samples of every label fidelity of the spec at once: rows whose measure differs "
                        "only in its fine-tune (label_steps, and its finetune_lr when it has steps), never in "
                        "importance, batches or code. `train` then learns them with the fidelity as an input and "
                        "the SPN predicts at the highest label_steps it saw by default (the final recipe's, when "
                        "its rows are in the store); held-out metrics are also given per fidelity. With "
                        "--measure-id: that spec's fidelities; without: the store must hold one such spec")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def cmd_spn(args) -> int:
    """Run ``rlprune spn SUBVERB``; returns the exit status."""
    return {"train": _train, "eval": _eval, "finetune": _finetune}[args.spn_verb](args)


# ---------------------------------------------------------------------------------------- helpers
def _load(args):
    """(samples frame, space records) of the store, filtered by --task / --fingerprint (and, with
    --multi-fidelity, every fidelity of one spec)."""
    from rlprune.samples.spaces import read_spaces
    from rlprune.samples.store import read_samples

    across = args.multi_fidelity
    measure = _family_id(args) if across and not args.measure_id else args.measure_id
    df = read_samples(args.samples, task=args.task, measure=measure, across_fidelities=across)
    if args.fingerprint:
        df = df[df["model_fingerprint"].isin(args.fingerprint)].reset_index(drop=True)
    if df.empty:
        which = f" for task {args.task}" if args.task else f" for {args.fingerprint}" if args.fingerprint else ""
        raise SampleStoreError(f"no samples{which} in {args.samples}; generate some with "
                               f"`rlprune sample --task digits --n 640 --out {args.samples}`")
    ids = df["measure_id"].value_counts()
    if len(ids) > 1 and not across:  # labels measured differently are different targets: never learn them as one
        raise ConfigError(f"{args.samples} holds samples of {len(ids)} measurement specs "
                          f"({', '.join(f'{i}: {n} rows' for i, n in ids.items())}); pick one with --measure-id, "
                          f"or learn labels that differ only in label_steps together with --multi-fidelity")
    # Group features do not depend on the label, so any fidelity's space record describes the model.
    return df, read_spaces(args.samples, None if across else args.measure_id)


def _family_id(args) -> str | None:
    """A measure id of the store's one spec family (its highest fidelity's, which names the fine-tune rate)."""
    from rlprune.samples.store import fidelity_family, read_samples
    from rlprune.spn.frames import row_fidelities

    df = read_samples(args.samples, task=args.task)
    if args.fingerprint:
        df = df[df["model_fingerprint"].isin(args.fingerprint)]
    if df.empty:
        return None
    labels = df.drop_duplicates("measure_id").copy()
    labels["family"] = labels["measure"].map(fidelity_family)
    labels["k"] = row_fidelities(labels)
    if labels["family"].nunique() > 1:
        raise ConfigError(f"{args.samples} holds samples of {labels['family'].nunique()} specs that differ in more "
                          f"than their fidelity (measure ids {', '.join(labels['measure_id'])}); pick one with "
                          f"--measure-id (any fidelity of it)")
    return str(labels.sort_values("k")["measure_id"].iloc[-1])


def _check_out(out: str) -> Path:
    path = Path(out)
    if path.is_dir():
        raise ConfigError(f"--out {path} is a folder; pass a checkpoint file name such as {path / 'spn.pt'}")
    return path


def _clean(obj):
    """JSON-safe copy: NaN (undefined Spearman/R^2) becomes null."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _emit(args, obj: dict, lines: list[str]) -> None:
    print(json.dumps(_clean(obj), indent=2) if args.json else "\n".join(lines))


def _metric_line(label: str, m: dict) -> str:
    return (f"{label:<24} MAE {m['mae']:6.2f}  RMSE {m['rmse']:6.2f}  Spearman {m['spearman']:6.3f}  "
            f"R^2 {m['r2']:6.3f}  (n={m['n']})")


def _metrics(m: dict) -> dict:
    return {k: m[k] for k in METRIC_KEYS if k in m}


# ---------------------------------------------------------------------------------------- sub-verbs
def _train(args) -> int:
    from rlprune.spn.frames import evaluate
    from rlprune.spn.predictor import save_spn
    from rlprune.spn.train import FitConfig, fit, train_heldout

    out = _check_out(args.out)
    df, spaces = _load(args)
    mf = args.multi_fidelity
    try:
        spn, m, train_df, test_df = train_heldout(args.arch, df, spaces, args.test_frac, args.seed, args.max_steps,
                                                  multi_fidelity=mf)
    except ConfigError as e:
        raise ConfigError(str(e).replace("test_frac", "--test-frac")) from e
    fc = FitConfig(seed=args.seed, max_steps=args.max_steps)
    n_models = df["model_fingerprint"].nunique()
    save_spn(spn, out)
    result = {"arch": args.arch, "n_train": len(train_df), "n_test": len(test_df), **_metrics(m),
              "fingerprints": spn.fingerprints, "fidelities": spn.fidelities, "predicts_at": spn.fidelity,
              "fit_s": spn.meta["fit_s"], "out": str(out), "baselines": {}}
    lines = [f"trained {args.arch} SPN on {len(train_df)} samples of {n_models} model(s); held-out {len(test_df)}:",
             _metric_line(args.arch, m)]
    if mf:
        by = spn.meta.get("test_metrics_by_fidelity", {})
        result["by_fidelity"] = by
        lines = [lines[0].replace("samples", f"samples of label_steps {spn.fidelities}", 1), lines[1]]
        lines += [_metric_line(f"  label_steps {k}", v) for k, v in by.items()]
        lines.append(f"predicts at label_steps {spn.fidelity} by default (the highest it learnt)")
    for arch in () if args.no_baselines else [a for a in ("transformer", "mlp", "linear") if a != args.arch]:
        if arch != "transformer" and n_models > 1:
            why = f"{arch} takes one model's group count; pass --fingerprint"
            result["baselines"][arch] = {"skipped": why}
            lines.append(f"{arch + ' (baseline)':<24} skipped: {why}")
            continue
        bm = evaluate(fit(arch, train_df, spaces, fc, multi_fidelity=mf), test_df)
        result["baselines"][arch] = _metrics(bm)
        lines.append(_metric_line(f"{arch} (baseline)", bm))
    lines.append(f"saved {out}")
    _emit(args, result, lines)
    return 0


def _eval(args) -> int:
    from rlprune.spn.frames import evaluate
    from rlprune.spn.predictor import load_spn

    spn = load_spn(args.spn)
    df, spaces = _load(args)
    seen = set(spn.meta.get("train_ids", []))
    if not args.all:
        df = df[~df["sample_id"].astype(str).isin(seen)].reset_index(drop=True)
        if df.empty:
            raise SampleStoreError(f"every selected sample in {args.samples} was used to train {args.spn}; "
                                   f"generate new samples or pass --all to score training rows too")
    m = evaluate(spn, df, spaces)
    per_model = {fp: _metrics(evaluate(spn, g, spaces)) for fp, g in df.groupby("model_fingerprint")}
    result = {"arch": spn.config.arch, "n_train": spn.meta.get("n_train"), "n_test": len(df), **_metrics(m),
              "per_model": per_model, "unseen_models": sorted(set(per_model) - set(spn.fingerprints))}
    lines = [f"{spn.config.arch} SPN ({args.spn}) on {len(df)} {'samples' if args.all else 'held-out samples'}:",
             _metric_line("all", m)]
    if len(per_model) > 1:
        lines += [_metric_line(fp, {**v, "n": int((df['model_fingerprint'] == fp).sum())})
                  for fp, v in per_model.items()]
    _emit(args, result, lines)
    return 0


def _finetune(args) -> int:
    from rlprune.spn.frames import evaluate
    from rlprune.spn.predictor import load_spn, save_spn
    from rlprune.spn.train import finetune

    if args.n < 1 or args.steps < 0:
        raise ConfigError(f"--n {args.n} must be >= 1 and --steps {args.steps} >= 0")
    out = _check_out(args.out)
    spn = load_spn(args.spn)
    df, spaces = _load(args)
    seen = set(spn.meta.get("train_ids", []))
    target = df[~df["sample_id"].astype(str).isin(seen)]
    unseen = ~target["model_fingerprint"].isin(spn.fingerprints)
    if not args.fingerprint and unseen.any():
        target = target[unseen]  # transfer: adapt to the models the SPN never saw
    if len(target) <= args.n:
        raise ConfigError(f"{len(target)} new samples for --n {args.n}: need more than n to report held-out "
                          f"metrics; lower --n or generate more samples")
    target = target.sample(frac=1.0, random_state=args.seed)
    few, test = target.iloc[: args.n], target.iloc[args.n:]
    from rlprune.samples.store import read_samples

    everything = read_samples(args.samples)  # replay the SPN's own training rows, whatever the filter
    replay = everything[everything["sample_id"].astype(str).isin(seen)]
    zero = evaluate(spn, test, spaces)
    tuned = finetune(spn, few, replay, steps=args.steps, spaces=spaces, lr=args.lr, seed=args.seed)
    tuned.meta["train_ids"] = sorted(seen | set(few["sample_id"].astype(str)))
    few_m = evaluate(tuned, test)
    save_spn(tuned, out)
    models = sorted(set(few["model_fingerprint"]))
    result = {"arch": spn.config.arch, "n_finetune": len(few), "n_replay": len(replay), "n_test": len(test),
              "steps": args.steps, "models": models, "new_models": sorted(set(models) - set(spn.fingerprints)),
              "zero_shot": _metrics(zero), "few_shot": _metrics(few_m), "out": str(out)}
    _emit(args, result, [f"fine-tuned {spn.config.arch} SPN on {len(few)} samples of {', '.join(models)} "
                         f"(+{len(replay)} replayed), {args.steps} steps; held-out {len(test)}:",
                         _metric_line("zero-shot", zero), _metric_line(f"few-shot (n={len(few)})", few_m),
                         f"saved {out}"])
    return 0


__all__ = ["add_spn_parser", "cmd_spn"]
