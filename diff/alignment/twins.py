"""The twins under comparison: models with converted weights, deliberately broken Paddle
twins, layer probes, loaders over a cached archive, the fake batch."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from functools import lru_cache

import numpy as np
import paddle
import paddle.nn.functional as pF
import torch

import swa_paddle.data as pd_data
import swa_paddle.trainer as pd_trainer
import swa_torch.data as th_data
import swa_torch.trainer as th_trainer
from swa_apps.convert import convert_state_dict
from swa_paddle import checkpoint as pd_ckpt
from swa_paddle import models as pd_models
from swa_recipe.config import merge, validate
from swa_recipe.data import cifar
from swa_torch import checkpoint as th_ckpt
from swa_torch import models as th_models

from .context import FAKE_SHAPE, SEED, Context
from .report import diff_stats


@contextlib.contextmanager
def patched(obj, name: str, value) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


_load_cifar = cifar.load_cifar


@lru_cache(maxsize=2)
def cached_load_cifar(layout, data_path: str | None, md5: str | None = "auto"):
    """``swa_recipe.data.cifar.load_cifar``, read once per run instead of once per loader (the
    arrays are never written to)."""
    return _load_cifar(layout, data_path, md5)


@contextlib.contextmanager
def cached_archive() -> Iterator[None]:
    """Every loader the twins build in this run reads the archive through the cache."""
    with patched(cifar, "load_cifar", cached_load_cifar):
        yield


@contextlib.contextmanager
def fake_full_loaders() -> Iterator[None]:
    """Trainers whose loaders index 50,000 / 10,000 blank images: the real trainer objects, the
    full recipe's 391 iterations per epoch, no archive (for the steps that need no pixels)."""
    train = cifar.Split(np.zeros((50000, 3, 32, 32), np.uint8), np.zeros(50000, np.int64))
    test = cifar.Split(np.zeros((10000, 3, 32, 32), np.uint8), np.zeros(10000, np.int64))

    def loaders(data):
        return lambda cfg, rank=0, world_size=1, device="cpu": (
            data.make_loader(train, True, cfg), data.make_loader(test, False, cfg))

    with patched(pd_trainer, "build_loaders", loaders(pd_data)), \
            patched(th_trainer, "build_loaders", loaders(th_data)):
        yield


def eval_loaders(cfg: dict, batch: int = 1000):
    """The twins' test loaders for ``cfg`` with batches of ``batch`` images: the same images
    and accuracy, and about twice as fast on a small CPU as batches of 128."""
    ecfg = validate(merge(cfg, {"Data": {"batch_size": batch}}, "diff/align.py"))
    return pd_data.build_loaders(ecfg)[1], th_data.build_loaders(ecfg)[1]


def torch_state(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in th_ckpt.to_numpy(model.state_dict()).items()}


def paddle_state_as_torch(model: paddle.nn.Layer) -> dict[str, np.ndarray]:
    return convert_state_dict(pd_ckpt.to_numpy(model.state_dict()), "paddle2torch")


def to_paddle_weights(state: dict[str, np.ndarray], brk: str) -> dict[str, np.ndarray]:
    """The converter; ``--break linear_transpose`` reshapes Linear weights into Paddle's
    ``[in, out]`` instead of transposing them (loads without error, scrambles the weights)."""
    converted = convert_state_dict(state, "torch2paddle")
    if brk == "linear_transpose":
        for key, value in state.items():
            if key.endswith(".weight") and np.ndim(value) == 2:
                converted[key] = np.ascontiguousarray(value.reshape(value.shape[::-1]))
    return converted


def load_torch_into_paddle(th_model: torch.nn.Module, pd_model: paddle.nn.Layer,
                           brk: str = "none") -> None:
    state = to_paddle_weights(torch_state(th_model), brk)
    pd_ckpt.load_weights(pd_model, pd_ckpt.from_numpy(state), "<torch init>")


class _AvgGradMaxPool(paddle.autograd.PyLayer):
    """Max pooling forward, average pooling's backward: the gradient is spread evenly over each
    2x2 window instead of going to its maximum (``--break maxpool_grad``)."""

    @staticmethod
    def forward(ctx, x):
        return pF.max_pool2d(x, kernel_size=2, stride=2)

    @staticmethod
    def backward(ctx, grad):
        up = paddle.repeat_interleave(paddle.repeat_interleave(grad, 2, axis=2), 2, axis=3)
        return up / 4.0


class BrokenMaxPool(paddle.nn.Layer):
    def forward(self, x):
        return _AvgGradMaxPool.apply(x)


def apply_break(model: paddle.nn.Layer, brk: str) -> paddle.nn.Layer:
    """Break a Paddle twin in place: ``bn_momentum`` gives BatchNorm torch's momentum number
    (0.1) literally, i.e. keeps 10 % of the running statistics instead of 90 %;
    ``maxpool_grad`` swaps MaxPool2D for :class:`BrokenMaxPool` (same forward, wrong backward)."""
    if brk == "bn_momentum":
        for m in model.sublayers():
            if isinstance(m, paddle.nn.layer.norm._BatchNormBase):
                m._momentum = 0.1
    elif brk == "maxpool_grad":
        for parent in model.sublayers(include_self=True):
            for name, child in list(parent.named_children()):
                if isinstance(child, paddle.nn.MaxPool2D):
                    parent._sub_layers[name] = BrokenMaxPool()
    return model


def feed_snapshot(ctx: Context, snap: dict[str, np.ndarray], k: int, models: tuple,
                  averages: tuple) -> None:
    """Load weight snapshot ``k`` (torch layout) into both twins, then add it to both
    averages."""
    th_model, pd_model = models
    th_model.load_state_dict(th_ckpt.from_numpy(snap))
    pd_ckpt.load_weights(pd_model, pd_ckpt.from_numpy(to_paddle_weights(snap, ctx.brk)),
                         f"<snapshot {k}>")
    for average, model in zip(averages, models, strict=True):
        average.update_parameters(model)


def twin_models(cfg: dict, brk: str = "none", seed: int = SEED):
    """(torch, paddle) models of ``cfg``: torch initialises, Paddle gets the converted weights."""
    torch.manual_seed(seed)
    th_model = th_models.build_model(cfg)
    paddle.seed(seed)
    pd_model = apply_break(pd_models.build_model(cfg), brk)
    load_torch_into_paddle(th_model, pd_model, brk)
    return th_model, pd_model


def leaves_torch(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if n and not list(m.children())]


def leaves_paddle(model: paddle.nn.Layer) -> list[tuple[str, paddle.nn.Layer]]:
    return [(n, m) for n, m in model.named_sublayers() if not list(m.children())]


class Probe:
    """Forward hooks on every leaf layer of both twins (outputs, in call order) and, with
    ``grads``, tensor hooks on those outputs (gradient w.r.t. each layer's output)."""

    def __init__(self, th_model: torch.nn.Module, pd_model: paddle.nn.Layer, grads: bool):
        self.th_out, self.pd_out, self.th_grad, self.pd_grad = {}, {}, {}, {}
        self.order: list[str] = []
        self.kinds = {n: type(m).__name__ for n, m in leaves_paddle(pd_model)}
        self.handles = []
        for name, m in leaves_torch(th_model):
            self.handles.append(m.register_forward_hook(self._th_hook(name, grads)))
        for name, m in leaves_paddle(pd_model):
            self.handles.append(m.register_forward_post_hook(self._pd_hook(name, grads)))

    def _th_hook(self, name: str, grads: bool):
        def hook(module, inputs, output):
            self.th_out[name] = output.detach().numpy().copy()
            if name not in self.order:
                self.order.append(name)
            if grads and output.requires_grad:
                output.register_hook(lambda g: self.th_grad.__setitem__(name, g.numpy().copy()))
        return hook

    def _pd_hook(self, name: str, grads: bool):
        def hook(layer, inputs, output):
            # a copy: ``numpy()`` turns a oneDNN convolution's output into NCHW in place,
            # which the next convolution's backward (a residual shortcut) then refuses
            self.pd_out[name] = output.clone().numpy()
            if grads and not output.stop_gradient:
                output.register_hook(
                    lambda g: self.pd_grad.__setitem__(name, g.clone().numpy()))
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def layer_diffs(self, which: str) -> list[tuple[str, float, float]]:
        """(layer, mean abs diff, mean abs diff / mean |torch value|) in forward order."""
        th, pd = (self.th_out, self.pd_out) if which == "output" else (self.th_grad, self.pd_grad)
        out = []
        for name in self.order:
            if name in th and name in pd and th[name].shape == pd[name].shape:
                mean, _ = diff_stats(pd[name], th[name])
                scale = float(np.abs(th[name]).mean()) or 1.0
                out.append((name, mean, mean / scale))
            elif name in th or name in pd:
                out.append((name, math.inf, math.inf))
        return out

    def first_output_divergence(self, threshold: float) -> str:
        for name, mean, _ in self.layer_diffs("output"):
            if mean > threshold:
                return (f"first layer whose output diverges: {name} ({self.kinds.get(name)}), "
                        f"mean abs diff {mean:.3g} > {threshold:g}")
        return "no layer output diverges beyond the threshold"

    def first_grad_divergence(self, threshold: float) -> str:
        """Walk from the loss back to the input: the first layer whose output gradient diverges
        (relative to its scale) is the output of the layer *after* it, in forward order, whose
        backward produced it; that layer is named as responsible."""
        diffs = self.layer_diffs("grad")
        for i in range(len(diffs) - 1, -1, -1):
            name, _, rel = diffs[i]
            if rel > threshold:
                after = diffs[i + 1][0] if i + 1 < len(diffs) else "the loss"
                kind = self.kinds.get(after, "cross-entropy")
                return (f"gradient first diverges (walking back from the loss) at the output "
                        f"of {name}: relative diff {rel:.3g} > {threshold:g}, while the "
                        f"gradient at the output of {after} matches; responsible: the backward "
                        f"of {after} ({kind})")
        return "no layer's output gradient diverges beyond the threshold"


def fake_data(ctx: Context) -> tuple[np.ndarray, np.ndarray]:
    """``fake_data.npy`` / ``fake_label.npy`` (seeded): normalised-image-like noise, 8x3x32x32."""
    if "fake" not in ctx.cache:
        rng = np.random.default_rng([ctx.seed, 2018])
        x = rng.standard_normal(FAKE_SHAPE).astype(np.float32)
        y = rng.integers(0, 10, FAKE_SHAPE[0]).astype(np.int64)
        np.save(ctx.out / "fake_data.npy", x)
        np.save(ctx.out / "fake_label.npy", y)
        ctx.cache["fake"] = (x, y)
    return ctx.cache["fake"]
