"""Mixed precision of the training step: the one rule both twins follow, framework-free.

PaddleClas configures AMP with an ``AMP`` block (``use_amp``, ``level``, ``dtype``,
``scale_loss``, ``use_dynamic_loss_scaling``); this project had ``Global.precision bf16`` (torch
autocast) before it. :func:`amp_settings` resolves both into one :class:`Amp`, so that a twin
never reads the config keys itself. Only the training forward runs in low precision: weights,
optimizer state, the SWA average and ``update_bn`` stay float32, and evaluation runs float32, so
checkpoints and the averaged model are those of an fp32 run with different gradients.

The refusals are texts, not exceptions: ``swa_recipe.config`` (which owns ``ConfigError``)
raises :func:`amp_refusal`'s before any work, and each twin raises :func:`device_refusal`'s once
its device is resolved (``Global.device auto`` is decided only after the framework's import).
"""

from __future__ import annotations

from dataclasses import dataclass

FLOAT32, FLOAT16, BFLOAT16 = "float32", "float16", "bfloat16"


@dataclass(frozen=True)
class Amp:
    """What the training step does: ``dtype`` float32 means no autocast; ``scaling`` is a
    GradScaler (float16 only: bfloat16 has float32's exponent range and needs none) starting
    at ``init_scale``, adapted when ``dynamic``; ``tf32`` allows TF32 float32 matmuls and
    convolutions on NVIDIA GPUs (torch twin)."""

    enabled: bool = False
    dtype: str = FLOAT32
    level: str = "O1"
    scaling: bool = False
    init_scale: float = 65536.0
    dynamic: bool = True
    tf32: bool = False


def amp_settings(cfg: dict) -> Amp:
    """The run's :class:`Amp` from a validated config: the ``AMP`` block when ``use_amp``,
    else the legacy ``Global.precision bf16`` (= O1 bfloat16 autocast), else float32."""
    amp = cfg["AMP"]
    common = {"init_scale": float(amp["scale_loss"]),
              "dynamic": bool(amp["use_dynamic_loss_scaling"]), "tf32": bool(amp["tf32"])}
    if amp["use_amp"]:
        return Amp(True, amp["dtype"], amp["level"], amp["dtype"] == FLOAT16, **common)
    if cfg["Global"]["precision"] == "bf16":
        return Amp(True, BFLOAT16, "O1", False, **common)
    return Amp(False, **common)


def amp_refusal(cfg: dict) -> str | None:
    """Why the config's AMP cannot train (one line naming the fix), or None; device aside."""
    amp, framework = cfg["AMP"], cfg["Global"]["framework"]
    if amp["use_amp"] and amp["level"] == "O2":
        return ("AMP.level=O2 casts the training weights themselves to low precision "
                "(paddle.amp.decorate), which the SWA average, update_bn, the float32 "
                "evaluation and the checkpoints read; use AMP.level O1")
    if (amp["use_amp"] and cfg["Global"]["precision"] == "bf16"
            and amp["dtype"] != BFLOAT16):
        return (f"Global.precision=bf16 and AMP.dtype={amp['dtype']} disagree; drop "
                f"Global.precision (the AMP block replaces it) or set AMP.dtype bfloat16")
    if amp["tf32"] and framework != "torch":
        return ("AMP.tf32 is a torch-twin switch (Paddle reads FLAGS_allow_tf32_cublas and "
                "FLAGS_allow_tf32_cudnn from the environment); drop it or use --framework torch")
    return None


def device_refusal(amp: Amp, framework: str, device: str) -> str | None:
    """Why ``amp`` cannot train with ``framework`` on the resolved ``device`` ("cpu"/"gpu").

    float16 needs a GPU (CPU kernels and loss scaling are GPU features). Paddle's AMP does
    nothing on the CPU: ``paddle.amp.auto_cast`` switches itself off there with a warning
    (the step stays float32, bit for bit), its eager CPU kernels (conv2d, matmul, relu) have no
    bfloat16, and the oneDNN convolutions of ``swa_paddle.onednn`` fail in their backward on
    bfloat16 inputs, so asking for it on the CPU would silently train in float32.
    """
    if not amp.enabled or device != "cpu":
        return None
    if amp.dtype == FLOAT16:
        return ("AMP.dtype=float16 needs a GPU (float16 kernels, loss scaling); on the CPU use "
                "AMP.dtype bfloat16 with --framework torch, or AMP.use_amp false")
    if framework == "paddle":
        return ("Paddle's AMP does nothing on the CPU (paddle.amp.auto_cast switches itself "
                "off there, and its CPU kernels have no bfloat16); train it on a GPU "
                "(Global.device gpu, paddlepaddle-gpu), use --framework torch for bfloat16 on "
                "the CPU, or set AMP.use_amp false")
    return None
