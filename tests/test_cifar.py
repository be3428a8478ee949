"""CIFAR-10 reading, integrity errors, the seeded augmentation and deterministic loaders."""

from __future__ import annotations

import io
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from conftest import make_batches, tiny_config, write_archive, write_folder
from swa_recipe.data import cifar
from swa_recipe.data.cifar import (
    MEAN,
    PAD,
    STD,
    CIFARDataset,
    DataError,
    EpochBatches,
    augment,
    augment_params,
    batch_indices,
    file_md5,
    load_cifar10,
    locate,
    normalize,
)

BATCHES = make_batches()  # the content of the ``archive`` fixture


def expected_splits(batches: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    names = [f"data_batch_{i}" for i in range(1, 6)]
    x = np.concatenate([batches[n][b"data"] for n in names]).reshape(-1, 3, 32, 32)
    y = np.concatenate([batches[n][b"labels"] for n in names])
    tb = batches["test_batch"]
    return x, y, tb[b"data"].reshape(-1, 3, 32, 32), np.asarray(tb[b"labels"])


def assert_same_splits(a, b) -> None:
    for sa, sb in zip(a, b, strict=True):
        assert np.array_equal(sa.images, sb.images)
        assert np.array_equal(sa.labels, sb.labels)


def tar_with(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, raw in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def pickled(batches: dict) -> dict[str, bytes]:
    return {n: pickle.dumps(c, protocol=2) for n, c in batches.items()}


# ------------------------------------------------------------------------------------ reading


def test_archive_shapes_and_content(archive):
    train, test = load_cifar10(str(archive))
    assert train.images.shape == (100, 3, 32, 32) and train.images.dtype == np.uint8
    assert test.images.shape == (50, 3, 32, 32) and test.images.dtype == np.uint8
    assert train.labels.shape == (100,) and train.labels.dtype == np.int64
    assert test.labels.shape == (50,) and test.labels.dtype == np.int64
    x, y, tx, ty = expected_splits(BATCHES)
    assert np.array_equal(train.images, x) and np.array_equal(train.labels, y)
    assert np.array_equal(test.images, tx) and np.array_equal(test.labels, ty)


def test_folder_equals_archive(archive, tmp_path):
    folder = write_folder(tmp_path, BATCHES)
    from_archive = load_cifar10(str(archive))
    assert_same_splits(load_cifar10(str(folder)), from_archive)
    # the parent of cifar-10-batches-py works too
    assert_same_splits(load_cifar10(str(tmp_path)), from_archive)
    assert locate(str(tmp_path)) == folder


def test_directory_holding_the_archive(archive, tmp_path):
    shutil.copy(archive, tmp_path / cifar.ARCHIVE_NAME)
    assert locate(str(tmp_path)) == tmp_path / cifar.ARCHIVE_NAME
    assert_same_splits(load_cifar10(str(tmp_path)), load_cifar10(str(archive)))


def test_archive_member_order_does_not_matter(tmp_path):
    members = pickled(BATCHES)
    shuffled = {n: members[n] for n in ["test_batch", "data_batch_4", "data_batch_1",
                                        "data_batch_5", "data_batch_3", "data_batch_2"]}
    path = tar_with(tmp_path / "shuffled.tar.gz", shuffled)
    ordered = write_archive(tmp_path / "ordered.tar.gz", BATCHES)
    assert_same_splits(load_cifar10(str(path)), load_cifar10(str(ordered)))


# ---------------------------------------------------------------------------------------- MD5


def test_md5_auto_with_a_path_does_not_check(archive, monkeypatch):
    assert file_md5(archive) != cifar.CIFAR10_MD5

    def boom(path):
        raise AssertionError("file_md5 must not run for md5='auto' with an explicit path")

    monkeypatch.setattr(cifar, "file_md5", boom)
    train, _ = load_cifar10(str(archive), "auto")
    assert len(train.labels) == 100


def test_md5_auto_without_a_path_is_the_official_one():
    assert cifar.expected_md5(None, "auto") == cifar.CIFAR10_MD5
    assert cifar.expected_md5("/x.tar.gz", "auto") is None
    assert cifar.expected_md5("/x.tar.gz", None) is None
    assert cifar.expected_md5(None, "ab" * 16) == "ab" * 16


def test_wrong_md5_is_refused(archive):
    wrong = "0" * 32
    with pytest.raises(DataError) as info:
        load_cifar10(str(archive), wrong)
    msg = str(info.value)
    assert "MD5" in msg and "Data.md5=null" in msg
    assert wrong in msg and file_md5(archive) in msg


def test_right_md5_and_null_pass(archive):
    digest = file_md5(archive)
    assert len(digest) == 32
    assert_same_splits(load_cifar10(str(archive), digest), load_cifar10(str(archive), None))


def test_file_md5_is_hashlib_md5(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    assert file_md5(path) == "900150983cd24fb0d6963f7d28e17f72"


# ------------------------------------------------------------------------- corrupt or missing


def test_truncated_archive(archive, tmp_path):
    raw = archive.read_bytes()
    path = tmp_path / "truncated.tar.gz"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_cifar10(str(path))


def test_garbage_file(tmp_path):
    path = tmp_path / "garbage.tar.gz"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_cifar10(str(path))


def test_archive_missing_test_batch(tmp_path):
    batches = {n: c for n, c in BATCHES.items() if n != "test_batch"}
    path = write_archive(tmp_path / "partial.tar.gz", batches)
    with pytest.raises(DataError, match="lacks test_batch"):
        load_cifar10(str(path))


def test_folder_missing_a_batch(tmp_path):
    folder = write_folder(tmp_path, BATCHES)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError) as info:
        load_cifar10(str(folder))
    assert "data_batch_3" in str(info.value)
    assert "data_batch_2" not in str(info.value)


@pytest.mark.parametrize("where", ["archive", "folder"])
def test_member_that_is_not_a_pickle(tmp_path, where):
    members = pickled(BATCHES)
    members["data_batch_2"] = b"this is not a pickle"
    if where == "archive":
        path = tar_with(tmp_path / "bad.tar.gz", members)
    else:
        path = tmp_path / cifar.FOLDER_NAME
        path.mkdir()
        for name, raw in members.items():
            (path / name).write_bytes(raw)
    with pytest.raises(DataError) as info:
        load_cifar10(str(path))
    assert "data_batch_2" in str(info.value)


def test_truncated_pickle_member(tmp_path):
    members = pickled(BATCHES)
    members["test_batch"] = members["test_batch"][:1000]
    path = tar_with(tmp_path / "cut.tar.gz", members)
    with pytest.raises(DataError, match="test_batch"):
        load_cifar10(str(path))


def test_pickle_that_is_not_a_batch(tmp_path):
    members = pickled(BATCHES)
    members["data_batch_1"] = pickle.dumps([1, 2, 3], protocol=2)
    path = tar_with(tmp_path / "odd.tar.gz", members)
    with pytest.raises(DataError, match="data_batch_1.*not a CIFAR-10 batch"):
        load_cifar10(str(path))


def test_batches_with_wrong_shapes(tmp_path):
    batches = make_batches()
    batches["test_batch"][b"labels"] = batches["test_batch"][b"labels"][:-1]
    path = write_archive(tmp_path / "labels.tar.gz", batches)
    with pytest.raises(DataError, match="test_batch holds .* and 49 labels"):
        load_cifar10(str(path))
    batches = make_batches()
    for name in cifar.TRAIN_FILES:
        batches[name][b"data"] = batches[name][b"data"][:, :100]
    path = write_archive(tmp_path / "rows.tar.gz", batches)
    with pytest.raises(DataError, match="data_batch_.*not N x 3072 images"):
        load_cifar10(str(path))


def test_one_batch_with_a_wrong_row_length(tmp_path):
    batches = make_batches()
    batches["data_batch_4"][b"data"] = batches["data_batch_4"][b"data"][:, :100]
    path = write_archive(tmp_path / "shape.tar.gz", batches)
    with pytest.raises(DataError, match="data_batch_4 holds data of shape"):
        load_cifar10(str(path))


def test_nonexistent_path(tmp_path):
    with pytest.raises(DataError) as info:
        load_cifar10(str(tmp_path / "nope.tar.gz"))
    assert "--data_path" in str(info.value)
    assert "nope.tar.gz" in str(info.value)


# ----------------------------------------------------------------------------------- download


class FakeResponse:
    """A ``urlopen`` result that serves ``chunks`` and then raises ``fail`` (if any)."""

    def __init__(self, chunks: list[bytes], fail: Exception | None = None):
        self.chunks, self.fail = list(chunks), fail
        self.headers = {"Content-Length": str(sum(map(len, chunks)))}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def read(self, n: int = -1) -> bytes:
        if self.chunks:
            return self.chunks.pop(0)
        if self.fail is not None:
            raise self.fail
        return b""


def cache_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_failed_download_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    def refuse(url, timeout=None):
        raise OSError("network is unreachable")

    monkeypatch.setattr(cifar.urllib.request, "urlopen", refuse)
    with pytest.raises(DataError) as info:
        locate(None)
    assert "--data_path" in str(info.value) and "network is unreachable" in str(info.value)
    assert cifar.default_data_path() == tmp_path / "swa_paddle" / cifar.ARCHIVE_NAME
    assert cache_files(tmp_path) == []


def test_download_broken_midway_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(cifar.urllib.request, "urlopen",
                        lambda url, timeout=None: FakeResponse([b"x" * 1000],
                                                               OSError("connection reset")))
    with pytest.raises(DataError, match="connection reset"):
        load_cifar10(None)
    assert cache_files(tmp_path) == []


def test_download_with_wrong_md5_leaves_nothing(tmp_path, monkeypatch, archive):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    raw = archive.read_bytes()
    monkeypatch.setattr(cifar.urllib.request, "urlopen",
                        lambda url, timeout=None: FakeResponse([raw]))
    with pytest.raises(DataError, match="MD5"):
        locate(None)  # md5 auto: the official digest, which the synthetic archive lacks
    assert cache_files(tmp_path) == []


def test_download_with_md5_null_is_kept_and_read(tmp_path, monkeypatch, archive):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    raw = archive.read_bytes()
    monkeypatch.setattr(cifar.urllib.request, "urlopen",
                        lambda url, timeout=None: FakeResponse([raw[:5000], raw[5000:]]))
    train, test = load_cifar10(None, None)
    dest = tmp_path / "swa_paddle" / cifar.ARCHIVE_NAME
    assert cache_files(tmp_path) == [dest]
    assert dest.read_bytes() == raw
    assert_same_splits((train, test), load_cifar10(str(archive)))


# ------------------------------------------------------------------------------- augmentation


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(3).integers(1, 256, (3, 32, 32)).astype(np.uint8)


def test_centre_crop_without_flip_is_identity(image):
    out = augment(image, np.array([4, 4]), False)
    assert out.shape == (3, 32, 32) and out.dtype == np.uint8
    assert np.array_equal(out, image)


def test_flip_reverses_width(image):
    out = augment(image, np.array([4, 4]), True)
    assert np.array_equal(out, image[:, :, ::-1])
    assert not np.array_equal(out, image)


def test_corner_crops_shift_in_zeros(image):
    top_left = augment(image, np.array([0, 0]), False)
    assert (top_left[:, :4, :] == 0).all() and (top_left[:, :, :4] == 0).all()
    assert np.array_equal(top_left[:, 4:, 4:], image[:, :28, :28])
    bottom_right = augment(image, np.array([8, 8]), False)
    assert (bottom_right[:, 28:, :] == 0).all() and (bottom_right[:, :, 28:] == 0).all()
    assert np.array_equal(bottom_right[:, :28, :28], image[:, 4:, 4:])
    # offset is (row, column): (0, 8) pads the top and crops from the right
    top_right = augment(image, np.array([0, 8]), False)
    assert (top_right[:, :4, :] == 0).all() and (top_right[:, :, 28:] == 0).all()
    assert np.array_equal(top_right[:, 4:, :28], image[:, :28, 4:])


def test_crop_equals_padding_then_slicing_at_every_offset(image):
    """The crop written into zeros is byte for byte ``np.pad`` and a slice, as it was computed
    before (the committed runs' batches depend on it)."""
    padded = np.pad(image, ((0, 0), (PAD, PAD), (PAD, PAD)))
    for top in range(2 * PAD + 1):
        for left in range(2 * PAD + 1):
            want = padded[:, top:top + 32, left:left + 32]
            for flip in (False, True):
                out = augment(image, np.array([top, left]), flip)
                expected = want[:, :, ::-1] if flip else want
                assert out.dtype == np.uint8 and np.array_equal(out, expected), (top, left, flip)


def test_normalize(image):
    out = normalize(image)
    assert out.dtype == np.float32 and out.shape == (3, 32, 32)
    mean = np.array([0.485, 0.456, 0.406]).reshape(3, 1, 1)
    std = np.array([0.229, 0.224, 0.225]).reshape(3, 1, 1)
    assert np.allclose(out, (image / 255.0 - mean) / std, atol=1e-5)
    assert np.allclose(MEAN.ravel(), [0.485, 0.456, 0.406])
    assert np.allclose(STD.ravel(), [0.229, 0.224, 0.225])
    black = normalize(np.zeros((3, 32, 32), np.uint8))
    assert np.allclose(black[:, 0, 0], [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225])


def test_augment_params_are_seeded():
    offsets, flips = augment_params(1000, seed=1, epoch=3)
    assert offsets.shape == (1000, 2) and flips.shape == (1000,) and flips.dtype == bool
    assert offsets.min() == 0 and offsets.max() == 8
    assert set(np.unique(offsets)) == set(range(9))
    assert 0.4 < flips.mean() < 0.6
    again = augment_params(1000, seed=1, epoch=3)
    assert np.array_equal(offsets, again[0]) and np.array_equal(flips, again[1])
    for seed, epoch in [(1, 4), (2, 3)]:
        other = augment_params(1000, seed=seed, epoch=epoch)
        assert not np.array_equal(offsets, other[0])
        assert not np.array_equal(flips, other[1])


# ------------------------------------------------------------------------------------ dataset


def test_dataset_is_keyed_by_epoch_and_index(archive):
    train, _ = load_cifar10(str(archive))
    ds = CIFARDataset(train, train=True, seed=1)
    assert len(ds) == 100
    keys = [(1, 5), (2, 5), (1, 7), (0, 99), (1, 5), (2, 5)]
    first = [ds[k] for k in keys]
    fresh = CIFARDataset(train, train=True, seed=1)
    for k, (x, y) in zip(reversed(keys), reversed(first), strict=True):
        fx, fy = fresh[k]
        assert np.array_equal(fx, x) and fy == y
    x, y = first[0]
    assert x.dtype == np.float32 and x.shape == (3, 32, 32)
    assert isinstance(y, np.int64) and y == train.labels[5]
    offsets, flips = augment_params(100, 1, 1)
    want = normalize(augment(train.images[5], offsets[5], bool(flips[5])))
    assert np.array_equal(x, want)
    # the epoch changes the augmentation of the same image
    assert not all(np.array_equal(ds[(1, i)][0], ds[(2, i)][0]) for i in range(10))
    # and so does the seed
    other = CIFARDataset(train, train=True, seed=2)
    assert not all(np.array_equal(ds[(1, i)][0], other[(1, i)][0]) for i in range(10))


def test_test_split_is_not_augmented(archive):
    _, test = load_cifar10(str(archive))
    ds = CIFARDataset(test, train=False, seed=1)
    for key in [(0, 0), (5, 0), (3, 49)]:
        x, y = ds[key]
        assert np.array_equal(x, normalize(test.images[key[1]]))
        assert y == test.labels[key[1]]


# ------------------------------------------------------------------------------------ batches


def test_batches_cover_every_index_once():
    batches = batch_indices(100, 32, seed=1, epoch=0, shuffle=True)
    assert [len(b) for b in batches] == [32, 32, 32, 4]
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(100))
    assert flat != list(range(100))


def test_batches_are_seeded_by_seed_and_epoch():
    a = batch_indices(100, 32, seed=1, epoch=0, shuffle=True)
    assert a == batch_indices(100, 32, seed=1, epoch=0, shuffle=True)
    assert a != batch_indices(100, 32, seed=1, epoch=1, shuffle=True)
    assert a != batch_indices(100, 32, seed=2, epoch=0, shuffle=True)


def test_unshuffled_batches_are_in_order():
    batches = batch_indices(10, 4, seed=1, epoch=5, shuffle=False)
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_epoch_batches_follow_set_epoch():
    eb = EpochBatches(100, 32, seed=1, shuffle=True)
    assert len(eb) == 4
    epoch0 = list(eb)
    assert all(e == 0 for b in epoch0 for e, _ in b)
    eb.set_epoch(3)
    epoch3 = list(eb)
    assert all(e == 3 for b in epoch3 for e, _ in b)
    assert [[i for _, i in b] for b in epoch3] == batch_indices(100, 32, 1, 3, True)
    assert [[i for _, i in b] for b in epoch0] != [[i for _, i in b] for b in epoch3]
    assert len(EpochBatches(96, 32, 1, True)) == 3


def test_rank_shards_partition_each_batch():
    world = 3
    full = list(EpochBatches(100, 32, seed=1, shuffle=True))
    shards = []
    for rank in range(world):
        eb = EpochBatches(100, 32, seed=1, shuffle=True, rank=rank, world_size=world)
        shards.append(list(eb))
        assert len(eb) == 4
    for b, batch in enumerate(full):
        parts = [set(shards[r][b]) for r in range(world)]
        for r in range(world):
            for q in range(r + 1, world):
                assert not parts[r] & parts[q]
        assert set().union(*parts) == set(batch)
        assert sum(len(p) for p in parts) == len(batch)
    assert [len(shards[r][0]) for r in range(world)] == [11, 11, 10]


# ------------------------------------------------------------------------------------ loaders


def first_batches(make_loader, archive, workers: int, epoch: int = 1, n: int = 2):
    cfg = tiny_config(archive, Data={"num_workers": workers})
    train, _ = load_cifar10(cfg["Data"]["data_path"], cfg["Data"]["md5"])
    loader = make_loader(train, True, cfg)
    loader.batch_sampler.set_epoch(epoch)
    out = []
    for x, y in loader:
        out.append((x.numpy().copy(), y.numpy().copy()))
        if len(out) == n:
            break
    return out


def check_loader_determinism(make_loader, archive):
    serial = first_batches(make_loader, archive, 0)
    parallel = first_batches(make_loader, archive, 2)
    assert len(serial) == len(parallel) == 2
    for (x0, y0), (x2, y2) in zip(serial, parallel, strict=True):
        assert x0.shape == (32, 3, 32, 32) and x0.dtype == np.float32
        assert y0.dtype == np.int64
        assert np.array_equal(x0, x2) and np.array_equal(y0, y2)
    # and they are what the shared dataset gives for those keys
    train, _ = load_cifar10(str(archive))
    ds = CIFARDataset(train, train=True, seed=1)
    keys = batch_indices(100, 32, seed=1, epoch=1, shuffle=True)[0]
    assert np.array_equal(serial[0][0], np.stack([ds[(1, i)][0] for i in keys]))
    assert np.array_equal(serial[0][1], train.labels[keys])
    return serial


def test_paddle_loader_is_identical_across_workers(archive):
    import swa_paddle.data as data
    check_loader_determinism(data.make_loader, archive)


def test_torch_loader_is_identical_across_workers(archive):
    import swa_torch.data as data
    check_loader_determinism(data.make_loader, archive)


def test_paddle_and_torch_loaders_agree(archive):
    import swa_paddle.data as pdata
    import swa_torch.data as tdata
    for (xp, yp), (xt, yt) in zip(first_batches(pdata.make_loader, archive, 0),
                                  first_batches(tdata.make_loader, archive, 0), strict=True):
        assert np.array_equal(xp, xt) and np.array_equal(yp, yt)
