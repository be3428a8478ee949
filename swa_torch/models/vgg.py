"""VGG16/VGG16BN/VGG19/VGG19BN (the original repo's ``models/vgg.py``): names and initialisation."""

from __future__ import annotations

import torch
from torch import nn

from swa_recipe.arch import layout, scaled

from .init import he_normal


def make_layers(cfg: list, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_channels = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(nn.Conv2d(in_channels, v, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU(inplace=True))
        in_channels = v
    return nn.Sequential(*layers)


class SampleDropout(nn.Dropout):
    """``nn.Dropout`` that applies given masks (one row per sample, ``swa_recipe.dropout``)
    while training; without masks, or in evaluation, it is ``nn.Dropout``."""

    def __init__(self, p: float):
        super().__init__(p)
        self.mask: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.mask is not None:
            return x * self.mask
        return super().forward(x)


def dropout_layers(model: nn.Module) -> list[SampleDropout]:
    return [m for m in model.modules() if isinstance(m, SampleDropout)]


def set_dropout_masks(model: nn.Module, masks: list[torch.Tensor] | None) -> None:
    """Masks for the next training forward, one per dropout layer in order (None: clear)."""
    layers = dropout_layers(model)
    for layer, mask in zip(layers, masks or [None] * len(layers), strict=True):
        layer.mask = mask


class VGG(nn.Module):
    """Keys ``features.N.*`` and ``classifier.1/4/6.*`` match the original's one-to-one."""

    def __init__(self, num_classes: int = 10, depth: int = 16, batch_norm: bool = False,
                 width: float = 1.0, dropout: float = 0.5):
        super().__init__()
        self.features = make_layers(layout(depth, width), batch_norm)
        hidden = scaled(512, width)
        self.classifier = nn.Sequential(
            SampleDropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(True),
            SampleDropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(True),
            nn.Linear(hidden, num_classes),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        """Conv: N(0, sqrt(2 / (k*k*out))), bias 0; Linear: torch's default U(+-1/sqrt(fan_in))."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                he_normal(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(x, 1))

