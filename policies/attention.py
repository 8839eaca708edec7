"""``AttentionPPOModule``: a shared PPO policy whose agents look at every group, not only their own.

Needs observations built with ``obs_all_groups=True`` (layout: ``rlprune.envs.ObsLayout``)::

    tokens_j := Linear(features_j, ratio_j, decided_j) + is_self_j * e_self       j = 1..G
    tokens   := TransformerEncoderLayer(tokens)            groups see each other (e.g. a residual stage)
    q        := MLP(own features, context) + tokens_self                          what this agent asks
    a        := MultiheadAttention(q, tokens, tokens)                             what it learns from the rest
    pi       := Linear(MLP([q, a])) -> mean;  log_std: one free parameter (state-independent, as in CleanRL)
    value    := Linear(MLP([q, a]))           (its own head on the shared trunk)

The action distribution is RLlib's default for a Box space (``TorchDiagGaussian`` over ``[mean, log_std]``).
``model_config`` keys: ``n_groups``, ``n_features``, ``n_context``, ``token_dim`` (from
``ObsLayout.model_config()``) and optionally ``d_model`` (32), ``n_heads`` (4), ``hidden`` (64),
``encoder_layers`` (1), ``init_log_std`` (-0.5).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis import ValueFunctionAPI
from ray.rllib.core.rl_module.torch import TorchRLModule
from torch import nn

_REQUIRED = ("n_groups", "n_features", "n_context", "token_dim")


class AttentionPPOModule(TorchRLModule, ValueFunctionAPI):
    """PPO-compatible RLModule attending over all groups' tokens (see the module docstring).

    Raises:
        ValueError: ``model_config`` lacks a layout key, or the observation size does not match it.
    """

    def setup(self):
        mc = dict(self.model_config or {})
        missing = [k for k in _REQUIRED if k not in mc]
        if missing:
            raise ValueError(f"AttentionPPOModule model_config lacks {missing}; pass "
                             "LayerPruningEnv(...).layout.model_config() (and set obs_all_groups=True)")
        self.G, self.F, self.C, self.T = (int(mc[k]) for k in _REQUIRED)
        expected = self.F + self.C + self.G * (self.T + 1)
        if int(np.prod(self.observation_space.shape)) != expected:
            raise ValueError(f"observation size {self.observation_space.shape} != {expected} expected from the "
                             "layout; build the env with obs_all_groups=True")
        d, heads, hidden = int(mc.get("d_model", 32)), int(mc.get("n_heads", 4)), int(mc.get("hidden", 64))
        act_dim = int(np.prod(self.action_space.shape))

        self.token = nn.Linear(self.T, d)
        self.self_marker = nn.Parameter(torch.zeros(d))
        layers = int(mc.get("encoder_layers", 1))
        self.encoder = (nn.TransformerEncoder(
            nn.TransformerEncoderLayer(d, heads, dim_feedforward=2 * d, dropout=0.0, batch_first=True),
            num_layers=layers, enable_nested_tensor=False) if layers > 0 else nn.Identity())
        self.query = nn.Sequential(nn.Linear(self.F + self.C, d), nn.Tanh(), nn.Linear(d, d))
        self.attend = nn.MultiheadAttention(d, heads, dropout=0.0, batch_first=True)
        self.trunk = nn.Sequential(nn.Linear(2 * d, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.pi_mean = nn.Linear(hidden, act_dim)
        self.vf_head = nn.Sequential(nn.Linear(2 * d, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.log_std = nn.Parameter(torch.full((act_dim,), float(mc.get("init_log_std", -0.5))))
        # A near-zero initial mean starts every agent in the middle of the (normalised) action range.
        nn.init.orthogonal_(self.pi_mean.weight, gain=0.01)
        nn.init.zeros_(self.pi_mean.bias)

    # ------------------------------------------------------------------ forward passes
    def _embed(self, obs: torch.Tensor) -> torch.Tensor:
        """Observation batch ``(B, obs_dim)`` -> attended features ``(B, 2 * d_model)``."""
        F, C, G, T = self.F, self.C, self.G, self.T
        own_ctx = obs[:, : F + C]
        tokens = obs[:, F + C: F + C + G * T].reshape(-1, G, T)
        is_self = obs[:, F + C + G * T: F + C + G * T + G]
        tok = self.encoder(self.token(tokens) + is_self[..., None] * self.self_marker)
        q = self.query(own_ctx) + torch.einsum("bg,bgd->bd", is_self, tok)
        attended, _ = self.attend(q[:, None, :], tok, tok, need_weights=False)
        return torch.cat([q, attended[:, 0]], dim=-1)

    def _dist_inputs(self, emb: torch.Tensor) -> torch.Tensor:
        mean = self.pi_mean(self.trunk(emb))
        return torch.cat([mean, self.log_std.expand_as(mean)], dim=-1)

    def _forward(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        """Inference and exploration: action-distribution inputs only."""
        return {Columns.ACTION_DIST_INPUTS: self._dist_inputs(self._embed(batch[Columns.OBS]))}

    def _forward_train(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        """Training: also return the embeddings so ``compute_values`` need not embed twice."""
        emb = self._embed(batch[Columns.OBS])
        return {Columns.ACTION_DIST_INPUTS: self._dist_inputs(emb), Columns.EMBEDDINGS: emb}

    def compute_values(self, batch: dict[str, Any], embeddings: Any | None = None) -> torch.Tensor:
        """Value estimate per row, ``(B,)`` (PPO's ``ValueFunctionAPI``)."""
        if embeddings is None:
            embeddings = self._embed(batch[Columns.OBS])
        return self.vf_head(embeddings).squeeze(-1)
