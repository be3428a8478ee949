"""Checks that a CIFAR batch file holds what the official python layout promises.

A batch that is read at all must give exactly the images and labels it claims: numpy would
otherwise cast silently (float images to zeros, int16 pixels wrapped, float labels truncated).
Everything a dataset differs in (its name, label key, number of classes, split sizes) is a
parameter, so that CIFAR-10 and CIFAR-100 share these checks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from swa_recipe.data.safe_pickle import short

IMAGE_BYTES = 3 * 32 * 32
MAX_MEMBERS = 1000  # the official archives hold 8 (CIFAR-10) and 5 (CIFAR-100) members
PICKLE_OVERHEAD = 256  # bytes per image a batch pickle may add (file names, framing)


class DataError(RuntimeError):
    """The dataset is missing, partial, corrupt or unexpected; the message says what to do."""


@dataclass(frozen=True)
class Layout:
    """What one dataset's official python archive holds."""

    name: str  # as the user reads it: "CIFAR-10"
    archive: str  # cifar-10-python.tar.gz
    folder: str  # cifar-10-batches-py
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: bytes  # b"labels" (CIFAR-100: b"fine_labels")
    num_classes: int
    train_size: int
    test_size: int
    url: str = ""  # the official download
    md5: str = ""  # of the official archive
    meta_member: str = ""  # class names (not needed for training)
    class_names: tuple[str, ...] = ()  # the meta member's names, in label order

    def max_file_bytes(self) -> int:
        """A bound on one batch file's size: all images of the larger split in one file."""
        return max(self.train_size, self.test_size) * (IMAGE_BYTES + PICKLE_OVERHEAD)


def check_member_size(size: int, name: str, origin, layout: Layout) -> None:
    """Refuse before reading a member or file bigger than any official one could be."""
    if size > layout.max_file_bytes():
        raise DataError(f"{name} in {origin} claims {size} bytes, more than a {layout.name} "
                        f"batch can hold; the dataset is corrupt or hostile, replace it")


def check_batch(batch, name: str, origin, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """(images N x 3072 uint8, labels N int64) of one unpickled batch, or a ``DataError``."""
    if not isinstance(batch, dict) or b"data" not in batch or layout.label_key not in batch:
        raise DataError(f"{name} in {origin} has no data/{layout.label_key.decode()}; it is "
                        f"not a {layout.name} batch")
    data, labels = batch[b"data"], batch[layout.label_key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        kind = data.dtype if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{name} in {origin} holds {kind} images, not uint8 pixels; the "
                        f"dataset is corrupt, replace it")
    labels = _labels(labels, name, origin, layout)
    if data.ndim != 2 or data.shape[1] != IMAGE_BYTES or len(data) != len(labels):
        raise DataError(f"{name} holds data of shape {short(data.shape)} and {len(labels)} "
                        f"labels, not N x {IMAGE_BYTES} images with N labels; the dataset is "
                        f"corrupt")
    return data, labels


def _labels(labels, name: str, origin, layout: Layout) -> np.ndarray:
    """Integer labels in [0, num_classes): a list of ints or an integer array."""
    integer_array = (isinstance(labels, np.ndarray) and labels.ndim == 1
                     and labels.dtype.kind in "iu")
    if not integer_array and not (isinstance(labels, list)
                                  and all(type(v) is int for v in labels)):
        raise DataError(f"{name} in {origin} holds labels of type {type(labels).__name__}, "
                        f"not a list of integers; the dataset is corrupt, replace it")
    low, high = (int(min(labels)), int(max(labels))) if len(labels) else (0, 0)
    if low < 0 or high >= layout.num_classes:
        bad = low if low < 0 else high
        raise DataError(f"{name} in {origin} holds label {short(bad)}, outside 0.."
                        f"{layout.num_classes - 1} of {layout.name}; the dataset is corrupt")
    return np.asarray(labels, dtype=np.int64)


def check_split_size(n: int, split: str, origin, layout: Layout) -> None:
    """A split is never empty, and never larger than the official one (duplicated batches)."""
    expected = layout.train_size if split == "train" else layout.test_size
    if n == 0:
        raise DataError(f"{origin} holds no {split} images; it is not a complete {layout.name} "
                        f"dataset")
    if n > expected:
        raise DataError(f"{origin} holds {n} {split} images, more than the {expected} of "
                        f"{layout.name}; the dataset is corrupt, replace it")

