"""The few small CNNs rlprune writes itself (torchvision's ops do not load against CPU torch here).

All models are plain ``nn.Module`` trees with ReLUs (ReLU6 in the MobileNet), residual additions, and an
``AdaptiveAvgPool2d(1) + flatten + Linear`` head, so torch-pruning traces them into dependency groups:

- ``cifar_resnet``: the CIFAR ResNet of He et al. 2016 (sec. 4.2), BasicBlocks, depth = 6n + 2.
  Shortcuts use option B (1x1 conv + BN) where the shape changes, so every residual stage is one coupled
  group of prunable convs (option A's zero-padding shortcut has no weights to prune).
- ``digits_resnet``: the same family, shallow and narrow, for the 1x32x32 digits task.
- ``vgg_small``: a plain conv-BN-ReLU stack with max pooling and a two-layer head: no coupled groups.
- ``mobilenet_v2_small``: MobileNetV2 inverted residuals (Sandler et al. 2018) sized for 1x28x28; its
  depthwise convs couple with the expand conv before them, so each block's hidden width is one group.

    conv3x3(in, w0) -> BN -> ReLU
    stage 1: n x BasicBlock(w0, stride 1)
    stage 2: n x BasicBlock(w1, first stride 2)     BasicBlock: x -> conv-BN-ReLU-conv-BN -> + shortcut(x) -> ReLU
    stage 3: n x BasicBlock(w2, first stride 2)
    AdaptiveAvgPool2d(1) -> flatten -> Linear(w2, num_classes)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut (identity, or 1x1 conv + BN when the shape changes)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        # An empty Sequential is the identity and keeps the attribute present for every block, which
        # makes state_dict keys and torch-pruning's graph uniform across blocks.
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """A stem conv, ``len(widths)`` stages of ``blocks_per_stage`` BasicBlocks, and a pooled linear head."""

    def __init__(
        self,
        blocks_per_stage: int,
        widths: Sequence[int] = (16, 32, 64),
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages = []
        in_planes = widths[0]
        for i, planes in enumerate(widths):
            blocks = []
            for j in range(blocks_per_stage):
                # Downsample at the first block of every stage but the first (He et al. 2016, sec. 4.2).
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.ModuleList(stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        for stage in self.layers:
            out = stage(out)
        out = torch.flatten(self.avgpool(out), 1)
        return self.fc(out)


class VGGSmall(nn.Module):
    """Conv-BN-ReLU stacks separated by 2x2 max pooling, then a pooled two-layer classifier."""

    def __init__(
        self,
        cfg: Sequence[int | str],
        num_classes: int = 10,
        in_channels: int = 3,
        hidden: int = 128,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [
                    nn.Conv2d(channels, int(item), 3, padding=1, bias=False),
                    nn.BatchNorm2d(int(item)),
                    nn.ReLU(inplace=True),
                ]
                channels = int(item)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        # A hidden linear layer gives the pruner a fully connected group too, unlike the ResNets.
        self.classifier = nn.Sequential(
            nn.Linear(channels, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(out)


def _conv_bn(in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True):
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: expand 1x1 -> depthwise 3x3 -> linear project 1x1, plus identity when shapes match.

    With ``expansion == 1`` the expand conv is left out (as in MobileNetV2's first block), so the depthwise
    conv works on, and couples with, the block's input channels.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_ch * expansion
        self.use_residual = stride == 1 and in_ch == out_ch
        self.expand: nn.Module = _conv_bn(in_ch, hidden) if expansion != 1 else nn.Sequential()
        # groups == channels: one 3x3 filter per channel; torch-pruning prunes its in/out channels and groups
        # together with the expand conv's outputs.
        self.depthwise = _conv_bn(hidden, hidden, 3, stride, groups=hidden)
        # No activation after the projection: the "linear bottleneck" of Sandler et al. 2018, sec. 3.2.
        self.project = _conv_bn(hidden, out_ch, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.use_residual else out


MOBILENET_SMALL_CFG = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 1), (6, 64, 3, 2))
"""``(expansion, out_channels, blocks, first_stride)`` per stage of ``mobilenet_v2_small``: 8 blocks,
28x28 -> 14x14 -> 7x7 (MobileNetV2's table 2, shortened and with two of its five downsamplings)."""


class MobileNetV2Small(nn.Module):
    """A 3x3 stem, inverted-residual stages, a 1x1 head conv and a pooled linear classifier."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        width: float = 1.0,
        cfg: Sequence[tuple[int, int, int, int]] = MOBILENET_SMALL_CFG,
        head_channels: int = 256,
    ) -> None:
        super().__init__()
        stem = _scaled(cfg[0][1], width)
        self.stem = _conv_bn(in_channels, stem, 3)
        blocks = []
        channels = stem
        for expansion, out, n, stride in cfg:
            out = _scaled(out, width)
            for j in range(n):
                blocks.append(InvertedResidual(channels, out, stride if j == 0 else 1, expansion))
                channels = out
        self.blocks = nn.Sequential(*blocks)
        # Like MobileNetV2, the head never narrows below its width-1.0 size.
        head = _scaled(head_channels, max(1.0, width))
        self.head = _conv_bn(channels, head)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(head, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(self.avgpool(out), 1))


def _scaled(channels: int, width: float, divisor: int = 8) -> int:
    # MobileNetV2's _make_divisible: round to a multiple of 8, never below 8 nor below 90% of the target.
    out = max(divisor, int(channels * width + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * channels * width else out


def _init_weights(model: nn.Module) -> None:
    # Kaiming init for ReLU nets (He et al. 2015); PyTorch's default conv init trains these deep plain
    # stacks noticeably slower in the few epochs the digits task can afford.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def cifar_resnet(
    depth: int,
    num_classes: int = 10,
    in_channels: int = 3,
    widths: Sequence[int] = (16, 32, 64),
) -> CifarResNet:
    """Build a CIFAR-style ResNet (He et al. 2016) with BasicBlocks and option-B shortcuts.

    Args:
        depth: number of weighted layers, ``2 * n * len(widths) + 2``; with three stages 6n + 2
            (20 -> n=3, 56 -> n=9).
        num_classes: size of the linear head.
        in_channels: channels of the input images.
        widths: output channels of each stage; the first stage keeps the input resolution and each
            later stage halves it.

    Returns:
        An untrained ``CifarResNet`` in train mode.

    Raises:
        ValueError: if ``depth`` does not fit the number of stages, or a size is not a positive integer.
    """
    widths = tuple(widths)
    if not widths:
        raise ValueError("widths must name at least one stage, got ()")
    for i, w in enumerate(widths):
        _check_positive(f"widths[{i}]", w)
    _check_positive("num_classes", num_classes)
    _check_positive("in_channels", in_channels)
    per_block = 2 * len(widths)
    if not isinstance(depth, int) or depth < per_block + 2 or (depth - 2) % per_block:
        raise ValueError(
            f"depth must be {per_block}n + 2 for {len(widths)} stages (e.g. {per_block + 2}, "
            f"{3 * per_block + 2}), got {depth!r}"
        )
    return CifarResNet((depth - 2) // per_block, widths, num_classes, in_channels)


def resnet20(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """Build ResNet-20 for CIFAR (about 0.27M parameters).

    Args:
        num_classes: size of the linear head.
        in_channels: channels of the input images.

    Returns:
        An untrained ``CifarResNet`` with three stages of three BasicBlocks.

    Raises:
        ValueError: if a size is not a positive integer.
    """
    return cifar_resnet(20, num_classes, in_channels)


def resnet56(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """Build ResNet-56 for CIFAR (about 0.85M parameters).

    Args:
        num_classes: size of the linear head.
        in_channels: channels of the input images.

    Returns:
        An untrained ``CifarResNet`` with three stages of nine BasicBlocks.

    Raises:
        ValueError: if a size is not a positive integer.
    """
    return cifar_resnet(56, num_classes, in_channels)


def digits_resnet(num_classes: int = 10, in_channels: int = 1) -> CifarResNet:
    """Build the ResNet-8 used by the digits task: widths (16, 32, 64), one BasicBlock per stage.

    Deep enough to have three coupled residual groups and six block-internal convs, small enough to
    train on 1,077 upsampled 8x8 digits in well under 90 s on two CPU cores.

    Args:
        num_classes: size of the linear head.
        in_channels: channels of the input images.

    Returns:
        An untrained ``CifarResNet`` (about 78k parameters).

    Raises:
        ValueError: if a size is not a positive integer.
    """
    return cifar_resnet(8, num_classes, in_channels, widths=(16, 32, 64))


def vgg_small(
    num_classes: int = 10,
    in_channels: int = 3,
    cfg: Sequence[int | str] = (16, 16, "M", 32, 32, "M", 64, 64, "M"),
    hidden: int = 128,
) -> VGGSmall:
    """Build a small VGG-style plain CNN (no residual connections, so every conv is its own group).

    Args:
        num_classes: size of the output layer.
        in_channels: channels of the input images.
        cfg: conv output widths in order, with ``"M"`` for a 2x2 max pooling.
        hidden: width of the hidden linear layer of the classifier.

    Returns:
        An untrained ``VGGSmall``.

    Raises:
        ValueError: if ``cfg`` has no conv or holds something other than positive ints and ``"M"``.
    """
    cfg = tuple(cfg)
    for i, item in enumerate(cfg):
        if item != "M":
            _check_positive(f"cfg[{i}]", item)  # type: ignore[arg-type]
    if not any(item != "M" for item in cfg):
        raise ValueError(f"cfg must contain at least one conv width, got {cfg!r}")
    _check_positive("num_classes", num_classes)
    _check_positive("in_channels", in_channels)
    _check_positive("hidden", hidden)
    return VGGSmall(cfg, num_classes, in_channels, hidden)


def mobilenet_v2_small(num_classes: int = 10, in_channels: int = 1, width: float = 1.0) -> MobileNetV2Small:
    """Build a small MobileNetV2 (depthwise-separable inverted residuals) for 1x28x28 inputs.

    Eight blocks in four stages (``MOBILENET_SMALL_CFG``), 28x28 -> 14x14 -> 7x7, a 1x1 head conv to 256
    channels and a linear classifier: 0.19M parameters and 17.7M MACs on 1x28x28 at ``width=1.0`` (ResNet-20:
    0.27M and 31M). It traces into 12 pruning groups: 4 residual stages, 7 expand+depthwise widths, the head.
    Global pooling makes any input size work (3x32x32 runs at 32 -> 16 -> 8).

    Args:
        num_classes: size of the linear head.
        in_channels: channels of the input images.
        width: multiplier of every block's channels, rounded to multiples of 8 (MobileNetV2's alpha).

    Returns:
        An untrained ``MobileNetV2Small``.

    Raises:
        ValueError: if a size is not a positive integer or ``width`` is not a positive number.
    """
    _check_positive("num_classes", num_classes)
    _check_positive("in_channels", in_channels)
    if not isinstance(width, int | float) or isinstance(width, bool) or not 0 < width <= 16:
        raise ValueError(f"width must be a number in (0, 16], got {width!r}")
    return MobileNetV2Small(num_classes, in_channels, float(width))


MODEL_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "resnet20": resnet20,
    "resnet56": resnet56,
    "digits_resnet": digits_resnet,
    "vgg_small": vgg_small,
    "mobilenet_v2_small": mobilenet_v2_small,
}
"""Built-in model names -> constructors taking ``num_classes`` and ``in_channels`` keywords."""

__all__ = [
    "MOBILENET_SMALL_CFG",
    "MODEL_REGISTRY",
    "BasicBlock",
    "CifarResNet",
    "InvertedResidual",
    "MobileNetV2Small",
    "VGGSmall",
    "cifar_resnet",
    "digits_resnet",
    "mobilenet_v2_small",
    "resnet20",
    "resnet56",
    "vgg_small",
]
