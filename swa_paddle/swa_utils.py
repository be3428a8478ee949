"""Paddle's missing ``torch.optim.swa_utils``: ``AveragedModel``, ``SWALR`` and ``update_bn``.

The API mirrors torch's so that code reads the same in both frameworks. Paddle differences that
matter: BatchNorm statistics are non-trainable parameters (``_mean``, ``_variance``), not buffers;
the running variance Paddle keeps on CPU is biased; and Paddle has no ``momentum=None``
(cumulative average). ``update_bn`` therefore computes the statistics itself, exactly as torch's
``update_bn`` defines them: the equal-weight mean over batches of each batch's mean and unbiased
variance.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import paddle
from paddle import nn

from swa_recipe.bn import AllReduce, BatchStats
from swa_recipe.data.safe_pickle import short
from swa_recipe.schedules import anneal

__all__ = ["AveragedModel", "SWALR", "get_ema_avg_fn", "get_ema_multi_avg_fn", "get_swa_avg_fn",
           "get_swa_multi_avg_fn", "update_bn"]

AvgFn = Callable[[paddle.Tensor, paddle.Tensor, int], paddle.Tensor]
MultiAvgFn = Callable[[list, list, int], None]


def require(ok: bool, name: str, rule: str, value: object) -> None:
    """One ``ValueError`` naming the argument, at construction (as torch's ``swa_utils``): a
    bad value found later would surface as a wrong learning rate or a broadcast average."""
    if not ok:
        raise ValueError(f"{name} must be {rule}, got {short(value)}")


def is_int(value: object) -> bool:
    """An integer, not a bool (``True`` is an ``int`` to Python, never a count here)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_finite(value: object) -> bool:
    """A finite real number, not a bool: NaN compares false with every bound, so range checks
    alone let it through."""
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))


def check_anneal(anneal_epochs: object, anneal_strategy: object) -> None:
    """SWALR's annealing, as torch's ``SWALR`` checks it."""
    require(anneal_strategy in ("cos", "linear"), "anneal_strategy", "'cos' or 'linear'",
            anneal_strategy)
    require(is_int(anneal_epochs) and anneal_epochs >= 0, "anneal_epochs",
            "an integer >= 0", anneal_epochs)


def _check_decay(decay: float) -> None:
    if not (is_finite(decay) and 0.0 <= decay <= 1.0):
        raise ValueError(f"Invalid decay value {short(decay)} provided. Please provide a value "
                         f"in [0,1] range.")


def get_ema_avg_fn(decay: float = 0.999) -> AvgFn:
    """Exponential moving average, for ``AveragedModel(model, avg_fn=get_ema_avg_fn(0.99))``."""
    _check_decay(decay)

    def ema_update(averaged: paddle.Tensor, current: paddle.Tensor, num_averaged: int):
        return decay * averaged + (1 - decay) * current

    return ema_update


def get_swa_avg_fn() -> AvgFn:
    """The equal-weight running mean, one tensor at a time (torch's ``get_swa_avg_fn``)."""

    def swa_update(averaged: paddle.Tensor, current: paddle.Tensor, num_averaged: int):
        return averaged + (current - averaged) / (num_averaged + 1)

    return swa_update


def get_ema_multi_avg_fn(decay: float = 0.999) -> MultiAvgFn:
    """EMA over lists of tensors, in place: torch's ``lerp(averaged, current, 1 - decay)``.

    For ``AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.999), use_buffers=True)``,
    the PaddleClas ``EMA`` block's average (BatchNorm statistics included)."""
    _check_decay(decay)

    def ema_update(averaged: list, current: list, num_averaged: int) -> None:
        for a, c in zip(averaged, current, strict=True):
            a.set_value(a + (1 - decay) * (c - a))

    return ema_update


def get_swa_multi_avg_fn() -> MultiAvgFn:
    """The equal-weight running mean over lists of tensors, in place."""

    def swa_update(averaged: list, current: list, num_averaged: int) -> None:
        for a, c in zip(averaged, current, strict=True):
            a.set_value(a + (c - a) / (num_averaged + 1))

    return swa_update


def _bn_stats(layer: nn.Layer) -> list[str]:
    return ["_mean", "_variance"] if isinstance(layer, nn.layer.norm._BatchNormBase) else []


def named_averaged(model: nn.Layer, use_buffers: bool) -> list[tuple[str, paddle.Tensor]]:
    """What torch averages, by name: every parameter (frozen ones too), then with
    ``use_buffers`` the BN statistics, which are parameters in Paddle but buffers in torch."""
    stats = [(f"{prefix}.{n}" if prefix else n, getattr(m, n))
             for prefix, m in model.named_sublayers(include_self=True) for n in _bn_stats(m)]
    stat_ids = {id(t) for _, t in stats}
    params = [(name, p) for name, p in model.named_parameters() if id(p) not in stat_ids]
    return params + stats if use_buffers else params


def averaged_tensors(model: nn.Layer, use_buffers: bool) -> list[paddle.Tensor]:
    """The tensors of ``named_averaged``, in its order."""
    return [t for _, t in named_averaged(model, use_buffers)]


def check_same_structure(averaged: list[tuple[str, paddle.Tensor]],
                         current: list[tuple[str, paddle.Tensor]]) -> None:
    """Refuse a model of another structure: ``set_value`` and the averaging arithmetic would
    broadcast a tensor of another shape, or ``zip`` pair the wrong tensors, silently."""
    if len(averaged) != len(current):
        raise ValueError(f"model has {len(current)} averaged tensors, the AveragedModel "
                         f"{len(averaged)}; pass a model of the structure it was built from")
    for (name, a), (other, c) in zip(averaged, current, strict=True):
        if name != other or a.shape != c.shape:
            raise ValueError(f"model has {short(other)} of shape {list(c.shape)} where the "
                             f"AveragedModel has {short(name)} of shape {list(a.shape)}; pass a "
                             f"model of the structure it was built from")


class AveragedModel(nn.Layer):
    """Keeps an average of a model's parameters, as ``torch.optim.swa_utils.AveragedModel``.

    The equal-weight average by default (SWA); ``avg_fn(averaged, current, num_averaged)``
    (one tensor, returns the new average) or ``multi_avg_fn(averaged_list, current_list,
    num_averaged)`` (all tensors, in place; e.g. :func:`get_ema_multi_avg_fn`) for another one.
    ``n_averaged`` is a persistable buffer, so it travels in ``state_dict``. BatchNorm
    statistics are not averaged unless ``use_buffers``: run :func:`update_bn` instead.
    """

    def __init__(self, model: nn.Layer, avg_fn: AvgFn | None = None,
                 multi_avg_fn: MultiAvgFn | None = None, use_buffers: bool = False):
        require(isinstance(model, nn.Layer), "model", "a paddle.nn.Layer", model)
        require(avg_fn is None or callable(avg_fn), "avg_fn", "None or a callable", avg_fn)
        require(multi_avg_fn is None or callable(multi_avg_fn), "multi_avg_fn",
                "None or a callable", multi_avg_fn)
        require(isinstance(use_buffers, bool), "use_buffers", "a bool", use_buffers)
        super().__init__()
        self.module = copy.deepcopy(model)
        self.register_buffer("n_averaged", paddle.to_tensor(0, dtype="int64"), persistable=True)
        self.avg_fn = avg_fn
        self.multi_avg_fn = multi_avg_fn
        self.use_buffers = use_buffers

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    @paddle.no_grad()
    def update_parameters(self, model: nn.Layer) -> None:
        require(isinstance(model, nn.Layer), "model", "a paddle.nn.Layer", model)
        n = int(self.n_averaged)
        named = named_averaged(self.module, self.use_buffers)
        named_current = named_averaged(model, self.use_buffers)
        check_same_structure(named, named_current)
        averaged = [t for _, t in named]
        current = [t.detach() for _, t in named_current]
        if n == 0:
            for a, c in zip(averaged, current, strict=True):
                a.set_value(c)
        elif self.multi_avg_fn is not None or self.avg_fn is None:
            (self.multi_avg_fn or get_swa_multi_avg_fn())(averaged, current, n)
        else:
            for a, c in zip(averaged, current, strict=True):
                a.set_value(self.avg_fn(a, c, n))
        self.n_averaged.set_value(paddle.to_tensor(n + 1, dtype="int64"))


class SWALR(paddle.optimizer.lr.LRScheduler):
    """Anneals the learning rate from ``learning_rate`` to ``swa_lr`` over ``anneal_epochs`` steps.

    torch's ``SWALR(optimizer, swa_lr, anneal_epochs, anneal_strategy)`` as a Paddle scheduler:
    pass it as the optimizer's ``learning_rate`` and call ``step()`` once per epoch. After ``k``
    steps the rate is ``swa_lr * a + learning_rate * (1 - a)``, ``a = anneal(min(1, k / E))``.
    """

    def __init__(self, learning_rate: float, swa_lr: float, anneal_epochs: int = 10,
                 anneal_strategy: str = "cos", last_epoch: int = -1, verbose: bool = False):
        require(is_finite(learning_rate) and learning_rate >= 0, "learning_rate",
                "a finite number >= 0", learning_rate)
        require(is_finite(swa_lr) and swa_lr >= 0, "swa_lr", "a finite number >= 0", swa_lr)
        check_anneal(anneal_epochs, anneal_strategy)
        self.swa_lr = swa_lr
        self.anneal_epochs = anneal_epochs
        self.anneal_strategy = anneal_strategy
        super().__init__(learning_rate, last_epoch, verbose)

    def get_lr(self) -> float:
        step = self.last_epoch if self.anneal_epochs else max(1, self.last_epoch)
        alpha = anneal(step / max(1, self.anneal_epochs), self.anneal_strategy)
        return self.swa_lr * alpha + self.base_lr * (1 - alpha)


def _first(batch: Any) -> paddle.Tensor:
    return batch[0] if isinstance(batch, (list, tuple)) else batch


def _channel_sums(x: paddle.Tensor) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-channel sum and sum of squares of a BN input, and elements per channel.

    Each image's channel is summed by a float32 GEMM with ones, images in float64: Paddle's CPU
    reductions run single-threaded, and this is 8x faster than float64 ``sum`` on VGG16BN's
    first layer while agreeing with it to 2e-8.
    """
    n, c = x.shape[0], x.shape[1]
    rows = x.reshape([n * c, -1])
    ones = paddle.ones([rows.shape[1], 1], rows.dtype)

    def total(t: paddle.Tensor) -> np.ndarray:
        return paddle.matmul(t, ones).numpy().astype(np.float64).reshape(n, c).sum(0)

    return total(rows), total(rows * rows), float(n * rows.shape[1])


@paddle.no_grad()
def update_bn(loader: Iterable, model: nn.Layer, all_reduce: AllReduce | None = None) -> None:
    """Recompute BatchNorm statistics with one pass over ``loader`` (as torch's ``update_bn``).

    Running mean and variance become the equal-weight average over batches of each batch's mean
    and unbiased variance: what torch stores with ``momentum=None``. A forward pre-hook reads
    each BN input's per-channel sums and makes the layer normalise with its batch's
    statistics. ``all_reduce`` (summing a float64 array over ranks) makes those the statistics
    of the global batch when each rank holds a shard of it (see ``swa_recipe.bn``).
    """
    require(isinstance(model, nn.Layer), "model", "a paddle.nn.Layer", model)
    require(isinstance(loader, Iterable), "loader", "an iterable of batches", loader)
    require(all_reduce is None or callable(all_reduce), "all_reduce", "None or a callable",
            all_reduce)
    layers = [m for m in model.sublayers(include_self=True) if _bn_stats(m)]
    if not layers:
        return
    stats = {id(m): BatchStats(all_reduce) for m in layers}

    def hook(layer: nn.Layer, inputs: tuple) -> None:
        mean, var = stats[id(layer)].add(*_channel_sums(inputs[0]))
        layer._mean.set_value(mean.astype("float32"))
        layer._variance.set_value(var.astype("float32"))

    handles = [m.register_forward_pre_hook(hook) for m in layers]
    was_training = model.training
    model.train()
    for m in layers:
        m.eval()  # normalise with the statistics the hook has just set
    try:
        for batch in loader:
            model(_first(batch))
    finally:
        for h in handles:
            h.remove()
        model.train() if was_training else model.eval()
    for m in layers:
        result = stats[id(m)].result()
        if result is not None:
            m._mean.set_value(result[0].astype("float32"))
            m._variance.set_value(result[1].astype("float32"))
