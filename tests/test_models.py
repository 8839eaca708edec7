"""Shapes, sizes, validation and traceability of the models in rlprune.models."""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp  # tests may trace directly; library code goes through rlprune.space.pruning
from torch import nn

from rlprune.models import (
    MODEL_REGISTRY,
    cifar_resnet,
    digits_resnet,
    mobilenet_v2_small,
    resnet20,
    resnet56,
    vgg_small,
)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # Tracing and pruning are many tiny ops: two spinning torch threads on the loaded 2-core CI machine made
    # these tests ~20x slower than one.
    from rlprune.spn.nets import one_thread

    with one_thread():
        yield


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(MODEL_REGISTRY))
@pytest.mark.parametrize("num_classes", [10, 7])
def test_forward_shape(name: str, num_classes: int) -> None:
    in_channels = 1 if name in ("digits_resnet", "mobilenet_v2_small") else 3
    model = MODEL_REGISTRY[name](num_classes=num_classes, in_channels=in_channels).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, 32, 32))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()


def test_registry_names() -> None:
    assert set(MODEL_REGISTRY) == {"resnet20", "resnet56", "digits_resnet", "vgg_small", "mobilenet_v2_small"}


def test_published_resnet_sizes() -> None:
    # He et al. 2016, table 6: 0.27M and 0.85M. Option-B shortcuts add 2.7k parameters to both.
    assert 0.26e6 < n_params(resnet20()) < 0.28e6
    assert 0.84e6 < n_params(resnet56()) < 0.87e6


def test_depth_counts_weighted_layers() -> None:
    for depth in (8, 14, 20, 56):
        model = cifar_resnet(depth)
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        assert len(convs) + len(linears) == depth


def test_shortcuts_are_projections_only_where_shape_changes() -> None:
    model = resnet20()
    projections = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert [(c.in_channels, c.out_channels, c.stride) for c in projections] == [(16, 32, (2, 2)), (32, 64, (2, 2))]


def test_custom_widths_and_stages() -> None:
    model = cifar_resnet(10, widths=(8, 16), in_channels=1, num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 32, 32)).shape == (1, 3)
    assert model.fc.in_features == 16


@pytest.mark.parametrize("depth", [7, 21, 2, 0])
def test_bad_depth_raises(depth: int) -> None:
    with pytest.raises(ValueError, match="depth must be 6n \\+ 2"):
        cifar_resnet(depth)


def test_bad_sizes_raise() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        resnet20(num_classes=0)
    with pytest.raises(ValueError, match="widths\\[1\\]"):
        cifar_resnet(20, widths=(16, -1, 64))
    with pytest.raises(ValueError, match="at least one conv"):
        vgg_small(cfg=("M",))
    with pytest.raises(ValueError, match="cfg\\[0\\]"):
        vgg_small(cfg=("X", 16))


def test_digits_resnet_is_small() -> None:
    assert n_params(digits_resnet()) < 100_000


@pytest.mark.parametrize(
    ("name", "in_channels", "expected_groups"),
    # ResNet-56: 27 block-internal convs + 3 coupled residual stages (DESIGN.md); each ResNet-6n+2 has
    # 3n + 3. VGG: 6 convs + the hidden linear layer. MobileNetV2-small: 4 residual stages, 7 expand convs
    # (each with its depthwise conv), the head conv.
    [("resnet20", 3, 12), ("resnet56", 3, 30), ("digits_resnet", 1, 6), ("vgg_small", 3, 7),
     ("mobilenet_v2_small", 1, 12)],
)
def test_traces_into_expected_groups(name: str, in_channels: int, expected_groups: int) -> None:
    model = MODEL_REGISTRY[name](in_channels=in_channels)
    head = model.fc if hasattr(model, "fc") else model.classifier[-1]
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, in_channels, 32, 32))
    groups = list(graph.get_all_groups(ignored_layers=[head]))
    assert len(groups) == expected_groups


# ---------------------------------------------------------------- Fashion-MNIST sizes: 1x28x28 inputs
X28 = torch.randn(1, 1, 28, 28)


def _space28(model: nn.Module):
    from rlprune.space.pruning import PruningSpace

    torch.manual_seed(0)
    return PruningSpace.from_model(model.eval(), X28)


@pytest.mark.parametrize(("factory", "groups"), [(resnet20, 12), (resnet56, 30), (mobilenet_v2_small, 12)])
def test_fashion_mnist_models_run_and_prune_on_28x28(factory, groups: int) -> None:
    from rlprune.space.pruning import count_ops_and_params

    model = factory(in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    space = _space28(model)
    assert space.n_groups == groups and not space.skipped
    ratios = [0.2, 0.5, 0.7] * (groups // 3)
    pruned = space.apply(ratios)
    # The cost model and torch-pruning's counter agree on the pruned net, which still runs.
    assert count_ops_and_params(pruned, X28) == space.cost(ratios)
    with torch.no_grad():
        assert pruned(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_resnets_downsample_28_to_7() -> None:
    model = resnet20(in_channels=1).eval()
    sizes = []
    hooks = [stage.register_forward_hook(lambda _m, _i, out: sizes.append(out.shape[-1])) for stage in model.layers]
    with torch.no_grad():
        model(X28)
    for h in hooks:
        h.remove()
    assert sizes == [28, 14, 7]


def test_mobilenet_v2_small_shape_size_and_blocks() -> None:
    model = mobilenet_v2_small().eval()
    with torch.no_grad():
        out = model.blocks(model.stem(torch.randn(2, 1, 28, 28)))
    assert out.shape == (2, 64, 7, 7)
    assert 100_000 < n_params(model) < 300_000
    assert len(model.blocks) == 8
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 8 and all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    # Identity shortcuts exactly where stride is 1 and the width does not change.
    assert [b.use_residual for b in model.blocks] == [True, False, True, False, True, False, True, True]
    assert n_params(mobilenet_v2_small(width=0.5)) < n_params(model) < n_params(mobilenet_v2_small(width=1.5))


def test_mobilenet_v2_small_depthwise_groups_stay_consistent_after_pruning() -> None:
    space = _space28(mobilenet_v2_small())
    dw_groups = [g for g in space.groups if any(".depthwise.0" in name for name in g.layers)]
    # Block 0 has no expand conv: its depthwise conv joins the stem's residual stage; the other seven
    # couple with their own expand conv.
    assert len(dw_groups) == 8
    pruned = space.apply([space.max_ratio] * space.n_groups)
    for block in pruned.blocks:
        dw = block.depthwise[0]
        assert dw.groups == dw.in_channels == dw.out_channels == block.depthwise[1].num_features
        assert block.project[0].in_channels == dw.out_channels
    with torch.no_grad():
        assert pruned(X28).shape == (1, 10)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"num_classes": 0}, "num_classes"), ({"in_channels": -1}, "in_channels"), ({"width": 0}, "width"),
     ({"width": "1"}, "width"), ({"width": True}, "width")],
)
def test_mobilenet_v2_small_bad_args_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        mobilenet_v2_small(**kwargs)
