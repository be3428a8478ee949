"""Step ``lr``: the learning rate of every iteration of the full recipe, three schedules."""

from __future__ import annotations

import warnings

import numpy as np

import swa_paddle.trainer as pd_trainer
import swa_torch.trainer as th_trainer
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
        pd_lr, th_lr = np.zeros((epochs, iters)), np.zeros((epochs, iters))
        for epoch in range(epochs):
            with warnings.catch_warnings():  # torch: scheduler.step() before optimizer.step()
                warnings.simplefilter("ignore", UserWarning)
                pt._step_swalr(epoch)  # what Trainer.train_epoch does before an epoch's 1st step
                tt._step_swalr(epoch)
            for it in range(iters):
                pt._lr(epoch, it)
                tt._lr(epoch, it)
                pd_lr[epoch, it] = pt.optimizer.get_lr()
                th_lr[epoch, it] = tt.optimizer.param_groups[0]["lr"]
        pd_vals[f"lr_{schedule}"], th_vals[f"lr_{schedule}"] = pd_lr, th_lr
        keys.append(f"lr_{schedule}")
        ctx.cache[f"lr_{schedule}"] = (pd_lr, th_lr)
    record(ctx, "lr", pd_vals, th_vals, [
        (f"lr of every iteration, {epochs} epochs x {iters} iters, schedules original, cyclic, "
         f"swalr (Paddle optimizer.get_lr(), torch param_groups)", keys, T_LR)])
