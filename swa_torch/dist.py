"""Data parallelism in PyTorch: ``torch.distributed`` (gloo on CPU; on GPUs NCCL for the
model's tensors and gloo for host values, one ``cpu:gloo,cuda:nccl`` group).

Two kinds of collectives run here: on the model's tensors (DDP's gradients, BN statistics), on
the model's device; and on host values (loss totals, stop flags, ``update_bn`` sums, the resume
path), on the CPU. NCCL handles CUDA tensors only, so each kind goes through a group with a
backend for its device: the default group when it has one, else a gloo group made for it
(a default group initialised by someone else as NCCL only, say).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from . import swa_utils

_GROUPS: dict[str, Any] = {}  # device type -> process group for tensors on it
CPU = torch.device("cpu")


def backend(device: torch.device) -> str:
    """gloo on CPU; on a GPU, NCCL for CUDA tensors and gloo for CPU tensors."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def _has_backend(device_type: str) -> bool:
    try:
        dist.group.WORLD._get_backend(torch.device(device_type))
    except RuntimeError:  # "No backend type associated with device type ..."
        return False
    return True


def init_distributed(device: torch.device = CPU) -> tuple[int, int]:
    """Join the job started by ``torchrun``; (rank, world size). Every rank makes the same
    groups in the same order here (``new_group`` is collective)."""
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not dist.is_initialized():
        dist.init_process_group(backend(device))
    if not dist.is_initialized():
        return 0, 1
    _GROUPS.clear()
    for kind in dict.fromkeys(("cpu", device.type)):
        _GROUPS[kind] = (dist.group.WORLD if _has_backend(kind)
                         else dist.new_group(backend="gloo"))
    return dist.get_rank(), dist.get_world_size()


def group(device: torch.device) -> Any:
    """The process group for tensors on ``device``."""
    return _GROUPS[device.type]


def shutdown(world_size: int) -> None:
    """Leave the job together: a barrier, then ``destroy_process_group``. A rank that tears
    its group down while another still talks to it can abort in gloo's threads (SIGABRT).
    """
    if world_size == 1:
        return
    dist.barrier(group=group(CPU))
    dist.destroy_process_group()
    _GROUPS.clear()


def wrap(model: nn.Module, world_size: int) -> nn.Module:
    """``DistributedDataParallel`` averages gradients and broadcasts rank 0's buffers."""
    if world_size == 1:
        return model
    device = next(model.parameters()).device
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                               process_group=group(device))


def all_reduce_sum(values: np.ndarray, world_size: int) -> np.ndarray:
    """Sum a float64 array over ranks (on the CPU: no GPU stream is waited for)."""
    if world_size == 1:
        return values
    tensor = torch.from_numpy(np.array(values, dtype=np.float64))
    dist.all_reduce(tensor, group=group(CPU))
    return tensor.numpy()


def any_rank(flag: bool, world_size: int) -> bool:
    """True on every rank when ``flag`` is true on one (ranks must stop at the same step)."""
    return bool(all_reduce_sum(np.array([float(flag)]), world_size)[0] > 0)


def broadcast_object(obj: Any, world_size: int) -> Any:
    """Rank 0's ``obj`` (picklable) on every rank."""
    if world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=group(CPU), device=CPU)
    return box[0]


def broadcast_bn_stats(model: nn.Module, world_size: int) -> None:
    """Rank 0's BatchNorm statistics on every rank (DDP already does this at each forward)."""
    if world_size == 1:
        return
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            for stat in (module.running_mean, module.running_var):
                dist.broadcast(stat, src=0, group=group(stat.device))


def update_bn(loader, model: nn.Module, world_size: int, device: torch.device | None = None
              ) -> None:
    """torch's ``update_bn`` in one process; over the global batches of a data-parallel job."""
    if world_size == 1:
        swa_utils.update_bn(loader, model, device)
    else:
        swa_utils.update_bn_all_reduce(loader, model, lambda a: all_reduce_sum(a, world_size),
                                       device)
