"""CIFAR-10 as its original JPEG files in one ``.npz`` (the "JPEG pack"), read without a framework.

Why: the pack is a third of the python archive's size (56 MB against 173 MB), small enough to
travel with a working tree to another machine, and decoding it gives the same pixels as the
archive built from the same JPEGs (``docs/data.md``). Its keys: ``jpeg`` (every file
concatenated, uint8), ``offsets`` (N+1 integers: image i is ``jpeg[offsets[i]:offsets[i+1]]``),
``labels`` (N integers) and ``n_train`` (the first ``n_train`` images are the training split,
the rest the test split).

The file may be hostile, so nothing is trusted before it is checked: the zip members are only the
four arrays, each of a declared size no larger than a pack of the dataset's size can need, with a
plain numeric ``.npy`` header whose shape matches that size, before ``np.load`` (never with
pickles) reads them; offsets, labels and split sizes are checked before any image is decoded; each
image must say it is a 32x32 RGB JPEG before PIL decodes it. Every failure is one ``DataError``
line naming the problem.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from numpy.lib import format as npy_format
from PIL import Image

from swa_recipe.data.datacheck import DataError, Layout, check_split_size
from swa_recipe.data.datasets import CIFAR10
from swa_recipe.numbers import short

SUFFIX = ".npz"
# A 32x32 JPEG of uniform noise at quality 100 takes 4,858 bytes (the pack's largest: 1,124);
# the bound leaves room for markers and bounds both the memory a pack may claim and the work
# one image may cost.
MAX_IMAGE_BYTES = 8192
HEADER_ROOM = 10_000  # numpy's own limit on an .npy header (``max_header_size``)
MAX_ZIP_OVERHEAD = 64 * 1024  # local and central zip headers of the four members
SHAPE = (32, 32)
DECODE_CHUNK = 1000  # images per decoding task
MAX_DECODE_THREADS = 8
PIL_ERRORS = (OSError, SyntaxError, ValueError, NotImplementedError, MemoryError, EOFError,
              struct.error, IndexError, KeyError, Image.DecompressionBombError,
              Image.DecompressionBombWarning)
READ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError,
               MemoryError, NotImplementedError)
REBUILD = "the pack is corrupt or hostile; rebuild it or pass the python archive"
KEYS = ("jpeg", "offsets", "labels", "n_train")

Arrays = tuple[np.ndarray, np.ndarray]  # images N x 3 x 32 x 32 uint8, labels N int64


@dataclass(frozen=True)
class Member:
    """What one ``.npy`` member of a pack may hold: bytes (``jpeg``) or integers, a 1-D array
    or one value, and at most ``max_items`` of them."""

    is_bytes: bool
    ndim: int
    max_items: int

    def accepts(self, dtype: np.dtype, shape: tuple) -> bool:
        kind_ok = dtype == np.uint8 if self.is_bytes else dtype.kind in "iu"
        return kind_ok and len(shape) == self.ndim

    def max_payload(self) -> int:
        return self.max_items * (1 if self.is_bytes else 8)

    def describe(self) -> str:
        if self.ndim == 0:
            return "one integer (shape ())"
        return "a 1-D uint8 array" if self.is_bytes else "a 1-D integer array"


def is_pack(path: Path) -> bool:
    """A regular file named ``*.npz``: the only thing read as a pack (folders and archives keep
    their readers)."""
    return path.name.lower().endswith(SUFFIX) and path.is_file()


def check_dataset(path: Path, layout: Layout) -> None:
    """Only CIFAR-10 has a pack; a CIFAR-100 run pointed at one would read the wrong labels."""
    if layout.archive != CIFAR10.archive:
        raise DataError(f"{short(str(path))} is a {CIFAR10.name} JPEG pack, and {layout.name} has "
                        f"none; pass --data_path pointing at {layout.archive} or its extracted "
                        f"{layout.folder} folder")


def read_pack(fh: BinaryIO, origin: Path, layout: Layout) -> tuple[Arrays, Arrays]:
    """(train, test) of the pack open in ``fh`` (``origin`` names it in messages), each as
    (images N x 3 x 32 x 32 uint8, labels int64), or a ``DataError``."""
    check_dataset(origin, layout)
    size, limit = os.fstat(fh.fileno()).st_size, max_pack_bytes(layout)
    if size > limit:
        raise DataError(f"{origin} is {size} bytes, more than a {layout.name} JPEG pack can be "
                        f"({limit}); {REBUILD}")
    check_members(fh, origin, layout)
    fh.seek(0)
    jpeg, offsets, labels, n_train = load_arrays(fh, origin, layout)
    offsets = check_offsets(offsets, len(labels), len(jpeg), origin)
    labels = check_labels(labels, origin, layout)
    n_train = check_n_train(n_train, len(labels), origin, layout)
    images = decode_all(jpeg, offsets, origin)
    return (images[:n_train], labels[:n_train]), (images[n_train:], labels[n_train:])


def members(layout: Layout) -> dict[str, Member]:
    """The four members of a pack of at most the dataset's size, by zip name."""
    n = layout.train_size + layout.test_size
    return {"jpeg.npy": Member(True, 1, n * MAX_IMAGE_BYTES),
            "offsets.npy": Member(False, 1, n + 1), "labels.npy": Member(False, 1, n),
            "n_train.npy": Member(False, 0, 1)}


def max_pack_bytes(layout: Layout) -> int:
    specs = members(layout).values()
    return sum(spec.max_payload() + HEADER_ROOM for spec in specs) + MAX_ZIP_OVERHEAD


def check_members(fh: BinaryIO, origin: Path, layout: Layout) -> None:
    """Refuse, before ``np.load`` allocates anything, a pack that is not exactly the four arrays
    with plain numeric headers and sizes a pack of the dataset's size can have: a zip member's
    declared size bounds what it decompresses to, and its header's shape what numpy allocates."""
    specs = members(layout)
    try:
        with zipfile.ZipFile(fh) as pack:
            infos = pack.infolist()
            names = sorted(info.filename for info in infos)
            if names != sorted(specs):
                raise DataError(f"{origin} holds {short(names)}, not exactly "
                                f"{', '.join(specs)}; it is not a JPEG pack")
            for info in infos:
                check_member(pack, info, specs[info.filename], origin)
    except READ_ERRORS as exc:
        raise DataError(f"{origin} is not a readable .npz ({exc.__class__.__name__}); "
                        f"{REBUILD}") from None


def check_member(pack: zipfile.ZipFile, info: zipfile.ZipInfo, spec: Member, origin: Path
                 ) -> None:
    """One member: stored or deflated as numpy writes it, not encrypted, no larger than
    ``spec`` allows, and an ``.npy`` header whose dtype, dimensions and shape match."""
    name = info.filename
    if info.flag_bits & 0x1 or info.compress_type not in (zipfile.ZIP_STORED,
                                                          zipfile.ZIP_DEFLATED):
        raise DataError(f"{origin}: {name} is encrypted or compressed in a way numpy never "
                        f"writes; {REBUILD}")
    if info.file_size > spec.max_payload() + HEADER_ROOM:
        raise DataError(f"{origin}: {name} claims {info.file_size} bytes uncompressed, more than "
                        f"{spec.max_payload() + HEADER_ROOM} (a full pack's); {REBUILD}")
    with pack.open(info) as member:
        shape, dtype = read_header(member)
        header_bytes = member.tell()
    if dtype.hasobject or not spec.accepts(dtype, shape):
        raise DataError(f"{origin}: {name} holds {short(dtype)} of shape {short(shape)}, "
                        f"not {spec.describe()}; {REBUILD}")
    if int(np.prod(shape, dtype=object)) * dtype.itemsize != info.file_size - header_bytes:
        raise DataError(f"{origin}: {name}'s header claims shape {short(shape)}, which its "
                        f"{info.file_size} bytes do not hold; {REBUILD}")


def read_header(member: BinaryIO) -> tuple[tuple, np.dtype]:
    """(shape, dtype) of an ``.npy`` stream, versions 1.0 and 2.0 (what ``np.savez`` writes)."""
    version = npy_format.read_magic(member)
    if version == (1, 0):
        shape, _, dtype = npy_format.read_array_header_1_0(member)
    elif version == (2, 0):
        shape, _, dtype = npy_format.read_array_header_2_0(member)
    else:
        raise ValueError(f"npy format {version}")
    return shape, dtype


def load_arrays(fh: BinaryIO, origin: Path, layout: Layout) -> tuple[np.ndarray, ...]:
    """(jpeg, offsets, labels, n_train) through ``np.load`` without pickles, after
    ``check_members``; a member that decompresses to other than it claims (a bad CRC, a short
    stream) is refused here, and what was read is checked again against its ``Member``."""
    try:
        with np.load(fh, allow_pickle=False) as pack:
            arrays = tuple(pack[key] for key in KEYS)
    except READ_ERRORS as exc:
        raise DataError(f"{origin} is not a readable .npz ({exc.__class__.__name__}); "
                        f"{REBUILD}") from None
    for key, array, spec in zip(KEYS, arrays, members(layout).values(), strict=True):
        if not isinstance(array, np.ndarray) or not spec.accepts(array.dtype, array.shape):
            raise DataError(f"{origin}: {key} is not {spec.describe()}; {REBUILD}")
    return arrays


def check_offsets(offsets: np.ndarray, n: int, n_bytes: int, origin: Path) -> list[int]:
    """Image i's bytes are ``jpeg[offsets[i]:offsets[i+1]]``: N+1 offsets from 0 to the end of
    ``jpeg``, never decreasing, no image longer than ``MAX_IMAGE_BYTES``."""
    if len(offsets) != n + 1:
        raise DataError(f"{origin}: offsets has {len(offsets)} entries for {n} labels, not "
                        f"{n + 1}; {REBUILD}")
    offsets = offsets.astype(np.int64)  # a huge unsigned value turns negative: refused below
    if offsets[0] != 0 or offsets[-1] != n_bytes:
        raise DataError(f"{origin}: offsets run from {offsets[0]} to {offsets[-1]}, not from 0 "
                        f"to {n_bytes} (the length of jpeg); {REBUILD}")
    sizes = np.diff(offsets)
    wrong = (sizes < 0) | (sizes > MAX_IMAGE_BYTES)
    if wrong.any():
        bad = int(np.argmax(wrong))
        raise DataError(f"{origin}: offsets give image {bad} {sizes[bad]} bytes (offsets never "
                        f"decrease, and no image takes more than {MAX_IMAGE_BYTES}); {REBUILD}")
    return offsets.tolist()


def check_labels(labels: np.ndarray, origin: Path, layout: Layout) -> np.ndarray:
    """Integer labels in [0, num_classes), as int64 (what the archive reader returns)."""
    wide = labels.astype(np.int64)  # a huge unsigned value turns negative: refused below
    outside = (wide < 0) | (wide >= layout.num_classes)
    if outside.any():
        index = int(np.argmax(outside))
        raise DataError(f"{origin}: label {index} is {labels[index]}, outside 0.."
                        f"{layout.num_classes - 1} of {layout.name}; {REBUILD}")
    return wide


def check_n_train(n_train: np.ndarray, n: int, origin: Path, layout: Layout) -> int:
    """The number of training images: 1..N-1 of the N images, each split no larger than the
    dataset's; smaller ones are read, as the archive reader reads a smaller archive."""
    value = int(n_train)
    if not 0 < value <= n:
        raise DataError(f"{origin}: n_train is {value}, outside 1..{n} (the number of images); "
                        f"{REBUILD}")
    check_split_size(value, "train", origin, layout)
    check_split_size(n - value, "test", origin, layout)
    return value


def decode_threads() -> int:
    """One thread per usable core, at most ``MAX_DECODE_THREADS``: PIL releases the GIL while
    it decodes, so 60,000 images take seconds on one core and a fraction on many."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_DECODE_THREADS))


def decode_all(jpeg: np.ndarray, offsets: list[int], origin: Path) -> np.ndarray:
    """Every image as N x 3 x 32 x 32 uint8. Chunks decode in parallel into their own rows, so
    the result never depends on the threads; the error raised is the lowest bad image's
    (results are collected in order and each chunk stops at its first bad image)."""
    n = len(offsets) - 1
    images = np.empty((n, *SHAPE, 3), dtype=np.uint8)

    def decode_chunk(start: int) -> None:
        for i in range(start, min(start + DECODE_CHUNK, n)):
            images[i] = decode_image(jpeg[offsets[i]:offsets[i + 1]].tobytes(), i, origin)

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with ThreadPoolExecutor(decode_threads()) as pool:
            for _ in pool.map(decode_chunk, range(0, n, DECODE_CHUNK)):
                pass
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))


def decode_image(blob: bytes, index: int, origin: Path) -> np.ndarray:
    """One 32 x 32 x 3 image, exactly as PIL decodes it; only PIL's JPEG reader is tried, and
    the header must say JPEG, 32x32 and RGB before a pixel is decoded."""
    try:
        with Image.open(io.BytesIO(blob), formats=["JPEG"]) as image:
            if (image.format, image.size, image.mode) != ("JPEG", SHAPE, "RGB"):
                width, height = image.size
                raise DataError(f"{origin}: image {index} is a {width}x{height} {image.mode} "
                                f"{image.format}, not a 32x32 RGB JPEG; {REBUILD}")
            image.load()
            return np.asarray(image)
    except PIL_ERRORS as exc:
        raise DataError(f"{origin}: image {index} is not a readable JPEG "
                        f"({exc.__class__.__name__}); {REBUILD}") from None
