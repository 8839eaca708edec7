"""Shapes, sizes, validation and traceability of the models in rlprune.models."""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp  # tests may trace directly; library code goes through rlprune.space.pruning
from torch import nn

from rlprune.models import MODEL_REGISTRY, cifar_resnet, digits_resnet, resnet20, resnet56, vgg_small


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(MODEL_REGISTRY))
@pytest.mark.parametrize("num_classes", [10, 7])
def test_forward_shape(name: str, num_classes: int) -> None:
    in_channels = 1 if name == "digits_resnet" else 3
    model = MODEL_REGISTRY[name](num_classes=num_classes, in_channels=in_channels).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, 32, 32))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()


def test_registry_names() -> None:
    assert set(MODEL_REGISTRY) == {"resnet20", "resnet56", "digits_resnet", "vgg_small"}


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
    # 3n + 3. VGG: 6 convs + the hidden linear layer.
    [("resnet20", 3, 12), ("resnet56", 3, 30), ("digits_resnet", 1, 6), ("vgg_small", 3, 7)],
)
def test_traces_into_expected_groups(name: str, in_channels: int, expected_groups: int) -> None:
    model = MODEL_REGISTRY[name](in_channels=in_channels)
    head = model.fc if hasattr(model, "fc") else model.classifier[-1]
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, in_channels, 32, 32))
    groups = list(graph.get_all_groups(ignored_layers=[head]))
    assert len(groups) == expected_groups
