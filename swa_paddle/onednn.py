"""oneDNN convolutions for Paddle's eager mode on CPU (torch's eager conv uses oneDNN already).

Paddle's eager CPU ``conv2d`` is im2col plus one small GEMM per image, and its broadcast bias add
and bias gradient run single-threaded: on VGG16 at full width that is about 2.4x slower than
torch's oneDNN convolution (profile in the README, "Speed"). Paddle selects its oneDNN kernels
only inside static programs of the legacy IR (``FLAGS_enable_pir_api=0``, which must be in the
environment before ``import paddle``; ``swa_recipe.runtime.tune_cpu_env`` sets it) with
``FLAGS_use_mkldnn``. So :class:`Conv2D` runs its convolution as a small static program
(``paddle.jit.to_static``). When gradients are recorded the bias is added eagerly, with its
gradient as one GEMM: oneDNN's bias reduction is a reference kernel that alone took 40 % of a
training step.

Parameters, initialisation and checkpoints are those of ``paddle.nn.Conv2D``. The fast path is a
property of each model (:func:`enable` turns it on for one model's convolutions, as
``build_model`` does for ``Global.onednn true``), so building another model never reroutes one
already built. Where it is unavailable (no oneDNN in the build, PIR enabled, not on CPU, not
float32) or off, :class:`Conv2D` is ``paddle.nn.Conv2D``.
"""

from __future__ import annotations

import functools

import paddle
import paddle.nn.functional as F
from paddle import nn
from paddle.autograd import PyLayer
from paddle.base import core


def available() -> bool:
    """Whether this process can run oneDNN convolutions from eager mode."""
    return core.is_compiled_with_mkldnn() and not paddle.framework.use_pir_api()


def enable(model: nn.Layer, on: bool = True) -> bool:
    """Route ``model``'s :class:`Conv2D` layers through oneDNN (``on``) or Paddle's own kernel;
    return whether they now run oneDNN. Other models keep their setting."""
    on = on and available()
    if on:
        paddle.set_flags({"FLAGS_use_mkldnn": True})
    for layer in model.sublayers(include_self=True):
        if isinstance(layer, Conv2D):
            layer.use_onednn = on
    return on


@functools.cache
def _static_conv(stride: tuple, padding: int | tuple, dilation: tuple, groups: int,
                 grad: bool):
    """One static program family per convolution geometry (Paddle caches one per input shape)
    and per gradient mode: a program first traced without gradients (evaluation, update_bn)
    and then reused for training leaves its output in NCHW where the backward of a
    convolution fed directly by it (a residual shortcut) expects oneDNN's layout."""

    def conv(x: paddle.Tensor, weight: paddle.Tensor, bias: paddle.Tensor | None = None
             ) -> paddle.Tensor:
        return F.conv2d(x, weight, bias, list(stride), padding, list(dilation), groups)

    return paddle.jit.to_static(conv, full_graph=True)


class BiasAdd(PyLayer):
    """``y + bias`` over NCHW; the bias gradient is a GEMM with ones instead of a reduction."""

    @staticmethod
    def forward(ctx, y: paddle.Tensor, bias: paddle.Tensor) -> paddle.Tensor:
        n, c, h, w = y.shape
        ctx.rows, ctx.cols = n * c, h * w
        ctx.needs = (not y.stop_gradient, not bias.stop_gradient)
        return y + bias.reshape([1, c, 1, 1]).expand(y.shape)

    @staticmethod
    def backward(ctx, grad: paddle.Tensor) -> tuple[paddle.Tensor | None, paddle.Tensor | None]:
        grad_bias = None
        if ctx.needs[1]:
            ones = paddle.ones([ctx.cols, 1], grad.dtype)
            per_image = paddle.matmul(grad.reshape([ctx.rows, ctx.cols]), ones)
            grad_bias = per_image.reshape([-1, grad.shape[1]]).sum(0)
        return grad if ctx.needs[0] else None, grad_bias


def _key(value) -> int | tuple:
    return tuple(value) if isinstance(value, list) else value


class Conv2D(nn.Conv2D):
    """``paddle.nn.Conv2D`` (NCHW, zero padding) running oneDNN on CPU in float32."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self._data_format != "NCHW" or self._padding_mode != "zeros":
            raise ValueError("onednn.Conv2D supports NCHW with zero padding; use paddle.nn.Conv2D")
        self.use_onednn = False  # :func:`enable` sets it per model

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if not (self.use_onednn and paddle.in_dynamic_mode() and x.place.is_cpu_place()
                and x.dtype == paddle.float32):
            return super().forward(x)  # also inside a whole-model program (static_eval)
        conv = _static_conv(_key(self._stride), _key(self._padding), _key(self._dilation),
                            self._groups, paddle.is_grad_enabled())
        if self.bias is None or not paddle.is_grad_enabled():
            return conv(x, self.weight, self.bias)  # no bias gradient: oneDNN adds the bias
        return BiasAdd.apply(conv(x, self.weight), self.bias)
