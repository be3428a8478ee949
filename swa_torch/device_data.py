"""``Data.on_device``: the images held on the training device, each batch built there.

The host loader augments and normalises every image in numpy and copies a float32 batch to the
device each step; on a GPU that copy and the loader's workers become the bottleneck long
before the model does. Here both splits sit on the device as uint8 (N x 3 x 32 x 32) and a
batch is gathered by index: the crop, its zero padding and the flip are one index gather and a
mask, computed from the very ``augment_params`` arrays of ``swa_recipe.data.cifar`` (copied
once per epoch), and normalisation repeats ``cifar.normalize``'s float32 operations in its
order. The batches are therefore byte-identical to the host loader's (tests/test_fast_path.py),
and :class:`DeviceLoader` offers the host loader's interface (``batch_sampler.set_epoch``,
``batch_sampler.batches``), so ``swa_recipe.loop`` trains, evaluates and runs ``update_bn``
with it unchanged, resumed mid-epoch included.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from swa_recipe.data.cifar import PAD, EpochBatches, Split, augment_params


def training_device(device: str) -> torch.device:
    """"gpu" or "cpu" (``Global.device`` resolved) as the device the trainer put the model on:
    the current CUDA device, which ``trainer.torch_device`` set to this rank's GPU."""
    if device == "gpu":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def crop_and_flip(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor
                  ) -> torch.Tensor:
    """``cifar.augment`` of a uint8 batch (B x C x H x W) as one index gather: output pixel
    (r, c) reads padded row ``top + r`` and column ``left + c`` (``left + W - 1 - c`` when
    flipped), that is source pixel (row - PAD, column - PAD), and is 0 where that falls in
    the padding."""
    b, c, h, w = images.shape
    rows = offsets[:, :1] + torch.arange(h, device=images.device) - PAD
    steps = torch.arange(w, device=images.device)
    cols = offsets[:, 1:] + torch.where(flips[:, None], w - 1 - steps, steps) - PAD
    inside = (((rows >= 0) & (rows < h))[:, :, None]
              & ((cols >= 0) & (cols < w))[:, None, :])
    source = rows.clamp(0, h - 1)[:, :, None] * w + cols.clamp(0, w - 1)[:, None, :]
    pixels = images.reshape(b, c, h * w).gather(2, source.reshape(b, 1, h * w).expand(b, c, -1))
    return pixels.reshape(b, c, h, w) * inside[:, None]


class Normalizer:
    """``cifar.normalize`` in torch: ``(x / 255 - mean) / std`` in float32, in that order.
    Every operand is a tensor on the batch's device: CUDA divides by a host scalar through its
    reciprocal (one bit off), by a device tensor exactly, as numpy does."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, device: torch.device):
        self.mean = torch.from_numpy(np.asarray(mean, np.float32)).to(device)
        self.std = torch.from_numpy(np.asarray(std, np.float32)).to(device)
        self.full_scale = torch.full((), 255.0, dtype=torch.float32, device=device)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return (images.to(torch.float32) / self.full_scale - self.mean) / self.std


class DeviceLoader:
    """A split on ``device`` that yields this rank's ``(x, y)`` batches of
    ``batch_sampler.batches`` (an ``EpochBatches``; ``swa_torch.data.BatchSampler``, the host
    loader's), augmented when ``train``: the host ``DataLoader``'s batches, built on the
    device. Per epoch, the shards' indices and the augmentation draws go to the device in one
    copy each; per step only kernels run."""

    def __init__(self, split: Split, train: bool, batch_sampler: torch.utils.data.Sampler,
                 normalizer: Normalizer, device: torch.device):
        self.device, self.train, self.normalize = device, train, normalizer
        self.images = torch.from_numpy(np.ascontiguousarray(split.images)).to(device)
        self.labels = torch.from_numpy(split.labels.astype(np.int64)).to(device)
        self.batch_sampler = batch_sampler
        self._epoch: int | None = None
        self._shards: list[torch.Tensor] = []
        self._params: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def batches(self) -> EpochBatches:
        return self.batch_sampler.batches

    def __len__(self) -> int:
        return len(self.batches)

    def _prepare(self) -> None:
        """The current epoch's shard indices (one device tensor per global batch) and, for
        training, its crop offsets and flips on the device; kept until the epoch changes."""
        batches = self.batches
        if self._epoch == batches.epoch:
            return
        shards = [batches.shard(it) for it in range(len(batches))]
        flat = torch.from_numpy(np.asarray([i for s in shards for i in s], np.int64))
        self._shards = list(torch.split(flat.to(self.device), [len(s) for s in shards]))
        if self.train:
            offsets, flips = augment_params(batches.n, batches.seed, batches.epoch)
            self._params = (torch.from_numpy(offsets.astype(np.int64)).to(self.device),
                            torch.from_numpy(flips).to(self.device))
        self._epoch = batches.epoch

    def shard_indices(self, it: int) -> torch.Tensor:
        """This rank's sample indices of global batch ``it`` of the current epoch, on the
        device (``EpochBatches.shard``): what the batch and its dropout masks are drawn from."""
        self._prepare()
        return self._shards[it]

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``indices`` (device int64), augmented when training, normalised; labels."""
        images = self.images[indices]
        if self.train:
            offsets, flips = self._params
            images = crop_and_flip(images, offsets[indices], flips[indices])
        return self.normalize(images), self.labels[indices]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """From ``batches.start`` on, as ``EpochBatches`` iterates (a rank's empty shard of
        a short last batch is skipped)."""
        self._prepare()
        for it in range(self.batches.start, len(self.batches)):
            if len(self._shards[it]):
                yield self.batch(self._shards[it])

