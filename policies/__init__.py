"""``rlprune.policies``: the shared policy for ``LayerPruningEnv`` (source in ``policies/``).

    from rlprune.policies import build_ppo_config
    algo = build_ppo_config({"task": "digits", "spn": "spn.pt"}, attention=True).build_algo()

``AttentionPPOModule`` lives in ``rlprune.policies.attention`` (imported on demand: it needs torch).
"""

from __future__ import annotations

from rlprune.policies.algorithms import (
    SHARED_POLICY,
    build_ppo_config,
    build_sac_config,
    greedy_actions,
    greedy_episode,
    policy_mapping_fn,
)

__all__ = ["SHARED_POLICY", "build_ppo_config", "build_sac_config", "greedy_actions", "greedy_episode",
           "policy_mapping_fn"]
