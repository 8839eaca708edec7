"""RL search: train the shared policy on ``LayerPruningEnv`` against the SPN, online, resumable.

    result = run_search(SearchConfig(task="digits", spn="runs/spn.pt", out="runs/search", target=0.5))
    result["ratios"], result["predicted_acc_drop"], result["macs_ratio"]

    # One policy for every target in a range, saved as a folder that answers any of them (rlprune.policy):
    result = run_search(SearchConfig(task="digits", spn="runs/spn.pt", out="runs/cond", target=(0.3, 0.8)))
    result["per_target"], result["policy"]

One iteration = one ``algo.train()`` of RLlib PPO (every group an agent, one shared module). After each
iteration the finished episodes' vectors are drained from the env copies and the greedy policy's vector is
scored; the best by predicted reward is kept. Online (default): every ``online_every`` iterations the top
candidates by an optimistic score (predicted reward plus ``ucb_beta`` x the SPN ensemble's std) are pruned
and evaluated for real by Ray tasks, appended to the sample store through the world-model actor, which
fine-tunes the SPN; the new weights are pushed into every env copy. Each round's report says how wrong the
SPN was on the fresh real samples before and after.

Target-conditioned (``target=(lo, hi)``): every episode draws its target from the range, the candidates are
kept per target bin (``rlprune.search.candidates.BinnedPool``), the greedy policy is played at every bin's
centre after each iteration, and an online round takes its candidates from the bins in turn. Either way the
trained policy is saved as ``out/policy`` (``rlprune.policy``: weights, space, settings, SPN).

Durable: the algorithm checkpoint and the search state are written together into ``out/checkpoint`` through
a rename after every iteration; rerunning with the same ``out`` continues from there (``iters`` may grow).
Only this module and the other orchestration modules import Ray (lazily, so the CLI parser stays light).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from rlprune.errors import ConfigError
from rlprune.io import atomic_write_json, json_default
from rlprune.search.candidates import BinnedPool, CandidatePool, pool_from_state
from rlprune.search.config import RESUME_KEYS, SearchConfig
from rlprune.search.remote import _evaluate, evaluate_remote  # noqa: F401  (re-exported: older imports)

STATE_FILE = "rlprune_search.json"
"""Search state stored inside the algorithm checkpoint folder (so the two are renamed into place together)."""
POLICY_DIR = "policy"
"""Where a search saves its trained policy (``rlprune.policy``), inside its ``out`` folder."""


# ====================================================================== the search
class Search:
    """A resumable RL search; :func:`run_search` is the one-call form."""

    def __init__(self, cfg: SearchConfig):
        from rlprune.io import model_fingerprint
        from rlprune.measure.recipe import measure_baseline
        from rlprune.samples.spaces import space_record, write_space
        from rlprune.samples.store import open_store
        from rlprune.spn.predictor import load_spn
        from rlprune.tasks import get_task

        self.cfg = cfg
        self.out = Path(cfg.out)
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f"--out {self.out} is a file; pass a folder")
        if cfg.reward == "spn":
            load_spn(cfg.spn)  # fail now, with the checkpoint's own message, not inside an env runner
        self.task = get_task(cfg.task, **{"seed": cfg.seed, **cfg.task_kwargs})  # a model seed given wins
        model = self.task.base_model()
        self.space = cfg.measure.space_of(model, self.task.example_input())
        self.fingerprint = model_fingerprint(model)
        self.store = open_store(cfg.sample_dir)
        self.base = measure_baseline(self.task, model, cfg.measure)
        self.record = space_record(self.task.name, self.space, self.base.acc, self.base.loss, self.fingerprint,
                                   cfg.measure, self.task.metric_name)
        write_space(self.store, self.record)
        self.pool = BinnedPool(*cfg.target_range) if cfg.conditioned else CandidatePool()
        self.state = {"config": dataclasses.asdict(cfg), "iteration": 0, "history": [], "online": [], "wall_s": 0.0}
        self.algo = None
        self.world_model = None
        self._eval_env = None
        self._weights = None  # the world model's latest {"version", "state"}, once an online round ran
        self._reward_cfg = None
        self._spn_now = cfg.spn  # the SPN the env copies start from (the world model's, when resuming)

    # ------------------------------------------------------------------ setup
    def env_config(self, spn_path) -> dict:
        c = self.cfg
        target = list(c.target) if c.conditioned else c.target
        common = {"target": target, "budget": c.budget, "enforce": c.enforce, "mode": c.mode, "w_acc": c.w_acc,
                  "w_cost": c.w_cost, "w_violation": c.w_violation, "seed": c.seed}
        if c.reward == "real":
            return {**common, "task": c.task, "task_kwargs": {"seed": c.seed, **c.task_kwargs}, "reward": "real",
                    "measure": c.measure.to_dict()}
        return {**common, "space": self.record, "reward": "spn", "spn": str(spn_path)}

    def _start(self) -> None:
        import ray

        from rlprune.orchestration import init_ray
        from rlprune.policies import build_ppo_config
        from rlprune.spn.world_model import CHECKPOINT, start_world_model

        init_ray(None, os.cpu_count() or 2)  # joins a running instance (a Tune trial's) or starts one
        wm_dir = self.out / "world_model"
        self._spn_now = spn_now = wm_dir / CHECKPOINT if (wm_dir / CHECKPOINT).is_file() else self.cfg.spn
        if self.cfg.online:
            self.world_model = start_world_model(self.cfg.spn, self.store, wm_dir, seed=self.cfg.seed)
            self._weights = ray.get(self.world_model.get_weights.remote())
        config = build_ppo_config(self.env_config(spn_now), train_batch_env_steps=self.cfg.train_batch,
                                  attention=self.cfg.attention, seed=self.cfg.seed)
        self.algo = config.build_algo()
        ckpt = self.out / "checkpoint"
        if (ckpt / STATE_FILE).is_file():
            saved = json.loads((ckpt / STATE_FILE).read_text())
            _check_resumable(saved["config"], dataclasses.asdict(self.cfg), self.out)
            self.algo.restore_from_path(str(ckpt.resolve()))
            self.state.update({k: saved[k] for k in ("iteration", "history", "online", "wall_s")})
            self.pool = pool_from_state(saved["pool"])
            self.state["config"] = dataclasses.asdict(self.cfg)

    # ------------------------------------------------------------------ main loop
    def run(self, progress: bool = True, on_iteration=None) -> dict:
        """Train until ``iters`` iterations are done; returns :meth:`result`.

        Args:
            progress: show a progress bar.
            on_iteration: optional callable given each iteration's history row once it is checkpointed
                (a Tune trial reports it).
        """
        from tqdm import tqdm

        self._start()
        try:
            done = self.state["iteration"]
            bar = tqdm(total=self.cfg.iters, initial=done, desc="rl search", unit="iter", file=sys.stderr,
                       disable=not progress)
            while self.state["iteration"] < self.cfg.iters:
                t0 = time.perf_counter()
                train = self.algo.train()
                it = self.state["iteration"] + 1
                greedy = self.greedy_all()
                found = self._drain() + greedy
                calls = sum(self._envs(lambda e: e.drain_reward_calls())) + self._eval_env.drain_reward_calls()
                self.pool.add(found)
                row = {"iteration": it, "episodes": len(found) - len(greedy),
                       "reward_mean": float(np.mean([f["reward"] for f in found])),
                       "best_reward": self.best_reward(),
                       "greedy_reward": float(np.mean([g["reward"] for g in greedy])),
                       "spn_version": greedy[-1]["spn_version"],
                       "train_s": time.perf_counter() - t0,
                       "env_steps": int(train.get("env_runners", {}).get("num_env_steps_sampled_lifetime", 0))}
                if self.cfg.online and it % self.cfg.online_every == 0:
                    row["online"] = self.online_round(it)
                    calls += row["online"].get("rescored", 0)
                row["reward_calls"] = calls
                row["wall_s"] = time.perf_counter() - t0
                self.state["history"].append(row)
                self.state["iteration"] = it
                self.state["wall_s"] += row["wall_s"]
                self._checkpoint()
                if on_iteration is not None:
                    on_iteration(row)
                bar.update(1)
                bar.set_postfix(best=f"{row['best_reward']:.2f}", greedy=f"{row['greedy_reward']:.2f}")
            bar.close()
            self.save_policy()
            return self.result()
        finally:
            self.close()

    def close(self) -> None:
        import ray

        if self.algo is not None:
            self.algo.stop()
            self.algo = None
        if self.world_model is not None:
            ray.kill(self.world_model, no_restart=True)
            self.world_model = None

    # ------------------------------------------------------------------ candidates
    def _envs(self, fn):
        """Apply ``fn`` to every env copy (local and remote env runners); returns the flattened results."""
        def per_runner(runner):
            env = getattr(runner, "env", None)
            return [] if env is None else [fn(e.unwrapped) for e in env.envs]

        return [x for xs in self.algo.env_runner_group.foreach_env_runner(per_runner) for x in xs]

    def _drain(self) -> list[dict]:
        return [f for fs in self._envs(lambda e: e.drain_finished()) for f in fs]

    def best_reward(self) -> float:
        """The best predicted reward found (conditioned: the mean over the bins' bests)."""
        if isinstance(self.pool, BinnedPool):
            return float(np.mean([b["reward"] for b in self.pool.best_per_bin() if b is not None]))
        return self.pool.best["reward"]

    def greedy_all(self) -> list[dict]:
        """The greedy policy's episodes: one at the target, or one at each bin's centre when conditioned."""
        if isinstance(self.pool, BinnedPool):
            return [self.greedy(t) for t in self.pool.centers]
        return [self.greedy()]

    def greedy(self, target: float | None = None) -> dict:
        """One episode of the current policy's deterministic action, played in a local env copy.

        The action is what RLlib's env runners would send the env for the distribution's mode: the same
        unsquashing/clipping, read from the algorithm's config (``rlprune.policies.greedy_actions``).

        Args:
            target: the episode's target (conditioned searches); None: the search's fixed target.
        """
        from rlprune.envs import LayerPruningEnv
        from rlprune.policies import greedy_episode

        if self._eval_env is None:
            self._eval_env = LayerPruningEnv(self.algo.config.env_config)
        env = self._eval_env
        if self._weights is not None:
            env.set_spn_state(self._weights["state"], self._weights["version"])
        info = greedy_episode(self.algo, env, seed=self.cfg.seed, target=target)
        env.finished.clear()
        return dict(info, source="greedy")

    # ------------------------------------------------------------------ online refinement
    def online_round(self, iteration: int) -> dict:
        """Evaluate the most promising unevaluated candidates for real and fine-tune the SPN on them."""
        import ray

        from rlprune.spn.local import LocalSPN

        c = self.cfg
        chosen = self.pool.most_promising(c.online_top, c.ucb_beta, c.w_acc)
        if not chosen:
            return {"iteration": iteration, "n_real": 0, "changed": False}
        # Read now: the pool's items are the dicts the re-scoring below overwrites with the tuned SPN's view.
        predicted = [float(x["acc_drop"]) for x in chosen]
        rows = evaluate_remote(c.task, {"seed": c.seed, **c.task_kwargs}, [x["ratios"] for x in chosen],
                               self.base.to_dict(), c.measure, c.workers, f"online{iteration}")
        for r in rows:
            self.pool.record_real(r["ratios"], r["acc_drop"])
        ray.get(self.world_model.add_samples.remote(rows))
        report = ray.get(self.world_model.finetune.remote(c.online_steps))
        self._weights = weights = ray.get(self.world_model.get_weights.remote())
        self._envs(lambda e: e.set_spn_state(weights["state"], weights["version"]))
        local = LocalSPN(weights["state"], version=weights["version"])
        if self.fingerprint not in local.spn.known:
            local.spn.add_model(self.fingerprint, self.space.features())
        report["rescored"] = len(self.pool.items)  # SPN calls too: they count against the search's budget
        self.pool.rescore(lambda R: local.predict(R, self.fingerprint), self._reward)
        report.update(iteration=iteration, n_real=len(rows),
                      real_acc_drop=[r["acc_drop"] for r in rows],
                      predicted_before=predicted)
        self.state["online"].append(report)
        return report

    def _reward(self, acc_drop: float, budget_ratio: float, target: float | None = None) -> float:
        from rlprune.envs import LayerPruningEnvConfig
        from rlprune.envs.rewards import team_reward

        if self._reward_cfg is None:
            self._reward_cfg = LayerPruningEnvConfig.from_dict({**self.env_config(self.cfg.spn), "space": self.record})
        return team_reward(acc_drop, budget_ratio, self._reward_cfg, target=target)[0]

    def save_policy(self) -> Path | None:
        """Save the trained shared module as ``out/policy`` (``rlprune.policy``), against the latest SPN.

        Returns:
            The folder, or None for the AMC-style search (its reward is real evaluation: no SPN to pack).
        """
        from rlprune.policies import SHARED_POLICY
        from rlprune.policy import save

        if self.cfg.reward != "spn":
            return None
        env_config = dict(self.algo.config.env_config)
        spn = self._weights["state"] if self._weights is not None else str(self._spn_now)
        c = self.cfg
        meta = {"task": c.task, "task_kwargs": c.task_kwargs, "seed": c.seed, "iterations": self.state["iteration"],
                "attention": c.attention, "measure": c.measure.to_dict(), "spn_calls": self.spn_calls()}
        return save(self.out / POLICY_DIR, self.algo.get_module(SHARED_POLICY), env_config, spn,
                    normalize_actions=self.algo.config.normalize_actions, clip_actions=self.algo.config.clip_actions,
                    meta=meta)

    def spn_calls(self) -> int:
        """Every counted call of the env's reward source so far (SPN calls, or real evaluations)."""
        return int(sum(h.get("reward_calls", 0) for h in self.state["history"]))

    # ------------------------------------------------------------------ persistence
    def _checkpoint(self) -> None:
        """Write the algorithm and the search state into ``out/checkpoint`` in one rename."""
        ckpt, tmp, old = self.out / "checkpoint", self.out / "checkpoint.tmp", self.out / "checkpoint.old"
        shutil.rmtree(tmp, ignore_errors=True)
        self.algo.save_to_path(str(tmp.resolve()))
        (tmp / STATE_FILE).write_text(json.dumps({**self.state, "pool": self.pool.state()}, default=json_default))
        if ckpt.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(ckpt, old)
        os.replace(tmp, ckpt)
        shutil.rmtree(old, ignore_errors=True)

    def result(self) -> dict:
        """The best vector found (per target bin when conditioned), its exact cost and predicted drop, and
        what the search did."""
        calls = self.spn_calls()
        online_evals = int(sum(r.get("n_real", 0) for r in self.state["online"]))
        if isinstance(self.pool, BinnedPool):
            edges = self.pool.edges
            found = {"per_target": [{"target_lo": float(edges[i]), "target_hi": float(edges[i + 1]),
                                     **(self._describe(b) if b is not None else {"ratios": None})}
                                    for i, b in enumerate(self.pool.best_per_bin())],
                     "target": list(self.cfg.target)}
        else:
            found = {**self._describe(self.pool.best), "target": self.cfg.target}
        policy = self.out / POLICY_DIR
        return {
            **found,
            "conditioned": self.cfg.conditioned,
            "policy": str(policy) if (policy / "policy.json").is_file() else None,
            "budget": self.cfg.budget,
            "iterations": self.state["iteration"],
            "episodes": int(sum(h["episodes"] for h in self.state["history"])),
            # Counted, not derived from episodes: every call of the env's reward source (SPN predictions, or real
            # evaluations for the AMC-style search) plus the online rounds' real evaluations and re-scoring.
            "spn_calls": calls if self.cfg.reward == "spn" else 0,
            "real_evals": online_evals + (calls if self.cfg.reward == "real" else 0),
            "checkpoint": str(self.out / "checkpoint"),
            "wall_s": self.state["wall_s"],
            "online_rounds": self.state["online"],
            "spn_versions": sorted({h["spn_version"] for h in self.state["history"] if h["spn_version"] is not None}),
            "top": self.pool.items[:8],
        }

    def _describe(self, best: dict) -> dict:
        return {
            "ratios": best["ratios"],
            "predicted_acc_drop": best["acc_drop"],
            "predicted_acc_drop_std": best.get("acc_drop_std"),
            "real_acc_drop": self.pool.real_drop(best["ratios"]),
            "macs_ratio": best["macs_ratio"],
            "params_ratio": best["params_ratio"],
            "reward": best["reward"],
            "episode_target": best.get("target"),
        }


def run_search(cfg: SearchConfig, progress: bool = True, on_iteration=None) -> dict:
    """Run (or resume) a search and write ``out/result.json``.

    ``on_iteration`` is passed to :meth:`Search.run`.

    Returns:
        :meth:`Search.result`.

    Raises:
        ConfigError: bad settings, or ``out`` holding a search with different settings.
        CheckpointError: an unreadable SPN checkpoint.
    """
    result = Search(cfg).run(progress=progress, on_iteration=on_iteration)
    atomic_write_json(Path(cfg.out) / "result.json", result)
    return result


def _check_resumable(saved: dict, now: dict, out: Path) -> None:
    now = json.loads(json.dumps(now, default=json_default))  # as saved: a target range is a list in JSON
    diff = {k: (saved.get(k), now.get(k)) for k in RESUME_KEYS if saved.get(k) != now.get(k)}
    if diff:
        what = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
        raise ConfigError(f"{out} holds a search with other settings ({what}); use a new --out or the same settings")

__all__ = ["POLICY_DIR", "STATE_FILE", "Search", "SearchConfig", "evaluate_remote", "run_search"]
