"""The CIFAR-10 JPEG pack (``swa_recipe/data/jpeg_pack.py``): it reads as PIL decodes it, equals
the python archive of the same pixels, and refuses every malformed or hostile pack with one line
naming the problem."""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from numpy.lib import format as npy_format
from PIL import Image

from conftest import ROOT, SHARED_ARCHIVE, write_archive
from swa_recipe.data import cifar, jpeg_pack
from swa_recipe.data.cifar import DataError, file_md5, load_cifar, load_cifar10
from swa_recipe.data.datasets import CIFAR10, DATASETS

SHARED_PACK = SHARED_ARCHIVE.parent / "cifar10_jpeg.npz"
N_TRAIN, N_TEST = 10, 5
SMALL = dataclasses.replace(CIFAR10, train_size=N_TRAIN, test_size=N_TEST)  # tight bounds


def jpeg(pixels: np.ndarray, fmt: str = "JPEG", mode: str | None = None, **save) -> bytes:
    image = Image.fromarray(pixels)
    out = io.BytesIO()
    (image.convert(mode) if mode else image).save(out, fmt, **save)
    return out.getvalue()


def random_pixels(seed: int, shape: tuple = (32, 32, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


BLOBS = [jpeg(random_pixels(i), quality=90) for i in range(N_TRAIN + N_TEST)]
LABELS = np.arange(N_TRAIN + N_TEST, dtype=np.int64) % 10


def pack_arrays(blobs: list[bytes] = BLOBS, labels: np.ndarray = LABELS,
                n_train: int = N_TRAIN) -> dict[str, np.ndarray]:
    sizes = [len(b) for b in blobs]
    return {"jpeg": np.frombuffer(b"".join(blobs), np.uint8),
            "offsets": np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
            "labels": np.asarray(labels), "n_train": np.int64(n_train)}


def write_pack(path: Path, compressed: bool = False, **changes) -> Path:
    """A pack of ``BLOBS`` with ``changes`` (a key set to None is left out)."""
    arrays = {**pack_arrays(), **changes}
    save = np.savez_compressed if compressed else np.savez
    with open(path, "wb") as fh:  # a file, so that numpy appends no ".npz" to the name
        save(fh, **{k: v for k, v in arrays.items() if v is not None})
    return path


def with_blob(index: int, blob: bytes) -> dict[str, np.ndarray]:
    blobs = list(BLOBS)
    blobs[index] = blob
    return pack_arrays(blobs)


def npy(header: dict, payload: bytes) -> bytes:
    """An ``.npy`` member whose header says whatever ``header`` says."""
    out = io.BytesIO()
    npy_format.write_array_header_1_0(out, header)
    return out.getvalue() + payload


def write_members(path: Path, members: dict[str, bytes] | list[tuple[str, bytes]],
                  compression: int = zipfile.ZIP_STORED) -> Path:
    items = members.items() if isinstance(members, dict) else members
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, raw in items:
            zf.writestr(name, raw)
    return path


def npy_members(**changes) -> dict[str, bytes]:
    out = {}
    for key, array in {**pack_arrays(), **changes}.items():
        buf = io.BytesIO()
        npy_format.write_array(buf, np.asanyarray(array), allow_pickle=False)
        out[f"{key}.npy"] = buf.getvalue()
    return out


def refused(path: Path, layout=SMALL) -> str:
    with pytest.raises(DataError) as info:
        load_cifar(layout, str(path), None)
    message = str(info.value)
    assert "\n" not in message
    return message


def expected_pixels(blobs: list[bytes] = BLOBS) -> np.ndarray:
    return np.stack([np.asarray(Image.open(io.BytesIO(b))) for b in blobs]).transpose(0, 3, 1, 2)


# ------------------------------------------------------------------------------------ reading


def test_pack_reads_as_pil_decodes_each_image(tmp_path):
    train, test = load_cifar10(str(write_pack(tmp_path / "p.npz")), None)
    pixels = expected_pixels()
    assert train.images.shape == (N_TRAIN, 3, 32, 32) and train.images.dtype == np.uint8
    assert np.array_equal(train.images, pixels[:N_TRAIN])
    assert np.array_equal(test.images, pixels[N_TRAIN:])
    assert train.labels.dtype == np.int64 and test.labels.dtype == np.int64
    assert np.array_equal(np.concatenate([train.labels, test.labels]), LABELS)
    assert train.images.flags.c_contiguous and test.images.flags.c_contiguous


def test_pack_equals_the_archive_of_its_pixels(tmp_path):
    """The same pixels through the archive reader and the pack reader: the same Splits."""
    pixels = expected_pixels().reshape(N_TRAIN + N_TEST, -1)
    per = N_TRAIN // 5
    batches = {f"data_batch_{i + 1}": {b"data": pixels[i * per:(i + 1) * per],
                                       b"labels": LABELS[i * per:(i + 1) * per].tolist()}
               for i in range(5)}
    batches["test_batch"] = {b"data": pixels[N_TRAIN:], b"labels": LABELS[N_TRAIN:].tolist()}
    archive = write_archive(tmp_path / "cifar-10-python.tar.gz", batches)
    for compressed in (False, True):
        pack = write_pack(tmp_path / f"p{compressed}.npz", compressed=compressed)
        for a, b in zip(load_cifar10(str(archive)), load_cifar10(str(pack)), strict=True):
            assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)


def test_unsigned_and_narrow_integers_are_read(tmp_path):
    path = write_pack(tmp_path / "p.npz", labels=LABELS.astype(np.uint8),
                      offsets=pack_arrays()["offsets"].astype(np.uint32), n_train=np.int16(N_TRAIN))
    train, test = load_cifar(SMALL, str(path), None)
    assert train.labels.dtype == np.int64 and np.array_equal(test.labels, LABELS[N_TRAIN:])


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_decoding_does_not_depend_on_threads(tmp_path, monkeypatch, threads):
    monkeypatch.setattr(jpeg_pack, "DECODE_CHUNK", 4)  # 15 images: chunks of 4, 4, 4 and 3
    monkeypatch.setattr(jpeg_pack, "decode_threads", lambda: threads)
    train, test = load_cifar10(str(write_pack(tmp_path / "p.npz")), None)
    assert np.array_equal(np.concatenate([train.images, test.images]), expected_pixels())


def test_only_npz_files_are_packs(tmp_path):
    folder = tmp_path / "x.npz"
    folder.mkdir()
    assert jpeg_pack.is_pack(write_pack(tmp_path / "p.NPZ"))
    assert not jpeg_pack.is_pack(folder) and not jpeg_pack.is_pack(tmp_path / "missing.npz")


def test_md5_auto_skips_and_an_explicit_md5_is_checked(tmp_path, monkeypatch):
    path = write_pack(tmp_path / "p.npz")
    train, _ = load_cifar10(str(path), file_md5(path))
    assert len(train.labels) == N_TRAIN
    with pytest.raises(DataError, match="MD5 .*Data.md5=null"):
        load_cifar10(str(path), "0" * 32)

    def boom(fh):
        raise AssertionError("md5 'auto' with a given path must not hash the pack")

    monkeypatch.setattr(cifar, "stream_md5", boom)
    assert len(load_cifar10(str(path), "auto")[1].labels) == N_TEST


def test_cifar100_with_a_pack_is_one_line(tmp_path):
    message = refused(write_pack(tmp_path / "p.npz"), DATASETS["CIFAR100"])
    assert "CIFAR-100 has none" in message and "cifar-100-python.tar.gz" in message


def test_a_fifo_named_npz_is_refused_without_opening(tmp_path):
    os.mkfifo(tmp_path / "p.npz")
    assert "not a regular file" in refused(tmp_path / "p.npz")


# ------------------------------------------------------------------------- hostile: the arrays

N_BYTES = len(pack_arrays()["jpeg"])
BAD_ARRAYS = {
    "missing key": ({"n_train": None}, "not exactly jpeg.npy"),
    "jpeg not bytes": ({"jpeg": pack_arrays()["jpeg"].astype(np.int16)},
                       "jpeg.npy holds dtype('int16')"),
    "float labels": ({"labels": LABELS.astype(np.float64)}, "labels.npy holds dtype('float64')"),
    "bool labels": ({"labels": LABELS > 4}, "labels.npy holds dtype('bool')"),
    "2-D offsets": ({"offsets": pack_arrays()["offsets"][:, None]},
                    "offsets.npy holds dtype('int64') of shape (16, 1), not a 1-D integer array"),
    "n_train an array": ({"n_train": np.array([N_TRAIN])},
                         "n_train.npy holds dtype('int64') of shape (1,), not one integer"),
    "offsets short": ({"offsets": pack_arrays()["offsets"][:-1]}, "offsets has 15 entries for 15"),
    "offsets from 1": ({"offsets": np.array([1, *pack_arrays()["offsets"][1:]])},
                       f"offsets run from 1 to {N_BYTES}, not from 0 to {N_BYTES}"),
    "offsets past the end": ({"offsets": np.append(pack_arrays()["offsets"][:-1], 10**6)},
                             "to 1000000, not from 0 to"),
    "offsets decrease": ({"offsets": pack_arrays()["offsets"][[0, 2, 1, *range(3, 16)]]},
                         "offsets give image 1 -"),
    "huge unsigned offset": ({"offsets": np.array([*pack_arrays()["offsets"][:-2], 2**64 - 1,
                                                   pack_arrays()["offsets"][-1]], np.uint64)},
                             "offsets give image 13 -"),
    "label 10": ({"labels": np.where(np.arange(15) == 3, 10, LABELS)},
                 "label 3 is 10, outside 0..9"),
    "label -1": ({"labels": np.where(np.arange(15) == 0, -1, LABELS)}, "label 0 is -1"),
    "n_train 0": ({"n_train": np.int64(0)}, "n_train is 0, outside 1..15"),
    "n_train past N": ({"n_train": np.int64(16)}, "n_train is 16, outside 1..15"),
    "no test images": ({"n_train": np.int64(15)}, "holds no test images"),
}


@pytest.mark.parametrize("case", BAD_ARRAYS)
def test_malformed_arrays_are_refused(tmp_path, case):
    changes, needle = BAD_ARRAYS[case]
    assert needle in refused(write_pack(tmp_path / "p.npz", **changes), CIFAR10)


def test_extra_key_is_refused(tmp_path):
    assert "not exactly" in refused(write_pack(tmp_path / "p.npz", extra=np.zeros(3)))


def test_split_larger_than_the_dataset_is_refused(tmp_path):
    """The official split sizes bound a pack, as they bound an archive; smaller ones are read."""
    smaller = dataclasses.replace(SMALL, train_size=N_TRAIN - 1, test_size=N_TEST + 1)
    message = refused(write_pack(tmp_path / "p.npz"), smaller)
    assert "holds 10 train images, more than the 9" in message
    assert len(load_cifar(CIFAR10, str(tmp_path / "p.npz"), None)[0].labels) == N_TRAIN


# ------------------------------------------------------------------------- hostile: the images


def sof_with_size(blob: bytes, height: int, width: int) -> bytes:
    """``blob`` with its frame header claiming ``height`` x ``width``."""
    at = blob.index(b"\xff\xc0") + 5
    return blob[:at] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + blob[at + 4:]


def mpo() -> bytes:
    """Two frames in one file: PIL's JPEG reader opens it, as format MPO."""
    frames = [Image.fromarray(random_pixels(seed)) for seed in (1, 2)]
    out = io.BytesIO()
    frames[0].save(out, "MPO", save_all=True, append_images=frames[1:])
    return out.getvalue()


BAD_IMAGES = {
    "png": (jpeg(random_pixels(1), "PNG"), "image 4 is not a readable JPEG (UnidentifiedImage"),
    "mpo": (mpo(), "image 4 is a 32x32 RGB MPO, not a 32x32 RGB JPEG"),
    "64x64": (jpeg(random_pixels(1, (64, 64, 3))), "image 4 is a 64x64 RGB JPEG, not a 32x32"),
    "grey": (jpeg(random_pixels(1, (32, 32))), "image 4 is a 32x32 L JPEG"),
    "cmyk": (jpeg(random_pixels(1), mode="CMYK"), "image 4 is a 32x32 CMYK JPEG"),
    "truncated": (BLOBS[4][:len(BLOBS[4]) // 2], "image 4 is not a readable JPEG (OSError)"),
    "empty": (b"", "image 4 is not a readable JPEG"),
    "garbage after SOI": (b"\xff\xd8" + bytes(range(256)) * 3, "image 4 is not a readable JPEG"),
    "bomb header": (sof_with_size(BLOBS[4], 65000, 65000), "image 4 is not a readable JPEG "
                    "(DecompressionBomb"),
    "bomb warning size": (sof_with_size(BLOBS[4], 10000, 10000), "image 4 is not a readable "
                          "JPEG (DecompressionBomb"),
    "claims 33x32": (sof_with_size(BLOBS[4], 33, 32), "image 4 is a 32x33 RGB JPEG"),
    "longer than any": (BLOBS[4] + bytes(jpeg_pack.MAX_IMAGE_BYTES),
                        "offsets give image 4 9"),
}


@pytest.mark.parametrize("case", BAD_IMAGES)
def test_bad_images_are_refused_naming_the_image(tmp_path, case):
    blob, needle = BAD_IMAGES[case]
    path = tmp_path / "p.npz"
    np.savez(path, **with_blob(4, blob))
    assert needle in refused(path)


def test_the_lowest_bad_image_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(jpeg_pack, "DECODE_CHUNK", 3)
    blobs = list(BLOBS)
    blobs[7] = blobs[13] = b"not a jpeg"
    np.savez(tmp_path / "p.npz", **pack_arrays(blobs))
    assert "image 7 is not" in refused(tmp_path / "p.npz")


# ------------------------------------------------------------------- hostile: the zip and .npy


def test_not_a_zip_is_refused(tmp_path):
    (tmp_path / "p.npz").write_bytes(b"PK\x03\x04" + bytes(100))
    assert "is not a readable .npz (BadZipFile)" in refused(tmp_path / "p.npz")
    np.save(tmp_path / "q.npy", LABELS)
    os.replace(tmp_path / "q.npy", tmp_path / "q.npz")
    assert "is not a readable .npz" in refused(tmp_path / "q.npz")


def test_truncated_pack_is_refused(tmp_path):
    raw = write_pack(tmp_path / "p.npz").read_bytes()
    (tmp_path / "p.npz").write_bytes(raw[:len(raw) - 40])
    assert "is not a readable .npz" in refused(tmp_path / "p.npz")


def test_corrupt_member_is_refused_by_its_crc(tmp_path):
    raw = bytearray(write_pack(tmp_path / "p.npz").read_bytes())
    at = raw.index(BLOBS[3][100:140])
    raw[at] ^= 0xFF
    (tmp_path / "p.npz").write_bytes(bytes(raw))
    assert "is not a readable .npz (BadZipFile)" in refused(tmp_path / "p.npz")


def test_member_that_decompresses_huge_is_refused_before_loading(tmp_path):
    """A few kilobytes that would inflate to megabytes: refused by their declared size."""
    bound = jpeg_pack.members(SMALL)["jpeg.npy"].max_payload() + jpeg_pack.HEADER_ROOM
    path = write_pack(tmp_path / "p.npz", compressed=True, jpeg=np.zeros(4 * bound, np.uint8))
    assert path.stat().st_size < bound // 10
    assert f"jpeg.npy claims {4 * bound + 128} bytes uncompressed" in refused(path)


def test_header_claiming_more_than_the_member_holds_is_refused(tmp_path):
    members = npy_members()
    members["jpeg.npy"] = npy({"descr": "|u1", "fortran_order": False, "shape": (10**12,)},
                              bytes(100))
    path = write_members(tmp_path / "p.npz", members)
    assert "jpeg.npy's header claims shape (1000000000000,)" in refused(path)


def test_object_member_is_refused_without_unpickling(tmp_path):
    members = npy_members()
    members["labels.npy"] = npy({"descr": "|O", "fortran_order": False, "shape": (15,)},
                                b"\x80\x02cos\nsystem\n." + bytes(100))
    assert "labels.npy holds dtype('O')" in refused(write_members(tmp_path / "p.npz", members))


def test_npy_format_3_is_refused(tmp_path):
    members = npy_members()
    raw = bytearray(members["n_train.npy"])
    raw[6] = 3
    members["n_train.npy"] = bytes(raw)
    assert "not a readable .npz (ValueError)" in refused(write_members(tmp_path / "p.npz",
                                                                       members))


def test_duplicate_member_is_refused(tmp_path):
    members = list(npy_members().items())
    with pytest.warns(UserWarning, match="Duplicate name"):
        path = write_members(tmp_path / "p.npz", [*members, members[0]])
    assert "not exactly" in refused(path)


def test_compression_numpy_never_writes_is_refused(tmp_path):
    path = write_members(tmp_path / "p.npz", npy_members(), zipfile.ZIP_BZIP2)
    assert "compressed in a way numpy never writes" in refused(path)


def test_file_larger_than_any_pack_is_refused(tmp_path):
    path = write_pack(tmp_path / "p.npz")
    with open(path, "ab") as fh:
        fh.truncate(jpeg_pack.max_pack_bytes(SMALL) + 1)
    assert f"is {jpeg_pack.max_pack_bytes(SMALL) + 1} bytes, more than" in refused(path)


# ---------------------------------------------------------------------------------- the CLI


def train_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_cli_bad_pack_exits_2_with_one_line(tmp_path):
    np.savez(tmp_path / "bad.npz", **with_blob(4, b"not a jpeg"))
    proc = train_cli("--config", "configs/lite.yaml", "--data_path", str(tmp_path / "bad.npz"),
                     "--dir", str(tmp_path / "run"))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "image 4 is not a readable JPEG" in lines[0], proc.stderr
    assert not (tmp_path / "run" / "metrics.csv").exists()


# ------------------------------------------------------------------------ the shared real pack

needs_shared = pytest.mark.skipif(not (SHARED_PACK.exists() and SHARED_ARCHIVE.exists()),
                                  reason="the shared CIFAR-10 pack and archive are not beside "
                                         "the checkout")


@needs_shared
def test_shared_pack_equals_the_shared_archive():
    """All 60,000 images, byte for byte, and the labels: the same dataset."""
    pack, archive = load_cifar10(str(SHARED_PACK), None), load_cifar10(str(SHARED_ARCHIVE), None)
    for a, b in zip(archive, pack, strict=True):
        assert a.images.shape == b.images.shape and np.array_equal(a.images, b.images)
        assert np.array_equal(a.labels, b.labels)


def metrics_without_time(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as fh:
        return [{k: v for k, v in row.items() if k != "time"} for row in csv.DictReader(fh)]


@needs_shared
def test_lite_run_on_the_pack_equals_the_run_on_the_archive(tmp_path):
    runs = {}
    for name, data in (("archive", SHARED_ARCHIVE), ("pack", SHARED_PACK)):
        proc = train_cli("--config", "configs/lite.yaml", "--epochs", "2", "--data_path",
                         str(data), "--dir", str(tmp_path / name))
        assert proc.returncode == 0, proc.stderr
        runs[name] = metrics_without_time(tmp_path / name)
    assert len(runs["pack"]) == 2 and runs["pack"] == runs["archive"]
