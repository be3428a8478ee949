"""VGG layouts of the original repo (timgaripov/swa, ``models/vgg.py``), shared by both twins."""

from __future__ import annotations

LAYOUTS = {
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"],
}
# name -> (depth, batch_norm)
MODELS = {"VGG16": (16, False), "VGG16BN": (16, True), "VGG19": (19, False),
          "VGG19BN": (19, True)}


def scaled(channels: int, width: float) -> int:
    """Channels at a width multiplier (1/16 width turns 64 into 4), at least one."""
    return max(1, int(round(channels * width)))


def layout(depth: int, width: float) -> list:
    return [v if v == "M" else scaled(v, width) for v in LAYOUTS[depth]]


def model_kwargs(cfg: dict) -> dict:
    """Constructor arguments of ``VGG`` for a config, the same in both twins."""
    arch = cfg["Arch"]
    depth, batch_norm = MODELS[arch["model"]]
    return {"num_classes": arch["num_classes"], "depth": depth, "batch_norm": batch_norm,
            "width": arch["width"], "dropout": arch["dropout"]}


def dropout_widths(cfg: dict) -> list[int]:
    """Units of the classifier's two dropout layers (their masks' widths)."""
    return [scaled(512, cfg["Arch"]["width"])] * 2
