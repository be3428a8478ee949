"""Step ``ema``: ``SWA.avg ema``, the twins' exponential moving averages of the same snapshots
(BN statistics included) and of both trainers on the same batches."""

from __future__ import annotations

import numpy as np

from swa_paddle import swa_utils as pd_swa
from swa_torch import swa_utils as th_swa

from .context import Context, make_cfg
from .report import diff_stats, record
from .train import train_twins
from .twins import feed_snapshot, paddle_state_as_torch, torch_state, twin_models

T_EMA_AVG, T_EMA_TRAIN = 1e-7, 1e-6
EMA_DECAY = 0.9


def ema_snapshot(base: dict[str, np.ndarray], rng: np.random.Generator) -> dict:
    """``base`` with seeded noise on every float array, BN statistics included (EMA averages
    them); variances scaled by a positive factor."""
    snap = {}
    for key, value in base.items():
        noise = rng.standard_normal(value.shape).astype(np.float32)
        if key.endswith("num_batches_tracked"):
            snap[key] = value
        elif key.endswith("running_var"):
            snap[key] = (value * np.exp(np.float32(0.1) * noise)).astype(value.dtype)
        else:
            scale = float(value.std()) or 1.0
            snap[key] = (value + np.float32(0.1 * scale) * noise).astype(value.dtype)
    return snap


def step_ema(ctx: Context) -> None:
    """``SWA.avg ema``: torch's ``AveragedModel(multi_avg_fn=get_ema_multi_avg_fn(d),
    use_buffers=True)`` against Paddle's on the same VGG16BN snapshots (weights and BN
    statistics), then both trainers with ``SWA.avg ema`` on the same real batches."""
    cfg = make_cfg(Arch={"model": "VGG16BN", "width": 0.125, "dropout": 0.0})
    th_model, pd_model = twin_models(cfg, ctx.brk, ctx.seed)
    th_avg = th_swa.AveragedModel(th_model, multi_avg_fn=th_swa.get_ema_multi_avg_fn(EMA_DECAY),
                                  use_buffers=True)
    pd_avg = pd_swa.AveragedModel(pd_model, multi_avg_fn=pd_swa.get_ema_multi_avg_fn(EMA_DECAY),
                                  use_buffers=True)
    base, rng = torch_state(th_model), np.random.default_rng([ctx.seed, 6])
    for k in range(5):
        snap = ema_snapshot(base, rng)
        feed_snapshot(ctx, snap, k, (th_model, pd_model), (th_avg, pd_avg))
    th_state, pd_state = torch_state(th_avg.module), paddle_state_as_torch(pd_avg.module)
    keys = [k for k in th_state if not k.endswith("num_batches_tracked")]
    pd_vals = {f"avg/{k}": pd_state[k] for k in keys}
    th_vals = {f"avg/{k}": th_state[k] for k in keys}
    moved = np.mean([diff_stats(th_state[k], snap[k])[0] for k in keys])
    ctx.note("ema", f"the EMA is not the last snapshot: mean abs difference {moved:.3g} (torch)")

    tcfg = make_cfg(Global={"epochs": 2}, Arch={"model": "VGG16", "width": 0.0625,
                                                 "dropout": 0.0},
                    Optimizer={"lr_init": 0.01},
                    SWA={"swa": True, "swa_start": 2, "swa_lr": 0.01, "avg": "ema",
                         "ema_decay": EMA_DECAY},
                    Data={"data_path": ctx.data_path, "train_subset": 640})
    pt, tt, pd_iters, _ = train_twins(ctx, tcfg, tcfg["Global"]["epochs"])
    th_ema, pd_ema = torch_state(tt.swa_model.module), paddle_state_as_torch(pt.swa_model.module)
    for k in th_ema:
        pd_vals[f"trainer/{k}"], th_vals[f"trainer/{k}"] = pd_ema[k], th_ema[k]
    pd_vals["trainer/n_averaged"] = np.array([pt.swa_n], np.int64)
    th_vals["trainer/n_averaged"] = np.array([tt.swa_n], np.int64)
    record(ctx, "ema", pd_vals, th_vals, [
        (f"EMA (decay {EMA_DECAY}, use_buffers) of 5 VGG16BN (1/8 width) snapshots: parameters "
         f"and BN statistics", [f"avg/{k}" for k in keys], T_EMA_AVG),
        (f"trainers with SWA.avg ema from epoch 2: EMA weights after {len(pd_iters)} identical "
         f"iterations (VGG16 1/16 width, 640 images, lr 0.01), and steps averaged",
         [f"trainer/{k}" for k in th_ema] + ["trainer/n_averaged"], T_EMA_TRAIN),
    ])
