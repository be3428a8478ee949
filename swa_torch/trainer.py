"""One SGD/SWA training run in PyTorch; ``swa_recipe.loop.fit`` drives its epochs."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from swa_recipe import loop
from swa_recipe.device import resolve_device
from swa_recipe.logs import note, summarize
from swa_recipe.loop import Progress

from . import checkpoint, dist
from .averaging import build_average
from .data import build_loaders
from .models import build_model, set_dropout_masks


def set_device(device: str) -> str:
    """``Global.device`` as "gpu" or "cpu" (``swa_recipe.device``): ``auto`` is a GPU only
    when one is visible; a note says when ``auto`` stays on the CPU."""
    device, message = resolve_device(device, "torch", torch.backends.cuda.is_built(),
                                  torch.cuda.device_count())
    if message:
        note(message)
    return device


def torch_device(device: str) -> torch.device:
    """Under ``torchrun``, "gpu" is this rank's GPU (``LOCAL_RANK``)."""
    if device != "gpu":
        return torch.device("cpu")
    local = int(os.environ.get("LOCAL_RANK", 0))
    torch.cuda.set_device(local)
    return torch.device("cuda", local)


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on ``device``; to a GPU through pinned memory, without waiting."""
    tensor = torch.from_numpy(array)
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


def to_host(tensors: list[torch.Tensor]) -> np.ndarray:
    """Device tensors as one float64 array: a single transfer, the one wait for the device."""
    return torch.cat([t.reshape(-1).double() for t in tensors]).cpu().numpy()


def has_batch_norm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: torch.utils.data.DataLoader,
             world_size: int = 1) -> dict:
    """Mean loss and accuracy (%) over the loader (this rank's shard, summed over ranks)."""
    model.eval()
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # read once, at the end
    correct = torch.zeros((), dtype=torch.int64, device=device)
    total = 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(dim=1) == y).sum()
        total += int(y.shape[0])
    totals = np.append(to_host([loss_sum, correct]), total)
    return summarize(dist.all_reduce_sum(totals, world_size))


class Trainer(loop.Trainer):
    """Model, SWA average, optimizer and loaders of one run; ``swa_recipe.loop.Trainer`` holds
    what both twins share."""

    checkpoint, dist = checkpoint, dist
    framework = "torch"

    def __init__(self, cfg: dict):
        self.cfg = cfg
        device = set_device(cfg["Global"]["device"])
        self.device = torch_device(device)
        self.rank, self.world_size = dist.init_distributed(self.device)
        torch.manual_seed(cfg["Global"]["seed"])
        self.model = build_model(cfg).to(self.device)
        self.net = dist.wrap(self.model, self.world_size)
        self.train_loader, self.test_loader = build_loaders(cfg, self.rank, self.world_size,
                                                            device=device)
        self.batches = self.train_loader.batch_sampler.batches
        self.iters = len(self.batches)
        self.swa_model = build_average(self.model, cfg["SWA"]) if cfg["SWA"]["swa"] else None
        opt = cfg["Optimizer"]
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=opt["lr_init"],
                                         momentum=opt["momentum"], weight_decay=opt["wd"])
        self.progress = Progress()

    def _lr(self, epoch: int, it: int) -> float:
        lr = self.learning_rate(epoch, it)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def train_epoch(self, epoch: int, logger: logging.Logger | None = None,
                    should_stop: Callable[[], bool] = lambda: False) -> dict:
        """Train one epoch, from ``self.progress`` on (a run resumed mid-epoch). On a stop
        request, return after the step in progress with ``interrupted``."""
        meter = self._begin_epoch(epoch, logger)
        for it, (x, y) in enumerate(meter.iterate(self.train_loader), start=meter.start):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            self._set_dropout_masks(epoch, it)
            lr = self._lr(epoch, it)
            with self._autocast():
                logits = self.net(x)
                loss_sum = F.cross_entropy(logits, y, reduction="sum")
            # Mean over the global batch once DDP averages over ranks.
            loss = loss_sum * (self.world_size / self.batches.global_size(it))
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            set_dropout_masks(self.model, None)
            correct = (logits.argmax(dim=1) == y).sum()
            if self._end_step(meter, it, lr, loss_sum.detach(), correct, int(y.shape[0]),
                              should_stop):
                return {"interrupted": True, "iteration": it + 1}
        return self._end_epoch()

    def _set_dropout_masks(self, epoch: int, it: int) -> None:
        masks = self._dropout_masks(epoch, it)
        set_dropout_masks(self.model, masks and [to_device(m, self.device) for m in masks])

    def _autocast(self) -> torch.autocast:
        """bf16 autocast of the training forward when asked; weights, optimizer, evaluation and
        the BN update stay float32."""
        bf16 = self.cfg["Global"]["precision"] == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16)

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["state_dict"])
        self.progress.load_state_dict(state.get("progress"))
        self.optimizer.load_state_dict(state["optimizer"])
        if self.swa_model is not None and state.get("swa_state_dict") is not None:
            self.swa_model.module.load_state_dict(state["swa_state_dict"])
            self.swa_model.n_averaged.fill_(state["swa_n"])

    def update_bn(self) -> None:
        """As the shared one, moving batches to this rank's device (Paddle's loader places
        them itself)."""
        if has_batch_norm(self.model):
            dist.update_bn(self._whole_epoch(), self.swa_model.module, self.world_size,
                           self.device)

    def _optimizer_state(self) -> dict:
        return self.optimizer.state_dict()

    _evaluate = staticmethod(evaluate)
    _to_host = staticmethod(to_host)
    _has_batch_norm = staticmethod(has_batch_norm)
