"""Real measurement of a ratio vector: prune, recalibrate BatchNorm, optionally fine-tune, test-split scores.

This is where search results and baselines are compared honestly: every candidate is pruned for real with
the same importance, gets the same BatchNorm recalibration and the same number of fine-tuning steps, and
is scored on the TEST split (which the search never sees), with its exact params/MACs and CPU latency.

    base = measure_base(task, model)
    row, pruned = measure_candidate(task, space, ratios, base, finetune_steps=200)
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the CLI imports this module to build its parser: keep torch out of that path
    from rlprune.pruning import PruningSpace


def measure_base(task, model, split: str = "test") -> dict:
    """Scores and latency of the unpruned model.

    Returns:
        ``{"acc", "loss", "n", "latency_ms"}`` on ``split`` (``n``: how many examples it holds).
    """
    from rlprune.sampling import batch1_latency_ms

    m = task.evaluate(model, split)
    return {"acc": float(m["acc"]), "loss": float(m["loss"]), "n": int(m.get("n", 0)),
            "latency_ms": batch1_latency_ms(model, task.example_input())}


def measure_candidate(task, space: PruningSpace, ratios, base: dict, *, method: str = "?",
                      importance: str = "l1", recalibrate: bool = True, finetune_steps: int = 0,
                      split: str = "test", latency_runs: int = 5):
    """Prune with ``ratios`` for real and score the result.

    Args:
        task: the task (its calibration split recalibrates BatchNorm, its train split fine-tunes).
        space: the base model's ``PruningSpace``.
        ratios: per-group ratios (achieved ratios after channel rounding are used and reported).
        base: :func:`measure_base` of the unpruned model on the same split.
        method: name recorded in the row.
        importance: channel criterion.
        recalibrate: re-estimate BatchNorm statistics before scoring (and before fine-tuning).
        finetune_steps: SGD steps on the train split (the same for every compared method).
        split: the split to score on.
        latency_runs: timed batch-1 forwards.

    Returns:
        ``(row, pruned_model)``; ``row`` has ``method``, ``ratios``, ``params_ratio``, ``macs_ratio``,
        ``acc``, ``acc_drop`` (points, vs ``base``), ``loss``, ``latency_ms``, ``latency_ratio``,
        ``finetune_steps``, ``measure_s``.

    Raises:
        ConfigError: invalid ratios.
    """
    from rlprune.sampling import batch1_latency_ms, prune_and_score

    t0 = time.perf_counter()
    achieved = space.achieved(np.asarray(ratios, dtype=np.float64))
    pruned, m = prune_and_score(task, space, achieved, importance=importance, recalibrate=recalibrate,
                                finetune_steps=finetune_steps, split=split)
    params_ratio, macs_ratio = space.cost_model.ratios_of(achieved)
    latency = batch1_latency_ms(pruned, task.example_input(), latency_runs)
    row = {
        "method": method,
        "ratios": [round(float(r), 6) for r in achieved],
        "params_ratio": float(params_ratio[0]),
        "macs_ratio": float(macs_ratio[0]),
        "acc": float(m["acc"]),
        "acc_drop": base["acc"] - float(m["acc"]),
        "loss": float(m["loss"]),
        "latency_ms": latency,
        "latency_ratio": latency / base["latency_ms"],
        "finetune_steps": int(finetune_steps),
        "measure_s": time.perf_counter() - t0,
    }
    return row, pruned


def pruned_manifest(space: PruningSpace, ratios, example, **fields) -> dict:
    """What ``save_pruned`` records about a pruned model, the same for every command that saves one.

    Args:
        space: the base model's ``PruningSpace``.
        ratios: the achieved per-group ratios the model was pruned with.
        example: an input batch (its per-example shape is recorded to rebuild inputs).
        **fields: anything else to record (``acc``, ``task``, ``importance``, ``finetune_steps``, ``method``...).

    Returns:
        ``ratios``, ``group_ids``, ``base_fingerprint``, exact ``params`` and ``macs``, ``input_shape`` and
        ``fields``.
    """
    from rlprune.io import model_fingerprint

    params, macs = space.cost(ratios)
    return {"ratios": [round(float(r), 6) for r in ratios], "group_ids": [g.id for g in space.groups],
            "base_fingerprint": model_fingerprint(space.model), "params": params, "macs": macs,
            "input_shape": list(example.shape[1:]), **fields}


def spn_predictor(spn_path, space: PruningSpace, fingerprint: str):
    """An ``(N, G) -> (N,)`` accuracy-drop predictor from an SPN checkpoint, for the SPN-based baselines.

    The model is registered with the SPN from its group features if the SPN has not seen it (zero-shot).

    Raises:
        CheckpointError: unreadable checkpoint.
    """
    from rlprune.spn import load_spn

    spn = load_spn(spn_path)
    if fingerprint not in spn.known:
        spn.add_model(fingerprint, space.features())
    return lambda R: spn.predict(R, fingerprint)[0]


def measure_baselines(task, space: PruningSpace, target: float, budget: str = "macs", spn_path=None,
                      n_calls: int = 2048, finetune_steps: int = 0, seed: int = 0, progress=None) -> list[dict]:
    """Every baseline at the same budget, measured for real on the test split.

    Args:
        task: the task.
        space: the base model's ``PruningSpace``.
        target: pruned/original ``budget`` ratio (e.g. 0.5).
        budget: ``"macs"`` or ``"params"``.
        spn_path: SPN checkpoint for the random-search and CEM baselines (skipped without one).
        n_calls: SPN calls each search may spend.
        finetune_steps: fine-tuning steps for every method (0: BN recalibration only).
        progress: optional callable ``(method)`` called before each real measurement.

    Returns:
        One row per method (see :func:`measure_candidate`), plus ``predicted_acc_drop`` where an SPN ran.
    """
    from rlprune.baselines import run_baselines
    from rlprune.io import model_fingerprint

    predict = spn_predictor(spn_path, space, model_fingerprint(space.model)) if spn_path else None
    found = run_baselines(space.cost_model, target, budget, scores=space.channel_scores("l1"),
                          predict=predict, n_calls=n_calls, seed=seed)
    base = measure_base(task, space.model)
    rows = []
    for b in found:
        if progress:
            progress(b.method)
        row, _ = measure_candidate(task, space, b.ratios, base, method=b.method, finetune_steps=finetune_steps)
        row.update({k: v for k, v in b.to_dict().items() if k not in row})
        row["base_acc"] = base["acc"]
        rows.append(row)
    return rows


def add_baselines_parser(sub) -> None:
    """The ``rlprune baselines`` verb."""
    import argparse

    p = sub.add_parser(
        "baselines", help="every baseline at one budget, measured for real",
        description="Handcrafted rules (uniform, larger-group, depth), global L1 magnitude pruning and, with "
                    "--spn, random search and CEM against the SPN, all held to the same MACs (or params) "
                    "budget by the exact cost model; each is pruned for real, BatchNorm-recalibrated and "
                    "scored on the test split.",
        epilog="examples:\n  rlprune baselines --task digits --target-macs 0.5\n"
               "  rlprune baselines --task digits --target-params 0.4 --spn runs/spn.pt --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", required=True, help="task name or package.module:callable")
    p.add_argument("--data-dir", help="data folder for tasks that read local data")
    t = p.add_mutually_exclusive_group(required=True)
    t.add_argument("--target-macs", type=float, help="pruned/original MACs to reach, e.g. 0.5")
    t.add_argument("--target-params", type=float, help="pruned/original params to reach")
    p.add_argument("--spn", help="SPN checkpoint: adds random search and CEM against it")
    p.add_argument("--n-calls", type=int, default=2048, help="SPN calls per search baseline (default 2048)")
    p.add_argument("--finetune-steps", type=int, default=0, help="fine-tuning steps for every method")
    p.add_argument("--seed", type=int, default=0, help="task and search seed")
    p.add_argument("--json", action="store_true", help="print JSON")


def cmd_baselines(args) -> int:
    """Run ``rlprune baselines``."""
    import json
    import sys

    from rlprune.errors import ConfigError
    from rlprune.pruning import PruningSpace
    from rlprune.tasks import get_task

    budget = "macs" if args.target_macs is not None else "params"
    target = args.target_macs if args.target_macs is not None else args.target_params
    if not 0 < target <= 1:
        raise ConfigError(f"--target-{budget} {target} must lie in (0, 1], e.g. 0.5")
    if args.n_calls < 1:
        raise ConfigError(f"--n-calls {args.n_calls} must be >= 1")
    kwargs = {"seed": args.seed, **({"data_dir": args.data_dir} if args.data_dir else {})}
    task = get_task(args.task, **kwargs)
    model = task.base_model()
    space = PruningSpace.from_model(model, task.example_input())
    rows = measure_baselines(task, space, target, budget, args.spn, args.n_calls, args.finetune_steps,
                             args.seed, progress=lambda m: print(f"measuring {m} ...", file=sys.stderr))
    if args.json:
        print(json.dumps([{**r, "target": target, "budget": budget} for r in rows], indent=2))
        return 0
    print(f"{'method':<14} {'macs':>6} {'params':>7} {'acc':>7} {'drop':>6}  ratios")
    for r in rows:
        print(f"{r['method']:<14} {r['macs_ratio']:>6.3f} {r['params_ratio']:>7.3f} {r['acc']:>7.2f} "
              f"{r['acc_drop']:>6.2f}  {' '.join(f'{x:.2f}' for x in r['ratios'])}")
    return 0
