"""Small samples of CIFAR-10 made from the archive: lite data for test_tipc/, PNGs for test_images/.

Nothing is downloaded: both read the archive the user names.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile

import numpy as np

from swa_recipe.checkpoint import atomic_save
from swa_recipe.data.cifar import FOLDER_NAME, TEST_FILES, TRAIN_FILES, Split, load_cifar10, subset
from swa_recipe.data.datasets import CIFAR10_CLASSES

LABELS_FILE = "labels.txt"


def _batch(split: Split, label: str) -> bytes:
    """One batch file of the official layout (byte keys, N x 3072 uint8 rows)."""
    return pickle.dumps({b"batch_label": label.encode(), b"labels": split.labels.tolist(),
                         b"data": split.images.reshape(len(split.labels), -1)}, protocol=2)


def _chunks(split: Split, parts: int) -> list[Split]:
    bounds = np.linspace(0, len(split.labels), parts + 1).astype(int)
    return [Split(split.images[a:b], split.labels[a:b])
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def write_lite_archive(data_path: str, dst: str, n_train: int, n_test: int) -> None:
    """The first ``n_train`` / ``n_test`` images of ``data_path`` as a ``cifar-10-python.tar.gz``
    that every tool of this project reads like the full one."""
    train, test = load_cifar10(data_path, None)
    train, test = subset(train, n_train), subset(test, n_test)
    parts = _chunks(train, len(TRAIN_FILES))
    files = {name: _batch(part, f"training batch {i + 1} of {len(TRAIN_FILES)}")
             for i, (name, part) in enumerate(zip(TRAIN_FILES, parts, strict=True))}
    files[TEST_FILES[0]] = _batch(test, "testing batch 1 of 1")

    def write(path: str) -> None:
        with tarfile.open(path, "w:gz") as tar:
            for name, raw in files.items():
                info = tarfile.TarInfo(f"{FOLDER_NAME}/{name}")
                info.size = len(raw)
                tar.addfile(info, io.BytesIO(raw))

    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    atomic_save(write, dst)


def write_test_pngs(data_path: str, out_dir: str, count: int) -> list[str]:
    """The first ``count`` test images as ``NNNN_class.png`` and ``labels.txt`` (file, label)."""
    from PIL import Image

    _, test = load_cifar10(data_path, None)
    test = subset(test, count)
    names = CIFAR10_CLASSES
    os.makedirs(out_dir, exist_ok=True)
    files = []
    for i, (image, label) in enumerate(zip(test.images, test.labels, strict=True)):
        files.append(f"{i:04d}_{names[label]}.png")
        Image.fromarray(image.transpose(1, 2, 0)).save(os.path.join(out_dir, files[-1]))
    with open(os.path.join(out_dir, LABELS_FILE), "w", encoding="utf-8") as fh:
        fh.writelines(f"{f} {label}\n" for f, label in zip(files, test.labels, strict=True))
    return files
