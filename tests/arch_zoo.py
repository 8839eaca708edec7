"""Small architectures nobody in this project wrote the pruner for: residual, squeeze-and-excitation,
dense (concatenation), depthwise-separable, channel shuffle, and a plain net with a flatten head.

They exist to test that group discovery, the cost model and real pruning generalise; weights are random.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _cbr(i, o, k=3, s=1, groups=1):
    return nn.Sequential(nn.Conv2d(i, o, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(o), nn.ReLU())


class SEBlock(nn.Module):
    """Squeeze-and-excitation: the gate's output multiplies the features channel-wise."""

    def __init__(self, c, r=4):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, c // r, 1)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(self.pool(x)))))


class SENet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = _cbr(3, 16)
        self.b1 = _cbr(16, 32, s=2)
        self.se = SEBlock(32)
        self.b2 = _cbr(32, 32)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))

    def forward(self, x):
        x = self.b1(self.stem(x))
        x = self.se(x)
        return self.head(self.b2(x) + x)


class DenseNetTiny(nn.Module):
    """Two dense layers: each sees the concatenation of everything before it."""

    def __init__(self, num_classes=10, growth=8):
        super().__init__()
        self.stem = _cbr(3, 16)
        self.d1 = _cbr(16, growth)
        self.d2 = _cbr(16 + growth, growth)
        self.trans = _cbr(16 + 2 * growth, 24, k=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(24, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([x, self.d1(x)], 1)
        x = torch.cat([x, self.d2(x)], 1)
        return self.fc(torch.flatten(self.pool(self.trans(x)), 1))


class InvertedResidual(nn.Module):
    def __init__(self, c, expand=4):
        super().__init__()
        h = c * expand
        self.pw = _cbr(c, h, k=1)
        self.dw = _cbr(h, h, k=3, groups=h)
        self.pwl = nn.Sequential(nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.pwl(self.dw(self.pw(x)))


class MobileNetTiny(nn.Module):
    """Depthwise-separable inverted residuals (MobileNetV2 style)."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = _cbr(3, 16, s=2)
        self.blocks = nn.Sequential(InvertedResidual(16), InvertedResidual(16))
        self.head = nn.Conv2d(16, 32, 1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = F.relu(self.head(self.blocks(self.stem(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def channel_shuffle(x, groups):
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleNetTiny(nn.Module):
    """ShuffleNetV2-style unit: split, depthwise branch, concat, channel shuffle."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = _cbr(3, 16)
        self.branch = nn.Sequential(_cbr(8, 8, k=1), _cbr(8, 8, groups=8), _cbr(8, 8, k=1))
        self.out = _cbr(16, 32, k=1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.stem(x)
        a, b = x.chunk(2, dim=1)
        x = channel_shuffle(torch.cat([a, self.branch(b)], 1), 2)
        return self.fc(self.out(x).mean((2, 3)))


class PlainFlatten(nn.Module):
    """VGG-like with a flatten of a 4x4 map into the classifier (no global pooling)."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(_cbr(3, 16), nn.MaxPool2d(2), _cbr(16, 32), nn.MaxPool2d(2),
                                      _cbr(32, 32), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(),
                                        nn.Dropout(0.1), nn.Linear(64, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


ZOO = {
    "se": SENet,
    "dense": DenseNetTiny,
    "mobilenet": MobileNetTiny,
    "shuffle": ShuffleNetTiny,
    "plain": PlainFlatten,
}
