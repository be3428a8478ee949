"""PreResNet110/164 (the original repo's ``models/preresnet.py``, after bearpaw's
pytorch-classification): pre-activation residual blocks, the original's names and init."""

from __future__ import annotations

import torch
from torch import nn

from swa_recipe.arch import preresnet_blocks, scaled

from .init import he_normal


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """BN-ReLU-conv3x3 twice, plus the (downsampled) input."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        return out + (x if self.downsample is None else self.downsample(x))


class Bottleneck(nn.Module):
    """BN-ReLU-conv 1x1, 3x3 (strided), 1x1 (4x the planes), plus the (downsampled) input."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + (x if self.downsample is None else self.downsample(x))


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class PreResNet(nn.Module):
    """Keys ``conv1``, ``layer{1,2,3}.N.{bn,conv}K``, ``layerK.0.downsample.0``, ``bn``, ``fc``
    as in the original; ``width`` scales the 16/32/64 planes of the three stages."""

    def __init__(self, num_classes: int = 10, depth: int = 110, width: float = 1.0):
        super().__init__()
        kind, n = preresnet_blocks(depth)
        block = BLOCKS[kind]
        planes = [scaled(p, width) for p in (16, 32, 64)]
        self.inplanes = planes[0]
        self.conv1 = conv3x3(3, planes[0])
        self.layer1 = self._make_layer(block, planes[0], n)
        self.layer2 = self._make_layer(block, planes[1], n, stride=2)
        self.layer3 = self._make_layer(block, planes[2], n, stride=2)
        self.bn = nn.BatchNorm2d(planes[2] * block.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(planes[2] * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                he_normal(m)

    def _make_layer(self, block: type, planes: int, blocks: int, stride: int = 1
                    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1,
                                                 stride=stride, bias=False))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))  # 32, 16, 8 pixels
        x = self.avgpool(self.relu(self.bn(x)))
        return self.fc(torch.flatten(x, 1))
