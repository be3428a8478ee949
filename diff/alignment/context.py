"""What every alignment step shares: thresholds, the run's context, configs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from swa_recipe.config import default_config, merge, validate

from .report import Row

ROOT = Path(__file__).resolve().parents[2]
BREAKS = ("none", "linear_transpose", "bn_momentum", "maxpool_grad")
SEED = 1
FAKE_SHAPE = (8, 3, 32, 32)
RECIPE = ROOT / "configs" / "vgg16_swa_cifar10.yaml"
CHANCE_FACTOR = 2.0  # "far above chance": at least twice the 10 % of a 10-class guess

T_FORWARD = T_LOSS = T_BACKWARD = 1e-6
T_DATA = 0.0
T_LR = 1e-9
T_SWA_AVG, T_SWA_BN = 1e-7, 1e-5
T_METRIC = 0.05  # accuracy points
T_TRAIN_LOSS, T_TRAIN_ACC = 1e-3, 0.3
T_F64_RATIO = 2.0  # Paddle's worst gradient error vs float64: at most twice torch's worst
T_GRAD_LOCATE = 1e-5  # relative output-gradient diff that localisation counts as divergence

# ``--model``: what the forward, backward and swa steps cover. VGG16 runs the original steps
# (full-width forward, VGG16BN for BatchNorm, backward at ``--backward_width``); the residual
# models run at full depth and a CPU-size width.
MODEL_WIDTHS = {"VGG16": None, "PreResNet110": 0.25, "PreResNet164": 0.25,
                "WideResNet28x10": 0.1}
MODELS = tuple(MODEL_WIDTHS)


@dataclass
class Context:
    out: Path
    data_path: str | None
    brk: str = "none"
    seed: int = SEED
    train_lr: float = 0.01
    backward_width: float = 0.125
    control: bool = False
    models: tuple[str, ...] = ("VGG16",)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cache: dict = field(default_factory=dict)

    def note(self, step: str, text: str) -> None:
        self.notes.append(f"{step}: {text}")
        print(f"  [{step}] {text}", flush=True)


def make_cfg(**sections: dict) -> dict:
    """A validated config from the project's defaults; CPU, seed 1, quiet logs."""
    base = {"Global": {"device": "cpu", "seed": SEED, "log_freq": 10 ** 6}}
    for section, values in sections.items():
        base.setdefault(section, {}).update(values)
    return validate(merge(default_config(), base, "diff/align.py"))


def residual_cfg(model: str, **sections: dict) -> dict:
    """A residual model of ``--model`` at its CPU-size width, dropout 0."""
    arch = {"model": model, "width": MODEL_WIDTHS[model], "dropout": 0.0}
    return make_cfg(Arch=arch, **sections)


def file_tag(step: str, model: str) -> str:
    """``forward`` for VGG16 (the original steps' files), ``forward_preresnet164`` else."""
    return step if model == "VGG16" else f"{step}_{model.lower()}"
