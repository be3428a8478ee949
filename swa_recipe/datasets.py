"""The official python archives of CIFAR-10 and CIFAR-100: where each keeps what (one
description per dataset; ``cifar.py`` reads any of them the same way)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    """One dataset's archive: file names, members, the label key, sizes and class count."""

    title: str                     # for messages: "CIFAR-10"
    archive: str                   # the official download's file name
    folder: str                    # the folder the archive extracts to
    url: str
    md5: str                       # of the official archive
    train_members: tuple[str, ...]
    test_members: tuple[str, ...]
    meta_member: str               # class names (not needed for training)
    label_key: bytes               # key of the labels in each member's pickled dict
    train_count: int
    test_count: int
    classes: int


DATASETS = {
    "CIFAR10": Layout(
        title="CIFAR-10", archive="cifar-10-python.tar.gz", folder="cifar-10-batches-py",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        train_members=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_members=("test_batch",), meta_member="batches.meta", label_key=b"labels",
        train_count=50000, test_count=10000, classes=10),
    "CIFAR100": Layout(
        title="CIFAR-100", archive="cifar-100-python.tar.gz", folder="cifar-100-python",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        train_members=("train",), test_members=("test",), meta_member="meta",
        label_key=b"fine_labels",  # the 100 classes; ``coarse_labels`` are the 20 superclasses
        train_count=50000, test_count=10000, classes=100),
}
CIFAR10 = DATASETS["CIFAR10"]
