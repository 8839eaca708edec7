"""Ray start-up and the Tune experiment runner, shared by every stage that runs on Ray.

Sampling, the reward sweep and the validation trials are each one Tune experiment run through
:func:`fit_experiment` (a progress bar over all trials, the ``ResultGrid`` written as CSV, one error naming
the failed trials); :func:`init_ray` starts or joins the cluster once per process. Ray is imported inside
the functions: it costs seconds and most ``rlprune`` verbs never need it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

from rlprune.errors import RlpruneError
from rlprune.io import atomic_write_bytes


def init_ray(address: str | None, workers: int) -> bool:
    """Connect to ``address`` or start a local instance; True if this call started it (and should stop it)."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")  # set for drivers started by `ray job submit`
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    else:
        # "local" never attaches to a cluster someone else started with `ray start` on this machine.
        ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
    return True


def report(metrics: dict) -> None:
    """``tune.report`` with the id of the node the trial runs on (where trials ran ends up in the summary)."""
    import ray
    from ray import tune

    tune.report({**metrics, "node_id": ray.get_runtime_context().get_node_id()})


def merge_placements(*placements: dict | None) -> dict:
    """One stage's placement from several experiments' (:func:`fit_experiment`): nodes, trials, retries added."""
    done = [p for p in placements if p]
    return {"nodes": sorted({n for p in done for n in p["nodes"]}), "trials": sum(p["trials"] for p in done),
            "retries": sum(p["retries"] for p in done),
            "per_trial": {k: v for p in done for k, v in p["per_trial"].items()}}


class TrialsFailed(RlpruneError, RuntimeError):
    """Some trials of a Tune experiment failed; finished trials' outputs are kept, a rerun resumes."""


# ====================================================================== shared Tune plumbing
def fit_experiment(trainable, param_space: dict, storage: Path, name: str, *, max_concurrent: int, total: int,
                   unit: str, desc: str, count, progress: bool | None, csv: Path, dirname, initial: int = 0,
                   max_failures: int = 2):
    """Run one Tune experiment with a progress bar; write its ResultGrid as CSV; raise if trials failed.

    Args:
        trainable, param_space: what ``tune.Tuner`` runs.
        storage, name: the experiment folder is ``storage/name``.
        max_concurrent: trials at once (0: as many as resources allow).
        total, initial, unit, desc: the bar (``initial`` counts work done before this experiment).
        count: ``result -> int``, a trial's progress so far from its latest report.
        progress: show the bar (None: when stderr is a terminal).
        csv: where the ResultGrid dataframe goes.
        dirname: ``trial -> str``, each trial's folder and name.
        max_failures: Tune restarts of a trial whose worker died.

    Returns:
        ``(ResultGrid, placement)``; ``placement`` is ``{"nodes", "trials", "retries", "per_trial"}``: the node
        ids trials reported from (trainables that report through :func:`report`), how many trials, how often
        Tune restarted one (a worker or its node died), and those per trial name.

    Raises:
        TrialsFailed: a trial failed after its retries (what finished trials wrote is kept).
    """
    from ray import tune
    from tqdm import tqdm

    bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr,
               disable=None if progress is None else not progress)

    class Progress(tune.Callback):
        """Moves the bar to the sum of every trial's latest count; notes each trial's nodes and restarts."""

        def __init__(self):
            self.done: dict[str, int] = {}
            self.trials: dict[str, dict] = {}

        def _trial(self, trial) -> dict:
            return self.trials.setdefault(str(trial), {"nodes": [], "retries": 0})

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.done[trial.trial_id] = max(self.done.get(trial.trial_id, 0), count(result))
            bar.update(min(total, initial + sum(self.done.values())) - bar.n)
            nodes = self._trial(trial)["nodes"]
            if result.get("node_id") and result["node_id"] not in nodes:
                nodes.append(result["node_id"])

        def on_trial_recover(self, iteration, trials, trial, **info):
            self._trial(trial)["retries"] += 1
            bar.write(f"{desc}: trial {trial} failed (its worker or node died); Tune restarts it")

    progress_cb = Progress()

    tuner = tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent,
                                    trial_dirname_creator=dirname, trial_name_creator=dirname),
        run_config=tune.RunConfig(storage_path=str(storage), name=name, verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=max_failures),
                                  callbacks=[progress_cb]),
    )
    # Tune's own SIGINT handler ends the experiment quietly and returns as if it had finished, so a caller that
    # tops up what is missing (sampling) would start another round: Ctrl-C must stop the command instead.
    # Everything finished is already on disk (append-only shards, atomic results); a rerun resumes.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    try:
        with contextlib.redirect_stdout(sys.stderr):  # Tune prints tables; stdout is for results
            grid = tuner.fit()
    finally:
        bar.close()
    atomic_write_bytes(csv, grid.get_dataframe().to_csv(index=False).encode())
    errors = [r.error for r in grid if r.error is not None]
    if errors:
        last = str(errors[0]).strip().splitlines()
        raise TrialsFailed(f"{len(errors)} of {len(grid)} {desc} trials failed ({type(errors[0]).__name__}: "
                           f"{last[-1] if last else ''}); see {storage / name}; finished trials are kept, rerun "
                           f"the same command to resume")
    per_trial = progress_cb.trials
    return grid, {"nodes": sorted({n for t in per_trial.values() for n in t["nodes"]}), "trials": len(grid),
                  "retries": sum(t["retries"] for t in per_trial.values()), "per_trial": per_trial}
