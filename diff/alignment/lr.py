"""Step ``lr``: the learning rate of every iteration of the full recipe, three schedules.

The trainers take every schedule from ``swa_recipe.schedules`` (one closed form); the library
``SWALR`` classes, which a user steps once per epoch, are compared as the trainers once stepped
them (created at the first SWA epoch, stepped at each SWA epoch's start)."""

from __future__ import annotations

import warnings

import numpy as np
import torch

import swa_paddle.trainer as pd_trainer
import swa_torch.trainer as th_trainer
from swa_paddle.swa_utils import SWALR
from swa_recipe import schedules
from swa_recipe.config import load_yaml, merge, validate

from .context import RECIPE, T_LR, Context
from .report import record
from .twins import fake_full_loaders


def step_lr(ctx: Context) -> None:
    pd_vals, th_vals, keys = {}, {}, []
    for schedule in ("original", "cyclic", "swalr"):
        cfg = validate(merge(load_yaml(str(RECIPE)), {
            "Global": {"device": "cpu"}, "Arch": {"width": 0.0625},
            "Optimizer": {"schedule": schedule}}, "diff/align.py"))
        with fake_full_loaders():
            pt, tt = pd_trainer.Trainer(cfg), th_trainer.Trainer(cfg)
        iters, epochs = pt.iters, cfg["Global"]["epochs"]
        assert tt.iters == iters, (pt.iters, tt.iters)
        if schedule == "swalr":
            pd_lr, th_lr = library_swalr(cfg, iters)
        else:
            pd_lr, th_lr = trainer_lrs(pt, tt, epochs, iters)
        pd_vals[f"lr_{schedule}"], th_vals[f"lr_{schedule}"] = pd_lr, th_lr
        keys.append(f"lr_{schedule}")
        ctx.cache[f"lr_{schedule}"] = (pd_lr, th_lr)
    record(ctx, "lr", pd_vals, th_vals, [
        (f"lr of every iteration, {epochs} epochs x {iters} iters, schedules original, cyclic, "
         f"swalr (Paddle optimizer.get_lr(), torch param_groups; swalr: the library SWALR "
         f"classes)", keys, T_LR)])


def trainer_lrs(pt, tt, epochs: int, iters: int) -> tuple[np.ndarray, np.ndarray]:
    """What each trainer's optimizer holds after ``set_lr(learning_rate(epoch, it))``, as
    ``train_epoch`` sets it before every step."""
    pd_lr, th_lr = np.zeros((epochs, iters)), np.zeros((epochs, iters))
    for epoch in range(epochs):
        for it in range(iters):
            pt.set_lr(pt.learning_rate(epoch, it))
            tt.set_lr(tt.learning_rate(epoch, it))
            pd_lr[epoch, it] = pt.optimizer.get_lr()
            th_lr[epoch, it] = tt.optimizer.param_groups[0]["lr"]
    return pd_lr, th_lr


def library_swalr(cfg: dict, iters: int) -> tuple[np.ndarray, np.ndarray]:
    """``swa_paddle.swa_utils.SWALR`` against ``torch.optim.swa_utils.SWALR``, each created at
    the first SWA epoch and stepped at every SWA epoch's start; lr_init before."""
    opt, swa, epochs = cfg["Optimizer"], cfg["SWA"], cfg["Global"]["epochs"]
    param = torch.nn.Parameter(torch.zeros(1))
    th_opt = torch.optim.SGD([param], lr=opt["lr_init"], momentum=opt["momentum"])
    pd_sched = th_sched = None
    pd_lr, th_lr = np.zeros((epochs, iters)), np.zeros((epochs, iters))
    for epoch in range(epochs):
        if schedules.swalr_steps(epoch, swa["swa_start"]):
            if pd_sched is None:
                pd_sched = SWALR(opt["lr_init"], swa["swa_lr"], swa["anneal_epochs"],
                                 swa["anneal_strategy"])
                th_sched = torch.optim.swa_utils.SWALR(th_opt, swa["swa_lr"],
                                                       swa["anneal_epochs"],
                                                       swa["anneal_strategy"])
            with warnings.catch_warnings():  # torch: scheduler.step() before optimizer.step()
                warnings.simplefilter("ignore", UserWarning)
                pd_sched.step()
                th_sched.step()
        pd_lr[epoch] = pd_sched() if pd_sched is not None else opt["lr_init"]
        th_lr[epoch] = th_opt.param_groups[0]["lr"]
    return pd_lr, th_lr
