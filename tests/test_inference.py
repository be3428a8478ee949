"""predict.py, tools/export_model.py, deploy/inference_python/infer.py and the TIPC lite chain."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, make_batches, tiny_config, write_archive
from swa_apps.cli import run
from swa_apps.inference import (
    check_export,
    infer_main,
    infer_parser,
    predict_main,
    predict_parser,
)
from swa_recipe.checkpoint import CheckpointError
from swa_recipe.data.cifar import load_cifar10
from swa_recipe.data.samples import write_lite_archive, write_test_pngs
from swa_recipe.logs import LOGGER_NAME
from swa_recipe.predict import Inputs, format_top_k, read_image, top_k

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}
CONFIG = ROOT / "test_tipc" / "configs" / "VGG16" / "train_infer_python.txt"


def cli(*args: str, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([*args], cwd=cwd, env={**ENV, **(env or {})}, capture_output=True,
                          text=True, timeout=600)


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:])
    return proc.stdout


@pytest.fixture(scope="module")
def archive100(tmp_path_factory) -> Path:
    """100 training and 100 test images (the 100 test images of the acceptance check)."""
    return write_archive(tmp_path_factory.mktemp("cifar100img") / "cifar-10-python.tar.gz",
                         make_batches(100, 100, seed=3))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, archive100) -> dict[str, Path]:
    """A Paddle training checkpoint (SGD and SWA weights) and a torch plain state dict, VGG16."""
    import paddle
    import torch

    from swa_paddle import checkpoint as pd_ckpt
    from swa_paddle.models import build_model as pd_build
    from swa_torch import checkpoint as pt_ckpt
    from swa_torch.models import build_model as pt_build

    folder = tmp_path_factory.mktemp("ckpt")
    cfg = tiny_config(archive100)
    paddle.seed(0)
    sgd, swa = pd_build(cfg).state_dict(), pd_build(cfg).state_dict()
    pd_ckpt.save({"epoch": 2, "state_dict": sgd, "swa_state_dict": swa, "swa_n": 1,
                  "config": cfg}, str(folder / "checkpoint-2.pdparams"))
    torch.manual_seed(0)
    pt_ckpt.save(pt_build(cfg).state_dict(), str(folder / "weights.pt"))
    return {"paddle": folder / "checkpoint-2.pdparams", "torch": folder / "weights.pt"}


@pytest.fixture(scope="module")
def pngs(tmp_path_factory, archive100) -> Path:
    folder = tmp_path_factory.mktemp("pngs")
    write_test_pngs(str(archive100), str(folder), 5)
    return folder


@pytest.mark.parametrize("framework", ["paddle", "torch"])
@pytest.mark.parametrize("model", ["VGG16", "VGG16BN"])
def test_exported_logits_equal_dynamic(framework, model, archive100, tmp_path):
    """On 100 test images: exported program (Paddle Inference / torch.export) == dynamic model
    with oneDNN convolutions, within 1e-5, same top-1; the program holds ordinary operators."""
    cfg = tiny_config(archive100, Arch={"model": model}, Global={"framework": framework})
    images = load_cifar10(str(archive100))[1].images
    assert len(images) == 100
    res = check_export(framework, cfg, None, images, str(tmp_path))
    assert res["max_abs_diff"] <= 1e-5 and res["top1_same"] == 100, res
    if framework == "paddle":
        program = (tmp_path / "inference.pdmodel").read_bytes()  # legacy IR in this process
        assert b"conv2d" in program and b"run_program" not in program
        from swa_paddle.export import Predictor

        params = tmp_path / "inference.pdiparams"
        params.write_bytes(params.read_bytes()[:1000])
        with pytest.raises(CheckpointError, match="cannot be loaded by Paddle Inference"):
            Predictor(str(tmp_path), "cpu")
    else:
        assert res["files"] == ["inference.pt2"]


def test_export_under_pir(archive100, tmp_path):
    """With PIR on, export writes inference.json; it matches, and loads under the legacy IR."""
    out = ok(cli(sys.executable, "tools/check_export.py", "--data_path", str(archive100),
                 "--model", "VGG16BN", "-o", "Arch.width=0.0625", "--save_dir", str(tmp_path),
                 env={"FLAGS_enable_pir_api": "1"}))
    assert "PASS" in out and (tmp_path / "inference.json").is_file(), out
    from swa_paddle.export import Predictor

    logits = Predictor(str(tmp_path), "cpu")(np.zeros((3, 3, 32, 32), np.float32))
    assert logits.shape == (3, 10)


def test_torch_export_loads_without_project(archive100, tmp_path):
    cfg = tiny_config(archive100, Global={"framework": "torch"})
    check_export("torch", cfg, None, load_cifar10(str(archive100))[1].images[:4], str(tmp_path))
    code = ("import torch; m = torch.export.load('inference.pt2').module(); "
            "print(tuple(m(torch.zeros(5, 3, 32, 32)).shape))")
    env = {k: v for k, v in ENV.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert ok(proc).strip() == "(5, 10)"


def predictions(stdout: str) -> list[str]:
    """The top-k part of each image line (names differ between --img_path and --index)."""
    return [ln.split(": ", 1)[1].split(" [true")[0] for ln in stdout.splitlines()[1:]
            if not ln.startswith("accuracy: ")]


@pytest.mark.parametrize("framework", ["paddle", "torch"])
def test_predict_export_infer_agree(framework, checkpoints, pngs, archive100, tmp_path):
    """predict.py on PNGs == predict.py --index == infer.py on the exported model (batch 2)."""
    ckpt = str(checkpoints[framework])
    extra = ["--model", "VGG16", "-o", "Arch.width=0.0625"] if framework == "torch" else []
    by_png = ok(cli(sys.executable, "predict.py", "--model_path", ckpt, "--img_path", str(pngs),
                    *extra))
    by_index = ok(cli(sys.executable, "predict.py", "--model_path", ckpt, "--index", "0", "1",
                      "2", "3", "4", "--data_path", str(archive100), *extra))
    assert predictions(by_png) == predictions(by_index) and len(predictions(by_png)) == 5
    assert "[true: " in by_index
    ok(cli(sys.executable, "tools/export_model.py", "--model_path", ckpt, "--save_dir",
           str(tmp_path), *extra))
    proc = cli(sys.executable, "deploy/inference_python/infer.py", "--model_dir",
               str(tmp_path), "--img_path", str(pngs), "--batch_size", "2")
    assert predictions(ok(proc)) == predictions(by_png)
    assert "OMP_NUM_THREADS" not in proc.stderr  # Paddle's import banner is hidden
    # labels.txt beside the PNGs: true labels and the accuracy, as with --index
    assert proc.stdout.count("[true: ") == 5
    assert proc.stdout.splitlines()[-1] == by_index.splitlines()[-1]
    assert re.fullmatch(r"accuracy: \d/5 = [\d.]+ % \(top-1\)", by_index.splitlines()[-1])


def refused(capsys, main, args) -> str:
    """One ``error:`` line on stderr and exit 2 (in-process, as the scripts run it)."""
    assert run(lambda: main(args), False) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_bad_inputs_refused(capsys, checkpoints, pngs, tmp_path):
    ckpt = str(checkpoints["paddle"])

    def predict(*a):
        return refused(capsys, predict_main, predict_parser().parse_args(
            ["--model_path", ckpt, *a]))

    assert "not found" in predict("--img_path", str(tmp_path / "missing.png"))
    truncated = tmp_path / "truncated.png"
    whole = sorted(pngs.glob("*.png"))[0].read_bytes()
    truncated.write_bytes(whole[:len(whole) // 2])
    assert "cannot be read as an image" in predict("--img_path", str(truncated))
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    assert "cannot be read as an image" in predict("--img_path", str(text))
    (tmp_path / "no_images").mkdir()
    assert "holds no image" in predict("--img_path", str(tmp_path / "no_images"))
    assert "Arch.model=VGG16" in predict("--img_path", str(pngs), "-o", "Arch.model=VGG19")
    assert "not found" in refused(capsys, predict_main, predict_parser().parse_args(
        ["--model_path", str(tmp_path / "none.pdparams"), "--index", "0"]))
    empty = tmp_path / "exported"
    empty.mkdir()
    line = refused(capsys, infer_main, infer_parser().parse_args(
        ["--model_dir", str(empty), "--index", "0"]))
    assert "holds no exported model" in line and "tools/export_model.py" in line
    (empty / "inference.pdiparams").write_bytes(b"\0" * 64)
    for program in ("inference.pdmodel", "inference.json"):
        (empty / program).write_bytes(b"garbage")
        assert "is not a Paddle program" in refused(capsys, infer_main, infer_parser().parse_args(
            ["--model_dir", str(empty), "--index", "0"]))
        (empty / program).unlink()


def test_state_dict_of_another_model_refused(capsys, checkpoints, pngs):
    """A plain state dict given as VGG16BN: the first missing key is named."""
    line = refused(capsys, predict_main, predict_parser().parse_args(
        ["--model_path", str(checkpoints["torch"]), "--img_path", str(pngs), "--model",
         "VGG16BN", "-o", "Arch.width=0.0625"]))
    assert "it is not a checkpoint of this model" in line or "another model" in line


def test_bad_image_from_the_command_line(checkpoints, tmp_path):
    """The script itself: one line, exit 2, no traceback."""
    proc = cli(sys.executable, "predict.py", "--model_path", str(checkpoints["paddle"]),
               "--img_path", str(tmp_path / "missing.png"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")] == [
        f"error: image {tmp_path / 'missing.png'} not found; pass an existing PNG or JPEG file "
        f"to --img_path"]


def test_read_image_resizes_and_converts(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    assert np.array_equal(read_image(str(tmp_path / "a.png")), rgb.transpose(2, 0, 1))
    Image.fromarray(rgb).resize((64, 48)).convert("L").save(tmp_path / "b.jpg")
    b = read_image(str(tmp_path / "b.jpg"))
    assert b.shape == (3, 32, 32) and b.dtype == np.uint8 and np.array_equal(b[0], b[2])


def test_top_k_and_format():
    logits = np.array([[0.0, 2.0, 1.0], [5.0, 0.0, 0.0]])
    rows = top_k(logits, 2)
    assert [c for c, _ in rows[0]] == [1, 2] and [c for c, _ in rows[1]] == [0, 1]
    p = np.exp([0.0, 2.0, 1.0]) / np.exp([0.0, 2.0, 1.0]).sum()
    assert rows[0][0][1] == pytest.approx(p[1])
    lines = format_top_k(Inputs(["x", "y"], np.zeros((2, 3, 32, 32)), [1, 0]), logits,
                         ["a", "b", "c"], 2)
    assert lines[0] == f"x: b (1) {p[1]:.4f}, c (2) {p[2]:.4f} [true: b]"
    assert lines[2] == "accuracy: 2/2 = 100.00 % (top-1)"
    lines = format_top_k(Inputs(["x", "y"], np.zeros((2, 3, 32, 32)), [None, 1]), logits,
                         ["a", "b", "c"], 2)
    assert lines[1].endswith("[true: b]") and lines[2] == "accuracy: 0/1 = 0.00 % (top-1)"


def test_samples_round_trip(archive100, tmp_path):
    write_lite_archive(str(archive100), str(tmp_path / "lite.tar.gz"), 40, 10)
    train, test = load_cifar10(str(tmp_path / "lite.tar.gz"))
    full_train, full_test = load_cifar10(str(archive100))
    assert np.array_equal(train.images, full_train.images[:40])
    assert np.array_equal(test.labels, full_test.labels[:10])
    files = write_test_pngs(str(archive100), str(tmp_path / "png"), 3)
    assert np.array_equal(read_image(str(tmp_path / "png" / files[2])), full_test.images[2])
    labels = (tmp_path / "png" / "labels.txt").read_text().split()
    assert labels[:2] == [files[0], str(full_test.labels[0])]


def tipc_config(tmp_path: Path) -> Path:
    """The committed config with its output and data under ``tmp_path``."""
    text = CONFIG.read_text().replace("./test_tipc/output", str(tmp_path / "output"))
    path = tmp_path / "train_infer_python.txt"
    path.write_text(text.replace("./test_tipc/data", str(tmp_path / "data")))
    return path


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_tipc_lite_chain(lite_archive, tmp_path):
    """prepare.sh + test_train_inference_python.sh lite_train_lite_infer: train, eval, export,
    infer at batch 1 and 4, every stage successful; and again, the mode starting clean."""
    config = tipc_config(tmp_path)
    env = {"CIFAR10_ARCHIVE": str(lite_archive)}
    ok(cli("bash", "test_tipc/prepare.sh", str(config), "lite_train_lite_infer", env=env))
    for _ in range(2):
        ok(cli("bash", "test_tipc/test_train_inference_python.sh", str(config),
               "lite_train_lite_infer"))
        status = (tmp_path / "output" / "VGG16" / "logs" / "lite_train_lite_infer" /
                  "results_python.log").read_text().splitlines()
        assert [ln.split(" - ")[1] for ln in status] == [
            "train", "eval", "export", "infer_cpu_batchsize_1", "infer_cpu_batchsize_4"]
        assert all(ln.startswith("Run successfully") for ln in status)
    run = tmp_path / "output" / "VGG16" / "lite_train_lite_infer"
    assert (run / "checkpoint-2.pdparams").is_file()
    assert "resumed" not in (run / "train.log").read_text()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_tipc_chain_fails_on_a_failed_stage(tmp_path):
    config = tipc_config(tmp_path)
    config.write_text(config.read_text().replace("train_model:null",
                                                 f"train_model:{tmp_path / 'missing.pdparams'}"))
    proc = cli("bash", "test_tipc/test_train_inference_python.sh", str(config), "whole_infer")
    assert proc.returncode == 1 and "Run failed with command - export" in proc.stdout
    assert cli("bash", "test_tipc/prepare.sh", str(config), "lite_train_lite_infer",
               env={"CIFAR10_ARCHIVE": ""}).returncode == 2


def fake_cuda_build_without_gpu(monkeypatch, framework: str) -> None:
    """A CUDA build on a host whose GPUs are hidden, as the training path's tests pass it to
    ``swa_recipe.device.resolve_device``, here faked where each framework answers."""
    if framework == "paddle":
        import paddle

        monkeypatch.setattr(paddle, "is_compiled_with_cuda", lambda: True)
        monkeypatch.setattr(paddle.device.cuda, "device_count", lambda: 0)
    else:
        import torch

        monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.mark.parametrize("framework", ["paddle", "torch"])
def test_infer_auto_on_a_cuda_build_without_a_gpu_runs_on_the_cpu(
        framework, checkpoints, archive100, tmp_path, monkeypatch, capsys):
    """infer.py's ``--device auto`` follows train.py's policy (``swa_recipe.device``): a GPU only
    when one is visible, so a CUDA build without one infers on the CPU, with the same note;
    ``--device gpu`` there is refused in one line."""
    extra = ["--model", "VGG16", "-o", "Arch.width=0.0625"] if framework == "torch" else []
    ok(cli(sys.executable, "tools/export_model.py", "--model_path", str(checkpoints[framework]),
           "--save_dir", str(tmp_path), *extra))
    fake_cuda_build_without_gpu(monkeypatch, framework)
    # notes go to stderr, not to a run logger an in-process training test left behind
    monkeypatch.setattr(logging.getLogger(LOGGER_NAME), "handlers", [])
    args = ["--model_dir", str(tmp_path), "--index", "0", "--data_path", str(archive100)]
    assert run(lambda: infer_main(infer_parser().parse_args(args)), False) == 0
    out, err = capsys.readouterr()
    assert f"(VGG16, {framework}, cpu)" in out
    assert f"note: --device auto: {framework} runs on the CPU" in err
    line = refused(capsys, infer_main, infer_parser().parse_args([*args, "--device", "gpu"]))
    assert f"--device is gpu but {framework} sees no GPU" in line
