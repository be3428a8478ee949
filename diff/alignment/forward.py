"""Step ``forward``: logits of converted weights in eval mode, and BatchNorm running means
after train-mode passes (momentum)."""

from __future__ import annotations

import numpy as np
import paddle
import torch
from torch.optim.swa_utils import update_bn

from .context import T_FORWARD, Context, file_tag, make_cfg, residual_cfg
from .report import diff_stats, record
from .twins import (
    Probe,
    fake_data,
    load_torch_into_paddle,
    paddle_state_as_torch,
    torch_state,
    twin_models,
)


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
    for model in ctx.models:
        if model == "VGG16":
            vgg16_forward(ctx)
        else:
            residual_forward(ctx, model)


def fake_inputs(x: np.ndarray) -> list[np.ndarray]:
    """Three different batches from the fake one: itself, mirrored, rescaled."""
    return [x, np.ascontiguousarray(x[:, :, :, ::-1]), 0.5 * x + 0.25]


def train_passes(th_model: torch.nn.Module, pd_model: paddle.nn.Layer, inputs: list) -> None:
    """Train-mode forwards without gradients: each updates the BN running statistics."""
    th_model.train()
    pd_model.train()
    for xi in inputs:
        with torch.no_grad():
            th_model(torch.from_numpy(xi))
        with paddle.no_grad():
            pd_model(paddle.to_tensor(xi))


def running_means(th_model, pd_model) -> tuple[list[str], dict, dict]:
    """(BN layers, torch's running means, Paddle's) keyed ``bn_running_mean/LAYER``."""
    th_state, pd_state = torch_state(th_model), paddle_state_as_torch(pd_model)
    layers = [k[:-len(".running_mean")] for k in th_state if k.endswith(".running_mean")]
    th_vals = {f"bn_running_mean/{k}": th_state[f"{k}.running_mean"] for k in layers}
    pd_vals = {f"bn_running_mean/{k}": pd_state[f"{k}.running_mean"] for k in layers}
    return layers, th_vals, pd_vals


def first_mean_divergence(layers: list[str], pd_vals: dict, th_vals: dict, pd_model) -> str:
    for layer in layers:
        key = f"bn_running_mean/{layer}"
        mean, _ = diff_stats(pd_vals[key], th_vals[key])
        if mean > T_FORWARD:
            return (f"first layer whose running mean diverges: {layer} (BatchNorm2D), mean abs "
                    f"diff {mean:.3g}; Paddle momentum {pd_bn_momentum(pd_model):g} (torch 0.1 "
                    f"== Paddle 0.9)")
    return ""


def residual_forward(ctx: Context, model: str) -> None:
    """A residual model at its CPU-size width: BN statistics of real activations (torch's
    ``update_bn`` on the fake batches, converted), eval-mode logits with every layer's output
    probed; then three train-mode passes and the running means (WideResNet's last BN has
    torch momentum 0.9, Paddle 0.1)."""
    x, _ = fake_data(ctx)
    cfg = residual_cfg(model)
    th_model, pd_model = twin_models(cfg, ctx.brk, ctx.seed)
    inputs = fake_inputs(x)
    update_bn([torch.from_numpy(xi) for xi in inputs], th_model)
    load_torch_into_paddle(th_model, pd_model, ctx.brk)
    th_model.eval()
    pd_model.eval()
    probe = Probe(th_model, pd_model, grads=False)
    with torch.no_grad():
        th_vals = {"logits": th_model(torch.from_numpy(x)).numpy()}
    with paddle.no_grad():
        pd_vals = {"logits": pd_model(paddle.to_tensor(x)).numpy()}
    probe.remove()
    train_passes(th_model, pd_model, inputs)
    layers, th_means, pd_means = running_means(th_model, pd_model)
    th_vals.update(th_means)
    pd_vals.update(pd_means)
    label = f"{model} (width {cfg['Arch']['width']:g})"
    g_logits, g_means = f"{label} logits", f"{label} BN running means"
    notes = {g_means: first_mean_divergence(layers, pd_means, th_means, pd_model)}
    if diff_stats(pd_vals["logits"], th_vals["logits"])[0] > T_FORWARD:
        notes[g_logits] = probe.first_output_divergence(T_FORWARD)
    record(ctx, "forward", pd_vals, th_vals, [
        (g_logits, ["logits"], T_FORWARD), (g_means, list(th_means), T_FORWARD)],
        notes, tag=file_tag("forward", model))
    for row in ctx.rows[-2:]:
        if row.note:
            ctx.note("forward", f"{row.compared}: {row.note}")


def vgg16_forward(ctx: Context) -> None:
    x, _ = fake_data(ctx)
    _, _, th_logits, pd_logits, probe = eval_twins(ctx)
    pd_vals = {"logits": pd_logits.numpy()}
    th_vals = {"logits": th_logits.numpy()}

    th_bn, pd_bn = twin_models(make_cfg(Arch={"model": "VGG16BN", "dropout": 0.0}), ctx.brk,
                               ctx.seed)
    inputs = fake_inputs(x)
    train_passes(th_bn, pd_bn, inputs)  # VGG16BN: the running statistics (momentum)
    bn_layers, th_means, pd_means = running_means(th_bn, pd_bn)
    th_vals.update(th_means)
    pd_vals.update(pd_means)
    notes = {"VGG16BN BN running means": first_mean_divergence(bn_layers, pd_means, th_means,
                                                               pd_bn)}
    if diff_stats(pd_vals["logits"], th_vals["logits"])[0] > T_FORWARD:
        notes["VGG16 logits"] = probe.first_output_divergence(T_FORWARD)
    record(ctx, "forward", pd_vals, th_vals, [
        ("VGG16 logits", ["logits"], T_FORWARD),
        ("VGG16BN BN running means", list(th_means), T_FORWARD),
    ], notes)
    for row in ctx.rows[-2:]:
        if row.note:
            ctx.note("forward", f"{row.compared}: {row.note}")

    # Not compared with a threshold: Paddle on CPU stores the *biased* batch variance in its
    # running variance, torch the unbiased one (the reason swa_paddle.update_bn exists).
    th_state, pd_state = torch_state(th_bn), paddle_state_as_torch(pd_bn)
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
