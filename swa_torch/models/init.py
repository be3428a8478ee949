"""The original repo's initialisations that differ from torch's defaults."""

from __future__ import annotations

import math

from torch import nn


def he_normal(conv: nn.Conv2d) -> None:
    """``weight ~ N(0, sqrt(2 / (k*k*out)))`` and a zero bias (VGG, PreResNet)."""
    n = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / n))
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
