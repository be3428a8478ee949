"""How many weights a config's model has, counted from the architecture alone (no framework).

A checkpoint's config chooses the model that ``eval.py``, ``predict.py``, ``tools/export_model.py``,
``tools/convert.py`` and ``--resume PATH`` build; a 1 KB file whose config asks for a
WideResNet28x10 at width 2 would make them allocate and initialise 146 million weights (600 MB,
seconds) before the shapes are compared. Counting first lets ``checkpoint.check_weight_count``
refuse such a file before anything is built. Paddle has no meta device to build a model without
memory, hence this count; ``tests/test_hardening2.py`` checks it against both twins' models.
"""

from __future__ import annotations

from swa_recipe.arch import layout, model_kwargs, preresnet_blocks, scaled, wide_resnet_blocks


def _conv(c_in: int, c_out: int, kernel: int, bias: bool) -> int:
    return c_in * c_out * kernel * kernel + (c_out if bias else 0)


def _batch_norm(channels: int) -> int:
    return 2 * channels  # scale and shift; the running statistics are buffers


def _linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def _vgg(num_classes: int, depth: int, batch_norm: bool, width: float, **_) -> int:
    total, c_in = 0, 3
    for v in layout(depth, width):
        if v != "M":
            total += _conv(c_in, v, 3, True) + (_batch_norm(v) if batch_norm else 0)
            c_in = v
    hidden = scaled(512, width)
    return total + 2 * _linear(hidden, hidden) + _linear(hidden, num_classes)


def _preresnet_block(kind: str, c_in: int, planes: int) -> int:
    if kind == "basic":
        return (_batch_norm(c_in) + _conv(c_in, planes, 3, False) + _batch_norm(planes)
                + _conv(planes, planes, 3, False))
    return (_batch_norm(c_in) + _conv(c_in, planes, 1, False) + _batch_norm(planes)
            + _conv(planes, planes, 3, False) + _batch_norm(planes)
            + _conv(planes, 4 * planes, 1, False))


def _preresnet(num_classes: int, depth: int, width: float) -> int:
    kind, n = preresnet_blocks(depth)
    expansion = 4 if kind == "bottleneck" else 1
    planes = [scaled(p, width) for p in (16, 32, 64)]
    total, c_in = _conv(3, planes[0], 3, False), planes[0]
    for stage, p in enumerate(planes):
        if stage or c_in != p * expansion:  # the stage's first block downsamples
            total += _conv(c_in, p * expansion, 1, False)
        for _ in range(n):
            total += _preresnet_block(kind, c_in, p)
            c_in = p * expansion
    return total + _batch_norm(c_in) + _linear(c_in, num_classes)


def _wide_resnet(num_classes: int, depth: int, widen_factor: int, width: float, **_) -> int:
    n, k = wide_resnet_blocks(depth), widen_factor
    stages = [scaled(c, width) for c in (16, 16 * k, 32 * k, 64 * k)]
    total, c_in = _conv(3, stages[0], 3, True), stages[0]
    for stage, p in enumerate(stages[1:]):
        for block in range(n):
            total += (_batch_norm(c_in) + _conv(c_in, p, 3, True) + _batch_norm(p)
                      + _conv(p, p, 3, True))
            if block == 0 and (stage or c_in != p):  # strided or widening: a 1x1 shortcut
                total += _conv(c_in, p, 1, True)
            c_in = p
    return total + _batch_norm(c_in) + _linear(c_in, num_classes)


COUNTS = {"vgg": _vgg, "preresnet": _preresnet, "wide_resnet": _wide_resnet}


def weight_count(cfg: dict) -> int:
    """Trainable weights (elements of every parameter) of the config's model, as both twins
    build it; a state dict holds at least these (plus BatchNorm statistics)."""
    kind, kwargs = model_kwargs(cfg)
    return COUNTS[kind](**kwargs)
