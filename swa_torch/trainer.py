"""The PyTorch side of one SGD/SWA training run: ``swa_recipe.loop.Trainer``'s framework calls."""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from swa_recipe import loop
from swa_recipe.config import ConfigError
from swa_recipe.device import resolve_device
from swa_recipe.logs import IterMeter, note, summarize
from swa_recipe.precision import Amp, amp_settings, device_refusal

from . import checkpoint, dist, visual
from .averaging import build_average
from .data import build_loaders
from .device_dropout import keep_masks as device_keep_masks
from .fast import channels_last, channels_last_on_cpu, compiled
from .models import build_model, kernels, set_dropout_masks


def choose_device(device: str, option: str = "Global.device") -> str:
    """``device`` as "gpu" or "cpu" by the one policy of ``swa_recipe.device`` (training,
    evaluation, predict, export and torch.export inference): ``auto`` is a GPU only when one
    is visible, not merely a CUDA build; a note says when ``auto`` stays on the CPU."""
    device, message = resolve_device(device, "torch", torch.backends.cuda.is_built(),
                                     torch.cuda.device_count(), option)
    if message:
        note(message)
    return device


def set_device(device: str) -> str:
    """``Global.device`` chosen (:func:`choose_device`); the twin places tensors itself
    (:func:`torch_device`)."""
    return choose_device(device)


def torch_device(device: str) -> torch.device:
    """Under ``torchrun``, "gpu" is this rank's GPU (``LOCAL_RANK``)."""
    if device != "gpu":
        return torch.device("cpu")
    local = int(os.environ.get("LOCAL_RANK", 0))
    torch.cuda.set_device(local)
    return torch.device("cuda", local)


def to_device(array: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host array on ``device``; to a GPU through pinned memory, without waiting. A tensor
    (drawn on the device already, ``Data.on_device``) is moved only if it is elsewhere."""
    if isinstance(array, torch.Tensor):
        return array.to(device)
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


def autocast(amp: Amp, device: torch.device) -> torch.autocast:
    """``torch.autocast`` of the training forward and loss as ``amp`` asks (its one level is
    O1); weights, optimizer, evaluation and the BN update stay float32."""
    dtype = getattr(torch, amp.dtype) if amp.enabled else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=amp.enabled)


def set_tf32(allowed: bool) -> None:
    """``AMP.tf32``, set explicitly either way: torch's own defaults differ (matmuls off,
    cuDNN convolutions on), which would make an fp32 GPU run TF32 in its convolutions only.
    The ``allow_tf32`` switches, not the newer ``fp32_precision`` ones: in torch 2.13, once
    the new ones are set, reading ``torch.backends.cudnn.allow_tf32`` (as Inductor's
    convolution templates do) raises, while the old switches keep both readable."""
    torch.backends.cuda.matmul.allow_tf32 = allowed
    torch.backends.cudnn.allow_tf32 = allowed


class Trainer(loop.Trainer):
    """Model, SWA average, optimizer and loaders of one run, and the PyTorch calls that
    ``swa_recipe.loop.Trainer`` (the epoch and batch loop) asks for."""

    checkpoint, dist, visual = checkpoint, dist, visual
    framework = "torch"

    def __init__(self, cfg: dict, meter_class: type[IterMeter] = IterMeter):
        super().__init__(cfg, meter_class)
        device = set_device(cfg["Global"]["device"])
        self.device = torch_device(device)
        self.amp = amp_settings(cfg)
        if (refusal := device_refusal(self.amp, self.framework, device)) is not None:
            raise ConfigError(refusal)
        set_tf32(self.amp.tf32)
        self.rank, self.world_size = dist.init_distributed(self.device)
        torch.manual_seed(cfg["Global"]["seed"])
        self.model = channels_last(build_model(cfg).to(self.device), cfg)
        self.net = compiled(dist.wrap(self.model, self.world_size), cfg)
        self.train_loader, self.test_loader = build_loaders(cfg, self.rank, self.world_size,
                                                            device=device)
        self.batches = self.train_loader.batch_sampler.batches
        self.iters = len(self.batches)
        self.swa_model = build_average(self.model, cfg["SWA"]) if cfg["SWA"]["swa"] else None
        opt = cfg["Optimizer"]
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=opt["lr_init"],
                                         momentum=opt["momentum"], weight_decay=opt["wd"])
        self.scaler = torch.amp.GradScaler(self.device.type, init_scale=self.amp.init_scale,
                                           enabled=self.amp.scaling)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def draw_masks(self, epoch: int, it: int, p: float, widths: list[int]) -> list:
        """With ``Data.on_device``, the masks are drawn on the device from the batch's
        device indices (``device_dropout``: bit-identical to the host's), no host arrays."""
        if not self.cfg["Data"]["on_device"]:
            return super().draw_masks(epoch, it, p, widths)
        indices = self.train_loader.shard_indices(it)
        return device_keep_masks(self.cfg["Global"]["seed"], epoch, indices, p, widths)

    def step(self, x: torch.Tensor, y: torch.Tensor, masks: list[np.ndarray] | None,
             loss_scale: float) -> tuple[torch.Tensor, torch.Tensor, int]:
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        set_dropout_masks(self.model, masks and [to_device(m, self.device) for m in masks])
        with kernels(self.model):
            with autocast(self.amp, self.device):
                logits = self.net(x)
                loss_sum = F.cross_entropy(logits, y, reduction="sum")
            loss = loss_sum * loss_scale  # the global batch's mean once DDP averages
            self.optimizer.zero_grad()
            self.scaler.scale(loss).backward()  # the loss itself without float16
        self.scaler.step(self.optimizer)  # unscales; skips a step whose gradients overflowed
        self.scaler.update(None if self.amp.dynamic else self.amp.init_scale)
        set_dropout_masks(self.model, None)
        correct = (logits.argmax(dim=1) == y).sum()
        return loss_sum.detach(), correct, int(y.shape[0])

    def optimizer_state(self) -> dict:
        return self.optimizer.state_dict()

    def scaler_state(self) -> dict | None:
        return self.scaler.state_dict() if self.amp.scaling else None

    def load_framework_state(self, state: dict) -> None:
        self.model.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.amp.scaling and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.swa_model is not None and state.get("swa_state_dict") is not None:
            self.swa_model.module.load_state_dict(state["swa_state_dict"])
            self.swa_model.n_averaged.fill_(state["swa_n"])

    def evaluate_model(self, model: torch.nn.Module) -> dict:
        return evaluate(model, self.test_loader, self.world_size)

    def recompute_bn(self, loader: torch.utils.data.DataLoader, model: torch.nn.Module) -> None:
        with channels_last_on_cpu(model):
            dist.update_bn(loader, model, self.world_size, self.device)  # batches to this device

    def has_batch_norm(self, model: torch.nn.Module) -> bool:
        return has_batch_norm(model)

    def to_host(self, tensors: list[torch.Tensor]) -> np.ndarray:
        return to_host(tensors)
