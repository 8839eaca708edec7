"""The baselines an RL pruner must beat, all held to the same budget through the exact cost model.

- Handcrafted rules (one ratio direction scaled until the budget is met): ``uniform``; ``larger_group``
  (more channels -> larger ratio); ``depth`` (deeper -> larger ratio).
- ``global_l1``: torch-pruning-style global magnitude pruning. Channels of all groups are ranked together
  by their group-normalised L1 importance and the lowest are removed until the budget is met; the
  threshold is found on the cost model.
- ``random_search`` and ``cem``: black-box searches against an accuracy-drop predictor (the SPN) with a
  counted number of predictor calls and, online, the same real evaluations and world-model fine-tunes as RL
  (``rlprune.search.blackbox``).

Every method reaches the target from below, within ``TARGET_SLACK`` (1% of the target), through the one
projection the env's wall uses (``CostModel.project_to_budget`` with its give-back step, here with
``relax=True`` so that vectors pruned past the target are brought back up to it). Where channel counts make
that impossible the method keeps its closest vector from below and :func:`run_baselines` records
``meets_target: False``. Each returns a ratio vector; :func:`run_baselines` collects them with their exact cost.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from rlprune.errors import ConfigError
from rlprune.search.blackbox import SEARCHES, Learn, Predictor, blackbox_search
from rlprune.space.costmodel import CostModel, bisect_first, meets_target

RULES = ("uniform", "larger_group", "depth")


@dataclass(frozen=True)
class BaselineResult:
    """One baseline's ratio vector and its exact cost.

    Attributes:
        method: baseline name.
        ratios: achieved ratios (after channel rounding), one per group.
        macs_ratio, params_ratio: pruned / original.
        extra: method-specific figures (predicted drop, predictor calls, ...).
    """

    method: str
    ratios: np.ndarray
    macs_ratio: float
    params_ratio: float
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"method": self.method, "ratios": [round(float(r), 6) for r in self.ratios],
                "macs_ratio": self.macs_ratio, "params_ratio": self.params_ratio, **self.extra}


def rule_direction(rule: str, channels: np.ndarray) -> np.ndarray:
    """The per-group ratio direction of a handcrafted rule (scaled to the budget later).

    Args:
        rule: one of ``RULES``.
        channels: channels per group, in forward order.

    Returns:
        A positive vector of length ``n_groups``.

    Raises:
        ConfigError: unknown rule.
    """
    G = len(channels)
    if rule == "uniform":
        return np.ones(G)
    if rule == "larger_group":
        return np.asarray(channels, dtype=np.float64) / float(np.max(channels))
    if rule == "depth":
        return (np.arange(G) + 1.0) / G
    raise ConfigError(f"rule {rule!r} is unknown; use one of {', '.join(RULES)}")


def rule_ratios(cm: CostModel, rule: str, target: float, budget: str = "macs") -> np.ndarray:
    """Ratios of a handcrafted rule brought onto ``target`` from below.

    The rule's direction is scaled to the least pruning that meets the target (every group together, so
    their channel steps coincide and the result can land several percent below it), then projected like
    every other method's vectors: scaled back to just above the target and raised with the give-back step,
    which may keep a channel or two more in single groups. The rule still decides the shape.
    """
    d = rule_direction(rule, cm.channels)
    s = cm.scale_to_target(d, target, budget)
    return cm.achieved(cm.project_to_budget(np.clip(s * d, 0.0, cm.max_ratio), target, budget, relax=True))


def global_threshold_ratios(cm: CostModel, scores: list[np.ndarray], target: float,
                            budget: str = "macs") -> np.ndarray:
    """Global magnitude pruning: one importance threshold across all groups, met on the cost model.

    Args:
        cm: the cost model.
        scores: per-group channel importance (``PruningSpace.channel_scores``), comparable across groups.
        target: wanted pruned/original ratio of ``budget``.

    Returns:
        Achieved ratios: group g loses its channels scoring below the threshold (capped at ``max_ratio``),
        or, when it lands closer to the target, the vector of the next lower threshold (just over the target)
        projected onto it like every other method's (``project_to_budget``, ``relax=True``).
    """
    C = cm.channels
    cap = np.floor(cm.max_ratio * C + 1e-9)
    sorted_scores = [np.sort(s) for s in scores]
    candidates = np.unique(np.concatenate(sorted_scores))

    def ratios_at(t):
        removed = np.array([np.searchsorted(s, t, side="right") for s in sorted_scores], dtype=np.float64)
        return np.minimum(removed, cap) / C

    def fits(i):
        return cm.budget_ratio(ratios_at(candidates[i]), budget)[0] <= target

    last = len(candidates) - 1
    if not fits(last):
        raise ConfigError(f"global pruning cannot reach {budget} ratio {target:g} within max_ratio="
                          f"{cm.max_ratio:g}; raise the target")
    # The smallest threshold whose ratios meet the target.
    i = bisect_first(fits, 0, last)
    # Its channel steps can leave it short of the target: the vector of the threshold below (just over the
    # target) projected onto it, like every other method's, lands closer; keep whichever is closer.
    found = np.stack([ratios_at(candidates[i]), ratios_at(candidates[i - 1]) if i > 0 else np.zeros(cm.n_groups)])
    found[1] = cm.project_to_budget(found[1], target, budget, relax=True)
    return cm.achieved(found[np.argmax(cm.budget_ratio(found, budget))])


def run_baselines(cm: CostModel, target: float, budget: str = "macs", scores=None,
                  predict: Predictor | None = None, n_calls: int = 2048, seed: int = 0, *,
                  rounds: int = 1, n_real: int = 0, learn: Callable[[str], Learn] | None = None,
                  methods=None) -> list[BaselineResult]:
    """Every baseline that applies, at the same budget.

    Args:
        cm: cost model of the model being pruned.
        target: pruned/original ``budget`` ratio to reach (e.g. 0.5).
        budget: ``"macs"`` or ``"params"``.
        scores: per-group channel importance for ``global_l1`` (skipped when None).
        predict: accuracy-drop predictor for ``random_search`` and ``cem`` (skipped when None); its
            predicted drop is also recorded for every other baseline.
        n_calls: predictor calls each search may spend.
        seed: seeds the searches.
        rounds, n_real: each search's online rounds and real evaluations in total (see
            ``rlprune.search.blackbox.blackbox_search``).
        learn: ``(method) -> learn callable``: each search gets its own world model to fine-tune, so one
            search's real evaluations never help another.
        methods: only these methods (default: all that apply).

    Returns:
        One :class:`BaselineResult` per method; ``extra`` holds ``predictor_calls`` and ``real_evals``
        (counted; 0 for the rules and global L1) and ``search_s`` (wall time), and ``meets_target`` False
        for a method that could not land within ``TARGET_SLACK`` below the target (channel granularity),
        absent otherwise.
    """
    want = set(methods) if methods is not None else None

    def timed(method: str, search) -> tuple[str, np.ndarray, dict] | None:
        if want is not None and method not in want:
            return None
        # Every method's own search wall time and predictor calls are counted, so budgets compare as counts.
        t0 = time.perf_counter()
        ratios, extra = search()
        return method, ratios, {"predictor_calls": 0, "real_evals": 0, **extra,
                                "search_s": time.perf_counter() - t0}

    found = [timed(r, lambda r=r: (rule_ratios(cm, r, target, budget), {})) for r in RULES]
    if scores is not None:
        found.append(timed("global_l1", lambda: (global_threshold_ratios(cm, scores, target, budget), {})))
    if predict is not None:
        for m in SEARCHES:
            found.append(timed(m, lambda m=m: blackbox_search(
                m, predict, cm, target, budget, n_calls, seed, rounds=rounds, n_real=n_real,
                learn=learn(m) if learn is not None and n_real else None)))
    out = []
    for method, ratios, extra in filter(None, found):
        p, m = cm.ratios_of(ratios[None, :])
        if predict is not None and "predicted_acc_drop" not in extra:
            extra = {**extra, "predicted_acc_drop": float(np.asarray(predict(ratios[None, :]))[0])}
        if not meets_target(p[0] if budget == "params" else m[0], target):
            extra = {**extra, "meets_target": False}
        out.append(BaselineResult(method, ratios, float(m[0]), float(p[0]), extra))
    return out


def measure_baselines(task, space, target: float, spec, budget: str = "macs", spn_path=None,
                      n_calls: int = 2048, seed: int = 0, progress=None) -> list[dict]:
    """Every baseline at the same budget, measured for real on the test split.

    Args:
        task: the task.
        space: the base model's ``PruningSpace`` (traced with ``spec``).
        target: pruned/original ``budget`` ratio (e.g. 0.5).
        spec: the ``MeasureSpec``: importance (also global L1's channel scores' criterion), recalibration
            and the fine-tune every method gets.
        budget: ``"macs"`` or ``"params"``.
        spn_path: SPN checkpoint for the random-search and CEM baselines (skipped without one).
        n_calls: SPN calls each search may spend.
        seed: seeds the searches.
        progress: optional callable ``(method)`` called before each real measurement.

    Returns:
        One row per method (see ``measure_candidate``), plus ``predicted_acc_drop`` where an SPN ran.
    """
    from rlprune.io import model_fingerprint
    from rlprune.measure.recipe import measure_base, measure_candidate
    from rlprune.spn.local import spn_predictor

    predict = spn_predictor(spn_path, space, model_fingerprint(space.model)) if spn_path else None
    found = run_baselines(space.cost_model, target, budget, scores=space.channel_scores(spec.importance),
                          predict=predict, n_calls=n_calls, seed=seed)
    base = measure_base(task, space.model, spec)
    rows = []
    for b in found:
        if progress:
            progress(b.method)
        row, _ = measure_candidate(task, space, b.ratios, base, spec, method=b.method)
        row.update({k: v for k, v in b.to_dict().items() if k not in row})
        row["base_acc"] = base["acc"]
        rows.append(row)
    return rows
