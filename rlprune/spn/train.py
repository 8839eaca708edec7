"""Training and fine-tuning of SPNs (models in ``rlprune.spn.predictor``, frames and metrics in
``rlprune.spn.frames``).

    train_df, test_df = split_samples(read_samples(store), test_frac=0.2)
    spn = fit("transformer", train_df, read_spaces(store))   # early stopping on a validation split
    spn2 = finetune(spn, new_df, replay_df, steps=200)       # online / transfer
    mf = fit("transformer", df_all_k, spaces, multi_fidelity=True)   # rows of several label fidelities
    mf.predict(R, fp)                                        # at the highest of them (mf.fidelity)

Multi-fidelity. Rows of several label fidelities (``MeasureSpec.label_steps``; the store reads them with
``read_samples(..., across_fidelities=True)``) are one data set with the fidelity as an input, so many cheap
labels teach the shape of the ratio space and a few expensive ones its level and ranking at the top
fidelity. Rows count alike in the loss; early stopping holds out each fidelity's share and weighs every
fidelity's validation MAE alike, so the few top-fidelity rows decide as much as the many cheap ones.

The ensemble is a deep ensemble (Lakshminarayanan et al. 2017): members differ by their initialisation
only. A Poisson bootstrap on top cost ~10% MAE on digits and ranked errors no better (rank correlation of
|error| and std ~0.6 either way), so only ``linear``, whose members would otherwise be identical, is
bootstrapped.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from rlprune.errors import ConfigError
from rlprune.spn.frames import (
    SampleRows,
    evaluate,
    evaluate_by_fidelity,
    register_models,
    sample_rows,
    space_features,
    split_samples,
)
from rlprune.spn.predictor import FEATURE_STD_FLOOR, SPN, SPNConfig, one_thread

RIDGE_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
"""Penalties ``linear`` chooses from on the validation split."""


@dataclass(frozen=True)
class FitConfig:
    """How an SPN is trained."""

    max_steps: int = 4000
    """Upper bound on optimiser steps (early stopping usually ends sooner)."""
    batch_size: int = 64
    """Rows per step."""
    lr: float = 3e-3
    """AdamW learning rate."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    eval_every: int = 25
    """Steps between two validation checks."""
    patience: int = 24
    """Validation checks without improvement before stopping (the best weights are restored)."""
    val_frac: float = 0.15
    """Share of the training rows held out for early stopping (and for ``linear``'s ridge)."""
    loss_weight: float = 0.3
    """Weight of the ``loss`` target next to ``acc_drop`` (1)."""
    seed: int = 0
    """Seeds the split, the init and the minibatches."""

    def __post_init__(self):
        for name in ("max_steps", "batch_size", "eval_every", "patience"):
            if getattr(self, name) < 1:
                raise ConfigError(f"FitConfig.{name}={getattr(self, name)} must be >= 1")
        if not 0 < self.val_frac < 0.5:
            raise ConfigError(f"FitConfig.val_frac={self.val_frac} must lie in (0, 0.5), e.g. 0.15")
        if not self.lr > 0:
            raise ConfigError(f"FitConfig.lr={self.lr} must be > 0")


# ====================================================================== training
def fit(arch: str, df: pd.DataFrame, spaces: dict, fit_config: FitConfig | None = None,
        multi_fidelity: bool = False, **spn_options) -> SPN:
    """Train a new SPN on samples.

    Args:
        arch: ``transformer``, ``mlp`` or ``linear``.
        df: training samples (one or several models for ``transformer``; one model otherwise).
        spaces: ``read_spaces`` records by fingerprint, covering every model in ``df``.
        fit_config: optimisation settings; defaults to ``FitConfig()``.
        multi_fidelity: learn rows of several label fidelities at once, the fidelity as an input (see the
            module docstring); rows of one fidelity give a single-fidelity SPN either way.
        **spn_options: ``SPNConfig`` fields (``members``, ``d_model``, ...).

    Returns:
        The trained SPN; ``spn.meta`` records the split sizes, steps, validation MAE and training ids, and
        ``spn.fidelities`` the label fine-tune steps of its rows.

    Raises:
        ConfigError: bad options, too few rows, ``mlp``/``linear`` on several models, rows of several
            fidelities without ``multi_fidelity``, or a row without ``acc_drop``.
        SampleStoreError: rows that do not match their model's space record.
    """
    fc = fit_config or FitConfig()
    if len(df) < 8:
        raise ConfigError(f"only {len(df)} samples to train on; generate at least 8 (hundreds for a useful SPN)")
    fps = list(dict.fromkeys(df["model_fingerprint"]))
    register = {fp: space_features(spaces, fp) for fp in fps if fp in spaces}
    data = sample_rows(df, {fp: f.shape[0] for fp, (f, _) in register.items()})
    if arch != "transformer" and len(fps) > 1:
        raise ConfigError(f"{arch} takes one model's fixed group count but the samples hold {len(fps)} models; "
                          f"pass --fingerprint or use --arch transformer")
    fidelities = sorted(set(data.fidelity.tolist()))
    if len(fidelities) > 1 and not multi_fidelity:
        raise ConfigError(f"the samples hold labels of {len(fidelities)} fidelities (label_steps {fidelities}); "
                          f"learn them together with multi_fidelity=True (`rlprune spn train --multi-fidelity`) "
                          f"or pick one with --measure-id")
    if not torch.isfinite(data.Y[:, 0]).all():
        raise ConfigError("a sample has no finite acc_drop; drop the rows whose measurement failed")
    feats = np.concatenate([register[fp][0] for fp in fps])
    names = register[fps[0]][1]
    rng = np.random.default_rng(fc.seed)
    if len(fidelities) > 1:
        val, train = _stratified_split(rng, data.fidelity, fc.val_frac)
    else:  # the split single-fidelity SPNs have always had (kept, so their training is unchanged)
        perm = rng.permutation(len(data))
        n_val = max(2, int(round(len(data) * fc.val_frac)))
        val, train = perm[:n_val], perm[n_val:]
    norm = {"feat_mean": feats.mean(0), "feat_std": np.maximum(feats.std(0), FEATURE_STD_FLOOR),
            **_target_norm(data.Y[train].numpy())}
    cfg = SPNConfig(arch=arch, n_features=feats.shape[1], n_groups=0 if arch == "transformer" else data.R.shape[1],
                    fidelity_input=len(fidelities) > 1, **spn_options)
    spn = SPN(cfg, names, norm, features={fp: register[fp][0] for fp in fps}, fingerprints=fps, seed=fc.seed,
              fidelities=fidelities)
    started = time.perf_counter()
    if arch == "linear":
        info = _fit_linear(spn, data, train, val, _bootstrap(rng, cfg.members, len(data)))
    else:
        info = _fit_gradient(spn, data, train, val, fc)
    spn.meta.update(info, arch=arch, n_train=len(train), n_val=len(val), fit_s=round(time.perf_counter() - started, 2),
                    train_ids=[data.sample_ids[i] for i in np.concatenate([train, val])])
    if len(fidelities) > 1:
        spn.meta["rows_per_fidelity"] = {str(k): int((data.fidelity == k).sum()) for k in fidelities}
    return spn


def _stratified_split(rng, fidelity: np.ndarray, val_frac: float) -> tuple[np.ndarray, np.ndarray]:
    """``(val, train)`` positions with each fidelity's share ``val_frac`` in ``val`` (one at least, unless a
    fidelity has a single row: then it trains), so the top fidelity's few rows are checked too."""
    val, train = [], []
    for k in sorted(set(fidelity.tolist())):
        pos = rng.permutation(np.flatnonzero(fidelity == k))
        n = min(len(pos) - 1, max(1, int(round(len(pos) * val_frac))))
        val.append(pos[:n])
        train.append(pos[n:])
    return np.concatenate(val), np.concatenate(train)


def _target_norm(y: np.ndarray) -> dict:
    """Targets' mean and std over the rows that have them (a target no row has: 0 and 1)."""
    if np.isfinite(y).all():
        return {"target_mean": y.mean(0), "target_std": np.maximum(y.std(0), 1e-6)}
    mean, std = np.zeros(y.shape[1]), np.ones(y.shape[1])
    for t in range(y.shape[1]):
        col = y[np.isfinite(y[:, t]), t]
        if col.size:
            mean[t], std[t] = col.mean(), col.std()
    return {"target_mean": mean, "target_std": np.maximum(std, 1e-6)}


def train_heldout(arch: str, df: pd.DataFrame, spaces: dict, test_frac: float = 0.2, seed: int = 0,
                  max_steps: int = 4000, multi_fidelity: bool = False) -> tuple[SPN, dict, pd.DataFrame, pd.DataFrame]:
    """Hold out a share of the samples, train an SPN on the rest, and measure it on the held-out part.

    The held-out sample ids and metrics are recorded in ``spn.meta`` (``test_ids``, ``test_metrics``), so
    later fine-tuning can keep them out and reports can cite them.

    Args:
        arch: ``transformer``, ``mlp`` or ``linear``.
        df: samples.
        spaces: ``read_spaces`` records of the models in ``df``.
        test_frac: held-out share.
        seed: seeds the split and the training.
        max_steps: optimiser steps at most.
        multi_fidelity: learn rows of several fidelities (:func:`fit`); the split then holds out whole ratio
            vectors (every label of one), and ``meta["test_metrics_by_fidelity"]`` scores each fidelity apart.

    Returns:
        ``(spn, metrics, train_df, test_df)``; the metrics score every held-out row at its own fidelity.

    Raises:
        ConfigError: the split leaves no held-out sample, or as :func:`fit`.
    """
    train_df, test_df = split_samples(df, test_frac, seed, by_vector=multi_fidelity)
    if len(test_df) == 0:
        raise ConfigError(f"test_frac {test_frac} leaves no held-out sample of {len(df)}; "
                          f"generate more samples or raise it")
    spn = fit(arch, train_df, spaces, FitConfig(seed=seed, max_steps=max_steps), multi_fidelity=multi_fidelity)
    m = evaluate(spn, test_df)
    keys = ("mae", "rmse", "spearman", "r2", "n", "mean_std")
    spn.meta.update(test_ids=test_df["sample_id"].astype(str).tolist(),
                    test_metrics={k: m[k] for k in keys if k in m})
    if multi_fidelity:
        spn.meta["test_metrics_by_fidelity"] = {str(k): {n: v[n] for n in keys if n in v}
                                                for k, v in evaluate_by_fidelity(spn, test_df).items()}
    return spn, m, train_df, test_df


def _bootstrap(rng, members: int, n: int) -> torch.Tensor:
    """Poisson(1) row weights, one row per member (Osband et al. 2016)."""
    return torch.from_numpy(rng.poisson(1.0, size=(members, n)).astype(np.float32))


def _normalised_targets(spn: SPN, Y: torch.Tensor) -> torch.Tensor:
    return (Y - torch.from_numpy(spn.norm["target_mean"])) / torch.from_numpy(spn.norm["target_std"])


def _fit_linear(spn: SPN, data: SampleRows, train, val, weights) -> dict:
    """Pick the ridge penalty on ``val``, then refit on train + val."""
    Yn = _normalised_targets(spn, data.Y)
    phi = _encoded(spn, data)
    net = spn.net
    best = (float("inf"), RIDGE_GRID[0])
    for lam in RIDGE_GRID:
        net.fit(data.R[train], Yn[train], weights[:, train], lam, fidelity=_rows(phi, train))
        with torch.no_grad():
            err = (net(data.R[val], fidelity=_rows(phi, val)).mean(0)[:, 0] - Yn[val, 0]).abs()
        best = min(best, (_fidelity_mae(err, data.fidelity[val]), lam))
    both = np.concatenate([train, val])
    net.fit(data.R[both], Yn[both], weights[:, both], best[1], fidelity=_rows(phi, both))
    spn.config = dataclasses.replace(spn.config, ridge=best[1])
    return {"ridge": best[1], "val_mae": best[0] * float(spn.norm["target_std"][0]), "steps": 0}


def _encoded(spn: SPN, data: SampleRows) -> torch.Tensor | None:
    """The rows' fidelity input (None for a single-fidelity SPN); a ConfigError if the SPN cannot take them."""
    return spn.encode_fidelity(data.fidelity, len(data))


def _rows(phi, idx):
    return None if phi is None else phi[idx]


def _fidelity_mae(err: torch.Tensor, fidelity: np.ndarray) -> float:
    """Mean absolute error, each fidelity's rows weighing alike (plain MAE when there is one fidelity)."""
    ks = np.unique(fidelity)
    if len(ks) == 1:
        return err.mean().item()
    return float(np.mean([err[torch.from_numpy(fidelity == k)].mean().item() for k in ks]))


def _forward_rows(spn: SPN, feats_n, data: SampleRows, idx, phi=None) -> torch.Tensor:
    """Normalised ensemble output ``(E, B, T)`` for rows ``idx`` (no padding mask when one model only)."""
    if len(data.fingerprints) == 1:
        return spn.forward_normalised(data.R[idx], feats_n[:1], fidelity=_rows(phi, idx))
    return spn.forward_normalised(data.R[idx], feats_n[data.model[idx]], data.mask[idx], fidelity=_rows(phi, idx))


def _optimise(spn: SPN, data: SampleRows, fc: FitConfig, draw, check=None) -> int:
    """AdamW on every member's squared error over minibatches ``draw(generator)``.

    Args:
        check: called every ``fc.eval_every`` steps (net in eval mode) with the normalised targets;
            returns True to stop.

    Returns:
        The number of steps taken.
    """
    Yn = _normalised_targets(spn, data.Y)
    feats_n = spn.feature_table(data.fingerprints, data.R.shape[1])
    phi = _encoded(spn, data)
    target_w = torch.tensor([1.0, fc.loss_weight])
    known = torch.isfinite(Yn)
    if not known.all():  # a row without some target (a final without its loss) learns the others only
        target_w = target_w * known
        Yn = torch.where(known, Yn, 0.0)
    opt = torch.optim.AdamW(spn.net.parameters(), lr=fc.lr, weight_decay=fc.weight_decay)
    gen = torch.Generator().manual_seed(fc.seed)
    step = 0
    with torch.random.fork_rng(devices=[]), one_thread():
        torch.manual_seed(fc.seed)  # dropout masks
        for step in range(1, fc.max_steps + 1):
            spn.net.train()
            idx = draw(gen)
            # Summed over members (each member's gradient is its own), averaged over rows.
            w = target_w if target_w.dim() == 1 else target_w[idx]
            loss = ((_forward_rows(spn, feats_n, data, idx, phi) - Yn[idx]) ** 2 * w).sum(-1).mean(1).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if check is not None and (step % fc.eval_every == 0 or step == fc.max_steps):
                spn.net.eval()
                with torch.no_grad():
                    if check(lambda rows: _forward_rows(spn, feats_n, data, rows, phi), Yn):
                        break
    spn.net.eval()
    return step


def _fit_gradient(spn: SPN, data: SampleRows, train, val, fc: FitConfig) -> dict:
    """Early stopping on the ensemble-mean validation MAE of ``acc_drop``; the best weights are kept."""
    train_t, val_t = torch.from_numpy(train), torch.from_numpy(val)
    best = {"mae": float("inf"), "state": None, "bad": 0}

    def draw(gen):
        return train_t[torch.randint(len(train_t), (min(fc.batch_size, len(train_t)),), generator=gen)]

    def check(forward, Yn) -> bool:
        mae = _fidelity_mae((forward(val_t).mean(0)[:, 0] - Yn[val_t, 0]).abs(), data.fidelity[val])
        if mae < best["mae"] - 1e-5:
            best.update(mae=mae, state=copy.deepcopy(spn.net.state_dict()), bad=0)
            return False
        best["bad"] += 1
        return best["bad"] >= fc.patience

    steps = _optimise(spn, data, fc, draw, check)
    spn.net.load_state_dict(best["state"])
    spn.net.eval()
    return {"steps": steps, "val_mae": best["mae"] * float(spn.norm["target_std"][0])}


def finetune(spn: SPN, new_df: pd.DataFrame, replay_df: pd.DataFrame | None = None, steps: int = 200,
             spaces: dict | None = None, lr: float = 1e-3, batch_size: int = 64, seed: int = 0) -> SPN:
    """Adapt an SPN to new samples, mixing each minibatch half new rows, half replayed old ones.

    Replay keeps the SPN from forgetting the regions the new rows do not cover (online search feeds it
    only candidates near the current policy). The normalisation is kept, so predictions stay comparable.
    ``linear`` is refitted in closed form on new + replay rows instead.

    Args:
        spn: the SPN; it is not modified (a copy is returned).
        new_df: new samples (may include models the SPN never saw, given ``spaces``).
        replay_df: old samples to mix in, or None.
        steps: optimiser steps.
        spaces: ``read_spaces`` records for models the SPN does not know yet.
        lr: AdamW learning rate (lower than training: the weights are already good).
        batch_size: rows per step.
        seed: seeds minibatches (and ``linear``'s bootstrap).

    Returns:
        The fine-tuned copy; ``meta["finetunes"]`` gains one record.

    Raises:
        ConfigError: no new rows, a model ``mlp``/``linear`` cannot take, or rows of a fidelity the SPN
            was not trained on (it cannot learn a new one by fine-tuning: its input is scaled to the old range).
        SampleStoreError: unknown models without ``spaces``.
    """
    if len(new_df) == 0:
        raise ConfigError("no new samples to fine-tune on")
    if steps < 0:
        raise ConfigError(f"steps={steps} must be >= 0")
    out = spn.copy()
    replay_df = replay_df if replay_df is not None and len(replay_df) else None
    both = new_df if replay_df is None else pd.concat([new_df, replay_df], ignore_index=True)
    register_models(out, both["model_fingerprint"], spaces)
    out.fingerprints += [fp for fp in dict.fromkeys(new_df["model_fingerprint"]) if fp not in out.fingerprints]
    data = sample_rows(both, {fp: out.n_groups(fp) for fp in out.known})
    n_new = len(new_df)
    phi = _encoded(out, data)  # checked before any step: rows of a fidelity the SPN cannot take are refused
    if out.config.arch == "linear":
        weights = _bootstrap(np.random.default_rng(seed), out.config.members, len(data))
        out.net.fit(data.R, _normalised_targets(out, data.Y), weights, out.config.ridge, fidelity=phi)
    elif steps:
        n_old = len(data) - n_new
        half = batch_size // 2 if n_old else batch_size

        def draw(gen):
            # Half of every minibatch is new rows even when there are only two of them (an online round's):
            # drawn with replacement, they weigh as much as the replayed half, so the model moves to them.
            idx = torch.randint(n_new, (half,), generator=gen)
            if not n_old:
                return idx
            return torch.cat([idx, n_new + torch.randint(n_old, (batch_size - half,), generator=gen)])

        _optimise(out, data, FitConfig(max_steps=steps, lr=lr, batch_size=batch_size, seed=seed), draw)
    out.meta.setdefault("finetunes", []).append({"n_new": n_new, "n_replay": len(data) - n_new, "steps": steps})
    return out


__all__ = ["RIDGE_GRID", "FitConfig", "finetune", "fit", "train_heldout"]
