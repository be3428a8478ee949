"""The original repo's initialisations, written for Paddle (whose own defaults differ)."""

from __future__ import annotations

import math

import paddle
from paddle import nn


def he_normal(conv: nn.Conv2D) -> None:
    """``weight ~ N(0, sqrt(2 / (k*k*out)))`` and a zero bias (VGG, PreResNet)."""
    out, _, kh, kw = conv.weight.shape
    conv.weight.set_value(paddle.normal(0.0, math.sqrt(2.0 / (kh * kw * out)), conv.weight.shape))
    if conv.bias is not None:
        conv.bias.set_value(paddle.zeros(conv.bias.shape))


def torch_default(layer: nn.Conv2D | nn.Linear) -> None:
    """torch's default ``Conv2d``/``Linear`` init: weight and bias ~ U(+-1/sqrt(fan_in))."""
    shape = layer.weight.shape
    fan_in = shape[0] if isinstance(layer, nn.Linear) else math.prod(shape[1:])  # Linear: [in, out]
    bound = 1.0 / math.sqrt(fan_in)
    layer.weight.set_value(paddle.uniform(shape, min=-bound, max=bound))
    if layer.bias is not None:
        layer.bias.set_value(paddle.uniform(layer.bias.shape, min=-bound, max=bound))
