"""The original repo's model zoo in Paddle: VGG16/19(BN), PreResNet110/164, WideResNet28x10."""

from __future__ import annotations

from paddle import nn

from swa_recipe.arch import model_kwargs

from .. import onednn, static_eval
from .preresnet import PreResNet
from .vgg import VGG, dropout_layers, make_layers, set_dropout_masks
from .wide_resnet import WideResNet

__all__ = ["VGG", "PreResNet", "WideResNet", "build_model", "dropout_layers", "make_layers",
           "set_dropout_masks"]

FAMILIES = {"vgg": VGG, "preresnet": PreResNet, "wide_resnet": WideResNet}


def build_model(cfg: dict) -> nn.Layer:
    """The config's model; ``Global.onednn`` picks its convolution kernels and
    ``Global.static_eval`` its evaluation forward (this model's only)."""
    kind, kwargs = model_kwargs(cfg)
    model = FAMILIES[kind](**kwargs)
    onednn.enable(model, cfg["Global"]["onednn"])
    static_eval.enable(model, cfg["Global"]["static_eval"])
    return model
