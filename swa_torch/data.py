"""CIFAR-10/100 loaders for PyTorch: ``torch.utils.data.DataLoader`` over the shared index order."""

from __future__ import annotations

import torch.utils.data

from swa_recipe.arch import normalization
from swa_recipe.data.cifar import CIFARDataset, EpochBatches, Split, load_splits
from swa_recipe.device import loader_workers

from .device_data import DeviceLoader, Normalizer, training_device


class CIFAR10(CIFARDataset, torch.utils.data.Dataset):
    """The shared numpy dataset, typed for ``torch.utils.data``."""


class BatchSampler(torch.utils.data.Sampler):
    """Yields this rank's ``(epoch, index)`` keys of each global batch (see ``EpochBatches``)."""

    def __init__(self, batches: EpochBatches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.batches.set_epoch(epoch, start)


def batch_sampler(split: Split, train: bool, cfg: dict, rank: int = 0, world_size: int = 1
                  ) -> BatchSampler:
    """This rank's batches of ``split``: shuffled for training, in order for testing."""
    batches = EpochBatches(len(split.labels), cfg["Data"]["batch_size"], cfg["Global"]["seed"],
                           shuffle=train, rank=rank, world_size=world_size)
    return BatchSampler(batches)


def make_loader(split: Split, train: bool, cfg: dict, rank: int = 0, world_size: int = 1,
                device: str = "cpu") -> torch.utils.data.DataLoader:
    """Workers from ``Data.num_workers`` (kept across epochs); on a GPU, batches in pinned
    memory so that the trainer's ``non_blocking`` copies overlap the step."""
    seed, data = cfg["Global"]["seed"], cfg["Data"]
    workers = loader_workers(data["num_workers"], device)
    return torch.utils.data.DataLoader(CIFAR10(split, train, seed, *normalization(cfg)),
                                       batch_sampler=batch_sampler(split, train, cfg, rank,
                                                                   world_size),
                                       num_workers=workers, persistent_workers=workers > 0,
                                       pin_memory=device == "gpu")


def make_device_loader(split: Split, train: bool, cfg: dict, rank: int = 0,
                       world_size: int = 1, device: str = "cpu") -> DeviceLoader:
    """``make_loader``'s batches built on the training device (``Data.on_device``)."""
    where = training_device(device)
    return DeviceLoader(split, train, batch_sampler(split, train, cfg, rank, world_size),
                        Normalizer(*normalization(cfg), where), where)


def build_loaders(cfg: dict, rank: int = 0, world_size: int = 1, training: bool = True,
                  device: str = "cpu"):
    """(train, test) loaders; subsets are the first N images, as in the lite config. With
    ``Data.on_device``, both splits live on the device (``swa_torch.device_data``)."""
    train, test = load_splits(cfg, training)
    make = make_device_loader if cfg["Data"]["on_device"] else make_loader
    return (make(train, True, cfg, rank, world_size, device),
            make(test, False, cfg, rank, world_size, device))
