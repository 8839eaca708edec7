"""A trained pruning policy as a self-contained folder: answer any budget in its range, no Ray, no training.

    from rlprune.policy import load
    answer = load("runs/search/policy").apply(0.45)
    answer["ratios"], answer["macs_ratio"], answer["predicted_acc_drop"]

The folder (written by :func:`save` into a temporary sibling and renamed into place, like every durable state
here)::

    policy.json   format and version, the env settings it was trained with (space record: group features and
                  the exact cost model; target range, budget, mode, wall, max ratio), the base model's
                  fingerprint, how actions map onto ratios, what trained it
    actor.pt2     the shared RLModule's inference pass as a ``torch.export`` program (any batch size):
                  observations -> action-distribution inputs ``[mean, log_std]``; its greedy action is the mean
    module.pt     the RLModule's ``state_dict`` (its weights, for inspection or further training)
    spn.pt        the SPN the policy was last trained against (the predicted accuracy drop)

:meth:`Policy.apply` replays the env's own episode logic (``rlprune.envs.game.PruningGame``, which imports no
Ray) with the greedy action, maps it into the action box exactly as RLlib does (``normalize_actions``), and
lands the vector on the target from below with ``CostModel.project_to_budget(relax=True)``, the projection
every method in ``rlprune run`` goes through, saying when it moved the policy's vector. Only :func:`save`
touches RLlib objects (it runs inside a search); loading and applying need torch and numpy alone.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from rlprune.errors import CheckpointError, ConfigError

FORMAT = "rlprune-policy"
VERSION = 1
_FILES = ("policy.json", "actor.pt2", "module.pt", "spn.pt")
_MAX_BATCH = 1 << 16  # agents one forward pass of the exported actor may take
_RANGE_TOL = 1e-9  # a target typed as the range's end must not fail on float noise
_ENV_KEYS = ("space", "target", "budget", "enforce", "mode", "w_acc", "w_cost", "w_violation", "max_ratio",
             "obs_all_groups", "seed")


# ====================================================================== writing (inside a search)
def save(path: str | os.PathLike, module, env_config: dict, spn, *, normalize_actions: bool,
         clip_actions: bool, meta: dict | None = None) -> Path:
    """Write a policy folder for a trained shared module.

    Args:
        path: the folder to create (replaced if it exists).
        module: the shared RLModule (a torch module: ``algo.get_module("shared")``).
        env_config: the ``env_config`` it was trained on; needs a ``space`` record (what makes the folder
            self-contained) and ``reward="spn"``.
        spn: the world model's latest weights: an ``SPN``, its ``state()`` dict or a checkpoint path.
        normalize_actions, clip_actions: the algorithm's settings (``algo.config``), how RLlib maps the
            module's output into the action box.
        meta: anything worth keeping beside it (task, search settings, iterations).

    Returns:
        The folder's path.

    Raises:
        ConfigError: an env_config without a space record, or with another reward than the SPN.
    """
    from rlprune.io import atomic_write_json, json_default
    from rlprune.spn.predictor import SPN, load_spn, save_spn

    if not isinstance(env_config.get("space"), dict) or env_config.get("reward", "spn") != "spn":
        raise ConfigError("a policy folder needs an env_config with a 'space' record and reward='spn' (the "
                          "search's own); a task- or callable-driven env cannot be replayed elsewhere")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model = spn if isinstance(spn, SPN) else SPN.from_state(spn) if isinstance(spn, dict) else load_spn(spn)
    save_spn(model, tmp / "spn.pt")
    env_settings = {k: env_config[k] for k in _ENV_KEYS if env_config.get(k) is not None}
    env_settings.update(reward="spn", spn=str(tmp / "spn.pt"))
    game = _game(env_settings)
    obs, _ = game.reset(options={"target": game.target_range[0]})
    # At least two rows: torch.export specialises a dimension it sees at size 1, and the batch must stay free
    # (all agents at once in simultaneous mode, one per step in sequential mode).
    batch = torch.as_tensor(np.stack(list(obs.values()))).repeat(2, 1)
    dim = torch.export.Dim("agents", min=1, max=_MAX_BATCH)
    actor = torch.export.export(_Actor(module).eval(), (batch,), dynamic_shapes=({0: dim},))
    torch.export.save(actor, tmp / "actor.pt2")
    torch.save(module.state_dict(), tmp / "module.pt")
    space = env_settings["space"]
    spec = {"format": FORMAT, "version": VERSION, "fingerprint": space.get("fingerprint"),
            "task": space.get("task"), "target_range": list(game.target_range), "budget": game.config.budget,
            "mode": game.config.mode, "normalize_actions": bool(normalize_actions), "clip_actions": bool(clip_actions),
            "n_groups": game.n_groups, "env": {k: v for k, v in env_settings.items() if k != "spn"},
            "meta": meta or {}}
    atomic_write_json(tmp / "policy.json", json.loads(json.dumps(spec, default=json_default)))
    _check_replay(Policy(tmp), module, obs, game, normalize_actions, clip_actions)
    old = path.with_name(path.name + ".old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def _check_replay(policy, module, obs, game, normalize_actions, clip_actions) -> None:
    """The folder must act as RLlib's env runners would: compare with ``greedy_actions`` once, at save time."""
    from types import SimpleNamespace

    from rlprune.policies import greedy_actions  # deferred: RLlib, present wherever a search saves

    cfg = SimpleNamespace(normalize_actions=normalize_actions, clip_actions=clip_actions)
    want = greedy_actions(cfg, module, obs, game.action_spaces)
    got = policy._act(obs)
    ids = list(obs)
    if not np.allclose([float(np.ravel(want[a])[0]) for a in ids], [got[a] for a in ids], atol=1e-5):
        raise RuntimeError("the saved actor does not reproduce the module's greedy actions; the module's action "
                           "distribution is not a diagonal Gaussian")


class _Actor(torch.nn.Module):
    """Observations -> the module's action-distribution inputs (what ``forward_inference`` returns)."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, obs):
        # RLlib's column names ("obs", "action_dist_inputs"), spelled out: this module must not import RLlib.
        return self.module.forward_inference({"obs": obs})["action_dist_inputs"]


def _game(env_settings: dict):
    from rlprune.envs.game import PruningGame  # no Ray: the env's logic without RLlib's base class

    return PruningGame(env_settings)


# ====================================================================== reading and applying
class Policy:
    """A loaded policy folder (see the module docstring); :func:`load` is the usual way in.

    Attributes:
        spec: ``policy.json``.
        target_range: ``(lo, hi)`` of the targets it was trained on.
        budget: ``"macs"`` or ``"params"``: what its targets constrain.
        fingerprint: the base model it prunes (``rlprune.io.model_fingerprint``).

    Raises:
        CheckpointError: a missing file, or a folder of another format or version.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        missing = [f for f in _FILES if not (self.path / f).is_file()]
        if missing:
            raise CheckpointError(f"{self.path} is not a policy folder (missing {', '.join(missing)}); train one "
                                  "with `rlprune search --targets 0.3:0.8 ...` and pass its out/policy")
        try:
            self.spec = json.loads((self.path / "policy.json").read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{self.path / 'policy.json'} does not parse ({e}); save the policy again") from e
        if self.spec.get("format") != FORMAT or self.spec.get("version") != VERSION:
            raise CheckpointError(f"{self.path} holds format {self.spec.get('format')!r} v{self.spec.get('version')}, "
                                  f"not {FORMAT!r} v{VERSION}; save the policy again with this rlprune")
        self.target_range = tuple(float(t) for t in self.spec["target_range"])
        self.budget = self.spec["budget"]
        self.fingerprint = self.spec.get("fingerprint")
        self.game = _game({**self.spec["env"], "reward": "spn", "spn": str(self.path / "spn.pt")})
        try:
            self.actor = torch.export.load(self.path / "actor.pt2").module()
        except (RuntimeError, OSError, ValueError) as e:
            raise CheckpointError(f"{self.path / 'actor.pt2'} does not load ({e}); save the policy again") from e

    def check_model(self, fingerprint: str) -> None:
        """Refuse a model other than the one the policy was trained on.

        Args:
            fingerprint: ``rlprune.io.model_fingerprint`` of the model about to be pruned.

        Raises:
            ConfigError: the fingerprints differ.
        """
        if fingerprint != self.fingerprint:
            raise ConfigError(f"policy {self.path} was trained for model {self.fingerprint}, not for {fingerprint}; "
                              "use a policy trained on this model (rlprune search --targets LO:HI on its task)")

    def apply(self, target: float) -> dict:
        """The greedy ratio vector for ``target``, its exact cost and the SPN's predicted drop.

        Args:
            target: pruned/original ``budget`` ratio, inside the trained range.

        Returns:
            ``target``, ``budget``, ``ratios`` (achieved, after channel rounding), ``macs_ratio``,
            ``params_ratio``, ``macs``, ``params`` (exact counts), ``predicted_acc_drop`` (points) and
            ``predicted_acc_drop_std``, ``meets_target`` (within ``TARGET_SLACK`` below it), ``projected``
            (whether the projection moved the policy's vector) with ``policy_ratios`` and
            ``policy_budget_ratio`` (the policy's own vector before the wall), ``note``, ``apply_s``.

        Raises:
            ConfigError: a target outside the trained range, or not a number.
        """
        from rlprune.space.costmodel import meets_target

        t0 = time.perf_counter()
        t = self._check_target(target)
        game = self.game
        obs, _ = game.reset(options={"target": t})
        while True:
            obs, _, term, _, infos = game.step(self._act(obs))
            if term["__all__"]:
                break
        info = next(iter(infos.values()))
        requested = np.asarray(info["requested"], dtype=np.float64)
        cm = game.cost_model
        final = cm.project_to_budget(np.asarray(info["ratios"]), t, self.budget, relax=True)
        achieved = cm.achieved(final)
        params, macs = cm.cost(achieved)
        drop, std = game.source(achieved, {"ratios": final.tolist(), "target": t, "budget": self.budget,
                                           "partial": False})
        raw = float(game.budget_ratios(requested)[0])
        budget_ratio = float(game.budget_ratios(achieved)[0])
        projected = not np.allclose(cm.achieved(requested), achieved)
        note = "the policy's vector met the target as it was"
        if projected:
            side = "over" if raw > t else "under"
            note = (f"the policy's vector used {raw:.4f} of the {self.budget} ({side} the target {t:g}); projected "
                    f"onto it from below with CostModel.project_to_budget: {budget_ratio:.4f}")
        return {
            "target": t, "budget": self.budget, "ratios": achieved.tolist(),
            "macs_ratio": float(macs / cm.base[1]), "params_ratio": float(params / cm.base[0]),
            "macs": int(macs), "params": int(params), "budget_ratio": budget_ratio,
            "predicted_acc_drop": float(drop), "predicted_acc_drop_std": float(std),
            "meets_target": bool(meets_target(budget_ratio, t)), "projected": bool(projected),
            "policy_ratios": requested.tolist(), "policy_budget_ratio": raw, "note": note,
            "fingerprint": self.fingerprint, "apply_s": time.perf_counter() - t0,
        }

    def _check_target(self, target) -> float:
        lo, hi = self.target_range
        if isinstance(target, bool) or not isinstance(target, (int, float, np.floating)) or not np.isfinite(target):
            raise ConfigError(f"target={target!r} must be a number in the trained range [{lo:g}, {hi:g}], e.g. "
                              f"{(lo + hi) / 2:g}")
        if not lo - _RANGE_TOL <= target <= hi + _RANGE_TOL:
            raise ConfigError(f"target {target:g} lies outside the range this policy was trained on "
                              f"[{lo:g}, {hi:g}] ({self.budget}); pass a target in it, or train a policy over a range "
                              f"that contains it (rlprune search --targets {min(lo, target):g}:{max(hi, target):g})")
        return float(min(max(target, lo), hi))

    def _act(self, obs: dict) -> dict:
        """The greedy action of every acting agent, mapped into its box as RLlib's env runners map it."""
        ids = list(obs)
        with torch.no_grad():
            out = self.actor(torch.as_tensor(np.stack([obs[a] for a in ids]))).numpy().astype(np.float64)
        mean = out[:, : out.shape[1] // 2]  # [mean, log_std] of a diagonal Gaussian: its mode is the mean
        box = self.game.action_spaces[ids[0]]
        low, high = box.low.astype(np.float64), box.high.astype(np.float64)
        if self.spec["normalize_actions"]:  # RLlib's unsquash_action: [-1, 1] -> [low, high], then clipped
            mean = np.clip(low + (mean + 1.0) * (high - low) / 2.0, low, high)
        elif self.spec["clip_actions"]:
            mean = np.clip(mean, low, high)
        return {a: float(mean[i, 0]) for i, a in enumerate(ids)}


def load(path: str | os.PathLike, fingerprint: str | None = None) -> Policy:
    """Load a policy folder written by :func:`save` (no Ray; torch, numpy and the SPN).

    Args:
        path: the folder (``<search out>/policy``).
        fingerprint: the model about to be pruned; refused if the policy was trained for another.

    Returns:
        The :class:`Policy`.

    Raises:
        CheckpointError: not a (readable) policy folder.
        ConfigError: ``fingerprint`` differs from the policy's model.
    """
    policy = Policy(path)
    if fingerprint is not None:
        policy.check_model(fingerprint)
    return policy


__all__ = ["FORMAT", "VERSION", "Policy", "load", "save"]
