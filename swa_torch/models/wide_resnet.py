"""WideResNet28x10 (the original repo's ``models/wide_resnet.py``, after meliketoy's
wide-resnet.pytorch): its names, torch's default init (the original defines ``conv_init`` but
never applies it), and its last BatchNorm's torch momentum 0.9 (Paddle 0.1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from swa_recipe.arch import scaled, wide_resnet_blocks


class WideBasic(nn.Module):
    """BN-ReLU-conv3x3, dropout, BN-ReLU-conv3x3 (strided), plus the shortcut."""

    def __init__(self, in_planes: int, planes: int, dropout_rate: float, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, padding=1)
        self.dropout = nn.Dropout(dropout_rate)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dropout(self.conv1(F.relu(self.bn1(x))))
        out = self.conv2(F.relu(self.bn2(out)))
        return out + self.shortcut(x)


class WideResNet(nn.Module):
    """Keys ``conv1``, ``layer{1,2,3}.N.{bn1,conv1,bn2,conv2,shortcut.0}``, ``bn1``, ``linear``
    as in the original; ``width`` scales the 16, 16k, 32k, 64k channels."""

    def __init__(self, num_classes: int = 10, depth: int = 28, widen_factor: int = 10,
                 dropout: float = 0.0, width: float = 1.0):
        super().__init__()
        n, k = wide_resnet_blocks(depth), widen_factor
        stages = [scaled(c, width) for c in (16, 16 * k, 32 * k, 64 * k)]
        self.in_planes = stages[0]
        self.conv1 = nn.Conv2d(3, stages[0], 3, padding=1)
        self.layer1 = self._wide_layer(stages[1], n, dropout, stride=1)
        self.layer2 = self._wide_layer(stages[2], n, dropout, stride=2)
        self.layer3 = self._wide_layer(stages[3], n, dropout, stride=2)
        self.bn1 = nn.BatchNorm2d(stages[3], momentum=0.9)
        self.linear = nn.Linear(stages[3], num_classes)

    def _wide_layer(self, planes: int, blocks: int, dropout: float, stride: int
                    ) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(WideBasic(self.in_planes, planes, dropout, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        out = F.avg_pool2d(F.relu(self.bn1(out)), 8)
        return self.linear(torch.flatten(out, 1))
