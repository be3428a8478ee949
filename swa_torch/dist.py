"""Data parallelism in PyTorch: ``torch.distributed`` (gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from . import swa_utils


def init_distributed() -> tuple[int, int]:
    """Join the job started by ``torchrun``; (rank, world size)."""
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if not dist.is_initialized():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def wrap(model: nn.Module, world_size: int) -> nn.Module:
    """``DistributedDataParallel`` averages gradients and broadcasts rank 0's buffers."""
    if world_size == 1:
        return model
    return nn.parallel.DistributedDataParallel(model)


def all_reduce_sum(values: np.ndarray, world_size: int) -> np.ndarray:
    """Sum a float64 array over ranks."""
    if world_size == 1:
        return values
    tensor = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64))
    dist.all_reduce(tensor)
    return tensor.numpy()


def any_rank(flag: bool, world_size: int) -> bool:
    """True on every rank when ``flag`` is true on one (ranks must stop at the same step)."""
    return bool(all_reduce_sum(np.array([float(flag)]), world_size)[0] > 0)


def broadcast_bn_stats(model: nn.Module, world_size: int) -> None:
    """Rank 0's BatchNorm statistics on every rank (DDP already does this at each forward)."""
    if world_size == 1:
        return
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            for stat in (module.running_mean, module.running_var):
                dist.broadcast(stat, src=0)


def update_bn(loader, model: nn.Module, world_size: int, device: torch.device | None = None
              ) -> None:
    """torch's ``update_bn`` in one process; over the global batches of a data-parallel job."""
    if world_size == 1:
        swa_utils.update_bn(loader, model, device)
    else:
        swa_utils.update_bn_all_reduce(loader, model, lambda a: all_reduce_sum(a, world_size),
                                       device)
