"""Data parallelism in Paddle: ``paddle.distributed`` (gloo on CPU, NCCL on GPU).

Every collective runs on tensors of the current device (``paddle.to_tensor`` places host values
there), so NCCL, which handles GPU tensors only, gets GPU tensors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import paddle
import paddle.distributed as dist
from paddle import nn

from . import swa_utils


def init_distributed() -> tuple[int, int]:
    """Join the job started by ``paddle.distributed.launch``; (rank, world size)."""
    if dist.get_world_size() > 1 and not dist.is_initialized():
        dist.init_parallel_env()
    return dist.get_rank(), dist.get_world_size()


def shutdown(world_size: int) -> None:
    """Leave the job together: a barrier, then ``destroy_process_group``. A rank that tears
    its group down while another still talks to it can abort in gloo's threads (SIGABRT).
    """
    if world_size == 1:
        return
    dist.barrier()
    dist.destroy_process_group()


def wrap(model: nn.Layer, world_size: int) -> nn.Layer:
    """``paddle.DataParallel`` averages gradients across ranks; the plain model keeps the names."""
    return paddle.DataParallel(model) if world_size > 1 else model


def all_reduce_sum(values: np.ndarray, world_size: int) -> np.ndarray:
    """Sum a float64 array over ranks (a tensor on the current device: NCCL takes no other)."""
    if world_size == 1:
        return values
    tensor = paddle.to_tensor(values, dtype="float64")
    dist.all_reduce(tensor)
    return tensor.numpy()


def any_rank(flag: bool, world_size: int) -> bool:
    """True on every rank when ``flag`` is true on one (ranks must stop at the same step)."""
    return bool(all_reduce_sum(np.array([float(flag)]), world_size)[0] > 0)


def broadcast_object(obj: Any, world_size: int) -> Any:
    """Rank 0's ``obj`` (picklable) on every rank."""
    if world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_bn_stats(model: nn.Layer, world_size: int) -> None:
    """Rank 0's BatchNorm statistics on every rank: what torch's DDP does at each forward, and
    ``paddle.DataParallel`` does not, so ranks would otherwise evaluate with different stats."""
    if world_size == 1:
        return
    for layer in model.sublayers():
        if isinstance(layer, nn.layer.norm._BatchNormBase):
            for stat in (layer._mean, layer._variance):
                dist.broadcast(stat, src=0)


def update_bn(loader, model: nn.Layer, world_size: int) -> None:
    """``swa_utils.update_bn`` over the global batches of a data-parallel job."""
    all_reduce = None if world_size == 1 else (lambda a: all_reduce_sum(a, world_size))
    swa_utils.update_bn(loader, model, all_reduce)
