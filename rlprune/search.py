"""RL search: train the shared policy on ``LayerPruningEnv`` against the SPN, online, resumable.

    result = run_search(SearchConfig(task="digits", spn="runs/spn.pt", out="runs/search", target=0.5))
    result["ratios"], result["predicted_acc_drop"], result["macs_ratio"]

One iteration = one ``algo.train()`` of RLlib PPO (every group an agent, one shared module). After each
iteration the finished episodes' vectors are drained from the env copies and the greedy policy's vector is
scored; the best by predicted reward is kept. Online (default): every ``online_every`` iterations the top
candidates by an optimistic score (predicted reward plus ``ucb_beta`` x the SPN ensemble's std) are pruned
and evaluated for real by Ray tasks, appended to the sample store through the world-model actor, which
fine-tunes the SPN; the new weights are pushed into every env copy. Each round's report says how wrong the
SPN was on the fresh real samples before and after.

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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rlprune.errors import ConfigError
from rlprune.io import json_default

STATE_FILE = "rlprune_search.json"
"""Search state stored inside the algorithm checkpoint folder (so the two are renamed into place together)."""
TOP_KEPT = 64
"""Candidates remembered across iterations (by predicted reward)."""
# Settings that must match to resume a search in the same folder; the others (iters, online cadence) may change.
_RESUME_KEYS = ("task", "reward", "target", "budget", "mode", "enforce", "attention", "w_acc", "w_cost",
                "w_violation", "seed")


@dataclass(frozen=True)
class SearchConfig:
    """One RL search (the ``rlprune search`` flags map onto it one to one)."""

    spn: str | None
    """Initial SPN checkpoint (``rlprune spn train``); unused with ``reward="real"``."""
    out: str
    """Folder for the checkpoint, the world model's state and the result."""
    reward: str = "spn"
    """Where the accuracy term comes from: ``"spn"`` (the world model) or ``"real"`` (prune and evaluate
    every episode: the AMC-style search, kept for the speed comparison)."""
    task: str = "digits"
    """Task name or ``package.module:callable``."""
    task_kwargs: dict = field(default_factory=dict)
    """Extra task arguments (e.g. ``data_dir`` for cifar10)."""
    target: float = 0.5
    """Pruned/original ratio of ``budget`` to reach."""
    budget: str = "macs"
    """``"macs"`` or ``"params"``."""
    mode: str = "simultaneous"
    """Env mode: ``"simultaneous"`` or ``"sequential"``."""
    enforce: str = "wall"
    """Budget enforcement: ``"wall"`` (AMC-style) or ``"penalty"``."""
    iters: int = 20
    """Training iterations in total (a resumed search runs only the missing ones)."""
    train_batch: int = 256
    """Env steps per iteration."""
    attention: bool = False
    """Use the RLModule whose agents attend over every group's features."""
    w_acc: float = 1.0
    """Reward weight of the (negative) predicted accuracy drop, per point."""
    w_cost: float = 10.0
    """Reward weight of the compression ``1 - budget_ratio``."""
    w_violation: float = 100.0
    """Reward weight of the target violation (penalty mode)."""
    online: bool = True
    """Evaluate top candidates for real and fine-tune the SPN during the search."""
    online_every: int = 5
    """Iterations between two online rounds."""
    online_top: int = 4
    """Candidates evaluated for real per round."""
    online_steps: int = 100
    """SPN fine-tuning steps per round."""
    ucb_beta: float = 1.0
    """Optimism: candidates are ranked by reward + beta x w_acc x predicted std."""
    workers: int = 2
    """Ray tasks evaluating candidates in parallel."""
    samples: str | None = None
    """Sample store for the real evaluations (default ``out/samples``)."""
    eval_batches: int | None = None
    """Calibration batches per real evaluation (None: the whole split)."""
    seed: int = 0
    """Seeds the env, the policy and the task."""

    def __post_init__(self):
        checks = [
            (0 < self.target <= 1, "target", "a ratio in (0, 1], e.g. 0.5"),
            (self.budget in ("macs", "params"), "budget", "'macs' or 'params'"),
            (self.mode in ("simultaneous", "sequential"), "mode", "'simultaneous' or 'sequential'"),
            (self.enforce in ("wall", "penalty"), "enforce", "'wall' or 'penalty'"),
            (self.iters >= 1, "iters", ">= 1"),
            (self.train_batch >= 8, "train_batch", ">= 8 env steps"),
            (self.online_every >= 1, "online_every", ">= 1"),
            (self.online_top >= 1, "online_top", ">= 1"),
            (self.online_steps >= 1, "online_steps", ">= 1"),
            (self.ucb_beta >= 0, "ucb_beta", ">= 0"),
            (self.workers >= 1, "workers", ">= 1"),
            (self.reward in ("spn", "real"), "reward", "'spn' or 'real'"),
            (self.reward == "real" or bool(self.spn), "spn", "a checkpoint path (rlprune spn train)"),
            (self.reward == "spn" or not self.online, "online", "online=False with reward='real' (nothing to refine)"),
        ]
        for ok, name, fix in checks:
            if not ok:
                raise ConfigError(f"search {name}={getattr(self, name)!r} is invalid; use {fix}")

    @property
    def sample_dir(self) -> Path:
        return Path(self.samples) if self.samples else Path(self.out) / "samples"


# ====================================================================== the search
class Search:
    """A resumable RL search; :func:`run_search` is the one-call form."""

    def __init__(self, cfg: SearchConfig):
        from rlprune.io import model_fingerprint
        from rlprune.pruning import PruningSpace
        from rlprune.samples import open_store, space_record, write_space
        from rlprune.sampling import measure_baseline
        from rlprune.spn import load_spn
        from rlprune.tasks import get_task

        self.cfg = cfg
        self.out = Path(cfg.out)
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f"--out {self.out} is a file; pass a folder")
        if cfg.reward == "spn":
            load_spn(cfg.spn)  # fail now, with the checkpoint's own message, not inside an env runner
        self.task = get_task(cfg.task, seed=cfg.seed, **cfg.task_kwargs)
        model = self.task.base_model()
        self.space = PruningSpace.from_model(model, self.task.example_input())
        self.fingerprint = model_fingerprint(model)
        self.store = open_store(cfg.sample_dir)
        self.base = measure_baseline(self.task, model, cfg.eval_batches)
        self.record = space_record(self.task.name, self.space, self.base.acc, self.base.loss, self.fingerprint)
        write_space(self.store, self.record)
        self.state = {"config": dataclasses.asdict(cfg), "iteration": 0, "history": [], "candidates": [],
                      "online": [], "wall_s": 0.0, "evaluated": {}}
        self.algo = None
        self.world_model = None
        self._eval_env = None
        self._weights = None  # the world model's latest {"version", "state"}, once an online round ran

    # ------------------------------------------------------------------ setup
    def env_config(self, spn_path) -> dict:
        c = self.cfg
        common = {"target": c.target, "budget": c.budget, "enforce": c.enforce, "mode": c.mode, "w_acc": c.w_acc,
                  "w_cost": c.w_cost, "w_violation": c.w_violation, "seed": c.seed}
        if c.reward == "real":
            real = {"task": c.task, "task_kwargs": {"seed": c.seed, **c.task_kwargs}, "reward": "real"}
            return {**common, **real, **({"eval_batches": c.eval_batches} if c.eval_batches else {})}
        return {**common, "space": self.record, "reward": "spn", "spn": str(spn_path)}

    def _start(self) -> None:
        import ray

        from rlprune.policies import build_ppo_config
        from rlprune.world_model import CHECKPOINT, start_world_model

        if not ray.is_initialized():
            ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        wm_dir = self.out / "world_model"
        spn_now = wm_dir / CHECKPOINT if (wm_dir / CHECKPOINT).is_file() else self.cfg.spn
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
            self.state.update({k: saved[k] for k in ("iteration", "history", "candidates", "online", "wall_s",
                                                     "evaluated")})
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
                found = self._drain() + [self.greedy()]
                self._remember(found)
                row = {"iteration": it, "episodes": len(found) - 1,
                       "reward_mean": float(np.mean([f["reward"] for f in found])),
                       "best_reward": self.state["candidates"][0]["reward"],
                       "greedy_reward": found[-1]["reward"], "spn_version": found[-1]["spn_version"],
                       "train_s": time.perf_counter() - t0,
                       "env_steps": int(train.get("env_runners", {}).get("num_env_steps_sampled_lifetime", 0))}
                if self.cfg.online and it % self.cfg.online_every == 0:
                    row["online"] = self.online_round(it)
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

    def greedy(self) -> dict:
        """One deterministic episode of the current policy (Gaussian means) in a local env copy."""
        import torch

        from rlprune.envs import LayerPruningEnv
        from rlprune.policies import SHARED_POLICY

        if self._eval_env is None:
            self._eval_env = LayerPruningEnv(self.algo.config.env_config)
        env = self._eval_env
        if self._weights is not None:
            env.set_spn_state(self._weights["state"], self._weights["version"])
        module = self.algo.get_module(SHARED_POLICY)
        obs, _ = env.reset(seed=self.cfg.seed)
        info = {}
        while obs:
            ids = list(obs)
            with torch.no_grad():
                out = module.forward_inference({"obs": torch.as_tensor(np.stack([obs[a] for a in ids]))})
            mean = out["action_dist_inputs"][:, :1].numpy()
            obs, _, term, _, infos = env.step({a: mean[i] for i, a in enumerate(ids)})
            if term["__all__"]:
                info = infos[ids[0]] if ids[0] in infos else next(iter(infos.values()))
                break
        env.finished.clear()
        return dict(info, source="greedy")

    def _remember(self, found: list[dict]) -> None:
        keep = {}
        for c in self.state["candidates"] + [_candidate(f) for f in found]:
            key = _key(c["ratios"])
            if key not in keep or c["reward"] > keep[key]["reward"]:
                keep[key] = c
        self.state["candidates"] = sorted(keep.values(), key=lambda c: -c["reward"])[:TOP_KEPT]

    # ------------------------------------------------------------------ online refinement
    def online_round(self, iteration: int) -> dict:
        """Evaluate the most promising unevaluated candidates for real and fine-tune the SPN on them."""
        import ray

        from rlprune.spn import LocalSPN

        c = self.cfg
        pool = [x for x in self.state["candidates"] if _key(x["ratios"]) not in self.state["evaluated"]]
        pool.sort(key=lambda x: -(x["reward"] + c.ucb_beta * c.w_acc * _finite(x.get("acc_drop_std"))))
        chosen = pool[: c.online_top]
        if not chosen:
            return {"iteration": iteration, "n_real": 0, "changed": False}
        chunks = [chosen[i:: c.workers] for i in range(min(c.workers, len(chosen)))]
        remote = ray.remote(num_cpus=1)(_evaluate)
        futures = [remote.remote(c.task, {"seed": c.seed, **c.task_kwargs}, [x["ratios"] for x in ch],
                                           self.base.to_dict(), c.eval_batches, f"online{iteration}-{i}")
                   for i, ch in enumerate(chunks)]
        rows = [r for rs in ray.get(futures) for r in rs]
        for r in rows:
            self.state["evaluated"][_key(r["ratios"])] = r["acc_drop"]
        ray.get(self.world_model.add_samples.remote(rows))
        report = ray.get(self.world_model.finetune.remote(c.online_steps))
        self._weights = weights = ray.get(self.world_model.get_weights.remote())
        self._envs(lambda e: e.set_spn_state(weights["state"], weights["version"]))
        # Re-score remembered candidates with the new SPN: rewards from older weights are stale.
        local = LocalSPN(weights["state"], version=weights["version"])
        if self.fingerprint not in local.spn.known:
            local.spn.add_model(self.fingerprint, self.space.features())
        self._rescore(local)
        report.update(iteration=iteration, n_real=len(rows),
                      real_acc_drop=[r["acc_drop"] for r in rows],
                      predicted_before=[x["acc_drop"] for x in chosen])
        self.state["online"].append(report)
        return report

    def _rescore(self, local) -> None:
        from rlprune.envs.rewards import team_reward

        cands = self.state["candidates"]
        if not cands:
            return
        R = np.array([x["ratios"] for x in cands])
        mean, std = local.predict(R, self.fingerprint)
        for x, m, s in zip(cands, mean, std, strict=True):
            x["acc_drop"], x["acc_drop_std"] = float(m), float(s)
            x["reward"], _ = team_reward(float(m), x["budget_ratio"], self._reward_cfg())
        cands.sort(key=lambda x: -x["reward"])

    def _reward_cfg(self):
        from rlprune.envs import LayerPruningEnvConfig

        return LayerPruningEnvConfig.from_dict({**self.env_config(self.cfg.spn), "space": self.record})

    # ------------------------------------------------------------------ persistence
    def _checkpoint(self) -> None:
        """Write the algorithm and the search state into ``out/checkpoint`` in one rename."""
        ckpt, tmp, old = self.out / "checkpoint", self.out / "checkpoint.tmp", self.out / "checkpoint.old"
        shutil.rmtree(tmp, ignore_errors=True)
        self.algo.save_to_path(str(tmp.resolve()))
        (tmp / STATE_FILE).write_text(json.dumps(self.state, default=json_default))
        if ckpt.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(ckpt, old)
        os.replace(tmp, ckpt)
        shutil.rmtree(old, ignore_errors=True)

    def result(self) -> dict:
        """The best vector found, its exact cost and predicted drop, and what the search did."""
        best = self.state["candidates"][0]
        return {
            "ratios": best["ratios"],
            "predicted_acc_drop": best["acc_drop"],
            "predicted_acc_drop_std": best.get("acc_drop_std"),
            "real_acc_drop": self.state["evaluated"].get(_key(best["ratios"])),
            "macs_ratio": best["macs_ratio"],
            "params_ratio": best["params_ratio"],
            "reward": best["reward"],
            "target": self.cfg.target,
            "budget": self.cfg.budget,
            "iterations": self.state["iteration"],
            "episodes": int(sum(h["episodes"] for h in self.state["history"])),
            "checkpoint": str(self.out / "checkpoint"),
            "wall_s": self.state["wall_s"],
            "online_rounds": self.state["online"],
            "spn_versions": sorted({h["spn_version"] for h in self.state["history"] if h["spn_version"] is not None}),
            "top": self.state["candidates"][:8],
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
    from rlprune.io import atomic_write_json

    result = Search(cfg).run(progress=progress, on_iteration=on_iteration)
    atomic_write_json(Path(cfg.out) / "result.json", result)
    return result


def _evaluate(task_spec, task_kwargs, ratios_list, base, eval_batches, worker):
    """Real samples for a few ratio vectors, in a Ray worker (the base model comes from the disk cache)."""
    from rlprune.pruning import PruningSpace
    from rlprune.sampling import Baseline, evaluate_ratios
    from rlprune.tasks import get_task

    task = get_task(task_spec, **task_kwargs)
    space = PruningSpace.from_model(task.base_model(), task.example_input())
    b = Baseline(**base)
    return [evaluate_ratios(task, space, r, b, eval_batches=eval_batches, sampler="online", worker=worker)
            for r in ratios_list]


# ====================================================================== helpers
def _candidate(info: dict) -> dict:
    # NaN (no ensemble std, e.g. the real reward) becomes None so state and results stay strict JSON.
    info = {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in info.items()}
    return {k: info.get(k) for k in ("reward", "acc_drop", "acc_drop_std", "macs_ratio", "params_ratio",
                                     "budget_ratio", "spn_version")} | {"ratios": list(info["achieved"]),
                                                                         "source": info.get("source", "episode")}


def _key(ratios) -> str:
    return ",".join(f"{float(r):.6f}" for r in ratios)


def _finite(x) -> float:
    return float(x) if x is not None and np.isfinite(x) else 0.0


def _check_resumable(saved: dict, now: dict, out: Path) -> None:
    diff = {k: (saved.get(k), now.get(k)) for k in _RESUME_KEYS if saved.get(k) != now.get(k)}
    if diff:
        what = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
        raise ConfigError(f"{out} holds a search with other settings ({what}); use a new --out or the same settings")


# ====================================================================== command line
def add_search_parser(sub) -> None:
    """The ``rlprune search`` verb."""
    import argparse

    p = sub.add_parser(
        "search", help="RL search for per-group ratios against the SPN (online, resumable)",
        description="Train a shared policy (RLlib PPO, one agent per prunable group) against the SPN world model "
                    "at a MACs or params budget. Online (default): every few iterations the best candidates are "
                    "evaluated for real and the SPN is fine-tuned on them. Rerun the same command to resume.",
        epilog="examples:\n  rlprune search --task digits --spn runs/spn.pt --target-macs 0.5 --out runs/search\n"
               "  rlprune search --task digits --spn runs/spn.pt --target-params 0.4 --mode sequential "
               "--iters 40 --no-online --out runs/s2 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", default="digits", help="task name or package.module:callable (default digits)")
    p.add_argument("--data-dir", help="data folder for tasks that read local data")
    p.add_argument("--spn", help="SPN checkpoint from `rlprune spn train` (required unless --reward real)")
    p.add_argument("--reward", default="spn", choices=["spn", "real"],
                   help="accuracy term: the SPN (default) or real evaluation every episode (AMC-style, slow)")
    t = p.add_mutually_exclusive_group(required=True)
    t.add_argument("--target-macs", type=float, help="pruned/original MACs to reach, e.g. 0.5")
    t.add_argument("--target-params", type=float, help="pruned/original params to reach")
    p.add_argument("--out", required=True, help="folder for checkpoints and result.json (rerun to resume)")
    p.add_argument("--iters", type=int, default=20, help="training iterations in total (default 20)")
    p.add_argument("--train-batch", type=int, default=256, help="env steps per iteration (default 256)")
    p.add_argument("--mode", default="simultaneous", choices=["simultaneous", "sequential"])
    p.add_argument("--enforce", default="wall", choices=["wall", "penalty"], help="budget enforcement")
    p.add_argument("--attention", action="store_true", help="agents attend over every group's features")
    p.add_argument("--online", action=argparse.BooleanOptionalAction, default=True,
                   help="evaluate top candidates for real and fine-tune the SPN during the search")
    p.add_argument("--online-every", type=int, default=5, help="iterations between online rounds")
    p.add_argument("--online-top", type=int, default=4, help="candidates evaluated for real per round")
    p.add_argument("--w-acc", type=float, default=1.0, help="reward weight per accuracy point")
    p.add_argument("--w-cost", type=float, default=10.0, help="reward weight of the compression")
    p.add_argument("--w-violation", type=float, default=100.0, help="reward weight of a target violation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def cmd_search(args) -> int:
    """Run ``rlprune search``."""
    budget = "macs" if args.target_macs is not None else "params"
    cfg = SearchConfig(
        spn=args.spn, out=args.out, task=args.task, reward=args.reward,
        task_kwargs={"data_dir": args.data_dir} if args.data_dir else {},
        target=args.target_macs if budget == "macs" else args.target_params, budget=budget, mode=args.mode,
        enforce=args.enforce, iters=args.iters, train_batch=args.train_batch, attention=args.attention,
        w_acc=args.w_acc, w_cost=args.w_cost, w_violation=args.w_violation,
        online=args.online and args.reward == "spn",
        online_every=args.online_every, online_top=args.online_top, seed=args.seed,
    )
    result = run_search(cfg, progress=not args.json)
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "top"}, indent=2, default=json_default))
    else:
        print(f"best ratios: {' '.join(f'{r:.3f}' for r in result['ratios'])}")
        print(f"MACs {result['macs_ratio']:.3f}, params {result['params_ratio']:.3f} of base; predicted drop "
              f"{result['predicted_acc_drop']:.2f} points; {result['iterations']} iterations, "
              f"{result['wall_s']:.1f} s; SPN fine-tuned {len(result['online_rounds'])} times")
        print(f"checkpoint: {result['checkpoint']}")
    return 0
