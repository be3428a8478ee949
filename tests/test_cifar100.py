"""CIFAR-100: the official archive layout (``train``, ``test``, ``meta``, fine labels), its MD5 and
address, 100 classes through config, models, training, eval and conversion, and every bad input
the README lists, on small synthetic archives in the official format."""

from __future__ import annotations

import csv
import re
import shutil

import numpy as np
import pytest
from test_reliability import assert_refused, cli

from conftest import CIFAR100_FOLDER, make_cifar100, write_archive, write_folder
from swa_recipe.config import ConfigError, default_config, merge, validate
from swa_recipe.data import cifar
from swa_recipe.data.cifar import DataError, load_cifar, locate
from swa_recipe.data.datasets import DATASETS

C100 = DATASETS["CIFAR100"]
MEMBERS = make_cifar100()  # the content of the ``cifar100_archive`` fixture
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
EXT = {"paddle": ".pdparams", "torch": ".pt"}


def test_class_names_are_the_official_tables():
    """``fine_label_names`` of CIFAR-100's ``meta`` are the 100 classes in alphabetical order;
    CIFAR-10's ``label_names`` are in label order (airplane 0 ... truck 9)."""
    from swa_recipe.predict import class_names

    names = class_names(validate(merge(default_config(), {"Data": {"dataset": "CIFAR100"}}, "t")))
    assert len(set(names)) == 100 and names == sorted(names)
    assert (names[0], names[30], names[99]) == ("apple", "dolphin", "worm")
    ten = class_names(validate(default_config()))
    assert (ten[0], ten[3], ten[9]) == ("airplane", "cat", "truck")


def test_official_layout_address_and_md5():
    assert C100.archive == "cifar-100-python.tar.gz" and C100.folder == "cifar-100-python"
    assert C100.url == "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    assert C100.md5 == "eb9058c3a382ffc7106e4002c42a8d85"
    assert (C100.train_files, C100.test_files, C100.meta_member) == (("train",), ("test",),
                                                                         "meta")
    assert C100.label_key == b"fine_labels" and C100.num_classes == 100
    assert cifar.expected_md5(None, "auto", C100) == C100.md5


def test_reads_fine_labels_from_archive_and_folder(cifar100_archive, tmp_path):
    train, test = load_cifar(C100, str(cifar100_archive))
    assert train.images.shape == (100, 3, 32, 32) and test.images.shape == (50, 3, 32, 32)
    assert np.array_equal(train.labels, MEMBERS["train"][b"fine_labels"])
    assert np.array_equal(test.images.reshape(50, -1), MEMBERS["test"][b"data"])
    assert train.labels.max() > 19  # fine (100 classes), not coarse (20)
    folder = write_folder(tmp_path, MEMBERS, CIFAR100_FOLDER)
    for path in (folder, tmp_path):  # the folder, or the folder that holds it
        f_train, f_test = load_cifar(C100, str(path))
        assert np.array_equal(f_train.images, train.images)
        assert np.array_equal(f_test.labels, test.labels)
    assert locate(str(tmp_path), "auto", C100) == folder


def test_download_uses_the_official_address_and_md5(tmp_path, monkeypatch, cifar100_archive):
    """The synthetic archive lacks the official MD5: the download is refused and removed."""
    from test_cifar import FakeResponse

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    asked = []

    def urlopen(url, timeout=None):
        asked.append(url)
        return FakeResponse([cifar100_archive.read_bytes()])

    monkeypatch.setattr(cifar.urllib.request, "urlopen", urlopen)
    with pytest.raises(DataError, match="MD5 is not eb9058c3a382ffc7106e4002c42a8d85"):
        locate(None, "auto", C100)
    assert asked == [C100.url]
    assert not any(p.is_file() for p in tmp_path.rglob("*"))
    train, _ = load_cifar(C100, None, None)  # md5 null: kept and read
    assert len(train.labels) == 100
    assert (tmp_path / "swa_paddle" / "cifar-100-python.tar.gz").is_file()


def test_num_classes_follows_the_dataset():
    cfg = validate(merge(default_config(), {"Data": {"dataset": "CIFAR100"}}, "test"))
    assert cfg["Arch"]["num_classes"] == 100
    assert validate(default_config())["Arch"]["num_classes"] == 10
    with pytest.raises(ConfigError, match="num_classes is 10 but Data.dataset CIFAR100 has 100"):
        validate(merge(default_config(), {"Data": {"dataset": "CIFAR100"},
                                          "Arch": {"num_classes": 10}}, "test"))


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module", params=["paddle", "torch"])
def c100_run(request, cifar100_archive, tmp_path_factory):
    """PreResNet164 (depth 47, 1/16 width) with SWA on the synthetic CIFAR-100, 2 epochs."""
    framework = request.param
    out = tmp_path_factory.mktemp(f"c100-{framework}")
    proc = cli("train.py", "--framework", framework, "--dataset", "CIFAR100",
               "--model", "PreResNet164", "-o", "Arch.depth=47", "-o", "Arch.width=0.0625",
               "--epochs", "2", "--swa", "--swa_start", "1", "--batch_size", "25",
               "--eval_freq", "1", "--data_path", str(cifar100_archive), "--dir", str(out),
               env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return framework, out


def test_training_eval_and_conversion_with_100_classes(c100_run, cifar100_archive, tmp_path):
    framework, out = c100_run
    ckpt = out / f"checkpoint-2{EXT[framework]}"
    from swa_apps.twins import import_twin

    state = import_twin(framework).checkpoint.load(str(ckpt))
    assert state["config"]["Arch"]["num_classes"] == 100
    assert state["config"]["Data"]["dataset"] == "CIFAR100"
    assert tuple(state["swa_state_dict"]["fc.bias"].shape) == (100,)
    with open(out / "metrics.csv") as fh:
        last = float(list(csv.DictReader(fh))[-1]["swa_te_acc"])
    proc = cli("eval.py", "--model_path", str(ckpt), "--data_path", str(cifar100_archive),
               env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"accuracy {last:.4f} % (50 images)" in proc.stdout
    other = "torch" if framework == "paddle" else "paddle"
    dst = tmp_path / f"c{EXT[other]}"
    assert cli("tools/convert.py", str(ckpt), str(dst), env=ONE_THREAD).returncode == 0
    converted = cli("eval.py", "--model_path", str(dst), "--data_path", str(cifar100_archive),
                    env=ONE_THREAD)
    assert converted.stdout.split(":", 1)[1] == proc.stdout.split(":", 1)[1]


def test_predict_names_cifar100_classes(c100_run, cifar100_archive):
    """predict.py prints CIFAR-100 class names, for the prediction and the true label."""
    framework, out = c100_run
    proc = cli("predict.py", "--model_path", str(out / f"checkpoint-2{EXT[framework]}"),
               "--index", "0", "1", "--data_path", str(cifar100_archive), env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr[-2000:]
    *lines, accuracy = proc.stdout.splitlines()[1:]
    true = [ln.split("[true: ")[1].rstrip("]") for ln in lines]
    assert len(lines) == 2 and set(true) <= set(C100.class_names), proc.stdout
    assert re.fullmatch(r"accuracy: [0-2]/2 = [\d.]+ % \(top-1\)", accuracy), accuracy
    assert "class " not in proc.stdout


def test_checkpoint_of_the_other_dataset_is_refused(c100_run, archive):
    framework, out = c100_run
    proc = cli("eval.py", "--model_path", str(out / f"checkpoint-2{EXT[framework]}"),
               "--data_path", str(archive), "--dataset", "CIFAR10", env=ONE_THREAD)
    assert_refused(proc, "Arch.num_classes is 100 but Data.dataset CIFAR10 has 10 classes")


# ---------------------------------------------------------------- bad input (README table)


@pytest.fixture(scope="module")
def bad(tmp_path_factory, cifar100_archive):
    root = tmp_path_factory.mktemp("bad100")
    raw = cifar100_archive.read_bytes()
    (root / "truncated.tar.gz").write_bytes(raw[: len(raw) // 2])
    no_test = {k: v for k, v in MEMBERS.items() if k != "test"}
    write_folder(root / "partial", no_test, CIFAR100_FOLDER)
    shapes = make_cifar100()
    shapes["train"][b"data"] = shapes["train"][b"data"][:, :100]
    write_archive(root / "shape.tar.gz", shapes, CIFAR100_FOLDER)
    coarse = make_cifar100()
    del coarse["test"][b"fine_labels"]
    write_archive(root / "coarse.tar.gz", coarse, CIFAR100_FOLDER)
    shutil.copy(cifar100_archive, root / "copy.tar.gz")
    return root


BAD = {
    "missing archive": ("nope.tar.gz", [], ["CIFAR-100 not found at", "cifar-100-python.tar.gz",
                                            "cifar-100-python folder"]),
    "truncated archive": ("truncated.tar.gz", [], ["is truncated or corrupt",
                                                   "download cifar-100-python.tar.gz again"]),
    "MD5 mismatch": ("copy.tar.gz", ["-o", "Data.md5=" + "0" * 32],
                     ["has MD5", "expected " + "0" * 32, "Data.md5=null"]),
    "folder missing a member": ("partial/cifar-100-python", [],
                                ["lacks test", "re-extract cifar-100-python.tar.gz"]),
    "member of the wrong shape": ("shape.tar.gz", [], ["train holds data of shape (100, 100)",
                                                       "the dataset is corrupt"]),
    "member without fine labels": ("coarse.tar.gz", [], ["test", "no data/fine_labels",
                                                         "not a CIFAR-100 batch"]),
    "a CIFAR-10 archive": (None, [], ["lacks train, test", "not a complete "
                                      "cifar-100-python.tar.gz"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_refused(case, bad, archive, tmp_path):
    path, extra, needles = BAD[case]
    data = str(archive) if path is None else str(bad / path)
    proc = cli("train.py", "--dataset", "CIFAR100", "--data_path", data, "--epochs", "1",
               "--batch_size", "25", "-o", "Arch.width=0.0625", "--dir", str(tmp_path / "run"),
               *extra, env=ONE_THREAD)
    assert_refused(proc, *needles)
    assert not list((tmp_path / "run").glob("checkpoint-*"))
