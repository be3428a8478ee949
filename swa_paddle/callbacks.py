"""SWA (or EMA) for ``paddle.Model.fit``: one callback, as Keras' SWA and Lightning's
``StochasticWeightAveraging``.

    model = paddle.Model(network)
    model.prepare(paddle.optimizer.Momentum(0.05, parameters=network.parameters()), loss)
    model.fit(train_loader, epochs=20, callbacks=[SWA(swa_start=16, swa_lr=0.01,
                                                      bn_loader=train_loader)])

The learning rate follows ``swa_recipe.schedules`` (the same functions as ``train.py``), the
average is ``swa_utils.AveragedModel`` and the BatchNorm statistics come from ``update_bn``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import paddle
from paddle import nn

from swa_recipe import schedules

from . import checkpoint
from .averaging import build_average
from .swa_utils import AveragedModel, check_anneal, is_finite, is_int, require, update_bn

SCHEDULES = ("original", "cyclic", "swalr", "constant")


def check_arguments(swa_start, swa_lr, swa_c_epochs, schedule, lr_init, anneal_epochs,
                    anneal_strategy, avg, ema_decay, bn_loader, swap, save_path) -> None:
    """Every argument of ``SWA``, at construction, one ``ValueError`` naming the first bad one:
    ``fit`` would otherwise run epochs before a NaN ``swa_start`` never starts averaging, a
    negative ``swa_lr`` trains uphill, or ``anneal_strategy='bogus'`` fails at ``swa_start``."""
    require(schedule is None or schedule in SCHEDULES, "schedule",
            f"one of {', '.join(SCHEDULES)} or None", schedule)
    require(avg in ("swa", "ema"), "avg", "'swa' or 'ema'", avg)
    least = 2 if schedule == "constant" else 1
    require(is_int(swa_start) and swa_start >= least, "swa_start",
            f"an integer >= {least}{' for schedule constant' if least == 2 else ''}", swa_start)
    require(is_int(swa_c_epochs) and swa_c_epochs >= 1, "swa_c_epochs", "an integer >= 1",
            swa_c_epochs)
    require(swa_lr is None or (is_finite(swa_lr) and swa_lr >= 0), "swa_lr",
            "None or a finite number >= 0", swa_lr)
    require(lr_init is None or (is_finite(lr_init) and lr_init > 0), "lr_init",
            "None or a finite number > 0", lr_init)
    check_anneal(anneal_epochs, anneal_strategy)
    require(is_finite(ema_decay) and 0 <= ema_decay <= 1, "ema_decay", "a number in [0, 1]",
            ema_decay)
    require(bn_loader is None or isinstance(bn_loader, Iterable), "bn_loader",
            "None or an iterable of batches", bn_loader)
    require(isinstance(swap, bool), "swap", "a bool", swap)
    require(save_path is None or isinstance(save_path, (str, os.PathLike)), "save_path",
            "None or a path", save_path)


def has_batch_norm(network: nn.Layer) -> bool:
    return any(isinstance(m, nn.layer.norm._BatchNormBase) for m in network.sublayers())


class SWA(paddle.callbacks.Callback):
    """Average the weights of a ``paddle.Model.fit`` run from epoch ``swa_start`` (1-based).

    - ``avg="swa"``: the equal-weight average of the weights at the end of every
      ``swa_c_epochs``-th epoch from ``swa_start``; at the end of training, ``update_bn`` over
      ``bn_loader`` (required when the network has BatchNorm; pass the training loader).
    - ``avg="ema"``: the exponential moving average (``ema_decay``) of the weights and BatchNorm
      statistics after every step from ``swa_start`` (PaddleClas's ``EMA``).
    - ``schedule`` sets the optimizer's learning rate before every step: ``original`` (flat,
      linear down to ``swa_lr`` at 90 % of ``swa_start``), ``cyclic`` (per iteration, from
      ``lr_init`` down to ``swa_lr`` within each cycle of ``swa_c_epochs``), ``swalr`` (torch's
      ``SWALR`` anneal over ``anneal_epochs`` from ``swa_start``), ``constant`` (keras-swa's),
      or ``None`` to leave the learning rate to the optimizer (e.g. a Paddle ``LRScheduler``).
      ``lr_init`` defaults to the optimizer's rate, ``swa_lr`` to 0.1 x ``lr_init`` (Keras).
    - At the end, ``swap=True`` loads the average into the network (what a ``ModelCheckpoint``
      listed after this callback saves as ``final``); ``swap=False`` keeps the network's own
      weights and the average in ``averaged_model``. ``save_path``: ``paddle.save`` of the
      averaged state dict, written atomically (complete or absent, never through a symlink).
    """

    def __init__(self, swa_start: int, swa_lr: float | None = None, swa_c_epochs: int = 1,
                 schedule: str | None = "original", lr_init: float | None = None,
                 anneal_epochs: int = 10, anneal_strategy: str = "cos", avg: str = "swa",
                 ema_decay: float = 0.9999, bn_loader: Iterable | None = None,
                 swap: bool = True, save_path: str | None = None):
        super().__init__()
        check_arguments(swa_start=swa_start, swa_lr=swa_lr, swa_c_epochs=swa_c_epochs,
                        schedule=schedule, lr_init=lr_init, anneal_epochs=anneal_epochs,
                        anneal_strategy=anneal_strategy, avg=avg, ema_decay=ema_decay,
                        bn_loader=bn_loader, swap=swap, save_path=save_path)
        self.schedule, self.swa_lr, self.lr_init = schedule, swa_lr, lr_init
        self.swa = {"swa": True, "swa_start": swa_start, "swa_lr": swa_lr,
                    "swa_c_epochs": swa_c_epochs, "anneal_epochs": anneal_epochs,
                    "anneal_strategy": anneal_strategy, "avg": avg, "ema_decay": ema_decay}
        self.bn_loader, self.swap, self.save_path = bn_loader, swap, save_path
        self.averaged_model: AveragedModel | None = None
        self.epoch = 0

    @property
    def network(self) -> nn.Layer:
        return self.model.network

    def _recipe(self) -> dict:
        """The ``swa_recipe`` config slice the schedule functions read."""
        lr_init = self.lr_init if self.lr_init is not None else self.model._optimizer.get_lr()
        swa_lr = self.swa_lr if self.swa_lr is not None else 0.1 * lr_init
        return {"Global": {"epochs": self.params.get("epochs")},
                "Optimizer": {"lr_init": lr_init, "schedule": self.schedule},
                "SWA": {**self.swa, "swa_lr": swa_lr}}

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.cfg = self._recipe()
        if self.schedule == "cyclic" and not self.params.get("steps"):
            raise ValueError("schedule cyclic needs the number of steps per epoch; give fit a "
                             "loader with a length")
        if (self.swa["avg"] == "swa" and has_batch_norm(self.network)
                and self.bn_loader is None):
            raise ValueError("the network has BatchNorm: pass bn_loader (the training loader) "
                             "so that update_bn can recompute the averaged model's statistics")
        self.averaged_model = build_average(self.network, self.cfg["SWA"])

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch

    def on_train_batch_begin(self, step: int, logs: dict | None = None) -> None:
        if self.schedule is None:
            return
        if self.schedule == "constant":
            swa = self.cfg["SWA"]
            lr = schedules.keras_constant_lr(self.epoch, self.cfg["Optimizer"]["lr_init"],
                                             swa["swa_start"], swa["swa_lr"])
        else:
            lr = schedules.learning_rate(self.cfg, self.epoch, step, self.params.get("steps"))
        self.model._optimizer.set_lr(lr)

    def on_train_batch_end(self, step: int, logs: dict | None = None) -> None:
        if schedules.averages_steps(self.cfg, self.epoch):
            self.averaged_model.update_parameters(self.network)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.swa["avg"] == "swa" and schedules.should_collect(self.cfg, epoch):
            self.averaged_model.update_parameters(self.network)

    def on_train_end(self, logs: dict | None = None) -> None:
        """BatchNorm statistics of the average, then swap and save; nothing when no epoch
        reached ``swa_start`` (the network keeps its own weights)."""
        if not int(self.averaged_model.n_averaged):
            return
        if self.swa["avg"] == "swa" and has_batch_norm(self.network):
            update_bn(self.bn_loader, self.averaged_model.module)
        state = self.averaged_model.module.state_dict()
        if self.swap:
            self.network.set_state_dict(state)
        if self.save_path:
            checkpoint.save(state, os.fspath(self.save_path))  # atomic, never through a link
