"""PreResNet110/164 (the original repo's ``models/preresnet.py``, after bearpaw's
pytorch-classification): pre-activation residual blocks, the original's names and init."""

from __future__ import annotations

import paddle
from paddle import nn

from swa_recipe.arch import preresnet_blocks, scaled

from .. import onednn
from .init import he_normal, torch_default


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2D:
    return onednn.Conv2D(in_planes, out_planes, 3, stride=stride, padding=1, bias_attr=False)


class BasicBlock(nn.Layer):
    """BN-ReLU-conv3x3 twice, plus the (downsampled) input."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Layer | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2D(inplanes)
        self.relu = nn.ReLU()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn2 = nn.BatchNorm2D(planes)
        self.conv2 = conv3x3(planes, planes)
        self.downsample = downsample

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        return out + (x if self.downsample is None else self.downsample(x))


class Bottleneck(nn.Layer):
    """BN-ReLU-conv 1x1, 3x3 (strided), 1x1 (4x the planes), plus the (downsampled) input."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Layer | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2D(inplanes)
        self.conv1 = onednn.Conv2D(inplanes, planes, 1, bias_attr=False)
        self.bn2 = nn.BatchNorm2D(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2D(planes)
        self.conv3 = onednn.Conv2D(planes, planes * 4, 1, bias_attr=False)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + (x if self.downsample is None else self.downsample(x))


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class PreResNet(nn.Layer):
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
        self.bn = nn.BatchNorm2D(planes[2] * block.expansion)
        self.relu = nn.ReLU()
        self.avgpool = nn.AvgPool2D(8)
        self.fc = nn.Linear(planes[2] * block.expansion, num_classes)
        for m in self.sublayers():
            if isinstance(m, nn.Conv2D):
                he_normal(m)
        torch_default(self.fc)

    def _make_layer(self, block: type, planes: int, blocks: int, stride: int = 1
                    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(onednn.Conv2D(self.inplanes, planes * block.expansion, 1,
                                                     stride=stride, bias_attr=False))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))  # 32, 16, 8 pixels
        x = self.avgpool(self.relu(self.bn(x)))
        return self.fc(paddle.flatten(x, 1))
