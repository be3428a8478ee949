"""Step ``train``: both trainers from one init on the same batches, with SWA; an optional
control (Paddle against itself, nudged by one ulp)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

import swa_paddle.trainer as pd_trainer
import swa_torch.trainer as th_trainer
from swa_paddle import checkpoint as pd_ckpt
from swa_recipe import schedules
from swa_recipe.logs import IterMeter

from .context import T_LR, T_TRAIN_ACC, T_TRAIN_LOSS, Context, make_cfg
from .report import Row, diff_stats, record
from .twins import (
    apply_break,
    eval_loaders,
    load_torch_into_paddle,
    paddle_state_as_torch,
    to_paddle_weights,
    torch_state,
)


def recording_meter(sink: list) -> type:
    """``IterMeter`` that also keeps every iteration's (lr, loss): the trainers log only every
    ``log_freq`` iterations and round the loss to 5 decimals."""

    class RecordingMeter(IterMeter):
        def step(self, it, lr, loss, correct, n):
            sink.append((self.epoch, it, lr, loss))
            super().step(it, lr, loss, correct, n)

    return RecordingMeter


def train_twins(ctx: Context, cfg: dict, epochs: int, on_epoch: Callable | None = None):
    """Both trainers from the torch trainer's init (converted), the same batches, the real
    ``train_epoch`` / ``collect`` / ``update_bn`` / ``evaluate``; per-iteration (lr, loss)."""
    pd_iters, th_iters = [], []
    tt = th_trainer.Trainer(cfg, meter_class=recording_meter(th_iters))
    pt = pd_trainer.Trainer(cfg, meter_class=recording_meter(pd_iters))
    apply_break(pt.model, ctx.brk)
    load_torch_into_paddle(tt.model, pt.model, ctx.brk)
    for epoch in range(epochs):
        pd_row = pt.train_epoch(epoch)
        th_row = tt.train_epoch(epoch)
        if schedules.should_collect(cfg, epoch):
            pt.collect()
            tt.collect()
        if on_epoch is not None:
            on_epoch(epoch, pt, tt, pd_row, th_row)
    return pt, tt, np.array(pd_iters), np.array(th_iters)


def train_cfg(ctx: Context, lr: float) -> dict:
    """The train step's run: VGG16 at 1/16 width, dropout 0, 2 epochs of the first 5,000
    images (80 iterations of 128), the average collected after each epoch; schedule original
    with swa_start 1: epoch 1 at ``lr``, epoch 2 at the recipe's swa_lr 0.01 (constant 0.01 by
    default; ``--train_lr 0.05`` is the recipe's two phases)."""
    return make_cfg(Global={"epochs": 2},
                    Arch={"model": "VGG16", "width": 0.0625, "dropout": 0.0},
                    Optimizer={"lr_init": lr},
                    SWA={"swa": True, "swa_start": 1, "swa_lr": 0.01},
                    Data={"data_path": ctx.data_path, "train_subset": 5000})


def step_train(ctx: Context) -> None:
    cfg = train_cfg(ctx, ctx.train_lr)
    t0 = time.time()
    pt, tt, pd_iters, th_iters = train_twins(ctx, cfg, cfg["Global"]["epochs"])
    train_s = time.time() - t0
    pt.test_loader, tt.test_loader = eval_loaders(cfg)
    res = {}
    for name, trainer in (("paddle", pt), ("torch", tt)):
        sgd = trainer.evaluate()
        trainer.update_bn()
        swa = trainer.evaluate(swa=True)
        res[name] = (sgd, swa, trainer.swa_n)
    pd_vals = {"loss_curve": pd_iters[:, 3], "lr_curve": pd_iters[:, 2],
               "sgd_test_acc": np.array([res["paddle"][0]["accuracy"]]),
               "swa_test_acc": np.array([res["paddle"][1]["accuracy"]])}
    th_vals = {"loss_curve": th_iters[:, 3], "lr_curve": th_iters[:, 2],
               "sgd_test_acc": np.array([res["torch"][0]["accuracy"]]),
               "swa_test_acc": np.array([res["torch"][1]["accuracy"]])}
    n_it = len(pd_iters)
    n_test = tt.test_loader.batch_sampler.batches.n
    lrs = (f"lr {ctx.train_lr:g} then 0.01" if ctx.train_lr != 0.01
           else "lr 0.01 = the recipe's swa_lr")
    record(ctx, "train", pd_vals, th_vals, [
        (f"per-iteration training loss, {n_it} iterations (2 epochs x "
         f"{cfg['Data']['train_subset']} images, VGG16 1/16 width, dropout 0, {lrs})",
         ["loss_curve"], T_TRAIN_LOSS),
        (f"final SGD and SWA (average of {res['paddle'][2]} epochs) test accuracy (%), "
         f"{n_test} images", ["sgd_test_acc", "swa_test_acc"], T_TRAIN_ACC),
        ("lr of every iteration, as the trainers used it", ["lr_curve"], T_LR),
    ])
    weights_max = max(diff_stats(a, b)[1] for a, b in zip(
        paddle_state_as_torch(pt.model).values(), torch_state(tt.model).values(), strict=True))
    loss_diff = np.abs(pd_iters[:, 3] - th_iters[:, 3])
    ctx.note("train", f"{train_s:.0f} s of training; Paddle SGD {res['paddle'][0]['accuracy']:.2f}"
             f" %, SWA {res['paddle'][1]['accuracy']:.2f} %; torch SGD "
             f"{res['torch'][0]['accuracy']:.2f} %, SWA {res['torch'][1]['accuracy']:.2f} %; "
             f"loss {pd_iters[0, 3]:.4f} -> {pd_iters[-1, 3]:.4f}; loss diff > 1e-5 from "
             f"iteration "
             f"{int(np.argmax(loss_diff > 1e-5)) if (loss_diff > 1e-5).any() else '-'}; final "
             f"weights max abs diff {weights_max:.3g}")
    if ctx.control:
        chaos_control(ctx, cfg, pd_iters[:, 3])


def chaos_control(ctx: Context, cfg: dict, twin_curve: np.ndarray) -> None:
    """The Paddle twin against itself, every init weight nudged by one float32 ulp (up or down,
    seeded): how far the training dynamics alone carry a rounding-size difference."""
    sink = []
    trainer = pd_trainer.Trainer(cfg, meter_class=recording_meter(sink))
    th_init = th_trainer.Trainer(cfg).model  # the init the twins started from
    state = to_paddle_weights(torch_state(th_init), "none")
    rng = np.random.default_rng([ctx.seed, 7])
    for key, w in state.items():
        direction = np.where(rng.random(w.shape) < 0.5, -np.inf, np.inf).astype(w.dtype)
        state[key] = np.nextafter(w, direction)
    pd_ckpt.load_weights(trainer.model, pd_ckpt.from_numpy(state), "<nudged init>")
    for epoch in range(cfg["Global"]["epochs"]):
        trainer.train_epoch(epoch)
    curve = np.array(sink)[:, 3]
    mean, mx = diff_stats(curve, twin_curve)
    ctx.rows.append(Row("train", "control: Paddle vs Paddle with every init weight nudged by "
                        "1 ulp, per-iteration loss", mean, mx, T_TRAIN_LOSS, mean <= T_TRAIN_LOSS,
                        "", False))
