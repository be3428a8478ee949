"""The original repo's model zoo in PyTorch: VGG16/19(BN), PreResNet110/164, WideResNet28x10."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from swa_recipe.arch import model_kwargs

from .preresnet import PreResNet
from .vgg import VGG, dropout_layers, make_layers, set_dropout_masks
from .wide_resnet import WideResNet

__all__ = ["VGG", "PreResNet", "WideResNet", "build_model", "dropout_layers", "kernels",
           "make_layers", "set_dropout_masks"]

FAMILIES = {"vgg": VGG, "preresnet": PreResNet, "wide_resnet": WideResNet}


def build_model(cfg: dict) -> nn.Module:
    """The config's model. ``Global.onednn`` picks its convolution kernels for its own forward
    passes (hooks around each call), never for the process: other models keep theirs."""
    kind, kwargs = model_kwargs(cfg)
    model = FAMILIES[kind](**kwargs)
    model.onednn = bool(cfg["Global"]["onednn"])
    model.register_forward_pre_hook(_enter_kernels)
    model.register_forward_hook(_leave_kernels, always_call=True)
    return model


@contextlib.contextmanager
def kernels(model: nn.Module) -> Iterator[None]:
    """Run what the block computes with ``model``'s convolution kernels (oneDNN or torch's
    own). torch chooses the kernels of a convolution's backward again when the backward runs,
    so a training step's backward must run inside this block too (the twin's ``step`` does)."""
    _enter_kernels(model, ())
    try:
        yield
    finally:
        _leave_kernels(model, (), None)


def _enter_kernels(model: nn.Module, args: tuple) -> None:
    """Set ``model``'s switch, keeping the one it replaces (forward pre-hook and
    :func:`kernels`)."""
    model.__dict__.setdefault("_kernels_before", []).append(torch.backends.mkldnn.enabled)
    torch.backends.mkldnn.enabled = getattr(model, "onednn", True)


def _leave_kernels(model: nn.Module, args: tuple, output) -> None:
    torch.backends.mkldnn.enabled = model.__dict__["_kernels_before"].pop()
