"""The original repo's model zoo (timgaripov/swa, ``models/``), framework-free: names, layouts,
depth rules, constructor arguments and input normalisation, shared by both twins."""

from __future__ import annotations

import numpy as np

LAYOUTS = {
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"],
}
# name -> (depth, batch_norm)
VGG_MODELS = {"VGG16": (16, False), "VGG16BN": (16, True), "VGG19": (19, False),
              "VGG19BN": (19, True)}
# name -> depth (``models/preresnet.py``: Bottleneck blocks from depth 44 on, so both)
PRERESNET_MODELS = {"PreResNet110": 110, "PreResNet164": 164}
# name -> (depth, widen factor) (``models/wide_resnet.py``)
WIDE_RESNET_MODELS = {"WideResNet28x10": (28, 10)}
MODELS = (*VGG_MODELS, *PRERESNET_MODELS, *WIDE_RESNET_MODELS)

# The original's ``transforms.Normalize``: ImageNet statistics for VGG (also the data readers'
# default), CIFAR's for PreResNet and WideResNet.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(3, 1, 1)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(3, 1, 1)
CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32).reshape(3, 1, 1)
CIFAR_STD = np.array([0.2023, 0.1994, 0.2010], dtype=np.float32).reshape(3, 1, 1)
NORMALIZATION = {"vgg": (IMAGENET_MEAN, IMAGENET_STD), "preresnet": (CIFAR_MEAN, CIFAR_STD),
                 "wide_resnet": (CIFAR_MEAN, CIFAR_STD)}
# Dropout when ``Arch.dropout`` is null: VGG's classifier 0.5, WideResNet's ``dropout_rate`` 0.
DEFAULT_DROPOUT = {"vgg": 0.5, "wide_resnet": 0.0}


def family(model: str) -> str:
    if model in VGG_MODELS:
        return "vgg"
    if model in PRERESNET_MODELS:
        return "preresnet"
    return "wide_resnet"


def scaled(channels: int, width: float) -> int:
    """Channels at a width multiplier (1/16 width turns 64 into 4), at least one."""
    return max(1, int(round(channels * width)))


def layout(depth: int, width: float) -> list:
    return [v if v == "M" else scaled(v, width) for v in LAYOUTS[depth]]


def preresnet_blocks(depth: int) -> tuple[str, int]:
    """(block, blocks per stage) by the original's rule: Bottleneck (9n+2) from depth 44 on,
    BasicBlock (6n+2) below."""
    if depth >= 44:
        if (depth - 2) % 9:
            raise ValueError(f"a PreResNet of depth {depth} >= 44 has Bottleneck blocks and "
                             f"needs depth 9n+2 (e.g. 47, 110, 164)")
        return "bottleneck", (depth - 2) // 9
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"a PreResNet of depth {depth} < 44 has BasicBlocks and needs depth "
                         f"6n+2 (e.g. 8, 20, 32)")
    return "basic", (depth - 2) // 6


def wide_resnet_blocks(depth: int) -> int:
    """Blocks per stage of a WideResNet (depth 6n+4)."""
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"a WideResNet needs depth 6n+4 (e.g. 10, 16, 28), got {depth}")
    return (depth - 4) // 6


def check_arch(arch: dict) -> None:
    """Raise ValueError for a depth or dropout the model cannot take."""
    kind, depth = family(arch["model"]), arch["depth"]
    if depth is not None:
        if kind == "vgg":
            raise ValueError(f"{arch['model']} has a fixed depth; Arch.depth applies to "
                             f"PreResNet and WideResNet (leave it null)")
        if kind == "preresnet":
            preresnet_blocks(depth)
        else:
            wide_resnet_blocks(depth)
    if kind == "preresnet" and arch["dropout"]:
        raise ValueError(f"{arch['model']} has no dropout; leave Arch.dropout null or 0")


def model_kwargs(cfg: dict) -> tuple[str, dict]:
    """(family, constructor arguments) of a config's model, the same in both twins."""
    arch = cfg["Arch"]
    name, kind = arch["model"], family(arch["model"])
    common = {"num_classes": arch["num_classes"], "width": arch["width"]}
    if kind == "vgg":
        depth, batch_norm = VGG_MODELS[name]
        return kind, {**common, "depth": depth, "batch_norm": batch_norm,
                      "dropout": model_dropout(cfg)}
    if kind == "preresnet":
        return kind, {**common, "depth": arch["depth"] or PRERESNET_MODELS[name]}
    depth, widen = WIDE_RESNET_MODELS[name]
    return kind, {**common, "depth": arch["depth"] or depth, "widen_factor": widen,
                  "dropout": model_dropout(cfg)}


def model_dropout(cfg: dict) -> float:
    """``Arch.dropout``, or the model's own when null (VGG 0.5, WideResNet 0, PreResNet none)."""
    arch = cfg["Arch"]
    return arch["dropout"] if arch["dropout"] is not None else DEFAULT_DROPOUT.get(
        family(arch["model"]), 0.0)


def normalization(cfg: dict) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std), float32 C x 1 x 1, of the config's model's input normalisation."""
    return NORMALIZATION[family(cfg["Arch"]["model"])]


def dropout_widths(cfg: dict) -> list[int]:
    """Units of VGG's two classifier dropout layers (their masks' widths, drawn per sample by
    ``swa_recipe.dropout``); none for the ResNets, whose dropout (WideResNet's, 0 by default)
    would draw from the framework's generator, so training refuses it
    (``loop.check_sample_dropout``)."""
    if family(cfg["Arch"]["model"]) != "vgg":
        return []
    return [scaled(512, cfg["Arch"]["width"])] * 2
