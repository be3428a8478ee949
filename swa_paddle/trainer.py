"""The Paddle side of one SGD/SWA training run: ``swa_recipe.loop.Trainer``'s framework calls."""

from __future__ import annotations

import numpy as np
import paddle
import paddle.nn.functional as F

from swa_recipe import loop
from swa_recipe.device import resolve_device
from swa_recipe.logs import IterMeter, note, summarize

from . import checkpoint, dist
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
def evaluate(model: paddle.nn.Layer, loader: paddle.io.DataLoader, world_size: int = 1) -> dict:
    """Mean loss and accuracy (%) over the loader (this rank's shard, summed over ranks)."""
    model.eval()
    loss_sum = paddle.zeros([], dtype="float64")  # read once, at the end
    correct = paddle.zeros([], dtype="int64")
    total = 0
    for x, y in loader:
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").astype("float64")
        correct += (logits.argmax(axis=1) == y).astype("int64").sum()
        total += int(y.shape[0])
    totals = np.append(to_host([loss_sum, correct]), total)
    return summarize(dist.all_reduce_sum(totals, world_size))


class Trainer(loop.Trainer):
    """Model, SWA average, optimizer and loaders of one run, and the Paddle calls that
    ``swa_recipe.loop.Trainer`` (the epoch and batch loop) asks for."""

    checkpoint, dist = checkpoint, dist
    framework = "paddle"

    def __init__(self, cfg: dict, meter_class: type[IterMeter] = IterMeter):
        super().__init__(cfg, meter_class)
        self.device = set_device(cfg["Global"]["device"])
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

    def set_lr(self, lr: float) -> None:
        self.optimizer.set_lr(lr)

    def step(self, x: paddle.Tensor, y: paddle.Tensor, masks: list[np.ndarray] | None,
             loss_scale: float) -> tuple[paddle.Tensor, paddle.Tensor, int]:
        set_dropout_masks(self.model, masks and [to_device(m, self.device) for m in masks])
        logits = self.net(x)
        loss_sum = F.cross_entropy(logits, y, reduction="sum")
        loss = loss_sum * loss_scale  # the global batch's mean once DataParallel averages
        self.optimizer.clear_grad()
        loss.backward()
        self.optimizer.step()
        set_dropout_masks(self.model, None)
        correct = (logits.argmax(axis=1) == y).astype("int64").sum()
        return loss_sum.detach(), correct, int(y.shape[0])

    def optimizer_state(self) -> dict:
        return checkpoint.optimizer_state(self.optimizer, self.model)

    def load_framework_state(self, state: dict) -> None:
        self.model.set_state_dict(state["state_dict"])
        checkpoint.load_optimizer_state(self.optimizer, self.model, state["optimizer"])
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
