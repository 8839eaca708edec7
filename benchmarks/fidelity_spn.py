"""Section 2 of ``label_fidelity.py``: at the same sample-generation wall time, does a multi-fidelity SPN (many
cheap labels plus a few final ones, the fidelity as an input) rank held-out vectors by their final accuracy
better than a single-fidelity one (finals only, or one cheap k)?

Reuses section 1's rows (every vector has a label at every k with its measured seconds, and its final):
``FOLDS``-fold cross-validation over vectors, stratified by target; each fold's training budget is what finals of
``BUDGET_SHARE`` of its vectors cost; every SPN predicts the held-out vectors at the final's fidelity and is
scored by within-target Spearman (bootstrap intervals) against their final accuracy.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import record

BUDGET_SHARE = 1 / 3
"""Sample-generation budget of each training fold: what finals of this share of its vectors cost (the rest of
the pool is what the budget cannot buy at the final's price, and what cheap labels can reach). Quick: 0.9,
so the finals-only SPN gets the 8 rows an SPN needs from the quick mode's 9 training vectors."""
MF_FINAL_SHARE = 0.5
"""Share of the budget the multi-fidelity SPN spends on finals (half as many as the finals-only SPN); the rest
buys cheap labels, cheapest k first, each over the whole pool before the next k."""
FOLDS = 4
"""Cross-validation folds over vectors (stratified by target): every vector is held out once."""
MEANINGFUL_PER_TARGET = 12
"""Below this many vectors per target a within-target Spearman of out-of-fold predictions is noise."""


def _frame(rows: list[dict], idx, k, final_steps: int, fp: str):
    """Sample-store-format rows (what ``rlprune.spn.train.fit`` reads) of vectors ``idx`` at label ``k``.

    ``k == "final"`` is the validation recipe's accuracy (seed 1 only: what one final costs), filed at
    fidelity ``final_steps`` with no loss (NaN: the SPN learns only its accuracy). ``acc_drop`` is 100 - acc:
    the base accuracy is one constant per split and cancels in any ranking.
    """
    import pandas as pd

    out = []
    for i in idx:
        r = rows[i]
        final = k == "final"
        out.append({"sample_id": f"v{i}-{k}", "ratios": np.asarray(_ratios(r), np.float64), "model_fingerprint": fp,
                    "acc_drop": 100.0 - float(r["final_acc_1"] if final else r[f"acc_k{k}"]),
                    "loss": float("nan") if final else float(r[f"loss_k{k}"]),
                    "label_steps": final_steps if final else int(k)})
    return pd.DataFrame(out)


def _ratios(r: dict) -> list[float]:
    return json.loads(r["ratios"]) if isinstance(r["ratios"], str) else list(r["ratios"])


def _cost(r: dict, k) -> float:
    return float(r["final_s_1"] if k == "final" else r[f"s_k{k}"])


def _buy(rows, order, k, budget: float) -> tuple[list[int], float]:
    """The vectors of ``order`` whose label ``k`` fits in ``budget``, taken in order; and what they cost."""
    got, spent = [], 0.0
    for i in order:
        if spent + _cost(rows[i], k) <= budget + 1e-9:
            got.append(i)
            spent += _cost(rows[i], k)
    return got, spent


def _fold_plan(rows, order, cheap, share: float) -> tuple[dict, float]:
    """``({arm: ([(k, vectors)], seconds spent)}, budget)``: each arm's training rows in one fold."""
    n_final = max(1, int(np.ceil(share * len(order))))
    budget = sum(_cost(rows[i], "final") for i in order[:n_final])
    plan = {"final": ([("final", list(order[:n_final]))], budget)}
    for k in cheap:
        got, spent = _buy(rows, order, k, budget)
        plan[f"k={k}"] = ([(k, got)], spent)
    mf_final = order[: max(1, int(round(n_final * MF_FINAL_SHARE)))]
    left = budget - sum(_cost(rows[i], "final") for i in mf_final)
    parts, spent = [("final", list(mf_final))], budget - left
    for k in cheap:
        got, cost = _buy(rows, order, k, left)
        if got:
            parts.append((k, got))
            left -= cost
            spent += cost
    plan["multi"] = (parts, spent)
    return plan, budget


def _stratified_order(targets: np.ndarray, idx: np.ndarray, rng) -> list[int]:
    """``idx`` shuffled within each target, then interleaved target by target (any prefix is balanced)."""
    per = [list(rng.permutation(idx[targets[idx] == t])) for t in sorted(set(targets[idx].tolist()))]
    return [int(i) for tier in zip(*[p + [None] * (max(map(len, per)) - len(p)) for p in per], strict=True)
            for i in tier if i is not None]


def compare_fidelities(rows: list[dict], features: np.ndarray, share: float = BUDGET_SHARE, folds: int = FOLDS,
                       seed: int = 0, max_steps: int = 4000) -> list[dict]:
    """Single- vs multi-fidelity SPNs at equal sample-generation seconds, scored on held-out vectors' finals.

    Vectors are split into ``folds`` (stratified by target); per fold, the training vectors are the pool and the
    budget is what finals of ``share`` of them cost. Arms: ``final`` (those finals), ``k=<k>`` (labels of one
    cheap k on as many pool vectors as the budget buys), ``multi`` (``MF_FINAL_SHARE`` of the budget on finals,
    the rest on cheap labels; one SPN with the fidelity as an input, predicting at the final's). Every held-out
    vector is predicted by its fold's SPN; the out-of-fold predictions are ranked against the final accuracy
    (mean of both seeds) within each target.

    Args:
        rows: the vectors' rows (as :func:`run` returns them, or read back from the CSV).
        features: the base model's group features (``PruningSpace.features()``).
        share: see :data:`BUDGET_SHARE`.
        folds: cross-validation folds.
        seed: seeds the folds, the order vectors are bought in and the SPNs.
        max_steps: the SPNs' optimiser steps at most.

    Returns:
        One dict per (arm, scope): ``arm``, ``fidelities``, ``finals``, ``cheap`` (training rows, mean per
        fold), ``budget_s``, ``spent_s`` (mean per fold), ``scope`` (``within`` or a target), ``rho``, ``lo``,
        ``hi``, ``n``, ``note`` (why an arm has no number).
    """
    import pandas as pd

    from rlprune.errors import ConfigError
    from rlprune.measure.ranking import spearman_ci
    from rlprune.space.pruning import FEATURE_NAMES
    from rlprune.spn.frames import predict_frame
    from rlprune.spn.nets import one_thread
    from rlprune.spn.train import FitConfig, fit

    fp = "bench"
    spaces = {fp: {"features": np.asarray(features).tolist(), "feature_names": list(FEATURE_NAMES)}}
    final_steps = int(rows[0]["final_steps"])
    cheap = sorted(int(c[5:]) for c in rows[0] if c.startswith("acc_k") and int(c[5:]) < final_steps)
    targets = np.array([float(r["target"]) for r in rows])
    truth = np.array([float(r["final_acc"]) for r in rows])
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(rows), int)
    for pos, i in enumerate(_stratified_order(targets, np.arange(len(rows)), rng)):
        fold_of[i] = pos % folds
    arms = ["final", *(f"k={k}" for k in cheap), "multi"]
    pred = {a: np.full(len(rows), np.nan) for a in arms}
    stats = {a: {"finals": [], "cheap": [], "spent_s": [], "fidelities": set(), "note": ""} for a in arms}
    budgets = []
    for f in range(folds):
        test = np.flatnonzero(fold_of == f)
        order = _stratified_order(targets, np.flatnonzero(fold_of != f), rng)
        plan, budget = _fold_plan(rows, order, cheap, share)
        budgets.append(budget)
        for arm, (parts, spent) in plan.items():
            st = stats[arm]
            st["finals"].append(sum(len(v) for k, v in parts if k == "final"))
            st["cheap"].append(sum(len(v) for k, v in parts if k != "final"))
            st["spent_s"].append(spent)
            df = pd.concat([_frame(rows, v, k, final_steps, fp) for k, v in parts if v], ignore_index=True)
            try:
                with one_thread():
                    spn = fit("transformer", df, spaces, FitConfig(seed=seed + f, max_steps=max_steps),
                              multi_fidelity=arm == "multi")
            except ConfigError as e:  # too few rows for an SPN: no prediction, and the table says why
                st["note"] = str(e).split(";")[0]
                continue
            st["fidelities"] |= set(spn.fidelities)
            held = _frame(rows, test, "final", final_steps, fp)
            pred[arm][test] = -predict_frame(spn, held, fidelity=spn.fidelity)[0]  # predicted accuracy
    out = []
    for arm in arms:
        st, ok = stats[arm], np.isfinite(pred[arm])
        base = {"arm": arm, "fidelities": " ".join(map(str, sorted(st["fidelities"]))) or "-",
                "finals": float(np.mean(st["finals"])), "cheap": float(np.mean(st["cheap"])),
                "budget_s": round(float(np.mean(budgets)), 2), "spent_s": round(float(np.mean(st["spent_s"])), 2),
                "note": st["note"] if not ok.all() else ""}
        scopes = [("within", np.ones(len(rows), bool), targets)]
        scopes += [(f"{t:g}", targets == t, None) for t in dict.fromkeys(targets.tolist())]
        for scope, mask, groups in scopes:
            m = mask & ok
            s = (spearman_ci(pred[arm][m], truth[m], groups=None if groups is None else groups[m])
                 if m.any() else {"rho": float("nan"), "ci": [float("nan")] * 2, "n": 0})
            out.append({**base, "scope": scope, "rho": s["rho"], "lo": s["ci"][0], "hi": s["ci"][1], "n": s["n"]})
    return out


def fidelity_markdown(comparison: list[dict], rows: list[dict], share: float) -> str:
    """Section 2's table: each arm's training rows, seconds and within-target Spearman with held-out finals."""
    scopes = list(dict.fromkeys(c["scope"] for c in comparison))
    by = {(c["arm"], c["scope"]): c for c in comparison}
    heads = ["SPN trained on", "label_steps", "finals", "cheap labels", "seconds spent",
             *("within-target (mean)" if c == "within" else f"target {c}" for c in scopes)]
    per_target = len(rows) / max(1, len({r["target"] for r in rows}))
    lines = ["## Single- vs multi-fidelity SPN at equal sample-generation time", "",
             f"{FOLDS}-fold cross-validation over vectors (stratified by target). Per fold, the budget is what the "
             f"finals (validation recipe, one seed) of {share:.0%} of the training vectors cost "
             f"({np.mean([c['budget_s'] for c in comparison]):.1f} s, the sum of their measured seconds); each "
             f"arm spends at most that on labels of the training vectors. `multi` spends {MF_FINAL_SHARE:.0%} on "
             f"finals and the rest on cheap labels (cheapest k first), with the fidelity as an input, and "
             f"predicts at the final's. Rows and seconds are means per fold. Spearman: out-of-fold predictions "
             f"vs the held-out vectors' final accuracy (mean of both seeds), 95% bootstrap interval.", "",
             "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for arm in dict.fromkeys(c["arm"] for c in comparison):
        c = by[(arm, scopes[0])]
        lines.append(f"| {arm} | {c['fidelities']} | {c['finals']:.1f} | {c['cheap']:.1f} | {c['spent_s']:.1f} | "
                     + " | ".join(rho_cell(by[(arm, sc)]) for sc in scopes) + " |")
    notes = [f"`{c['arm']}`: {c['note']}" for c in comparison if c["note"] and c["scope"] == "within"]
    lines += [""] + ([f"Not predicted in some folds: {'; '.join(notes)}.", ""] if notes else [])
    if per_target < MEANINGFUL_PER_TARGET:
        lines.append(f"Only {per_target:.0f} vectors per target (fewer than {MEANINGFUL_PER_TARGET}): this section "
                     f"runs the code path, its numbers are noise; run the full mode for a meaningful comparison.")
    return "\n".join(lines) + "\n"


def comparison_cached(rows, features, share, seed, max_steps, work: Path) -> list[dict]:
    """:func:`compare_fidelities`, read back from ``work`` when the same rows and settings were compared."""
    from rlprune.io import atomic_write_json
    from rlprune.measure.spec import source_hash

    key = hashlib.sha256(json.dumps([[r.get("key"), r["final_acc"]] for r in rows] + [
        share, seed, max_steps, FOLDS, MF_FINAL_SHARE, source_hash("spn")], default=str).encode()).hexdigest()[:16]
    path = work / f"spn-compare-{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    out = record.stamped(compare_fidelities(rows, features, share, FOLDS, seed, max_steps))
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, out, sort_keys=False)  # the columns keep their order when read back
    return out


def rho_cell(s: dict) -> str:
    """A Spearman row's ``rho [lo, hi]`` cell (``n/a`` when undefined)."""
    if not np.isfinite(s["rho"]):
        return "n/a"
    return f"{s['rho']:.2f} [{s['lo']:.2f}, {s['hi']:.2f}]"
