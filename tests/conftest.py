"""Shared fixtures: small synthetic CIFAR-10 and CIFAR-100 archives in the official python
layouts."""

from __future__ import annotations

import io
import pickle
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from swa_recipe.runtime import tune_cpu_env  # noqa: E402

tune_cpu_env()  # before any test imports paddle: tests run with the settings users get

SHARED_ARCHIVE = ROOT.parent / "shared" / "data" / "cifar-10-python.tar.gz"


def labelled_images(rng: np.random.Generator, n: int, classes: int) -> tuple[list, np.ndarray]:
    """Labels and N x 3072 uint8 images that carry a weak class signal, so tiny models learn."""
    labels = rng.integers(0, classes, n)
    images = rng.integers(0, 256, (n, 3, 32, 32)).astype(np.int16)
    images[:, labels % 3] = 0  # class-dependent channels
    shift = (labels * 200 // classes)[:, None, None, None]
    return labels.tolist(), np.clip(images + shift, 0, 255).astype(np.uint8).reshape(n, -1)


def make_batches(n_train: int = 100, n_test: int = 50, seed: int = 0) -> dict[str, dict]:
    """Official-format CIFAR-10 batches (byte keys)."""
    rng = np.random.default_rng(seed)

    def batch(n: int, label: str) -> dict:
        labels, data = labelled_images(rng, n, 10)
        return {b"batch_label": label.encode(), b"labels": labels, b"data": data,
                b"filenames": [b"img%d.png" % i for i in range(n)]}

    per = n_train // 5
    out = {f"data_batch_{i}": batch(per, f"training batch {i} of 5") for i in range(1, 6)}
    out["test_batch"] = batch(n_test, "testing batch 1 of 1")
    return out


def make_cifar100(n_train: int = 100, n_test: int = 50, seed: int = 0) -> dict[str, dict]:
    """Official-format CIFAR-100 members: ``train`` and ``test`` with fine (100) and coarse (20)
    labels, and ``meta`` with the class names."""
    rng = np.random.default_rng(seed)

    def split(n: int, label: str) -> dict:
        fine, data = labelled_images(rng, n, 100)
        return {b"filenames": [b"img%d.png" % i for i in range(n)], b"batch_label": label.encode(),
                b"fine_labels": fine, b"coarse_labels": [f // 5 for f in fine], b"data": data}

    meta = {b"fine_label_names": [b"class%d" % i for i in range(100)],
            b"coarse_label_names": [b"super%d" % i for i in range(20)]}
    return {"train": split(n_train, "training batch 1 of 1"),
            "test": split(n_test, "testing batch 1 of 1"), "meta": meta}


CIFAR10_FOLDER, CIFAR100_FOLDER = "cifar-10-batches-py", "cifar-100-python"


def write_archive(path: Path, batches: dict[str, dict], folder: str = CIFAR10_FOLDER) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, content in batches.items():
            raw = pickle.dumps(content, protocol=2)
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def write_folder(root: Path, batches: dict[str, dict], name: str = CIFAR10_FOLDER) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for name, content in batches.items():
        (folder / name).write_bytes(pickle.dumps(content, protocol=2))
    return folder


@pytest.fixture(scope="session")
def archive(tmp_path_factory) -> Path:
    """A 100-train / 50-test synthetic ``cifar-10-python.tar.gz``."""
    return write_archive(tmp_path_factory.mktemp("cifar") / "cifar-10-python.tar.gz",
                         make_batches())


@pytest.fixture(scope="session")
def cifar100_archive(tmp_path_factory) -> Path:
    """A 100-train / 50-test synthetic ``cifar-100-python.tar.gz``."""
    return write_archive(tmp_path_factory.mktemp("cifar100") / "cifar-100-python.tar.gz",
                         make_cifar100(), CIFAR100_FOLDER)


@pytest.fixture(scope="session")
def lite_archive(tmp_path_factory) -> Path:
    """Big enough for ``configs/lite.yaml`` (1,000 train, 500 test images)."""
    return write_archive(tmp_path_factory.mktemp("cifar-lite") / "cifar-10-python.tar.gz",
                         make_batches(1000, 500, seed=1))


def tiny_config(archive_path, **sections) -> dict:
    """A validated config for fast tests: VGG16 at 1/16 width on the synthetic archive."""
    from swa_recipe.config import default_config, merge, validate

    base = {"Global": {"epochs": 2, "eval_freq": 1, "save_freq": 1, "log_freq": 1},
            "Arch": {"width": 0.0625, "dropout": 0.0},
            "SWA": {"swa": True, "swa_start": 1},
            "Data": {"data_path": str(archive_path), "batch_size": 32}}
    for section, values in sections.items():
        base.setdefault(section, {}).update(values)
    return validate(merge(default_config(), base, "test"))


def straight_and_resumed(framework: str, archive_path, tmp_path: Path, epochs: int,
                         **sections) -> tuple[dict, dict, dict]:
    """A tiny run of ``epochs`` (``tmp_path/a``) and the same run restarted from its
    ``checkpoint-1`` (``tmp_path/b``): the first run's last table row and both runs' last
    checkpoints, for exact-resume tests."""
    from swa_apps.twins import import_twin
    from swa_recipe.checkpoint import EXTENSIONS
    from swa_recipe.loop import fit

    twin, ext = import_twin(framework), EXTENSIONS[framework]

    def run(out: Path, **global_) -> tuple[dict, dict]:
        cfg = tiny_config(archive_path, **sections, Global={
            "epochs": epochs, "dir": str(out), "framework": framework, **global_})
        row = fit(twin.trainer.Trainer(cfg), cfg)
        return row, twin.checkpoint.load(str(out / f"checkpoint-{epochs}{ext}"))

    row, straight = run(tmp_path / "a")
    _, resumed = run(tmp_path / "b", resume=str(tmp_path / "a" / f"checkpoint-1{ext}"))
    return row, straight, resumed
