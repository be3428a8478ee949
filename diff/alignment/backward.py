"""Step ``backward``: gradients of the first backward against each other and a float64
reference, and the losses of 10 optimizer iterations."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator

import numpy as np
import paddle
import paddle.nn.functional as pF
import torch
import torch.nn.functional as tF

import swa_paddle.trainer as pd_trainer
import swa_torch.models as th_models
import swa_torch.trainer as th_trainer
from swa_apps.convert import convert_state_dict

from .context import (
    T_BACKWARD,
    T_F64_RATIO,
    T_GRAD_LOCATE,
    Context,
    file_tag,
    make_cfg,
    residual_cfg,
)
from .report import check, diff_stats, record
from .twins import Probe, apply_break, fake_data, fake_full_loaders, load_torch_into_paddle


def float64_grads(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> dict:
    """Parameter gradients of a float64 copy of the torch model: the exact reference both
    float32 twins are measured against."""
    ref = copy.deepcopy(model).double()
    loss = tF.cross_entropy(ref(torch.from_numpy(x).double()), torch.from_numpy(y),
                            reduction="sum") * (1.0 / len(y))
    loss.backward()
    return {k: p.grad.numpy().copy() for k, p in ref.named_parameters()}


def rel_err(a: np.ndarray, ref: np.ndarray) -> float:
    """mean |a - ref| / mean |ref|: a difference relative to the gradient's scale."""
    scale = float(np.abs(ref).mean()) or 1.0
    return float(np.abs(a.astype(np.float64) - ref).mean()) / scale


def step_backward(ctx: Context) -> None:
    for model in ctx.models:
        if model == "VGG16":
            cfg = make_cfg(Arch={"model": "VGG16", "width": ctx.backward_width, "dropout": 0.0})
            backward(ctx, cfg, "backward", twin_gate=True)
            continue
        tag = file_tag("backward", model)
        backward(ctx, residual_cfg(model), tag, twin_gate=False)
        with default_dtype("float64"):  # oneDNN has no float64 kernels: each framework's own
            backward(ctx, residual_cfg(model, Global={"onednn": False}), f"{tag}_float64",
                     twin_gate=True)


@contextlib.contextmanager
def default_dtype(name: str) -> Iterator[None]:
    """Both frameworks create parameters (and take inputs) of ``name`` inside the block."""
    before = paddle.get_default_dtype(), torch.get_default_dtype()
    paddle.set_default_dtype(name)
    torch.set_default_dtype(getattr(torch, name))
    try:
        yield
    finally:
        paddle.set_default_dtype(before[0])
        torch.set_default_dtype(before[1])


def float32_attributes(optimizer: torch.optim.Optimizer) -> None:
    """Paddle's Momentum kernel takes ``mu`` and the L2 coefficient as float32 attributes
    (0.9 becomes 0.89999998): in a float64 comparison torch gets the same rounded values, else
    the losses drift by 1e-9 from the second iteration and can cross a ReLU kink."""
    for group in optimizer.param_groups:
        for key in ("momentum", "weight_decay"):
            group[key] = float(np.float32(group[key]))


def backward(ctx: Context, cfg: dict, tag: str, twin_gate: bool) -> None:
    """10 iterations of the trainers' own optimizer and learning rate on the fake batch, in
    train mode (BatchNorm on batch statistics); the first backward's gradients probed.

    ``twin_gate``: whether twin-against-twin gradients and losses decide pass/fail. In the
    deep BatchNorm stacks of the residual models the float32 error of each framework (torch's
    above Paddle's, measured against a float64 copy) exceeds 1e-6, so there, in float32, the
    float64 reference decides and the twin-against-twin rows are reported; the same 10
    iterations with float64 models (default dtype float64) are gated twin against twin
    (diff/README.md)."""
    float64 = torch.get_default_dtype() == torch.float64
    x, y = fake_data(ctx)
    x = x.astype(np.float64) if float64 else x
    with fake_full_loaders():
        tt = th_trainer.Trainer(cfg)
        pt = pd_trainer.Trainer(cfg)
    apply_break(pt.model, ctx.brk)
    load_torch_into_paddle(tt.model, pt.model, ctx.brk)
    for m in tt.model.modules():  # out-of-place ReLU so that tensor hooks see each output
        if isinstance(m, torch.nn.ReLU):
            m.inplace = False
    if float64:
        float32_attributes(tt.optimizer)
    tt.model.train()
    pt.model.train()
    g64 = None if float64 else float64_grads(tt.model, x, y)
    px, py = paddle.to_tensor(x), paddle.to_tensor(y)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    pd_vals, th_vals = {}, {}
    probe = Probe(tt.model, pt.model, grads=True)
    for it in range(10):
        # the body of Trainer.train_epoch (one process), on the fake batch
        pt.set_lr(pt.learning_rate(0, it))
        pd_loss = pF.cross_entropy(pt.model(px), py, reduction="sum") * (1.0 / len(y))
        pt.optimizer.clear_grad()
        pd_loss.backward()
        tt.set_lr(tt.learning_rate(0, it))
        with th_models.kernels(tt.model):  # the backward too: torch picks its kernels then
            th_loss = tF.cross_entropy(tt.model(tx), ty, reduction="sum") * (1.0 / len(y))
            tt.optimizer.zero_grad()
            th_loss.backward()
        if it == 0:
            probe.remove()
            pd_grads = convert_state_dict(
                {k: p.grad.numpy() for k, p in pt.model.named_parameters()
                 if not p.stop_gradient}, "paddle2torch")  # not BN statistics
            th_grads = {k: p.grad.numpy().copy() for k, p in tt.model.named_parameters()}
        pt.optimizer.step()
        tt.optimizer.step()
        pd_vals[f"loss_iter_{it}"] = pd_loss.numpy().reshape(1)
        th_vals[f"loss_iter_{it}"] = th_loss.detach().numpy().reshape(1)
    names = list(th_grads)
    for name in names:
        scale = float(np.abs(th_grads[name]).mean()) or 1.0
        th_vals[f"grad/{name}"], pd_vals[f"grad/{name}"] = th_grads[name], pd_grads[name]
        th_vals[f"grad_rel/{name}"] = th_grads[name] / scale
        pd_vals[f"grad_rel/{name}"] = pd_grads[name] / scale
    loss_keys = [f"loss_iter_{i}" for i in range(10)]
    g_loss = (f"{cfg['Arch']['model']} (width {cfg['Arch']['width']:g}, dropout 0"
              f"{', float64' if float64 else ''}): loss of each of 10 Momentum+wd iterations "
              f"(lr 0.05, momentum 0.9, wd 5e-4)")
    g_abs = "parameter gradients after the first backward, absolute, mean abs(dg)"
    g_rel = "the same relative to each gradient's scale, mean abs(dg) / mean abs(g)"
    twin_rel = {n: rel_err(pd_grads[n], th_grads[n]) for n in names}
    notes = {}
    loss0 = diff_stats(pd_vals["loss_iter_0"], th_vals["loss_iter_0"])[0]
    if loss0 > T_BACKWARD:
        where = "the first forward already differs: " + probe.first_output_divergence(T_BACKWARD)
        notes[g_loss] = notes[g_abs] = where
    elif max(diff_stats(pd_grads[n], th_grads[n])[0] for n in names) > T_BACKWARD or (
            g64 is not None and worst_ratio(pd_grads, th_grads, g64)[0] > T_F64_RATIO):
        notes[g_abs] = probe.first_grad_divergence(T_GRAD_LOCATE)
    above = sorted((n for n in names if twin_rel[n] > T_BACKWARD), key=twin_rel.get)
    notes[g_rel] = (f"{len(above)} of {len(names)} parameters above 1e-6 (worst {above[-1]} "
                    f"{twin_rel[above[-1]]:.3g}): float32 rounding, see the float64 rows and "
                    f"the README" if above else "all parameters within 1e-6")
    record(ctx, "backward", pd_vals, th_vals, tag=tag, notes=notes, groups=[
        (g_loss, loss_keys, T_BACKWARD, twin_gate),
        (g_abs, [f"grad/{n}" for n in names], T_BACKWARD, twin_gate),
        (g_rel, [f"grad_rel/{n}" for n in names], T_BACKWARD, False),
    ])
    if not twin_gate:
        check(ctx, "backward", f"{cfg['Arch']['model']}: loss of the first forward (before any "
              f"update)", loss0, f"<= {T_BACKWARD:g}", loss0 <= T_BACKWARD)
    if g64 is not None:
        value, what = worst_ratio(pd_grads, th_grads, g64)
        check(ctx, "backward", f"gradients vs a float64 reference: {what}", value,
              f"<= {T_F64_RATIO:g}", value <= T_F64_RATIO, notes.get(g_abs, ""))
    for row in ctx.rows[-3 - (not twin_gate) - (g64 is not None):]:
        if row.note:
            ctx.note("backward", f"{row.compared}: {row.note}")


def worst_ratio(pd_grads: dict, th_grads: dict, g64: dict) -> tuple[float, str]:
    """Paddle's worst gradient error against the float64 reference over torch's worst, and
    the row's description naming both parameters. Parameters without a gradient to speak of
    (a convolution's bias that the next BatchNorm cancels: 1e-17 in float64) are left out:
    their relative error is rounding noise over zero."""
    scale = {n: float(np.abs(g).mean()) for n, g in g64.items()}
    live = [n for n in g64 if scale[n] > 1e-8 * max(scale.values())]
    err_pd = {n: rel_err(pd_grads[n], g64[n]) for n in live}
    err_th = {n: rel_err(th_grads[n], g64[n]) for n in live}
    w_pd, w_th = max(err_pd, key=err_pd.get), max(err_th, key=err_th.get)
    value = err_pd[w_pd] / err_th[w_th] if err_th[w_th] > 0 else math.inf
    return value, (f"Paddle's worst relative error ({w_pd} {err_pd[w_pd]:.3g}) / torch's "
                   f"worst ({w_th} {err_th[w_th]:.3g})")
