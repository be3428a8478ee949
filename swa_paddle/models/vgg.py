"""VGG16/VGG16BN/VGG19/VGG19BN (the original repo's ``models/vgg.py``): names and initialisation."""

from __future__ import annotations

import paddle
from paddle import nn

from swa_recipe.arch import layout, scaled

from .. import onednn
from .init import he_normal, torch_default


def make_layers(cfg: list, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Layer] = []
    in_channels = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2D(kernel_size=2, stride=2))
            continue
        layers.append(onednn.Conv2D(in_channels, v, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2D(v))  # Paddle momentum 0.9 == torch momentum 0.1
        layers.append(nn.ReLU())
        in_channels = v
    return nn.Sequential(*layers)


class SampleDropout(nn.Dropout):
    """``nn.Dropout`` that applies given masks (one row per sample, ``swa_recipe.dropout``)
    while training; without masks, or in evaluation, it is ``nn.Dropout``."""

    def __init__(self, p: float):
        super().__init__(p)
        self.mask: paddle.Tensor | None = None

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if self.training and self.mask is not None:
            return x * self.mask
        return super().forward(x)


def dropout_layers(model: nn.Layer) -> list[SampleDropout]:
    return [m for m in model.sublayers() if isinstance(m, SampleDropout)]


def set_dropout_masks(model: nn.Layer, masks: list[paddle.Tensor] | None) -> None:
    """Masks for the next training forward, one per dropout layer in order (None: clear)."""
    layers = dropout_layers(model)
    for layer, mask in zip(layers, masks or [None] * len(layers), strict=True):
        layer.mask = mask


class VGG(nn.Layer):
    """Keys ``features.N.*`` and ``classifier.1/4/6.*`` match the original's one-to-one."""

    def __init__(self, num_classes: int = 10, depth: int = 16, batch_norm: bool = False,
                 width: float = 1.0, dropout: float = 0.5):
        super().__init__()
        self.features = make_layers(layout(depth, width), batch_norm)
        hidden = scaled(512, width)
        self.classifier = nn.Sequential(
            SampleDropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(),
            SampleDropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        """Conv: N(0, sqrt(2 / (k*k*out))), bias 0; Linear: torch's default U(+-1/sqrt(fan_in))."""
        for m in self.sublayers():
            if isinstance(m, nn.Conv2D):
                he_normal(m)
            elif isinstance(m, nn.Linear):
                torch_default(m)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.features(x)
        return self.classifier(paddle.flatten(x, 1))

