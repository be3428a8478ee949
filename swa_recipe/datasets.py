"""The official python archives of CIFAR-10 and CIFAR-100: where each keeps what (one
description per dataset; ``cifar.py`` reads any of them the same way)."""

from __future__ import annotations

from .datacheck import Layout

DATASETS = {
    "CIFAR10": Layout(
        name="CIFAR-10", archive="cifar-10-python.tar.gz", folder="cifar-10-batches-py",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",), meta_member="batches.meta", label_key=b"labels",
        num_classes=10, train_size=50000, test_size=10000),
    "CIFAR100": Layout(
        name="CIFAR-100", archive="cifar-100-python.tar.gz", folder="cifar-100-python",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        train_files=("train",), test_files=("test",), meta_member="meta",
        label_key=b"fine_labels",  # the 100 classes; ``coarse_labels`` are the 20 superclasses
        num_classes=100, train_size=50000, test_size=10000),
}
CIFAR10 = DATASETS["CIFAR10"]
