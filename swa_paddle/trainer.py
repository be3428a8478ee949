"""The Paddle side of one SGD/SWA training run: ``swa_recipe.loop.Trainer``'s framework calls."""

from __future__ import annotations

import contextlib

import numpy as np
import paddle
import paddle.nn.functional as F

from swa_recipe import loop
from swa_recipe.config import ConfigError
from swa_recipe.device import resolve_device
from swa_recipe.logs import IterMeter, note, summarize
from swa_recipe.precision import Amp, amp_settings, device_refusal

from . import checkpoint, dist, static_eval, visual
from .averaging import build_average
from .data import build_loaders
from .models import build_model, set_dropout_masks


def choose_device(device: str, option: str = "Global.device") -> str:
    """``device`` as "gpu" or "cpu" by the one policy of ``swa_recipe.device`` (training,
    evaluation, predict, export and Paddle Inference): ``auto`` is a GPU only when one is
    visible, not merely a CUDA build; a note says when ``auto`` stays on the CPU."""
    cuda = paddle.is_compiled_with_cuda()
    device, message = resolve_device(device, "paddle", cuda,
                                     paddle.device.cuda.device_count() if cuda else 0, option)
    if message:
        note(message)
    return device


def set_device(device: str) -> str:
    """``Global.device`` chosen (:func:`choose_device`) and made Paddle's current device."""
    device = choose_device(device)
    paddle.set_device(device)  # under a launcher, "gpu" is this rank's GPU
    return device


def to_device(array: np.ndarray, device: str) -> paddle.Tensor:
    """A host array on the current device; to a GPU through pinned memory, without waiting."""
    if device != "gpu":
        return paddle.to_tensor(array)
    return paddle.to_tensor(array, place=paddle.CUDAPinnedPlace()).cuda(blocking=False)


def to_host(tensors: list[paddle.Tensor]) -> np.ndarray:
    """Device tensors as one float64 array: a single transfer, the one wait for the device."""
    return paddle.concat([t.reshape([-1]).astype("float64") for t in tensors]).numpy()


def has_batch_norm(model: paddle.nn.Layer) -> bool:
    return any(isinstance(m, paddle.nn.layer.norm._BatchNormBase) for m in model.sublayers())


@paddle.no_grad()
def evaluate(model: paddle.nn.Layer, loader: paddle.io.DataLoader, world_size: int = 1,
             static: bool = True) -> dict:
    """Mean loss and accuracy (%) over the loader (this rank's shard, summed over ranks). The
    forward is one static program where oneDNN can run it (``static_eval``), else eager;
    ``static=False`` is the eager reference."""
    model.eval()
    loss_sum = paddle.zeros([], dtype="float64")  # read once, at the end
    correct = paddle.zeros([], dtype="int64")
    total = 0
    for x, y in loader:
        logits = static_eval.run(model, x) if static else model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").astype("float64")
        correct += (logits.argmax(axis=1) == y).astype("int64").sum()
        total += int(y.shape[0])
    totals = np.append(to_host([loss_sum, correct]), total)
    return summarize(dist.all_reduce_sum(totals, world_size))


def autocast(amp: Amp) -> contextlib.AbstractContextManager:
    """``paddle.amp.auto_cast`` of the training forward and loss as ``amp`` asks (level O1,
    on a GPU: ``swa_recipe.precision.device_refusal`` refuses it on the CPU, where Paddle
    switches it off); without AMP no context at all, so the float32 step is untouched."""
    if not amp.enabled:
        return contextlib.nullcontext()
    return paddle.amp.auto_cast(enable=True, level=amp.level, dtype=amp.dtype)


def grad_scaler(amp: Amp) -> paddle.amp.GradScaler:
    """PaddleClas's loss scaling for float16 (``AMP.scale_loss``,
    ``AMP.use_dynamic_loss_scaling``); a disabled scaler otherwise, whose ``scale`` returns
    the loss and whose ``step`` is the optimizer's."""
    return paddle.amp.GradScaler(enable=amp.scaling, init_loss_scaling=amp.init_scale,
                                 use_dynamic_loss_scaling=amp.dynamic)


class Trainer(loop.Trainer):
    """Model, SWA average, optimizer and loaders of one run, and the Paddle calls that
    ``swa_recipe.loop.Trainer`` (the epoch and batch loop) asks for."""

    checkpoint, dist, visual = checkpoint, dist, visual
    framework = "paddle"

    def __init__(self, cfg: dict, meter_class: type[IterMeter] = IterMeter):
        super().__init__(cfg, meter_class)
        self.device = set_device(cfg["Global"]["device"])
        self.amp = amp_settings(cfg)
        if (refusal := device_refusal(self.amp, self.framework, self.device)) is not None:
            raise ConfigError(refusal)
        self.rank, self.world_size = dist.init_distributed()
        paddle.seed(cfg["Global"]["seed"])
        self.model = build_model(cfg)
        self.net = dist.wrap(self.model, self.world_size)
        self.train_loader, self.test_loader = build_loaders(cfg, self.rank, self.world_size,
                                                            device=self.device)
        self.batches = self.train_loader.batch_sampler.batches
        self.iters = len(self.batches)
        self.swa_model = build_average(self.model, cfg["SWA"]) if cfg["SWA"]["swa"] else None
        opt = cfg["Optimizer"]
        self.optimizer = paddle.optimizer.Momentum(
            learning_rate=opt["lr_init"], momentum=opt["momentum"],
            parameters=self.model.parameters(), weight_decay=opt["wd"])
        self.scaler = grad_scaler(self.amp)

    def set_lr(self, lr: float) -> None:
        self.optimizer.set_lr(lr)

    def step(self, x: paddle.Tensor, y: paddle.Tensor, masks: list[np.ndarray] | None,
             loss_scale: float) -> tuple[paddle.Tensor, paddle.Tensor, int]:
        set_dropout_masks(self.model, masks and [to_device(m, self.device) for m in masks])
        with autocast(self.amp):
            logits = self.net(x)
            loss_sum = F.cross_entropy(logits, y, reduction="sum")
        loss = loss_sum * loss_scale  # the global batch's mean once DataParallel averages
        self.optimizer.clear_grad()
        self.scaler.scale(loss).backward()  # the loss itself without float16
        self.scaler.step(self.optimizer)  # unscales; skips a step whose gradients overflowed
        self.scaler.update()
        set_dropout_masks(self.model, None)
        correct = (logits.argmax(axis=1) == y).astype("int64").sum()
        return loss_sum.detach(), correct, int(y.shape[0])

    def optimizer_state(self) -> dict:
        return checkpoint.optimizer_state(self.optimizer, self.model)

    def scaler_state(self) -> dict | None:
        return self.scaler.state_dict() if self.amp.scaling else None

    def load_framework_state(self, state: dict) -> None:
        self.model.set_state_dict(state["state_dict"])
        checkpoint.load_optimizer_state(self.optimizer, self.model, state["optimizer"])
        if self.amp.scaling and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.swa_model is not None and state.get("swa_state_dict") is not None:
            self.swa_model.module.set_state_dict(state["swa_state_dict"])
            self.swa_model.n_averaged.set_value(paddle.to_tensor(state["swa_n"], dtype="int64"))

    def evaluate_model(self, model: paddle.nn.Layer) -> dict:
        return evaluate(model, self.test_loader, self.world_size)

    def recompute_bn(self, loader: paddle.io.DataLoader, model: paddle.nn.Layer) -> None:
        dist.update_bn(loader, model, self.world_size)  # the loader places batches itself

    def has_batch_norm(self, model: paddle.nn.Layer) -> bool:
        return has_batch_norm(model)

    def to_host(self, tensors: list[paddle.Tensor]) -> np.ndarray:
        return to_host(tensors)
