"""Export with ``torch.export`` (a ``.pt2`` that loads without this project) and run it."""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from swa_recipe.checkpoint import CheckpointError
from swa_recipe.config import ConfigError
from swa_recipe.predict import IMAGE_SIZE, PREFIX

from .models import build_model
from .trainer import torch_device


@torch.no_grad()
def run_model(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Logits of the dynamic model in evaluation mode."""
    model.eval()
    device = next(model.parameters()).device
    return model(torch.from_numpy(x).to(device)).cpu().numpy()


def dynamic_model(cfg: dict, device: str) -> nn.Module:
    """The config's model on ``device`` (what ``predict.py`` runs), randomly initialised."""
    return build_model(cfg).to(torch_device(device))


def export(model: nn.Module, save_dir: str) -> list[str]:
    """``torch.export`` with a dynamic batch dimension + ``torch.export.save``; return the
    files written."""
    model.eval()
    example = (torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE),)
    program = torch.export.export(model, example,
                                  dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    torch.export.save(program, os.path.join(save_dir, PREFIX + ".pt2"))
    return [PREFIX + ".pt2"]


def inference_device(device: str) -> str:
    """``auto`` is the GPU when CUDA is available; ``gpu`` requires it."""
    cuda = torch.cuda.is_available()
    if device == "gpu" and not cuda:
        raise ConfigError("--device gpu, but torch sees no CUDA GPU; pass --device cpu")
    return "gpu" if device == "gpu" or (device == "auto" and cuda) else "cpu"


class Predictor:
    """An exported ``.pt2`` program, loaded with ``torch.export.load``."""

    def __init__(self, model_dir: str, device: str = "auto"):
        self.device = inference_device(device)
        path = os.path.join(model_dir, PREFIX + ".pt2")
        try:
            module = torch.export.load(path).module()
        except Exception as exc:  # torch raises several types for a damaged archive
            raise CheckpointError(f"{path} cannot be loaded by torch.export "
                                  f"({exc.__class__.__name__}); export the model again") from None
        self.target = torch_device(self.device)
        self.module = module.to(self.target)

    @torch.no_grad()
    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.target)
        return self.module(x).cpu().numpy()
