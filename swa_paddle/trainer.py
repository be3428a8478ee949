"""One SGD/SWA training run in Paddle; ``swa_recipe.loop.fit`` drives its epochs."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import paddle
import paddle.nn.functional as F

from swa_recipe import loop, schedules
from swa_recipe.logs import summarize
from swa_recipe.loop import Progress, check_finite, step_seed

from . import checkpoint, dist
from .averaging import build_average
from .data import build_loaders
from .models import build_model
from .swa_utils import SWALR


def set_device(device: str) -> str:
    """``auto`` is the GPU when Paddle was built with CUDA, else the CPU."""
    if device == "auto":
        device = "gpu" if paddle.is_compiled_with_cuda() else "cpu"
    paddle.set_device(device)  # under a launcher, "gpu" is this rank's GPU
    return device


def has_batch_norm(model: paddle.nn.Layer) -> bool:
    return any(isinstance(m, paddle.nn.layer.norm._BatchNormBase) for m in model.sublayers())


@paddle.no_grad()
def evaluate(model: paddle.nn.Layer, loader: paddle.io.DataLoader, world_size: int = 1) -> dict:
    """Mean loss and accuracy (%) over the loader (this rank's shard, summed over ranks)."""
    model.eval()
    loss_sum, correct, total = 0.0, 0, 0
    for x, y in loader:
        logits = model(x)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(axis=1) == y).astype("int64").sum())
        total += int(y.shape[0])
    return summarize(dist.all_reduce_sum(np.array([loss_sum, correct, total]), world_size))


class Trainer(loop.Trainer):
    """Model, SWA average, optimizer and loaders of one run; ``swa_recipe.loop.Trainer`` holds
    what both twins share."""

    checkpoint, dist = checkpoint, dist
    framework = "paddle"

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.device = set_device(cfg["Global"]["device"])
        self.rank, self.world_size = dist.init_distributed()
        paddle.seed(cfg["Global"]["seed"])
        self.model = build_model(cfg)
        self.net = dist.wrap(self.model, self.world_size)
        self.train_loader, self.test_loader = build_loaders(cfg, self.rank, self.world_size)
        self.batches = self.train_loader.batch_sampler.batches
        self.iters = len(self.batches)
        self.swa_model = build_average(self.model, cfg["SWA"]) if cfg["SWA"]["swa"] else None
        opt = cfg["Optimizer"]
        self.optimizer = paddle.optimizer.Momentum(
            learning_rate=opt["lr_init"], momentum=opt["momentum"],
            parameters=self.model.parameters(), weight_decay=opt["wd"])
        self.scheduler: SWALR | None = None  # made at the first SWA epoch (schedule swalr)
        self.progress = Progress()

    def _make_swalr(self) -> SWALR:
        swa = self.cfg["SWA"]
        return SWALR(self.cfg["Optimizer"]["lr_init"], swa["swa_lr"], swa["anneal_epochs"],
                     swa["anneal_strategy"])

    def _lr(self, epoch: int, it: int) -> float:
        if self.scheduler is not None:
            lr = self.scheduler()
        else:
            lr = schedules.learning_rate(self.cfg, epoch, it, self.iters)
        self.optimizer.set_lr(lr)
        return lr

    def train_epoch(self, epoch: int, logger: logging.Logger | None = None,
                    should_stop: Callable[[], bool] = lambda: False) -> dict:
        """Train one epoch, from ``self.progress`` on (a run resumed mid-epoch). On a stop
        request, return after the step in progress with ``interrupted``."""
        meter, seed = self._begin_epoch(epoch, logger), self.cfg["Global"]["seed"]
        for it, (x, y) in enumerate(meter.iterate(self.train_loader), start=meter.start):
            paddle.seed(step_seed(seed, epoch, it))
            lr = self._lr(epoch, it)
            logits = self.net(x)
            loss_sum = F.cross_entropy(logits, y, reduction="sum")
            n = int(y.shape[0])
            loss_value = check_finite(float(loss_sum.detach()) / n, epoch, it)
            # Mean over the global batch once DataParallel averages over ranks.
            loss = loss_sum * (self.world_size / self.batches.global_size(it))
            self.optimizer.clear_grad()
            loss.backward()
            self.optimizer.step()
            correct = int((logits.argmax(axis=1) == y).astype("int64").sum())
            if self._end_step(meter, it, lr, loss_value, correct, n, should_stop):
                return {"interrupted": True, "iteration": it + 1}
        return self._end_epoch()

    def load_state_dict(self, state: dict) -> None:
        self.model.set_state_dict(state["state_dict"])
        self.progress.load_state_dict(state.get("progress"))
        checkpoint.load_optimizer_state(self.optimizer, self.model, state["optimizer"])
        if state.get("scheduler"):
            self.scheduler = self._make_swalr()
            self.scheduler.set_state_dict(state["scheduler"])
        if self.swa_model is not None and state.get("swa_state_dict") is not None:
            self.swa_model.module.set_state_dict(state["swa_state_dict"])
            self.swa_model.n_averaged.set_value(paddle.to_tensor(state["swa_n"], dtype="int64"))

    def _optimizer_state(self) -> dict:
        return checkpoint.optimizer_state(self.optimizer, self.model)

    _evaluate = staticmethod(evaluate)
    _has_batch_norm = staticmethod(has_batch_norm)
