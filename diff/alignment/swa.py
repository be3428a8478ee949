"""Step ``swa``: ``AveragedModel`` over the same snapshots, then ``update_bn`` on real batches."""

from __future__ import annotations

import numpy as np

import swa_paddle.data as pd_data
import swa_torch.data as th_data
from swa_paddle import swa_utils as pd_swa
from swa_torch import swa_utils as th_swa

from .context import T_SWA_AVG, T_SWA_BN, Context, file_tag, make_cfg, residual_cfg
from .report import diff_stats, record
from .twins import feed_snapshot, paddle_state_as_torch, torch_state, twin_models


def step_swa(ctx: Context) -> None:
    data = {"data_path": ctx.data_path, "batch_size": 32, "train_subset": 96}
    for model in ctx.models:
        if model == "VGG16":  # the paper's VGG16 has no BatchNorm: its BN variant
            cfg = make_cfg(Arch={"model": "VGG16BN", "width": 0.125, "dropout": 0.0}, Data=data)
            swa(ctx, cfg, "VGG16BN (1/8 width)", "VGG16BN", "swa")
        else:
            cfg = residual_cfg(model, Data=data)
            swa(ctx, cfg, f"{model} (width {cfg['Arch']['width']:g})", model,
                file_tag("swa", model))


def swa(ctx: Context, cfg: dict, desc: str, name: str, tag: str) -> None:
    """Five seeded weight snapshots averaged by both ``AveragedModel``s, then both
    ``update_bn`` over the same real batches."""
    th_model, pd_model = twin_models(cfg, ctx.brk, ctx.seed)
    th_avg, pd_avg = th_swa.AveragedModel(th_model), pd_swa.AveragedModel(pd_model)
    base = torch_state(th_model)
    rng = np.random.default_rng([ctx.seed, 5])
    for k in range(5):  # five weight snapshots, fed to both averagers in the same order
        snap = {}
        for key, value in base.items():
            if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
                snap[key] = value
                continue
            scale = float(value.std()) or 1.0
            noise = rng.standard_normal(value.shape).astype(np.float32)
            snap[key] = (value + np.float32(0.1 * scale) * noise).astype(value.dtype)
        feed_snapshot(ctx, snap, k, (th_model, pd_model), (th_avg, pd_avg))
    th_state, pd_state = torch_state(th_avg.module), paddle_state_as_torch(pd_avg.module)
    params = [k for k, _ in th_avg.module.named_parameters()]
    moved = np.mean([diff_stats(th_state[k], snap[k])[0] for k in params])
    ctx.note("swa", f"the average is not the last snapshot: mean abs difference {moved:.3g} "
             f"(torch), n_averaged {int(th_avg.n_averaged)} / {int(pd_avg.n_averaged)}")
    pd_vals = {f"avg/{k}": pd_state[k] for k in params}
    th_vals = {f"avg/{k}": th_state[k] for k in params}
    pd_vals["n_averaged"] = np.array([int(pd_avg.n_averaged)], np.int64)
    th_vals["n_averaged"] = np.array([int(th_avg.n_averaged)], np.int64)

    # update_bn on the averaged model, the same real batches (the twins' train loaders)
    pd_train, _ = pd_data.build_loaders(cfg)
    th_train, _ = th_data.build_loaders(cfg)
    pd_train.batch_sampler.set_epoch(0)
    th_train.batch_sampler.set_epoch(0)
    pd_swa.update_bn(pd_train, pd_avg.module)
    th_swa.update_bn(th_train, th_avg.module)
    th_state, pd_state = torch_state(th_avg.module), paddle_state_as_torch(pd_avg.module)
    bn_keys = [k for k in th_state if k.endswith(("running_mean", "running_var"))]
    for k in bn_keys:
        pd_vals[f"update_bn/{k}"], th_vals[f"update_bn/{k}"] = pd_state[k], th_state[k]
    n_batches = len(pd_train.batch_sampler)
    record(ctx, "swa", pd_vals, th_vals, tag=tag, groups=[
        (f"AveragedModel of 5 {desc} snapshots: averaged parameters and n_averaged",
         [f"avg/{k}" for k in params] + ["n_averaged"], T_SWA_AVG),
        (f"update_bn on the averaged {name}, {n_batches} identical batches: running "
         f"mean/var", [f"update_bn/{k}" for k in bn_keys], T_SWA_BN),
    ])
