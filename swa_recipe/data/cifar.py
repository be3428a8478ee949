"""CIFAR-10 and CIFAR-100 from the official python archives (``datasets.DATASETS`` says where
each keeps what), and the seeded numpy augmentation both twins share.

Everything random here is a pure function of ``(seed, epoch, sample index)``: the shuffled order,
the crop offsets and the flips. Any number of loader workers, in either framework, therefore
produces byte-identical batches.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from swa_recipe.arch import IMAGENET_MEAN, IMAGENET_STD
from swa_recipe.data import jpeg_pack, regular, safe_pickle
from swa_recipe.data.datacheck import (
    MAX_MEMBERS,
    DataError,
    Layout,
    check_batch,
    check_member_size,
    check_split_size,
)
from swa_recipe.data.datasets import CIFAR10, DATASETS
from swa_recipe.data.safe_pickle import short
from swa_recipe.runtime import user_home

CIFAR10_MD5 = CIFAR10.md5
ARCHIVE_NAME, FOLDER_NAME = CIFAR10.archive, CIFAR10.folder
TRAIN_FILES, TEST_FILES = CIFAR10.train_files, CIFAR10.test_files
# The original repo's VGG normalisation, the default (``arch.normalization`` per model).
MEAN, STD = IMAGENET_MEAN, IMAGENET_STD
PAD = 4


@dataclass
class Split:
    images: np.ndarray  # uint8, N x 3 x 32 x 32
    labels: np.ndarray  # int64, N


def default_data_path(layout: Layout = CIFAR10) -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(user_home(), ".cache")
    return Path(cache) / "swa_paddle" / layout.archive


def file_md5(path: Path) -> str:
    with open(path, "rb") as fh:
        return stream_md5(fh)


def stream_md5(fh) -> str:
    """MD5 of an open file from its current position to its end."""
    digest = hashlib.md5()
    for chunk in iter(lambda: fh.read(1 << 20), b""):
        digest.update(chunk)
    return digest.hexdigest()


NOT_REGULAR = ("is not a regular file (a FIFO, a device or a socket: reading it would hang or "
               "never end); pass --data_path pointing at {archive} or its extracted {folder} "
               "folder")


def check_regular(path: Path, layout: Layout = CIFAR10) -> None:
    """Refuse a path that exists but is neither a folder nor a regular file, before anything
    opens it: ``open`` of a FIFO blocks until a writer comes, a device never ends."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # missing: the caller says what it expected there
    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
        raise DataError(f"{short(str(path))} " + NOT_REGULAR.format(archive=layout.archive,
                                                                    folder=layout.folder))


def open_regular(path: Path, layout: Layout = CIFAR10):
    """``regular.open_regular`` with this module's one-line errors."""
    try:
        return regular.open_regular(path)
    except regular.NotRegularFile:
        raise DataError(f"{short(str(path))} " + NOT_REGULAR.format(
            archive=layout.archive, folder=layout.folder)) from None
    except OSError as exc:
        raise DataError(f"cannot read {short(str(path))} ({exc.strerror or exc})") from None


def download(url: str, dest: Path, md5: str | None, layout: Layout = CIFAR10) -> None:
    """Fetch ``url`` to ``dest`` through a private temporary file beside it, renamed once
    complete and checked: a broken download is never used, and a symlink planted at ``dest``
    or at a ``.part`` name is replaced, never written through."""
    from tqdm import tqdm

    part = _download_file(dest, layout)
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(part, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}") as bar:
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
                out.flush()
                os.fsync(out.fileno())
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise DataError(f"could not download {layout.name} from {url} ({exc}); download "
                        f"{layout.archive} by hand and pass --data_path") from None
    if md5 and file_md5(part) != md5:
        part.unlink(missing_ok=True)
        raise DataError(f"downloaded {url} but its MD5 is not {md5}; retry, or pass a "
                        f"local copy with --data_path")
    os.replace(part, dest)


def _download_file(dest: Path, layout: Layout = CIFAR10) -> Path:
    """A new, empty file of this process beside ``dest`` (``mkstemp``: created exclusively,
    so no planted file or symlink is reused); a cache folder that cannot be created or written
    (a read-only HOME) is one error line."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f"{dest.name}.", suffix=".part", dir=dest.parent)
        mask = os.umask(0)
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)  # as open() would: mkstemp makes it private
    except OSError as exc:
        raise DataError(f"cannot write the download cache {dest.parent} "
                        f"({exc.strerror or exc}); pass --data_path pointing at "
                        f"{layout.archive}, or set XDG_CACHE_HOME to a writable folder") from None
    os.close(fd)
    return Path(name)


def expected_md5(data_path: str | None, md5: str | None, layout: Layout = CIFAR10
                 ) -> str | None:
    """``auto``: the official MD5 for the cached download, none for a file the user points at
    (gzip's CRC and the pickle checks still catch a damaged one)."""
    if md5 == "auto":
        return layout.md5 if data_path is None else None
    return md5


def locate(data_path: str | None, md5: str | None = "auto", layout: Layout = CIFAR10) -> Path:
    """Return the archive or extracted folder to read; download the archive if none is given.
    A FIFO, a device or a socket is refused here, before it is opened."""
    if data_path is None:
        path = default_data_path(layout)
        check_regular(path, layout)
        if not path.exists():
            download(layout.url, path, expected_md5(None, md5, layout), layout)
        return path
    path = Path(data_path).expanduser()
    check_regular(path, layout)
    if path.is_dir():
        check_regular(path / layout.archive, layout)
        if (path / layout.folder).is_dir():
            return path / layout.folder
        if (path / layout.archive).is_file():
            return path / layout.archive
        return path
    if not path.exists():
        raise DataError(f"{layout.name} not found at {path}; pass --data_path pointing at "
                        f"{layout.archive} or its extracted {layout.folder} folder")
    return path


def _unpickle(raw: bytes, name: str, origin: Path) -> dict:
    """Through the project's restricted unpickler: a batch file never runs code."""
    try:
        return safe_pickle.loads(raw, safe_pickle.CIFAR_GLOBALS, encoding="bytes")
    except safe_pickle.UnsafePickle as exc:
        raise DataError(f"{name} in {origin}: refusing to read: {exc}") from None
    except Exception:
        raise DataError(f"{name} in {origin} is not a readable CIFAR batch (truncated or "
                        f"corrupt); replace the dataset") from None


def _read_folder(folder: Path, names: tuple[str, ...], layout: Layout = CIFAR10) -> list[dict]:
    missing = [n for n in names if not (folder / n).exists()]
    if missing:
        raise DataError(f"{folder} lacks {', '.join(missing)}; re-extract {layout.archive} "
                        f"there or pass the archive itself with --data_path")
    return [_unpickle(_read_batch_file(folder / n, layout), n, folder) for n in names]


def _read_batch_file(path: Path, layout: Layout = CIFAR10) -> bytes:
    """One extracted batch: a regular file (``open_regular``) no larger than any batch."""
    with open_regular(path, layout) as fh:
        check_member_size(os.fstat(fh.fileno()).st_size, path.name, path.parent, layout)
        return fh.read()


def _wanted_member(member: tarfile.TarInfo, index: int, names: tuple[str, ...], found: dict,
                   archive: Path, layout: Layout = CIFAR10) -> str | None:
    """The batch name ``member`` holds, after refusing what a genuine archive never has: a
    second member of one name (it would silently replace the first), a link or device in a
    batch's place, a member larger than any batch, more members than a dataset has."""
    if index >= MAX_MEMBERS:
        raise DataError(f"{archive} holds more than {MAX_MEMBERS} members; it is not a "
                        f"{layout.archive}")
    base = os.path.basename(member.name)
    if base not in names:
        return None
    if not member.isfile():
        raise DataError(f"{archive}: {short(member.name)} is a link or special file, not a "
                        f"batch; the archive is corrupt or hostile, replace it")
    if base in found:
        raise DataError(f"{archive} holds {base} twice; the archive is corrupt or was "
                        f"tampered with, replace it")
    check_member_size(member.size, short(member.name), archive, layout)
    return base


def _read_archive(archive: Path, names: tuple[str, ...], md5: str | None,
                  layout: Layout = CIFAR10) -> list[dict]:
    with open_regular(archive, layout) as fh:
        _check_md5(fh, archive, md5)
        return _read_members(fh, archive, names, layout)


def _check_md5(fh, path: Path, md5: str | None) -> None:
    """The whole open file against ``md5`` (none: no check), then back to its start."""
    if md5 and (found := stream_md5(fh)) != md5:
        raise DataError(f"{path} has MD5 {found}, expected {md5}; replace the file, or "
                        f"for a trusted local copy pass -o Data.md5=null")
    fh.seek(0)


def _read_pack(path: Path, md5: str | None, layout: Layout) -> tuple[Split, Split]:
    """CIFAR-10 from its JPEG pack (``jpeg_pack``), opened and MD5-checked as an archive is."""
    jpeg_pack.check_dataset(path, layout)
    with open_regular(path, layout) as fh:
        _check_md5(fh, path, md5)
        train, test = jpeg_pack.read_pack(fh, path, layout)
    return Split(*train), Split(*test)


def _read_members(fh, archive: Path, names: tuple[str, ...], layout: Layout = CIFAR10
                  ) -> list[dict]:
    """The batches ``names`` of the open gzip'd tar ``fh`` (``archive`` names it)."""
    raw = {}
    try:
        with tarfile.open(fileobj=fh, mode="r:gz") as tar:
            for index, member in enumerate(tar):
                if base := _wanted_member(member, index, names, raw, archive, layout):
                    raw[base] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(f"{archive} is truncated or corrupt ({exc.__class__.__name__}); "
                        f"delete it and download {layout.archive} again") from None
    missing = [n for n in names if n not in raw]
    if missing:
        raise DataError(f"{archive} lacks {', '.join(missing)}; it is not a complete "
                        f"{layout.archive}")
    return [_unpickle(raw[n], n, archive) for n in names]


def _to_split(batches: list[dict], names: tuple[str, ...], origin: Path, split: str,
              layout: Layout = CIFAR10) -> Split:
    images, labels = [], []
    for batch, name in zip(batches, names, strict=True):
        data, label = check_batch(batch, name, origin, layout)
        images.append(data)
        labels.append(label)
    check_split_size(sum(map(len, labels)), split, origin, layout)
    return Split(np.concatenate(images).reshape(-1, 3, 32, 32), np.concatenate(labels))


def load_cifar(layout: Layout, data_path: str | None, md5: str | None = "auto"
               ) -> tuple[Split, Split]:
    """Read (train, test) of ``layout``'s dataset from its official archive, extracted folder
    or (CIFAR-10) JPEG pack."""
    path = locate(data_path, md5, layout)
    if jpeg_pack.is_pack(path):
        return _read_pack(path, expected_md5(data_path, md5, layout), layout)
    train_names, test_names = layout.train_files, layout.test_files
    names = train_names + test_names
    if path.is_dir():
        batches = _read_folder(path, names, layout)
    else:
        batches = _read_archive(path, names, expected_md5(data_path, md5, layout), layout)
    n = len(train_names)
    return (_to_split(batches[:n], train_names, path, "train", layout),
            _to_split(batches[n:], test_names, path, "test", layout))


def load_cifar10(data_path: str | None, md5: str | None = "auto") -> tuple[Split, Split]:
    """CIFAR-10's (train, test)."""
    return load_cifar(CIFAR10, data_path, md5)


def subset(split: Split, n: int | None) -> Split:
    if n is None or n >= len(split.labels):
        return split
    return Split(split.images[:n], split.labels[:n])


def load_splits(cfg: dict, training: bool = True) -> tuple[Split, Split]:
    """(train, test) of a config: its archive and its subsets (the first N images); for
    training, a batch that fits the training set actually read."""
    data = cfg["Data"]
    train, test = load_cifar(DATASETS[data["dataset"]], data["data_path"], data["md5"])
    train, test = subset(train, data["train_subset"]), subset(test, data["test_subset"])
    if training and data["batch_size"] > len(train.labels):
        raise DataError(f"Data.batch_size ({data['batch_size']}) is larger than the training "
                        f"set ({len(train.labels)} images); lower it")
    return train, test


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Sample order of one epoch: a permutation seeded by (seed, epoch), or 0..n-1."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([seed, epoch, 0]).permutation(n)


def batch_indices(n: int, batch_size: int, seed: int, epoch: int, shuffle: bool) -> list[list[int]]:
    """The global batches of one epoch; the last one is short when n % batch_size != 0."""
    order = epoch_order(n, seed, epoch, shuffle)
    return [order[i:i + batch_size].tolist() for i in range(0, n, batch_size)]


def augment_params(n: int, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """Crop offsets (n x 2, in [0, 2*PAD]) and flips (n) for every sample index of one epoch."""
    rng = np.random.default_rng([seed, epoch, 1])
    offsets = rng.integers(0, 2 * PAD + 1, size=(n, 2))
    flips = rng.random(n) < 0.5
    return offsets, flips


def normalize(image: np.ndarray, mean: np.ndarray = MEAN, std: np.ndarray = STD) -> np.ndarray:
    return (image.astype(np.float32) / np.float32(255.0) - mean) / std


def _shifted(size: int, shift: int) -> tuple[slice, slice]:
    """Where a 1-D window of ``size`` shifted by ``shift`` pixels reads from and writes to."""
    return slice(max(shift, 0), size + min(shift, 0)), slice(max(-shift, 0), size - max(shift, 0))


def augment(image: np.ndarray, offset: np.ndarray, flip: bool) -> np.ndarray:
    """4-pixel zero padding, a crop of the image's size at ``offset``, an optional horizontal
    flip (uint8 CHW). The crop of the padded image is written straight into zeros: the same
    bytes as ``np.pad`` and a slice, which cost most of the loader's time per image."""
    _, height, width = image.shape
    rows_from, rows_to = _shifted(height, int(offset[0]) - PAD)
    cols_from, cols_to = _shifted(width, int(offset[1]) - PAD)
    crop = np.zeros_like(image)
    crop[:, rows_to, cols_to] = image[:, rows_from, cols_from]
    return crop[:, :, ::-1] if flip else crop


class CIFARDataset:
    """Map-style dataset over ``(epoch, index)`` keys; the twins wrap it in their loaders.

    The epoch travels with every key, so worker processes need no shared state to augment
    exactly as the main process would.
    """

    def __init__(self, split: Split, train: bool, seed: int, mean: np.ndarray = MEAN,
                 std: np.ndarray = STD):
        self.split, self.train, self.seed = split, train, seed
        self.mean, self.std = mean, std
        self._params_epoch: int | None = None
        self._params: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.split.labels)

    def _epoch_params(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        if self._params_epoch != epoch:
            self._params = augment_params(len(self), self.seed, epoch)
            self._params_epoch = epoch
        return self._params

    def __getitem__(self, key: tuple[int, int]) -> tuple[np.ndarray, np.int64]:
        epoch, index = key
        image = self.split.images[index]
        if self.train:
            offsets, flips = self._epoch_params(epoch)
            image = augment(image, offsets[index], bool(flips[index]))
        return normalize(image, self.mean, self.std), self.split.labels[index]


class EpochBatches:
    """Global batches of ``(epoch, index)`` keys for the current epoch; this rank's shard of each.

    ``set_epoch`` picks the epoch, as ``DistributedSampler.set_epoch`` does.
    """

    def __init__(self, n: int, batch_size: int, seed: int, shuffle: bool,
                 rank: int = 0, world_size: int = 1):
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch = self.start = 0
        self._cached_epoch: int | None = None
        self._cached: list[list[int]] = []

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate over ``epoch``'s batches from batch ``start`` on (a run resumed mid-epoch)."""
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def global_size(self, it: int) -> int:
        """Images in global batch ``it`` (all ranks together): the last one may be short."""
        return min(self.batch_size, self.n - it * self.batch_size)

    def shard(self, it: int) -> list[int]:
        """This rank's sample indices of global batch ``it`` of the current epoch: rank r takes
        every world_size-th image of the batch, from the r-th on, so a global batch of B images
        gives each rank B / world_size (the short last batch: sizes differ by at most one)."""
        if self._cached_epoch != self.epoch:
            self._cached = batch_indices(self.n, self.batch_size, self.seed, self.epoch,
                                         self.shuffle)
            self._cached_epoch = self.epoch
        return self._cached[it][self.rank::self.world_size]

    def __iter__(self):
        """This rank's ``(epoch, index)`` keys of each global batch from ``start`` on. Every
        image of the epoch goes to exactly one rank."""
        for it in range(self.start, len(self)):
            shard = self.shard(it)
            if shard:
                yield [(self.epoch, i) for i in shard]
