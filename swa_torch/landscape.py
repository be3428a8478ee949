"""The probe of ``swa_recipe.landscape`` for PyTorch: a model whose trainable weights are set
from one flat float64 vector and measured on fixed train and test batches."""

from __future__ import annotations

import numpy as np
import torch

from . import checkpoint, data
from .models import build_model
from .swa_utils import update_bn
from .trainer import evaluate, has_batch_norm


class Probe:
    """``model`` built from ``cfg`` with ``weights``; ``train`` and ``test`` are CIFAR splits
    (the training subset is read without augmentation, and evaluation has no dropout)."""

    def __init__(self, cfg: dict, weights: dict, path: str, train, test):
        self.model = build_model(cfg)
        self.load(weights, path)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.train = data.make_loader(train, False, cfg)
        self.test = data.make_loader(test, False, cfg)

    def load(self, weights: dict, path: str) -> None:
        """Set a state dict (checked against the model) as the weights to measure."""
        checkpoint.load_weights(self.model, weights, path)

    def flat(self) -> np.ndarray:
        return np.concatenate([p.detach().double().numpy().ravel() for p in self.params])

    @torch.no_grad()
    def set_flat(self, weights: np.ndarray) -> None:
        start = 0
        for p in self.params:
            n = p.numel()
            p.copy_(torch.from_numpy(weights[start:start + n].reshape(p.shape)).to(p.dtype))
            start += n

    def measure(self, test: bool = True) -> dict[str, float]:
        """Train (and test) loss and error (%) at the weights set; BatchNorm statistics are
        recomputed on the training subset first, as the paper does at every point."""
        if has_batch_norm(self.model):
            update_bn(self.train, self.model)
        out = {}
        for name, loader in (("train", self.train), ("test", self.test))[:2 if test else 1]:
            res = evaluate(self.model, loader)
            out[f"{name}_loss"], out[f"{name}_err"] = res["loss"], 100.0 - res["accuracy"]
        return out
