"""The run's average from ``SWA.avg``: SWA (equal weights of the collected epochs, BatchNorm
statistics recomputed by ``update_bn``) or EMA (PaddleClas's ``EMA`` block: every step from
``swa_start``, BatchNorm statistics averaged with the weights)."""

from __future__ import annotations

from paddle import nn

from .swa_utils import AveragedModel, get_ema_multi_avg_fn


def build_average(model: nn.Layer, swa: dict) -> AveragedModel:
    """``AveragedModel`` for the ``SWA`` section of a config."""
    if swa["avg"] == "ema":
        return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(swa["ema_decay"]),
                             use_buffers=True)
    return AveragedModel(model)
