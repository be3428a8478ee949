"""``Global.channels_last`` and ``Global.compile``: the torch twin's GPU speed options; and
``update_bn``'s forward in ``channels_last`` on the CPU.

They change how a model computes, never what it holds: ``self.model`` stays the plain module
whose ``state_dict`` the checkpoints save (no ``_orig_mod.`` prefix, ordinary NCHW-shaped
tensors), so a checkpoint loads in any run, with the options or without.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

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


def _nchw_weights(model: nn.Module) -> bool:
    return any(p.dim() == 4 and not p.is_contiguous(memory_format=torch.channels_last)
               for p in model.parameters())


@contextlib.contextmanager
def channels_last_on_cpu(model: nn.Module) -> Iterator[None]:
    """Run the block with ``model``'s 4-D weights in ``channels_last`` when it is on the CPU in
    NCHW, and put them back after: for ``update_bn``, a no-gradient forward over the training
    set. oneDNN's NHWC convolutions, BatchNorm and max pooling run VGG16BN's at 1/4 width in
    0.6 of the NCHW time (docs/speed.md), which brings torch's ``update_bn`` under the 0.4 of an
    epoch issue 25 asks. A layout change copies values, so the weights come back bit for bit;
    the statistics ``update_bn`` computes differ from NCHW's in float32 rounding (about 1e-5
    relative). Training and evaluation stay NCHW: the training path's numbers do not move."""
    first = next(model.parameters(), None)
    if first is None or first.device.type != "cpu" or not _nchw_weights(model):
        yield
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        model.to(memory_format=torch.contiguous_format)
