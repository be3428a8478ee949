"""Evaluation forwards through one whole-model static program (oneDNN on CPU), eager otherwise.

``swa_paddle.onednn`` runs each convolution as its own small static program; between them an
eager evaluation pays Paddle's eager ReLU, pooling and bias add and a conversion out of oneDNN's
blocked layout after every convolution. Here the whole eval-mode forward is one program of the
legacy IR (``paddle.jit.to_static``, full graph): oneDNN runs every operator of it. A whole-model
*training* program fails in oneDNN's ``pool2d_grad``; evaluation records no gradients, so that
failure does not apply.

The program reads the model's live parameters and BatchNorm statistics (the tensors themselves,
not copies), so weight updates between epochs and the SWA average are seen. Dropout is off and
BatchNorm normalises with its running statistics because the layers are traced in eval mode; the
program itself is Paddle's default (training) one, not the inference clone ``StaticFunction.eval``
selects: that clone marks its operators ``is_test``, and oneDNN's convolution then caches its
reordered weights, so a second evaluation after a weight change read the old weights of every
convolution but the first (tested). Paddle keeps one program per input shape (a test set's last,
smaller batch is a second one).

The eager forward stays the reference and the fallback. It runs for a model built with
``Global.static_eval false`` (the study pins it: its committed rows were evaluated eagerly, its
``--retrain`` check compares every digit, and the program's losses differ from eager's in about
the ninth digit), and where the program cannot run: when the model's convolutions do not run
oneDNN (``Global.onednn false``; PIR enabled or no oneDNN in the build, where ``onednn.enable``
leaves them off), when the input is not a float32 CPU tensor (a GPU; AMP runs only there,
Paddle's ``auto_cast`` being off on the CPU), when gradients are recorded or a sublayer is in
training mode, and, for good, once a model's program has failed (a one-line note says why).
``update_bn`` stays eager (docs/speed.md says why).
"""

from __future__ import annotations

import weakref

import paddle
from paddle import nn
from paddle.jit.dy2static.program_translator import StaticFunction

from swa_recipe.logs import note

from . import onednn

# One program family per model; None once it failed (the model then evaluates eagerly).
_PROGRAMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def runs_onednn(model: nn.Layer) -> bool:
    """Whether every convolution of ``model`` is an ``onednn.Conv2D`` switched on (there is at
    least one): the model was built for oneDNN in a process that can run it."""
    convs = [m for m in model.sublayers(include_self=True) if isinstance(m, nn.Conv2D)]
    return bool(convs) and all(isinstance(m, onednn.Conv2D) and m.use_onednn for m in convs)


def enable(model: nn.Layer, on: bool = True) -> bool:
    """Let ``model`` evaluate through its static program (``Global.static_eval``, set by
    ``build_model``); return ``on``. A property of the model, as ``onednn.enable``'s switch is,
    kept as an attribute so that the SWA average (a deep copy) inherits it."""
    model._static_eval = bool(on)
    return model._static_eval


def enabled(model: nn.Layer) -> bool:
    """The switch of ``model``, or of the model it wraps (an ``AveragedModel``'s module)."""
    return next((m._static_eval for m in model.sublayers(include_self=True)
                 if hasattr(m, "_static_eval")), False)


def can_run(model: nn.Layer, x: paddle.Tensor) -> bool:
    """Whether the static program may replace ``model(x)`` (see the module's docstring)."""
    return (enabled(model) and _PROGRAMS.get(model, True) is not None
            and not paddle.is_grad_enabled()
            and x.place.is_cpu_place() and x.dtype == paddle.float32
            and not any(m.training for m in model.sublayers(include_self=True))
            and runs_onednn(model))


def build(model: nn.Layer) -> StaticFunction:
    """The eval-mode static function of ``model``'s forward. It holds the model weakly, so the
    cache entry goes with the model; its programs hold the parameters themselves."""
    ref = weakref.ref(model)

    def forward(x: paddle.Tensor) -> paddle.Tensor:
        return ref()(x)

    return paddle.jit.to_static(forward, full_graph=True)


def reason(exc: Exception) -> str:
    """An exception in one line: its type and the last line of its message (Paddle's errors
    end with the cause after pages of traceback)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[-1][:200]}" if lines else type(exc).__name__


def run(model: nn.Layer, x: paddle.Tensor) -> paddle.Tensor:
    """``model(x)`` through its static program where it can run, else eagerly. A program that
    fails (to build or to run) is dropped for good and the batch is rerun eagerly, whose error,
    if any, is then the one raised: eager is the reference."""
    if not can_run(model, x):
        return model(x)
    if model not in _PROGRAMS:
        _PROGRAMS[model] = build(model)
    try:
        return _PROGRAMS[model](x)
    except Exception as exc:
        _PROGRAMS[model] = None
        note(f"note: evaluating {type(model).__name__} eagerly, its static program failed "
             f"({reason(exc)})")
        return model(x)
