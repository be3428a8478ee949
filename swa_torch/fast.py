"""``Global.channels_last`` and ``Global.compile``: the torch twin's GPU speed options.

Both change how the training model computes, never what it holds: ``self.model`` stays the
plain module whose ``state_dict`` the checkpoints save (no ``_orig_mod.`` prefix, ordinary
NCHW-shaped tensors), so a checkpoint loads in any run, with the options or without.
"""

from __future__ import annotations

import torch
from torch import nn


def _channels_last_input(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: a 4-D input in ``channels_last``, so that every caller (the training
    step, evaluation, ``update_bn``, the SWA copy) feeds the layout the weights are in and the
    convolutions need no conversion of their own."""
    if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
        return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])
    return args


def channels_last(model: nn.Module, cfg: dict) -> nn.Module:
    """``model`` in ``torch.channels_last`` (its 4-D weights; linear layers are unaffected)
    with inputs converted on entry, when ``Global.channels_last``; else ``model`` unchanged.
    The values are the same; the kernels cuDNN and oneDNN pick differ, and with them the
    float32 rounding of a step."""
    if not cfg["Global"]["channels_last"]:
        return model
    model.to(memory_format=torch.channels_last)
    model.register_forward_pre_hook(_channels_last_input)
    return model


def compiled(net: nn.Module, cfg: dict) -> nn.Module:
    """``torch.compile`` of the training network when ``Global.compile``; else ``net``.

    Static shapes (``dynamic=False``): an epoch has two batch sizes at most (the short last
    batch), and a second specialised graph runs faster than one dynamic graph for both. The
    compiled wrapper only computes: the trainer keeps the plain module for checkpoints, the
    SWA average and evaluation (evaluated eagerly: another mode and module, another compile).
    """
    if not cfg["Global"]["compile"]:
        return net
    return torch.compile(net, dynamic=False)
