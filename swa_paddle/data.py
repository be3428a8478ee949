"""CIFAR-10/100 loaders for Paddle: ``paddle.io.DataLoader`` over the shared index order."""

from __future__ import annotations

import paddle

from swa_recipe.arch import normalization
from swa_recipe.data.cifar import CIFARDataset, EpochBatches, Split, load_splits
from swa_recipe.device import loader_workers


class CIFAR10(CIFARDataset, paddle.io.Dataset):
    """The shared numpy dataset, typed for ``paddle.io``."""


class BatchSampler(paddle.io.BatchSampler):
    """Yields this rank's ``(epoch, index)`` keys of each global batch (see ``EpochBatches``)."""

    def __init__(self, batches: EpochBatches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.batches.set_epoch(epoch, start)


def make_loader(split: Split, train: bool, cfg: dict, rank: int = 0, world_size: int = 1,
                device: str = "cpu") -> paddle.io.DataLoader:
    """Workers from ``Data.num_workers`` (kept across epochs); on a GPU, Paddle's buffered
    reader copies each batch to the device ahead of the step (it has no ``pin_memory``)."""
    seed, data = cfg["Global"]["seed"], cfg["Data"]
    batches = EpochBatches(len(split.labels), data["batch_size"], seed, shuffle=train,
                           rank=rank, world_size=world_size)
    workers = loader_workers(data["num_workers"], device)
    return paddle.io.DataLoader(CIFAR10(split, train, seed, *normalization(cfg)),
                                batch_sampler=BatchSampler(batches), num_workers=workers,
                                persistent_workers=workers > 0, return_list=True)


def build_loaders(cfg: dict, rank: int = 0, world_size: int = 1, training: bool = True,
                  device: str = "cpu"):
    """(train, test) loaders; subsets are the first N images, as in the lite config."""
    train, test = load_splits(cfg, training)
    return (make_loader(train, True, cfg, rank, world_size, device),
            make_loader(test, False, cfg, rank, world_size, device))
