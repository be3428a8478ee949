"""Step ``forward``: logits of converted weights in eval mode, and BatchNorm running means
after train-mode passes (momentum)."""

from __future__ import annotations

import numpy as np
import paddle
import torch

from .context import T_FORWARD, Context, make_cfg
from .report import diff_stats, record
from .twins import Probe, fake_data, paddle_state_as_torch, torch_state, twin_models


def eval_twins(ctx: Context):
    """VGG16 at full width (dropout 0.5 as in the recipe), torch init converted, eval mode,
    the fake data through both with every layer's output recorded."""
    if "vgg16_eval" not in ctx.cache:
        x, _ = fake_data(ctx)
        th_model, pd_model = twin_models(make_cfg(Arch={"model": "VGG16"}), ctx.brk, ctx.seed)
        th_model.eval()
        pd_model.eval()
        probe = Probe(th_model, pd_model, grads=False)
        with torch.no_grad():
            th_logits = th_model(torch.from_numpy(x))
        with paddle.no_grad():
            pd_logits = pd_model(paddle.to_tensor(x))
        probe.remove()
        ctx.cache["vgg16_eval"] = (th_model, pd_model, th_logits, pd_logits, probe)
    return ctx.cache["vgg16_eval"]


def step_forward(ctx: Context) -> None:
    x, _ = fake_data(ctx)
    _, _, th_logits, pd_logits, probe = eval_twins(ctx)
    pd_vals = {"logits": pd_logits.numpy()}
    th_vals = {"logits": th_logits.numpy()}

    th_bn, pd_bn = twin_models(make_cfg(Arch={"model": "VGG16BN", "dropout": 0.0}), ctx.brk,
                               ctx.seed)
    th_bn.train()
    pd_bn.train()
    inputs = [x, np.ascontiguousarray(x[:, :, :, ::-1]), 0.5 * x + 0.25]
    for xi in inputs:
        with torch.no_grad():
            th_bn(torch.from_numpy(xi))
        with paddle.no_grad():
            pd_bn(paddle.to_tensor(xi))
    th_state, pd_state = torch_state(th_bn), paddle_state_as_torch(pd_bn)
    bn_layers = [k[:-len(".running_mean")] for k in th_state if k.endswith(".running_mean")]
    for layer in bn_layers:
        th_vals[f"bn_running_mean/{layer}"] = th_state[f"{layer}.running_mean"]
        pd_vals[f"bn_running_mean/{layer}"] = pd_state[f"{layer}.running_mean"]

    notes = {}
    logits_keys = ["logits"]
    if diff_stats(pd_vals["logits"], th_vals["logits"])[0] > T_FORWARD:
        notes["VGG16 logits"] = probe.first_output_divergence(T_FORWARD)
    # VGG16BN: three train-mode passes update the BatchNorm running statistics (momentum)
    mean_keys = [f"bn_running_mean/{layer}" for layer in bn_layers]
    for layer, key in zip(bn_layers, mean_keys, strict=True):
        mean, _ = diff_stats(pd_vals[key], th_vals[key])
        if mean > T_FORWARD:
            notes["VGG16BN BN running means"] = (
                f"first layer whose running mean diverges: {layer} (BatchNorm2D), mean abs diff "
                f"{mean:.3g}; Paddle momentum {pd_bn_momentum(pd_bn):g} (torch 0.1 == Paddle 0.9)")
            break
    record(ctx, "forward", pd_vals, th_vals, [
        ("VGG16 logits", logits_keys, T_FORWARD),
        ("VGG16BN BN running means", mean_keys, T_FORWARD),
    ], notes)
    for row in ctx.rows[-2:]:
        if row.note:
            ctx.note("forward", f"{row.compared}: {row.note}")

    # Not compared with a threshold: Paddle on CPU stores the *biased* batch variance in its
    # running variance, torch the unbiased one (the reason swa_paddle.update_bn exists).
    ratios = []
    for layer in bn_layers:
        n = _bn_count(th_bn, layer, inputs[0].shape[0])
        th_var, pd_var = th_state[f"{layer}.running_var"], pd_state[f"{layer}.running_var"]
        ratios.append((layer, n, float(np.abs(pd_var - th_var).max()),
                       float(np.abs(_unbias(pd_var, n, len(inputs)) - th_var).max())))
    worst = max(ratios, key=lambda r: r[2])
    ctx.note("forward", f"(informational) VGG16BN running_var after {len(inputs)} train passes: "
             f"max abs diff {worst[2]:.3g} at {worst[0]} (n = {worst[1]} values per channel); "
             f"after rescaling Paddle's biased batch variances by n/(n-1): max abs diff "
             f"{max(r[3] for r in ratios):.3g}. Paddle stores the biased variance on CPU, torch "
             f"the unbiased one; see README")
    ctx.cache["bn_var_note"] = ratios


def pd_bn_momentum(model: paddle.nn.Layer) -> float:
    for m in model.sublayers():
        if isinstance(m, paddle.nn.layer.norm._BatchNormBase):
            return float(m._momentum)
    return float("nan")


def _bn_count(th_model: torch.nn.Module, layer: str, batch: int) -> int:
    """Values per channel a BN layer of VGG16BN sees: batch x H x W at its depth."""
    sizes = {}
    h = 32
    for name, m in th_model.features.named_children():
        if isinstance(m, torch.nn.MaxPool2d):
            h //= 2
        sizes[f"features.{name}"] = h
    return batch * sizes[layer] ** 2


def _unbias(pd_var: np.ndarray, n: int, passes: int) -> np.ndarray:
    """Paddle's running variance after ``passes`` updates from 1 (momentum 0.9), with every
    batch variance it folded in rescaled by n/(n-1); needs the per-pass variances, so this
    inverts the recursion: v_k = 0.9 v_{k-1} + 0.1 s_k, and sum 0.1*0.9^(p-k) s_k = v_p - 0.9^p."""
    decay = 0.9 ** passes
    return decay + (pd_var - decay) * n / (n - 1)
