"""The probe of ``swa_study.landscape`` for Paddle: a model whose trainable weights are set
from one flat float64 vector and measured on fixed train and test batches."""

from __future__ import annotations

import numpy as np
import paddle

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
        self.params = [p for p in self.model.parameters() if not p.stop_gradient]
        self.dtypes = [p.numpy().dtype for p in self.params]
        # the batches, read and normalised once: every point of a landscape evaluates them
        self.train = list(data.make_loader(train, False, cfg))
        self.test = list(data.make_loader(test, False, cfg))

    def load(self, weights: dict, path: str) -> None:
        """Set a state dict (checked against the model) as the weights to measure."""
        checkpoint.load_weights(self.model, weights, path)

    def flat(self) -> np.ndarray:
        return np.concatenate([p.numpy().astype(np.float64).ravel() for p in self.params])

    @paddle.no_grad()
    def set_flat(self, weights: np.ndarray) -> None:
        start = 0
        for p, dtype in zip(self.params, self.dtypes, strict=True):
            n = int(np.prod(p.shape))
            p.set_value(weights[start:start + n].reshape(p.shape).astype(dtype))
            start += n

    def evaluate(self, split: str) -> dict[str, float]:
        """Mean loss and accuracy (%) on ``train`` or ``test``, as the run's evaluation."""
        if split == "train" and has_batch_norm(self.model):  # the paper's update_bn per point
            update_bn(self.train, self.model)
        return evaluate(self.model, self.train if split == "train" else self.test)
