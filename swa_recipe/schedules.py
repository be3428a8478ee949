"""Learning-rate schedules and the epoch plan (when to collect, evaluate, save) as pure functions.

Epochs are 0-based here, as in the original loop (``for epoch in range(epochs)``); ``swa_start``
is the 1-based epoch whose weights are averaged first, as in the original flags.
"""

from __future__ import annotations

import math


def original_lr(epoch: int, lr_init: float, epochs: int, swa: bool, swa_start: int,
                swa_lr: float) -> float:
    """The original repo's schedule: flat to 50 %, linear down to 90 %, then flat.

    With SWA the budget is ``swa_start`` and the floor ``swa_lr``; without SWA the budget is all
    epochs and the floor ``0.01 * lr_init``.
    """
    t = epoch / (swa_start if swa else epochs)
    lr_ratio = swa_lr / lr_init if swa else 0.01
    if t <= 0.5:
        factor = 1.0
    elif t <= 0.9:
        factor = 1.0 - (1.0 - lr_ratio) * (t - 0.5) / 0.4
    else:
        factor = lr_ratio
    return lr_init * factor


def keras_constant_lr(epoch: int, lr_init: float, swa_start: int, swa_lr: float) -> float:
    """keras-swa's ``constant`` schedule: the original one with the 0-based start epoch
    (``swa_start - 1``, so ``swa_start >= 2``) as the budget; ``swa_lr`` from there on."""
    return original_lr(epoch, lr_init, swa_start - 1, True, swa_start - 1, swa_lr)


def anneal(t: float, strategy: str) -> float:
    """SWALR's anneal factor in [0, 1] at progress ``t``."""
    t = max(0.0, min(1.0, t))
    return (1 - math.cos(math.pi * t)) / 2 if strategy == "cos" else t


def cyclic_start(swa_start: int, c_epochs: int) -> int:
    """0-based epoch where cycles begin, so that each cycle ends on a collection epoch."""
    return swa_start - c_epochs


def cyclic_lr(epoch: int, it: int, iters: int, lr_init: float, epochs: int, swa_start: int,
              swa_lr: float, c_epochs: int) -> float:
    """The paper's cyclical schedule: within each cycle of ``c_epochs``, per iteration, linearly
    from ``lr_init`` down to ``swa_lr``; the original schedule before the first cycle."""
    start = cyclic_start(swa_start, c_epochs)
    if epoch < start:
        return original_lr(epoch, lr_init, epochs, True, swa_start, swa_lr)
    k = (epoch - start) % c_epochs
    t = (k * iters + it + 1) / (c_epochs * iters)
    return (1 - t) * lr_init + t * swa_lr


def swalr_steps(epoch: int, swa_start: int) -> int:
    """How often SWALR has stepped when ``epoch`` trains (once at each SWA epoch's start)."""
    return max(0, epoch - (swa_start - 1) + 1)


def swalr_lr(epoch: int, lr_init: float, swa_start: int, swa_lr: float, anneal_epochs: int,
             strategy: str) -> float:
    """``lr_init`` until ``swa_start``, then torch ``SWALR``'s anneal, in closed form."""
    k = swalr_steps(epoch, swa_start)
    if k == 0:
        return lr_init
    alpha = anneal(k / max(1, anneal_epochs), strategy) if anneal_epochs else 1.0
    return swa_lr * alpha + lr_init * (1 - alpha)


def learning_rate(cfg: dict, epoch: int, it: int = 0, iters: int = 1) -> float:
    """The learning rate of iteration ``it`` (of ``iters``) in ``epoch``."""
    opt, swa, epochs = cfg["Optimizer"], cfg["SWA"], cfg["Global"]["epochs"]
    schedule = opt["schedule"]
    if schedule == "cyclic":
        return cyclic_lr(epoch, it, iters, opt["lr_init"], epochs, swa["swa_start"],
                         swa["swa_lr"], swa["swa_c_epochs"])
    if schedule == "swalr":
        return swalr_lr(epoch, opt["lr_init"], swa["swa_start"], swa["swa_lr"],
                        swa["anneal_epochs"], swa["anneal_strategy"])
    return original_lr(epoch, opt["lr_init"], epochs, swa["swa"], swa["swa_start"],
                       swa["swa_lr"])


def should_collect(cfg: dict, epoch: int) -> bool:
    """Average this epoch's final weights (the original rule, 1-based ``swa_start``)."""
    swa = cfg["SWA"]
    return (swa["swa"] and epoch + 1 >= swa["swa_start"]
            and (epoch + 1 - swa["swa_start"]) % swa["swa_c_epochs"] == 0)


def averages_steps(cfg: dict, epoch: int) -> bool:
    """EMA (``SWA.avg ema``) updates the average after every step of this epoch."""
    swa = cfg["SWA"]
    return swa["swa"] and swa["avg"] == "ema" and epoch + 1 >= swa["swa_start"]


def should_eval(cfg: dict, epoch: int) -> bool:
    g = cfg["Global"]
    return epoch == 0 or epoch % g["eval_freq"] == g["eval_freq"] - 1 or epoch == g["epochs"] - 1


def should_save(cfg: dict, epoch: int) -> bool:
    g = cfg["Global"]
    return (epoch + 1) % g["save_freq"] == 0 or epoch + 1 == g["epochs"]
