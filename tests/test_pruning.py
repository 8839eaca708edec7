"""PruningSpace on architectures nobody here wrote the pruner for: groups, exact cost, real pruning."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

from rlprune.errors import ConfigError, TraceError
from rlprune.space.pruning import FEATURE_NAMES, PruningSpace, count_ops_and_params
from tests.arch_zoo import ZOO, DenseNetTiny, MobileNetTiny, ShuffleNetTiny

X = torch.randn(1, 3, 32, 32)


def _space(name, **kw):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PruningSpace.from_model(ZOO[name]().eval(), X, **kw)


@pytest.mark.parametrize("name", sorted(ZOO))
@pytest.mark.parametrize("round_to", [1, 4])
def test_cost_model_matches_real_pruning(name, round_to):
    space = _space(name, round_to=round_to)
    assert space.cost([0.0] * space.n_groups) == count_ops_and_params(space.model, X)
    rng = np.random.default_rng(7)
    R = rng.uniform(0, space.max_ratio, size=(5, space.n_groups))
    P, M = space.cost_batch(R)
    for i, r in enumerate(R):
        pruned = space.apply(r)
        real_params, real_macs = count_ops_and_params(pruned, X)
        # Exact: the cost model reproduces torch-pruning's own counter to the unit.
        assert (P[i], M[i]) == (real_params, real_macs), (name, r)
        assert pruned(X).shape == (1, 10)


def test_coupled_residual_convs_form_one_group():
    space = _space("mobilenet")
    stage = [g for g in space.groups if "stem.0" in g.layers]
    assert len(stage) == 1
    # The stem and both blocks' projection convs add into the same tensor: one group, one ratio.
    assert {"stem.0", "blocks.0.pwl.0", "blocks.1.pwl.0"} <= set(stage[0].layers)
    assert stage[0].features[FEATURE_NAMES.index("residual")] == 1.0


def test_concatenation_consumers_and_depthwise_groups():
    dense = _space("dense")
    stem = next(g for g in dense.groups if "stem.0" in g.layers)
    # The stem's channels feed d1, d2 and the transition through concatenations.
    assert {"d1.0", "d2.0", "trans.0"} <= set(stem.consumers)
    mob = _space("mobilenet")
    dw = [g for g in mob.groups if g.features[FEATURE_NAMES.index("depthwise")] == 1.0]
    assert len(dw) == 2 and all(g.channels == 64 for g in dw)


def test_groups_are_in_forward_order_with_stable_ids():
    space = _space("plain")
    assert [g.id for g in space.groups] == [f"group_{i:02d}" for i in range(space.n_groups)]
    assert [g.root for g in space.groups] == ["features.0.0", "features.2.0", "features.4.0", "classifier.1"]
    depth = space.features()[:, FEATURE_NAMES.index("depth")]
    assert np.all(np.diff(depth) > 0)
    assert space.features().shape == (space.n_groups, len(FEATURE_NAMES))


def test_output_layers_never_lose_channels():
    space = _space("plain")
    assert all("classifier.4" not in g.layers for g in space.groups)
    pruned = space.apply([space.max_ratio] * space.n_groups)
    assert pruned.classifier[4].out_features == 10


def test_channel_shuffle_is_skipped_with_a_warning_not_pruned_wrongly():
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="Transpose"):
        space = PruningSpace.from_model(ShuffleNetTiny().eval(), X)
    assert space.skipped and "branch.2.0" in space.skipped[0]
    assert all("branch.2.0" not in g.layers for g in space.groups)


def test_apply_leaves_the_original_untouched_and_keeps_function_at_zero():
    space = _space("dense")
    before = {k: v.clone() for k, v in space.model.state_dict().items()}
    same = space.apply([0.0] * space.n_groups)
    with torch.no_grad():
        assert torch.allclose(same(X), space.model(X), atol=1e-6)
    space.apply([0.5] * space.n_groups)
    after = space.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_round_to_and_achieved_ratios():
    space = _space("plain", round_to=8)
    ach = space.achieved([0.3] * space.n_groups)
    # 0.3 of 16 channels removes 4, keeps 12, rounded down to 8: achieved 0.5.
    assert ach[0] == pytest.approx(0.5)
    pruned = space.apply([0.3] * space.n_groups)
    assert pruned.features[0][0].out_channels == 8
    assert all(c.out_channels % 8 == 0 for c in pruned.modules() if isinstance(c, nn.Conv2d))


@pytest.mark.parametrize("importance", ["l1", "l2", "bn_scale", "random", "taylor"])
def test_importances_choose_different_channels_but_same_shapes(importance):
    space = _space("plain")
    data = (torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    pruned = space.apply([0.5] * space.n_groups, importance=importance, data=data)
    assert count_ops_and_params(pruned, X) == space.cost([0.5] * space.n_groups)


def test_l1_keeps_the_largest_filters():
    space = _space("plain")
    w = space.model.features[0][0].weight.detach()
    bn = space.model.features[0][1]
    # Group L1 sums conv, BN and consumer magnitudes; make one channel dominate every member.
    with torch.no_grad():
        w[3].mul_(100)
        bn.weight[3] = 100
    pruned = space.apply([0.5, 0, 0, 0])
    kept = pruned.features[0][0].weight.detach()
    assert any(torch.allclose(kept[i], w[3]) for i in range(kept.shape[0]))


@pytest.mark.parametrize("bad, match", [
    ([0.1, 0.2], "4 prunable groups"),
    ([0.1, float("nan"), 0.1, 0.1], "finite"),
    ([0.1, 0.95, 0.1, 0.1], "outside"),
    ([-0.1, 0.1, 0.1, 0.1], "outside"),
])
def test_bad_ratio_vectors_are_rejected_with_the_fix(bad, match):
    space = _space("plain")
    with pytest.raises(ConfigError, match=match):
        space.apply(bad)
    with pytest.raises(ConfigError, match=match):
        space.cost(bad)


def test_bad_importance_and_taylor_without_data():
    space = _space("plain")
    with pytest.raises(ConfigError, match="importance"):
        space.apply([0.1] * 4, importance="magic")
    with pytest.raises(ConfigError, match="taylor"):
        space.apply([0.1] * 4, importance="taylor")


def test_untraceable_models_fail_clearly():
    with pytest.raises(TraceError, match="cannot trace"):
        PruningSpace.from_model(DenseNetTiny().eval(), torch.randn(1, 5, 32, 32))
    with pytest.raises(TraceError, match="no prunable"):
        PruningSpace.from_model(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), torch.randn(1, 12))
    with pytest.raises(ConfigError, match="not a layer"):
        PruningSpace.from_model(MobileNetTiny().eval(), X, ignored_layers=["nope"])


def test_ignored_layers_are_not_pruned():
    torch.manual_seed(0)
    model = MobileNetTiny().eval()
    space = PruningSpace.from_model(model, X, ignored_layers=["head"])
    assert all("head" not in g.layers for g in space.groups)


def test_model_mode_is_restored_after_tracing():
    model = DenseNetTiny().train()
    running = model.stem[1].running_mean.clone()
    PruningSpace.from_model(model, X)
    assert model.training
    # Tracing ran in eval mode, so BatchNorm statistics did not move.
    assert torch.equal(running, model.stem[1].running_mean)
