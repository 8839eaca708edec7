"""The within-budget section of ``spn_fidelity.py``: at one MACs target, does the SPN rank ratio vectors like the
accuracy they reach after fine-tuning, and does adaptive-BN accuracy (no training at all) do as well?

A search compares vectors of (nearly) equal MACs, and the user keeps the one with the best accuracy AFTER the
validation fine-tune; an SPN (or any proxy) is useful to it only as far as it ranks those vectors alike. Per
MACs target (:data:`TARGETS`) ``n`` vectors are drawn and projected onto the target from below exactly as
``label_fidelity.draw_vectors`` does (the samplers the store is filled with; vector ``i`` its own seeded draw),
and each is measured twice:

- its FINAL accuracy: the validation recipe, ``rlprune.measure.recipe.prune_and_score(..., finetune=True,
  split="validation")`` (prune, recalibrate BatchNorm, the spec's ``finetune_steps`` at its cosine rate, score
  the whole validation split), fine-tuned with seed ``seed + 1`` (``label_fidelity.reseeded``) so it never
  shares its batches with a sample label's fine-tune;
- its ADAPTIVE-BN accuracy: the k=0 sample label (``evaluate_ratios`` with ``label_steps=0``: prune, recalibrate
  BatchNorm, score the calibration split), the zero-training proxy.

The measuring is ``label_fidelity.run``'s (its k=0 label and first final): each finished vector's row is
written atomically to ``work`` and read back by a rerun with the same settings (the key leaves the label
fidelity out), so a killed run loses at most the vector it was measuring, and the label-fidelity study of the
same workload run into the same ``work`` reuses these rows (adding its other labels and second final).
:func:`within_rows` scores the SPNs' predicted drops (negated: a smaller drop ranks higher) and the
adaptive-BN accuracy against the finals: the within-target Spearman (mean of the per-target correlations,
resampled within each target) with a 95% bootstrap interval over vectors, and each target alone.
"""

from __future__ import annotations

from pathlib import Path

import label_fidelity
import numpy as np
import pandas as pd
import record
from fidelity_spn import rho_cell

TARGETS = (0.3, 0.5, 0.7)
"""The MACs targets the vectors are projected onto (kept MACs share)."""
FIELDS = ["task", "target", "vector", "sampler", "macs_ratio", "params_ratio", "final_acc", "final_n", "final_s",
          "final_split", "final_steps", "final_seed", "bn_acc", "bn_s", "spn_pred_drop", "ratios"]
"""The per-vector CSV's columns (then the provenance)."""


def measure(task, label: str, spec, n: int, seed: int, work: Path) -> tuple[list[dict], int]:
    """Every vector's final and adaptive-BN accuracy, measured or read back from ``work``.

    The vectors, the k=0 label and the first final are ``label_fidelity.run``'s (one measuring loop, one row
    format): with the same ``work``, task, spec and seed, this section and the label-fidelity study share rows,
    and either one resumes from the other's.

    Args:
        task: the task whose base model the SPN predicts.
        label: the workload (``fashion-mnist/resnet56``), recorded per row.
        spec: the measure spec (its ``finetune_steps`` make the final; ``label_steps`` is not used here).
        n: vectors per target.
        seed: seeds the vector draws; the final fine-tunes with ``seed + 1``.
        work: where each finished vector's row is kept (created when needed).

    Returns:
        ``(rows, read)``: one row per vector, target by target (``final_*`` the first final, ``bn_*`` the k=0
        label), and how many were read back from ``work``.
    """
    rows, read = label_fidelity.run(task, label, spec, TARGETS, n, (0,), seed, work, finals=1)
    named = {"final_acc": "final_acc_1", "final_n": "final_n_1", "final_s": "final_s_1",
             "final_seed": "final_seed_1", "bn_acc": "acc_k0", "bn_s": "s_k0"}
    return [{**r, **{k: r[v] for k, v in named.items()}} for r in rows], read


def predicted_drops(spn, rows: list[dict]) -> np.ndarray:
    """``spn``'s predicted accuracy drop (points) for every vector of ``rows`` (the SPN knows their model)."""
    from rlprune.spn.frames import predict_frame

    frame = pd.DataFrame({"ratios": [np.asarray(r["ratios"], np.float64) for r in rows],
                          "model_fingerprint": [r["fingerprint"] for r in rows]})
    return predict_frame(spn, frame)[0]


def within_rows(rows: list[dict], spns: dict, n_train: int) -> list[dict]:
    """Within-target and per-target Spearman with the final accuracy: each SPN's ``-predicted drop`` and the
    adaptive-BN accuracy, as ``spn_fidelity`` CSV rows (``section`` ``within``).

    Args:
        rows: :func:`measure`'s rows.
        spns: SPN seed -> the learning curve's transformer trained on ``n_train`` samples.
        n_train: its training samples.

    Returns:
        Per predictor and scope (``within`` or a target): ``section``, ``arch`` (``transformer`` or
        ``adaptive BN``), ``n_train``, ``seed``, ``scope``, ``spearman``, ``lo``, ``hi``, ``n_vectors``, ``note``.
    """
    predictors = [("transformer", n_train, seed, -predicted_drops(spn, rows), "SPN (-predicted drop)")
                  for seed, spn in spns.items()]
    predictors.append(("adaptive BN", 0, 0, np.array([r["bn_acc"] for r in rows]), "k=0 label (no training)"))
    return [r for p in predictors for r in _spearman_rows(rows, *p)]


def _spearman_rows(rows, arch, n_train, seed, x, note) -> list[dict]:
    from rlprune.measure.ranking import spearman_ci

    targets = np.array([float(r["target"]) for r in rows])
    final = np.array([r["final_acc"] for r in rows], dtype=float)
    scopes = [("within", np.ones(len(rows), bool), targets)]
    scopes += [(f"{t:g}", targets == t, None) for t in dict.fromkeys(targets.tolist())]
    out = []
    for scope, mask, groups in scopes:
        s = spearman_ci(x[mask], final[mask], groups=groups)
        out.append({"section": "within", "arch": arch, "n_train": n_train, "seed": seed, "scope": scope,
                    "spearman": round(s["rho"], 4), "lo": round(s["ci"][0], 4), "hi": round(s["ci"][1], 4),
                    "n_vectors": s["n"], "note": note})
    return out


def vector_rows(rows: list[dict], spn) -> list[dict]:
    """The per-vector CSV rows (:data:`FIELDS`): ``spn``'s (seed 0's) predicted drop added."""
    pred = predicted_drops(spn, rows) if spn is not None else [float("nan")] * len(rows)
    return [{**{f: r.get(f) for f in FIELDS}, "spn_pred_drop": round(float(p), 4),
             **{k: r[k] for k in record.PROVENANCE if k in r}} for r, p in zip(rows, pred, strict=True)]


def markdown(rows: list[dict], within: list[dict], read: int) -> list[str]:
    """The section's markdown lines: the Spearman table and the accuracy levels per target."""
    scopes = list(dict.fromkeys(w["scope"] for w in within))
    ft, back = rows[0]["final_steps"], f", {read} read back from --work" if read else ""
    lines = ["## Within budget: ranking vectors of one MACs target by their final accuracy", "",
             f"{len(rows)} vectors ({len(rows) // len(scopes[1:])} per target{back}); final: validation split after "
             f"the {ft}-step validation fine-tune (seed {rows[0]['final_seed']}); "
             "adaptive BN: the k=0 label (prune, recalibrate BN, calibration split). Spearman with the final "
             "accuracy, 95% bootstrap interval over vectors; within-target: mean of the per-target correlations.", "",
             "| predictor | n_train | seed | " + " | ".join("within-target" if s == "within" else f"target {s}"
                                                            for s in scopes) + " |",
             "|" + "---|" * (3 + len(scopes))]
    by = {(w["arch"], w["seed"], w["scope"]): w for w in within}
    for arch, seed in dict.fromkeys((w["arch"], w["seed"]) for w in within):
        first = by[(arch, seed, "within")]
        cells = " | ".join(rho_cell({"rho": by[(arch, seed, s)]["spearman"], **by[(arch, seed, s)]}) for s in scopes)
        lines.append(f"| {first['note']} | {first['n_train']} | {seed if arch != 'adaptive BN' else '-'} | {cells} |")
    lines += ["", "| target | vectors | MACs ratio | final acc (min-max) | adaptive-BN acc (min-max) |",
              "|---|---|---|---|---|"]
    for t in dict.fromkeys(r["target"] for r in rows):
        g = [r for r in rows if r["target"] == t]
        lines.append(f"| {t:g} | {len(g)} | {np.mean([r['macs_ratio'] for r in g]):.3f} | "
                     + " | ".join(f"{np.mean(v):.2f} ({min(v):.2f}-{max(v):.2f})"
                                  for v in ([r["final_acc"] for r in g], [r["bn_acc"] for r in g])) + " |")
    return lines


def headline(rows: list[dict]) -> dict:
    """The summary.json figures from ``spn_fidelity`` rows: seed 0's SPN and the adaptive-BN proxy, within-target
    Spearman with the final accuracy and its interval, and every SPN seed's (none without ``within`` rows)."""
    within = [r for r in rows if r.get("section") == "within" and r.get("scope") == "within"]
    spn = sorted((r for r in within if r["arch"] == "transformer"), key=lambda r: int(r["seed"]))
    bn = [r for r in within if r["arch"] == "adaptive BN"]
    out = {}
    for name, r in ((f"spn_within_budget_spearman_at_{int(spn[0]['n_train'])}" if spn else "", spn[:1]),
                    ("adaptive_bn_within_budget_spearman", bn[:1])):
        if r:
            out[name] = float(r[0]["spearman"])
            out[f"{name}_ci"] = [float(r[0]["lo"]), float(r[0]["hi"])]
    if len(spn) > 1:
        out[f"spn_within_budget_spearman_at_{int(spn[0]['n_train'])}_seeds"] = [float(r["spearman"]) for r in spn]
    return out
