"""Whole runs through the command line: lite training, eval.py, conversion, resume, errors."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, straight_and_resumed

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def cli(*args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env={**ENV, **(env or {})},
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def last_swa_accuracy(run_dir) -> float:
    with open(run_dir / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    return float(rows[-1]["swa_te_acc"])


def printed_accuracy(proc: subprocess.CompletedProcess) -> float:
    match = re.search(r"accuracy (\d+\.\d+) %", proc.stdout)
    assert match, proc.stdout
    return float(match.group(1))


@pytest.fixture(scope="module", params=["paddle", "torch"])
def lite_run(request, lite_archive, tmp_path_factory):
    """``configs/lite.yaml`` trained once per framework on the synthetic archive."""
    framework = request.param
    out = tmp_path_factory.mktemp(f"lite-{framework}")
    cli("train.py", "--config", "configs/lite.yaml", "--framework", framework,
        "--data_path", str(lite_archive), "--dir", str(out))
    return framework, out


def test_lite_run_writes_every_output(lite_run):
    framework, out = lite_run
    ext = ".pdparams" if framework == "paddle" else ".pt"
    for name in ["config.yaml", "train.log", "train_log.txt", "metrics.csv", "curves.png",
                 *(f"checkpoint-{e}{ext}" for e in range(4))]:
        assert (out / name).is_file(), name
    log = (out / "train.log").read_text()
    assert "avg_reader_cost" in log and "avg_ips" in log
    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["ep"]) for r in rows] == [1, 2, 3]
    assert rows[0]["swa_te_acc"] == "" and rows[1]["swa_te_acc"] != ""  # SWA from epoch 2
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.05, 0.05, 0.01])


def test_eval_reproduces_final_swa_accuracy(lite_run, lite_archive):
    framework, out = lite_run
    ext = ".pdparams" if framework == "paddle" else ".pt"
    proc = cli("eval.py", "--model_path", str(out / f"checkpoint-3{ext}"),
               "--data_path", str(lite_archive))
    assert proc.stdout.startswith("SWA weights")
    assert printed_accuracy(proc) == pytest.approx(last_swa_accuracy(out), abs=1e-4)


def test_converted_checkpoint_evaluates_the_same(lite_run, lite_archive, tmp_path):
    framework, out = lite_run
    src, dst = (("checkpoint-3.pt", "c.pdparams") if framework == "torch"
                else ("checkpoint-3.pdparams", "c.pt"))
    cli("tools/convert.py", str(out / src), str(tmp_path / dst))
    proc = cli("eval.py", "--model_path", str(tmp_path / dst), "--data_path", str(lite_archive))
    assert abs(printed_accuracy(proc) - last_swa_accuracy(out)) <= 0.1


def test_eval_refuses_other_model_or_framework(lite_run, lite_archive):
    framework, out = lite_run
    ext = ".pdparams" if framework == "paddle" else ".pt"
    other = "torch" if framework == "paddle" else "paddle"
    path = str(out / f"checkpoint-3{ext}")
    for extra, needle in ((["--model", "VGG19"], "Arch.model"),
                          (["-o", "Arch.width=0.125"], "Arch.width"),
                          (["--framework", other], "--framework")):
        proc = cli("eval.py", "--model_path", path, "--data_path", str(lite_archive), *extra,
                   check=False)
        assert proc.returncode == 2
        assert needle in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("eval.py", "--model_path", str(out / f"checkpoint-1{ext}"), "--which", "swa",
               "--data_path", str(lite_archive), check=False)
    assert proc.returncode == 2 and "no SWA weights" in proc.stderr


def test_original_repo_checkpoint_loads_into_eval(archive, tmp_path):
    """A checkpoint in timgaripov/swa's layout (no config) evaluates with --model flags."""
    import torch

    from swa_torch.models import VGG

    torch.manual_seed(0)
    sgd, swa = VGG(width=0.0625).state_dict(), VGG(width=0.0625).state_dict()
    path = tmp_path / "checkpoint-200.pt"
    torch.save({"epoch": 200, "state_dict": sgd, "swa_state_dict": swa, "swa_n": 40,
                "optimizer": {"state": {}, "param_groups": []}}, path)
    proc = cli("eval.py", "--model_path", str(path), "--data_path", str(archive),
               "--model", "VGG16", "-o", "Arch.width=0.0625")
    assert proc.stdout.startswith("SWA weights") and "(50 images)" in proc.stdout


@pytest.mark.parametrize("framework", ["paddle", "torch"])
def test_resume_continues_exactly(framework, archive, tmp_path):
    """Three epochs straight equal one epoch, a restart from checkpoint-1, and two more."""
    from swa_apps.twins import import_twin

    twin = import_twin(framework)
    _, straight, resumed = straight_and_resumed(framework, archive, tmp_path, 3,
                                                Arch={"dropout": 0.5})
    for key in ("state_dict", "swa_state_dict"):
        a = twin.checkpoint.to_numpy(straight[key])
        b = twin.checkpoint.to_numpy(resumed[key])
        assert a.keys() == b.keys()
        for name in a:
            assert np.array_equal(a[name], b[name]), (key, name)
    assert straight["swa_n"] == resumed["swa_n"] == 3
    rows_b = (tmp_path / "b" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows_b[1:]] == ["2", "3"]


def test_failed_checkpoint_write_keeps_the_previous_file(tmp_path):
    from swa_recipe.checkpoint import atomic_save

    path = tmp_path / "checkpoint-1.pt"
    path.write_bytes(b"previous")

    def failing_write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_save(failing_write, str(path))
    assert path.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["checkpoint-1.pt"]


@pytest.mark.skipif(not (ROOT.parent / "shared" / "data" / "cifar-10-python.tar.gz").exists(),
                    reason="the shared CIFAR-10 copy is not beside the checkout")
def test_reads_the_full_shared_archive():
    from swa_recipe.data.cifar import load_cifar10

    train, test = load_cifar10(str(ROOT.parent / "shared" / "data" / "cifar-10-python.tar.gz"))
    assert train.images.shape == (50000, 3, 32, 32) and test.images.shape == (10000, 3, 32, 32)
    assert np.bincount(test.labels).tolist() == [1000] * 10
