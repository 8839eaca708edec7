"""The SPN's networks: ensembles of transformer / MLP / ridge nets, evaluated as one batched op each.

Every parameter carries a leading ``members`` axis and every layer is one ``bmm``, so an ensemble of E
nets costs one pass of E-times-wider matrices instead of E passes (see ``rlprune.spn.predictor`` for the wrapper
that normalises, registers models and saves checkpoints)::

    transformer  token_g := Linear([features_g, r_g, relu(r_g - knot_k) ...]) + pos[g]   (one per group)
                 -> n_layers x pre-LN encoder block; padding mask: any number of groups, mixed in a batch
                 -> masked mean over groups -> LN -> MLP -> (acc_drop, loss)            shape (E, N, T)
    mlp          [r_1 .. r_G] -> MLP -> (acc_drop, loss)          the published SPN: one model's G only
    linear       ridge on [r, r^2] (scikit-learn, closed form)     the floor any SPN must beat

A multi-fidelity net (``SPNConfig.fidelity_input``) also takes each row's label fidelity ``phi`` in [0, 1]
(``rlprune.spn.predictor`` encodes the label's fine-tune steps k as log1p(k) / log1p(k_max)): the
transformer adds ``phi * w_fid`` to every group token, ``mlp`` appends it to the ratio vector and
``linear`` to its design as ``[phi, phi * r]``. Without it a net is exactly the single-fidelity one.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rlprune.errors import ConfigError

ARCHS = ("transformer", "mlp", "linear")
TARGETS = ("acc_drop", "loss")


@dataclass(frozen=True)
class SPNConfig:
    """Architecture of an SPN (stored in its checkpoint)."""

    arch: str = "transformer"
    """``transformer`` (any group count, several models), ``mlp`` or ``linear`` (one model's group count)."""
    n_features: int = 13
    """Length of a group's feature vector (``len(rlprune.space.pruning.FEATURE_NAMES)``)."""
    n_groups: int = 0
    """Fixed input length of ``mlp`` / ``linear``; 0 for ``transformer``."""
    members: int = 4
    """Ensemble size; the std across members is the prediction's uncertainty."""
    d_model: int = 16
    """Transformer token width (16 predicts as well as 32 on digits at 3x the speed)."""
    n_heads: int = 1
    """Attention heads (must divide ``d_model``); one head is 1.5x faster than two and as accurate here."""
    n_layers: int = 2
    """Transformer encoder blocks."""
    d_ff: int = 32
    """Hidden width of each block's feed-forward layer and of the output head."""
    ratio_knots: int = 8
    """Knots of the hinge basis ``relu(r - k)`` a token encodes its ratio with (0: the ratio alone)."""
    max_groups: int = 128
    """Length of the learned position table: the most groups a transformer SPN accepts."""
    hidden: int = 64
    """Hidden width of the ``mlp`` net's two layers."""
    dropout: float = 0.0
    """Dropout inside transformer blocks during training."""
    ridge: float = 1e-3
    """L2 penalty of ``linear`` (per sample; ``rlprune.spn.train`` picks it on the validation split)."""
    fidelity_input: bool = False
    """The net also takes each row's label fidelity (several fidelities learnt at once); False: the
    single-fidelity net every checkpoint written before fidelities existed holds."""

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ConfigError(f"SPNConfig.arch={self.arch!r} is unknown; use one of {', '.join(ARCHS)}")
        if self.arch != "transformer" and self.n_groups < 1:
            raise ConfigError(f"SPNConfig.n_groups={self.n_groups} must be >= 1 for arch {self.arch!r}; "
                              f"mlp and linear take one model's fixed number of groups")
        for name in ("n_features", "members", "d_model", "n_heads", "n_layers", "d_ff", "max_groups", "hidden"):
            if getattr(self, name) < 1:
                raise ConfigError(f"SPNConfig.{name}={getattr(self, name)} must be >= 1")
        if self.ratio_knots < 0:
            raise ConfigError(f"SPNConfig.ratio_knots={self.ratio_knots} must be >= 0")
        if self.d_model % self.n_heads:
            raise ConfigError(f"SPNConfig.d_model={self.d_model} must be a multiple of n_heads={self.n_heads}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"SPNConfig.dropout={self.dropout} must lie in [0, 1)")
        if not self.ridge > 0:
            raise ConfigError(f"SPNConfig.ridge={self.ridge} must be > 0")


@contextlib.contextmanager
def one_thread():
    """Run torch on one intra-op thread inside the block, then restore the caller's setting.

    SPN ops are small (16-wide tokens): splitting them across threads costs more in synchronisation than
    it saves, and on a loaded 2-core machine two spinning threads made training 20x and inference 5x slower.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ====================================================================== ensemble building blocks
class _Linear(nn.Module):
    """``members`` independent linear layers applied as one batched matmul: ``(E, M, din) -> (E, M, dout)``."""

    def __init__(self, members: int, din: int, dout: int, bias: bool = True):
        super().__init__()
        bound = 1 / math.sqrt(din)  # nn.Linear's default init range
        self.weight = nn.Parameter(torch.empty(members, din, dout).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(members, 1, dout)) if bias else None

    def forward(self, x, residual=None):
        """``x @ W + b``, or ``residual + x @ W`` in one fused op (layers feeding a residual have no bias)."""
        if residual is not None:
            return torch.baddbmm(residual, x, self.weight)
        if self.bias is None:
            return torch.bmm(x, self.weight)
        return torch.baddbmm(self.bias, x, self.weight)


def _dropout(x, p: float):
    return F.dropout(x, p, training=True) if p else x


def _norm(x):
    # LayerNorm without its affine: every norm here feeds a linear layer, which absorbs the scale and shift.
    return F.layer_norm(x, x.shape[-1:])


class _Block(nn.Module):
    """Pre-LN transformer encoder block over the group tokens of each ratio vector."""

    def __init__(self, cfg: SPNConfig):
        super().__init__()
        E, D = cfg.members, cfg.d_model
        self.n_heads, self.dropout = cfg.n_heads, cfg.dropout
        self.qkv, self.proj = _Linear(E, D, 3 * D), _Linear(E, D, D, bias=False)
        self.fc1, self.fc2 = _Linear(E, D, cfg.d_ff), _Linear(E, cfg.d_ff, D, bias=False)

    def forward(self, x, n: int, g: int, key_mask):
        """x: (E, n*g, D); key_mask: (E*n, 1, 1, g) bool, True = a real group, or None (no padding)."""
        E, _, D = x.shape
        H = self.n_heads
        # (E*n, H, g, dh): 4-D inputs reach torch's fused CPU attention kernel, 5-D ones the slow math path.
        q, k, v = self.qkv(_norm(x)).view(E * n, g, 3, H, D // H).permute(2, 0, 3, 1, 4)
        drop = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=drop)  # (E*n, H, g, dh)
        x = self.proj(_dropout(a.transpose(1, 2).reshape(E, n * g, D), drop), residual=x)
        return self.fc2(_dropout(F.gelu(self.fc1(_norm(x))), drop), residual=x)


class TransformerNet(nn.Module):
    """Ensemble transformer over one token per group; see the module docstring."""

    def __init__(self, cfg: SPNConfig):
        super().__init__()
        E, D = cfg.members, cfg.d_model
        self.n_features = cfg.n_features
        # Hinge basis of the ratio, relu(r - knot): lets a token switch on sharply where a group starts to hurt
        # (accuracy collapses past a group-specific ratio); a linear ratio input had 15% higher MAE.
        self.register_buffer("knots", torch.linspace(0, 0.9, cfg.ratio_knots + 2)[1:-1], persistent=False)
        self.embed = _Linear(E, cfg.n_features + 1 + cfg.ratio_knots, D)  # [features, ratio basis] -> token
        self.pos = nn.Parameter(torch.randn(E, cfg.max_groups, D) * 0.02)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.n_layers))
        self.head1, self.head2 = _Linear(E, D, cfg.d_ff), _Linear(E, cfg.d_ff, len(TARGETS))
        # One direction per member that the fidelity moves every token along; registered only when used, so
        # a single-fidelity net's state dict is the one older checkpoints hold.
        self.fid = _Linear(E, 1, D, bias=False) if cfg.fidelity_input else None

    def forward(self, R, feats, mask=None, fidelity=None):
        """Normalised predictions ``(E, N, T)``.

        Args:
            R: ``(N, G)`` ratios (padded entries: any value).
            feats: ``(N, G, F)`` or ``(1, G, F)`` (one model for the whole batch) normalised features.
            mask: ``(N, G)`` bool, True for real groups; None when nothing is padded.
            fidelity: ``(N,)`` encoded label fidelities; required by (and only by) a multi-fidelity net.
        """
        N, G = R.shape
        E, _, D = self.pos.shape
        if G > self.pos.shape[1]:
            raise ConfigError(f"{G} groups exceed this SPN's max_groups={self.pos.shape[1]}; "
                              f"train one with a larger SPNConfig.max_groups")
        w_feat, w_ratio = self.embed.weight[:, : self.n_features], self.embed.weight[:, self.n_features:]
        nf = feats.shape[0]
        # The feature part is computed once per model (nf=1) and broadcast over the batch: this is what
        # makes inference cheap, the per-vector work starts at the ratio term.
        tok_f = torch.matmul(feats.reshape(1, nf * G, -1), w_feat).view(E, nf, G, D)
        tok_f = tok_f + (self.embed.bias + self.pos[:, :G]).view(E, 1, G, D)
        r = R.unsqueeze(-1)
        phi = torch.cat([r, F.relu(r - self.knots)], -1).view(1, N * G, -1)
        x = tok_f + torch.matmul(phi, w_ratio).view(E, N, G, D)
        if self.fid is not None:
            # Broadcast to every group token: the fidelity changes how every group's ratio reads.
            x = x + self.fid(_fidelity(fidelity, N, E)).view(E, N, 1, D)
        x = x.reshape(E, N * G, D)
        key_mask = None if mask is None else mask.view(1, N, 1, 1, G).expand(E, N, 1, 1, G).reshape(E * N, 1, 1, G)
        for block in self.blocks:
            x = block(x, N, G, key_mask)
        x = x.view(E, N, G, D)
        if mask is None:
            pooled = x.mean(2)
        else:
            m = mask.to(x.dtype).view(1, N, G, 1)
            pooled = (x * m).sum(2) / m.sum(2).clamp_min(1.0)
        return self.head2(F.gelu(self.head1(_norm(pooled))))


class MLPNet(nn.Module):
    """Ensemble MLP on the fixed-length ratio vector of one model (the published SPN)."""

    def __init__(self, cfg: SPNConfig):
        super().__init__()
        E, H = cfg.members, cfg.hidden
        self.fidelity_input = cfg.fidelity_input
        self.fc1, self.fc2 = _Linear(E, cfg.n_groups + cfg.fidelity_input, H), _Linear(E, H, H)
        self.fc3 = _Linear(E, H, len(TARGETS))

    def forward(self, R, feats=None, mask=None, fidelity=None):
        E = self.fc1.weight.shape[0]
        if self.fidelity_input:
            R = torch.cat([R, _fidelity(fidelity, len(R), 1)[0]], -1)
        x = R.unsqueeze(0).expand(E, -1, -1)
        return self.fc3(F.gelu(self.fc2(F.gelu(self.fc1(x)))))


class LinearNet(nn.Module):
    """Ensemble of ridge regressions on ``[r, r^2]``, fitted in closed form by :meth:`fit`."""

    def __init__(self, cfg: SPNConfig):
        super().__init__()
        E, G = cfg.members, cfg.n_groups
        self.fidelity_input = cfg.fidelity_input
        # With a fidelity: [r, r^2, phi, phi * r], so the fidelity moves the level and each group's slope.
        width = 2 * G + (1 + G) * cfg.fidelity_input
        self.register_buffer("weight", torch.zeros(E, width, len(TARGETS)))
        self.register_buffer("bias", torch.zeros(E, 1, len(TARGETS)))

    @staticmethod
    def design(R, fidelity=None):
        """The regressors: ``[r, r^2]``, and ``[phi, phi * r]`` after them when ``fidelity`` is given."""
        if fidelity is None:
            return torch.cat([R, R * R], dim=-1)
        phi = fidelity.to(R.dtype).view(-1, 1)
        return torch.cat([R, R * R, phi, phi * R], dim=-1)

    def _design(self, R, fidelity):
        return self.design(R, _fidelity(fidelity, len(R), 1)[0, :, 0] if self.fidelity_input else None)

    def forward(self, R, feats=None, mask=None, fidelity=None):
        x = self._design(R, fidelity).unsqueeze(0).expand(self.weight.shape[0], -1, -1)
        return torch.baddbmm(self.bias, x, self.weight)

    def fit(self, R, Y, sample_weight, ridge: float, fidelity=None) -> None:
        """Weighted ridge per member (scikit-learn's ``Ridge`` in float64; 2G unknowns, so this is instant).

        Args:
            R: ``(N, G)`` ratios. Y: ``(N, T)`` normalised targets (a NaN target teaches nothing: its
                weight is 0 for that target).
            sample_weight: ``(E, N)`` bootstrap weights, one row per member.
            ridge: penalty per unit of total weight.
            fidelity: ``(N,)`` encoded fidelities (a multi-fidelity net only).
        """
        from sklearn.linear_model import Ridge  # deferred: scikit-learn costs ~1 s to import, inference never needs it

        X, Y = self._design(R, fidelity).double().numpy(), Y.double().numpy()
        sample_weight = sample_weight.double().numpy()
        if np.isnan(Y).any():  # rows without some target (a final without its loss): fit each target apart
            for t in range(Y.shape[1]):
                known = ~np.isnan(Y[:, t])
                if not known.any():  # no row has this target: predict its (normalised) mean, 0
                    self.weight[..., t], self.bias[..., t] = 0.0, 0.0
                    continue
                self._fit_columns(Ridge, X[known], Y[known], sample_weight[:, known], ridge, [t])
            return
        self._fit_columns(Ridge, X, Y, sample_weight, ridge, list(range(Y.shape[1])))

    def _fit_columns(self, Ridge, X, Y, sample_weight, ridge: float, cols: list[int]) -> None:
        Y = Y[:, cols]
        for e, w in enumerate(sample_weight):
            if w.sum() <= 0:  # a bootstrap that drew no row (Ridge refuses it): predict the mean target
                self.weight[e][:, cols], self.bias[e, 0, cols] = 0.0, 0.0
                continue
            # Weights summing to 1 make ``alpha`` a penalty per unit of total weight.
            fitted = Ridge(alpha=ridge).fit(X, Y, sample_weight=w / w.sum())
            # One target column may come back flattened: shape both as (targets, ...) first.
            coef = np.reshape(fitted.coef_, (len(cols), -1)).T
            self.weight[e][:, cols] = torch.from_numpy(coef).to(self.weight.dtype)
            self.bias[e, 0, cols] = torch.from_numpy(np.reshape(fitted.intercept_, len(cols))).to(self.bias.dtype)


def _fidelity(fidelity, n: int, members: int) -> torch.Tensor:
    """``(members, n, 1)`` view of the ``(n,)`` encoded fidelities a multi-fidelity net needs."""
    if fidelity is None:
        raise ConfigError("this SPN was trained on several label fidelities and needs each row's fidelity; "
                          "pass fidelity= (SPN.predict does: the highest trained fidelity by default)")
    return fidelity.reshape(1, n, 1).expand(members, n, 1)


_NETS = {"transformer": TransformerNet, "mlp": MLPNet, "linear": LinearNet}


def build_net(cfg: SPNConfig, seed: int = 0) -> nn.Module:
    """A freshly initialised net for ``cfg``.

    Args:
        cfg: the architecture.
        seed: seeds the initialisation (the global RNG is left untouched).

    Returns:
        A ``TransformerNet``, ``MLPNet`` or ``LinearNet`` whose forward gives ``(members, N, len(TARGETS))``.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _NETS[cfg.arch](cfg)


__all__ = ["ARCHS", "TARGETS", "LinearNet", "MLPNet", "SPNConfig", "TransformerNet", "build_net", "one_thread"]
