"""The world model: a Ray actor that serves the SPN and fine-tunes it online on new real samples.

    wm = start_world_model("runs/spn.pt", store="runs/samples", workdir="runs/world_model", name="world_model")
    mean, std = ray.get(wm.predict.remote(R, fingerprint))       # (N,) acc_drop in points
    ray.get(wm.add_samples.remote(rows))    # real samples: appended to the store, queued for fine-tuning
    info = ray.get(wm.finetune.remote(200)) # new rows mixed with replayed old ones; version += 1; checkpoint
    spn = connect(wm)                       # an env's LocalSPN: predicts in-process, follows new versions

Durability: after every fine-tune the actor writes ``workdir/world_model.pt`` (weights, version, the ids
it has trained on) atomically, and keeps the rows queued since then in ``workdir/pending.json``. A
restarted actor (``max_restarts``) finds both and comes back with its last weights, version and queue.
This is the only module of the SPN family that imports Ray.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import ray

from rlprune.errors import ConfigError
from rlprune.io import atomic_write_json
from rlprune.spn.local import LocalSPN
from rlprune.spn.predictor import SPN, load_spn, one_thread, save_spn

CHECKPOINT = "world_model.pt"
PENDING = "pending.json"


class WorldModel:
    """Holds one SPN; run it as a Ray actor through :func:`start_world_model` (a plain object works too).

    Args:
        spn: initial checkpoint path (used only when ``workdir`` holds no checkpoint of its own).
        store: the sample store new rows are appended to and old rows are replayed from.
        workdir: where the actor's checkpoint and queue live (created if missing).
        replay_max: at most this many old rows are replayed per fine-tune.
        lr: fine-tuning learning rate.
        seed: seeds replay choice and minibatches (offset by the version, so fine-tunes differ).
    """

    def __init__(self, spn: str | os.PathLike, store: str | os.PathLike, workdir: str | os.PathLike,
                 replay_max: int = 2048, lr: float = 1e-3, seed: int = 0):
        self.store = Path(store)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.replay_max, self.lr, self.seed = int(replay_max), float(lr), int(seed)
        own = self.workdir / CHECKPOINT
        self.restored = own.is_file()
        self.spn: SPN = load_spn(own if self.restored else spn)
        self._version = int(self.spn.meta.get("world_model_version", 0)) if self.restored else 0
        trained = set(self.spn.meta.get("train_ids", []))
        self.pending: list[dict] = [r for r in self._read_pending() if str(r["sample_id"]) not in trained]
        self.history: list[dict] = list(self.spn.meta.get("world_model_history", []))

    # ------------------------------------------------------------------ serving
    def predict(self, R, fingerprint: str, target: str = "acc_drop", fidelity=None):
        """:meth:`rlprune.spn.SPN.predict` on the current weights (at ``fidelity``; None: the SPN's default,
        its highest): ``(mean, std)`` arrays of shape ``(N,)``."""
        return self.spn.predict(R, fingerprint, target, fidelity=fidelity)

    def version(self) -> int:
        """Number of fine-tunes applied (0: the initial checkpoint)."""
        return self._version

    def get_weights(self) -> dict:
        """``{"version": int, "state": SPN.state()}``: everything a :class:`LocalSPN` needs."""
        return {"version": self._version, "state": self.spn.state()}

    def weights_since(self, version: int):
        """``(version, state)`` if newer than ``version``, else None (one round trip for check + fetch)."""
        return None if int(version) >= self._version else (self._version, self.spn.state())

    def stats(self) -> dict:
        """Version, queue length, whether this incarnation restored a checkpoint, and every fine-tune's report."""
        return {"version": self._version, "n_pending": len(self.pending), "restored": self.restored,
                "history": list(self.history)}

    # ------------------------------------------------------------------ learning
    def add_samples(self, rows: list[dict]) -> int:
        """Append real sample rows to the store and queue them for the next fine-tune.

        Args:
            rows: dicts with ``rlprune.samples.store.SAMPLE_COLUMNS`` (as ``rlprune.measure.recipe.evaluate_ratios``
                returns them).

        Returns:
            How many rows were queued (rows already queued or already trained on are skipped).

        Raises:
            SampleStoreError: a row that does not fit the sample schema (nothing is stored or queued).
        """
        from rlprune.samples.store import append_samples

        append_samples(self.store, rows)  # validates every row first; duplicates of stored ids are dropped
        known = {str(r["sample_id"]) for r in self.pending} | set(self.spn.meta.get("train_ids", []))
        fresh = []
        for r in rows:
            sid = str(r["sample_id"])
            if sid not in known:
                known.add(sid)
                fresh.append(dict(r))
        if fresh:
            self.pending += fresh
            self._write_pending()
        return len(fresh)

    def finetune(self, steps: int = 200) -> dict:
        """Fine-tune on the queued rows mixed with replayed old ones; bump the version; checkpoint.

        Args:
            steps: optimiser steps.

        Returns:
            ``{"version", "changed", "n_new", "n_replay", "steps", "mae_before", "mae_after"}``: the MAE
            (points) on the new rows before and after, i.e. how wrong the SPN was on fresh real samples
            and how much it moved. ``changed`` is False (and nothing else happens) when nothing is queued.
        """
        from rlprune.samples.spaces import read_spaces
        from rlprune.spn.frames import predict_frame
        from rlprune.spn.train import finetune

        if not self.pending:
            return {"version": self._version, "changed": False, "n_new": 0, "n_replay": 0, "steps": 0}
        new = pd.DataFrame(self.pending)
        replay = self._replay(new)
        unknown = set(new["model_fingerprint"]) - set(self.spn.known)
        spaces = read_spaces(self.store) if unknown else None
        y = new["acc_drop"].to_numpy(np.float64)
        with one_thread():
            before = float(np.abs(predict_frame(self.spn, new, spaces)[0] - y).mean())
            seed = self.seed + self._version
            tuned = finetune(self.spn, new, replay, steps=steps, spaces=spaces, lr=self.lr, seed=seed)
            after = float(np.abs(predict_frame(tuned, new)[0] - y).mean())
        report = {"version": self._version + 1, "changed": True, "n_new": len(new), "n_replay": len(replay),
                  "steps": int(steps), "mae_before": before, "mae_after": after}
        tuned.meta["train_ids"] = list(self.spn.meta.get("train_ids", [])) + [str(s) for s in new["sample_id"]]
        tuned.meta["world_model_version"] = self._version + 1
        tuned.meta["world_model_history"] = self.history + [report]
        # Checkpoint first, then clear the queue: a crash in between re-queues nothing, because a restarted
        # actor drops queued rows whose ids the checkpoint lists as trained.
        save_spn(tuned, self.workdir / CHECKPOINT)
        self.spn, self._version = tuned, self._version + 1
        self.history.append(report)
        self.pending = []
        self._write_pending()
        return report

    def _replay(self, new: pd.DataFrame) -> pd.DataFrame:
        """Up to ``replay_max`` older rows of the models in ``new``, read back from the store.

        Only rows of the new rows' measurement spec qualify; for a multi-fidelity SPN, rows of that spec at
        any fidelity it was trained on (``rlprune.samples.store.fidelity_family``).
        Rows the SPN is known to have trained on come first; a checkpoint that does not list them (one
        from ``rlprune spn train``) replays the store's other rows of the same models, so a fine-tune on a
        handful of new rows never forgets what the SPN learnt before.
        """
        from rlprune.samples.store import fidelity_family, read_samples
        from rlprune.spn.frames import row_fidelities

        if not (self.store / "manifest.json").exists():
            return new.iloc[:0]
        old = read_samples(self.store)
        old = old[~old["sample_id"].astype(str).isin(set(new["sample_id"].astype(str)))]
        # Only labels measured like the new rows: a store shared by runs of other specs must not leak in.
        if self.spn.config.fidelity_input and len(old):
            families = {fidelity_family(m) for m in set(new["measure"])}
            old = old[old["measure"].map(lambda m: fidelity_family(m) in families)]
            old = old[np.isin(row_fidelities(old), self.spn.fidelities)] if len(old) else old
        else:
            old = old[old["measure_id"].isin(set(new["measure_id"]))]
        trained = set(self.spn.meta.get("train_ids", []))
        if trained:
            old = old[old["sample_id"].astype(str).isin(trained)]
        else:
            old = old[old["model_fingerprint"].isin(set(new["model_fingerprint"]))]
        if len(old) > self.replay_max:
            old = old.sample(self.replay_max, random_state=self.seed + self._version)
        return old.reset_index(drop=True)

    def _read_pending(self) -> list[dict]:
        try:
            rows = json.loads((self.workdir / PENDING).read_text())
        except (OSError, json.JSONDecodeError):  # none yet (writes are atomic, so never a torn file)
            return []
        return rows if isinstance(rows, list) else []

    def _write_pending(self) -> None:
        atomic_write_json(self.workdir / PENDING, self.pending)


def start_world_model(spn: str | os.PathLike, store: str | os.PathLike, workdir: str | os.PathLike,
                      name: str | None = None, max_restarts: int = 3, num_cpus: float = 0,
                      scheduling_strategy=None, **options):
    """Start the :class:`WorldModel` actor (Ray must be initialised).

    Args:
        spn: initial SPN checkpoint.
        store: sample store.
        workdir: the actor's own checkpoint folder; a restarted actor reloads from it.
        name: registers the actor so env workers can find it with ``ray.get_actor(name)``.
        max_restarts: how often Ray restarts it after a crash; calls in flight are retried as often.
        num_cpus: CPUs reserved for it; 0 by default so it never blocks RLlib or sampling trials from
            being scheduled on a small machine (it is idle most of the time).
        scheduling_strategy: where Ray places it (e.g. a soft ``NodeAffinitySchedulingStrategy``); None: Ray's
            default. A restart after its node died lands on a live node and reloads ``workdir``, which must
            then be on storage every node sees.
        **options: further :class:`WorldModel` arguments (``replay_max``, ``lr``, ``seed``).

    Returns:
        The actor handle.

    Raises:
        ConfigError: a missing initial checkpoint (checked here, not in a failing actor).
    """
    if not (Path(workdir) / CHECKPOINT).is_file() and not Path(spn).is_file():
        raise ConfigError(f"no SPN checkpoint at {spn}; train one with `rlprune spn train --out {spn}`")
    cls = ray.remote(WorldModel)
    return cls.options(name=name, max_restarts=max_restarts, max_task_retries=max_restarts, num_cpus=num_cpus,
                       scheduling_strategy=scheduling_strategy).remote(str(spn), str(store), str(workdir), **options)


def actor_fetch(actor):
    """A ``fetch(version)`` callable for :class:`rlprune.spn.local.LocalSPN`: one ``weights_since`` round trip.

    Args:
        actor: the world-model handle, or its registered name (looked up on each call, so a restarted
            actor is found again).

    Returns:
        ``fetch(version) -> None | (new_version, state)``.
    """

    def fetch(version: int):
        handle = ray.get_actor(actor) if isinstance(actor, str) else actor
        return ray.get(handle.weights_since.remote(version))

    return fetch


def connect(actor, check_every_s: float = 2.0) -> LocalSPN:
    """An env-side :class:`LocalSPN` holding the actor's current weights and following its new versions.

    Args:
        actor: the world-model handle, or its registered name.
        check_every_s: minimum seconds between two version checks.

    Returns:
        A ``LocalSPN`` at the actor's current version.
    """
    handle = ray.get_actor(actor) if isinstance(actor, str) else actor
    w = ray.get(handle.get_weights.remote())
    return LocalSPN(w["state"], version=w["version"], fetch=actor_fetch(actor), check_every_s=check_every_s)


__all__ = ["WorldModel", "actor_fetch", "connect", "start_world_model"]
