"""``torch.optim.swa_utils`` itself (the reference ``swa_paddle.swa_utils`` mirrors), plus the
BN update of a data-parallel job, which torch does not provide."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import (
    SWALR,
    AveragedModel,
    get_ema_avg_fn,
    get_ema_multi_avg_fn,
    get_swa_avg_fn,
    get_swa_multi_avg_fn,
    update_bn,
)

from swa_recipe.bn import AllReduce, BatchStats

__all__ = ["AveragedModel", "SWALR", "get_ema_avg_fn", "get_ema_multi_avg_fn", "get_swa_avg_fn",
           "get_swa_multi_avg_fn", "update_bn", "update_bn_all_reduce"]


def _first(batch: Any) -> torch.Tensor:
    return batch[0] if isinstance(batch, (list, tuple)) else batch


@torch.no_grad()
def update_bn_all_reduce(loader: Iterable, model: nn.Module, all_reduce: AllReduce,
                         device: torch.device | None = None) -> None:
    """``update_bn`` when each rank holds a shard of every batch: statistics of the global
    batches, equal to torch's ``update_bn`` in one process (see ``swa_recipe.bn``)."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers:
        return
    stats = {m: BatchStats(all_reduce) for m in layers}

    def hook(module: nn.Module, inputs: tuple) -> None:
        x = inputs[0].double()
        dims = [0, 2, 3] if x.dim() == 4 else [0]
        count = x.numel() / x.shape[1]
        mean, var = stats[module].add(x.sum(dims).cpu().numpy(),
                                      (x * x).sum(dims).cpu().numpy(), count)
        module.running_mean.copy_(torch.from_numpy(mean))
        module.running_var.copy_(torch.from_numpy(var))

    handles = [m.register_forward_pre_hook(hook) for m in layers]
    was_training = model.training
    model.train()
    for m in layers:
        m.eval()  # normalise with the statistics the hook has just set
    try:
        for batch in loader:
            x = _first(batch)
            model(x.to(device) if device is not None else x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    for m in layers:
        result = stats[m].result()
        if result is not None:
            m.running_mean.copy_(torch.from_numpy(result[0]))
            m.running_var.copy_(torch.from_numpy(result[1]))
