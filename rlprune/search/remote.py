"""Real evaluations of ratio vectors on Ray tasks: what the online rounds of every search pay for.

Each task rebuilds the task and its space from the disk-cached base model and measures with the run's
``MeasureSpec``; rows come back in the order of the vectors.
"""

from __future__ import annotations

from rlprune.measure.spec import MeasureSpec


def evaluate_remote(task: str, task_kwargs: dict, ratios_list: list, base: dict, measure: MeasureSpec,
                    workers: int, tag: str) -> list[dict]:
    """Real samples (calibration split) for ratio vectors, spread over ``workers`` Ray tasks of one CPU each.

    Args:
        task, task_kwargs: rebuilt in each task (the base model comes from the disk cache).
        ratios_list: the vectors to evaluate.
        base: the base model's ``Baseline.to_dict()`` under ``measure``.
        measure: the run's measurement spec (the rows are labelled with it).
        workers: Ray tasks at most.
        tag: recorded as each row's ``worker`` (with the task's index).

    Returns:
        One sample row per vector (``evaluate_ratios``), in the order of ``ratios_list``.
    """
    import ray

    chunks = [list(range(i, len(ratios_list), workers)) for i in range(min(workers, len(ratios_list)))]
    remote = ray.remote(num_cpus=1)(_evaluate)
    futures = [remote.remote(task, task_kwargs, [ratios_list[j] for j in ch], base, measure.to_dict(), f"{tag}-{i}")
               for i, ch in enumerate(chunks)]
    rows: list = [None] * len(ratios_list)
    for ch, got in zip(chunks, ray.get(futures), strict=True):
        for j, row in zip(ch, got, strict=True):
            rows[j] = row
    return rows


def _evaluate(task_spec, task_kwargs, ratios_list, base, measure, worker):
    """Real samples for a few ratio vectors, in a Ray worker (the base model comes from the disk cache)."""
    from rlprune.measure.recipe import Baseline, evaluate_ratios
    from rlprune.tasks import get_task

    spec = MeasureSpec.from_dict(measure)
    task = get_task(task_spec, **task_kwargs)
    space = spec.task_space(task)
    b = Baseline(**base)
    return [evaluate_ratios(task, space, r, b, spec, sampler="online", worker=worker) for r in ratios_list]


__all__ = ["evaluate_remote"]
