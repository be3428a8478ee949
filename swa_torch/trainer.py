"""One SGD/SWA training run in PyTorch; ``swa_recipe.loop.fit`` drives its epochs."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from swa_recipe import loop, schedules
from swa_recipe.logs import summarize
from swa_recipe.loop import Progress, check_finite, step_seed

from . import checkpoint, dist
from .averaging import build_average
from .data import build_loaders
from .models import build_model
from .swa_utils import SWALR


def set_device(device: str) -> str:
    """``auto`` is the GPU when CUDA is available, else the CPU."""
    if device == "auto":
        device = "gpu" if torch.cuda.is_available() else "cpu"
    return device


def torch_device(device: str) -> torch.device:
    """Under ``torchrun``, "gpu" is this rank's GPU (``LOCAL_RANK``)."""
    if device != "gpu":
        return torch.device("cpu")
    local = int(os.environ.get("LOCAL_RANK", 0))
    torch.cuda.set_device(local)
    return torch.device("cuda", local)


def has_batch_norm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: torch.utils.data.DataLoader,
             world_size: int = 1) -> dict:
    """Mean loss and accuracy (%) over the loader (this rank's shard, summed over ranks)."""
    model.eval()
    device = next(model.parameters()).device
    loss_sum, correct, total = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(dim=1) == y).sum())
        total += int(y.shape[0])
    return summarize(dist.all_reduce_sum(np.array([loss_sum, correct, total]), world_size))


class Trainer(loop.Trainer):
    """Model, SWA average, optimizer and loaders of one run; ``swa_recipe.loop.Trainer`` holds
    what both twins share."""

    checkpoint, dist = checkpoint, dist
    framework = "torch"

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.device = torch_device(set_device(cfg["Global"]["device"]))
        self.rank, self.world_size = dist.init_distributed()
        torch.manual_seed(cfg["Global"]["seed"])
        self.model = build_model(cfg).to(self.device)
        self.net = dist.wrap(self.model, self.world_size)
        self.train_loader, self.test_loader = build_loaders(cfg, self.rank, self.world_size)
        self.batches = self.train_loader.batch_sampler.batches
        self.iters = len(self.batches)
        self.swa_model = build_average(self.model, cfg["SWA"]) if cfg["SWA"]["swa"] else None
        opt = cfg["Optimizer"]
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=opt["lr_init"],
                                         momentum=opt["momentum"], weight_decay=opt["wd"])
        self.scheduler: SWALR | None = None  # made at the first SWA epoch (schedule swalr)
        self.progress = Progress()

    def _make_swalr(self) -> SWALR:
        swa = self.cfg["SWA"]
        return SWALR(self.optimizer, swa["swa_lr"], swa["anneal_epochs"], swa["anneal_strategy"])

    def _lr(self, epoch: int, it: int) -> float:
        if self.scheduler is not None:
            return self.optimizer.param_groups[0]["lr"]
        lr = schedules.learning_rate(self.cfg, epoch, it, self.iters)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def train_epoch(self, epoch: int, logger: logging.Logger | None = None,
                    should_stop: Callable[[], bool] = lambda: False) -> dict:
        """Train one epoch, from ``self.progress`` on (a run resumed mid-epoch). On a stop
        request, return after the step in progress with ``interrupted``."""
        meter, seed = self._begin_epoch(epoch, logger), self.cfg["Global"]["seed"]
        for it, (x, y) in enumerate(meter.iterate(self.train_loader), start=meter.start):
            x, y = x.to(self.device), y.to(self.device)
            torch.manual_seed(step_seed(seed, epoch, it))
            lr = self._lr(epoch, it)
            with self._autocast():
                logits = self.net(x)
                loss_sum = F.cross_entropy(logits, y, reduction="sum")
            n = int(y.shape[0])
            loss_value = check_finite(float(loss_sum.detach()) / n, epoch, it)
            # Mean over the global batch once DDP averages over ranks.
            loss = loss_sum * (self.world_size / self.batches.global_size(it))
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            correct = int((logits.argmax(dim=1) == y).sum())
            if self._end_step(meter, it, lr, loss_value, correct, n, should_stop):
                return {"interrupted": True, "iteration": it + 1}
        return self._end_epoch()

    def _autocast(self) -> torch.autocast:
        """bf16 autocast of the training forward when asked; weights, optimizer, evaluation and
        the BN update stay float32."""
        bf16 = self.cfg["Global"]["precision"] == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16)

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["state_dict"])
        self.progress.load_state_dict(state.get("progress"))
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scheduler"):
            self.scheduler = self._make_swalr()
            self.scheduler.load_state_dict(state["scheduler"])
        if self.swa_model is not None and state.get("swa_state_dict") is not None:
            self.swa_model.module.load_state_dict(state["swa_state_dict"])
            self.swa_model.n_averaged.fill_(state["swa_n"])

    def update_bn(self) -> None:
        """As the shared one, moving batches to this rank's device (Paddle's loader places
        them itself)."""
        if has_batch_norm(self.model):
            dist.update_bn(self.train_loader, self.swa_model.module, self.world_size, self.device)

    def _optimizer_state(self) -> dict:
        return self.optimizer.state_dict()

    _evaluate = staticmethod(evaluate)
    _has_batch_norm = staticmethod(has_batch_norm)
