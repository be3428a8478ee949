"""PreResNet and WideResNet through the command line: lite SWA training in both twins with
eval.py reproducing the last SWA accuracy, and checkpoints of the original repo's layout."""

from __future__ import annotations

import subprocess

import numpy as np
import paddle
import pytest
import torch
from test_end_to_end import cli, last_swa_accuracy, printed_accuracy
from torch.optim import swa_utils as torch_swa

from swa_apps.cli import convert_main, convert_parser, eval_main, eval_parser, run
from swa_paddle import checkpoint as pd_ckpt
from swa_paddle import models as pd_models
from swa_recipe.config import default_config, merge, validate
from swa_torch import models as th_models

# Tiny models run several times faster in one thread on a busy 2-core machine (OpenMP's
# barriers spin while the other core is taken); results do not depend on it.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The same for torch in this process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

# (model, depth, width): tiny, with the block type of the full model.
LITE = [("PreResNet110", 20, 0.125), ("PreResNet164", 47, 0.0625),
        ("WideResNet28x10", 10, 0.05)]
EXT = {"paddle": ".pdparams", "torch": ".pt"}


@pytest.mark.parametrize("framework", ["paddle", "torch"])
@pytest.mark.parametrize("model, depth, width", LITE, ids=[m for m, _, _ in LITE])
def test_lite_swa_training_and_eval(model, depth, width, framework, archive, tmp_path, capsys):
    """Two epochs with SWA from the first on 64 images; eval.py on the last checkpoint prints
    the SWA accuracy of the table's last row."""
    out = tmp_path / "run"
    cli("train.py", "--framework", framework, "--model", model, "-o", f"Arch.depth={depth}",
        "-o", f"Arch.width={width}", "--epochs", "2", "--swa", "--swa_start", "1",
        "--lr_init", "0.1", "--swa_lr", "0.05", "--batch_size", "32",
        "-o", "Data.train_subset=64", "-o", "Data.test_subset=32", "--eval_freq", "1",
        "--data_path", str(archive), "--dir", str(out), env=ONE_THREAD)
    proc = eval_py(capsys, "--model_path", str(out / f"checkpoint-2{EXT[framework]}"),
                   "--data_path", str(archive))
    assert proc.stdout.startswith("SWA weights") and "(32 images)" in proc.stdout
    assert printed_accuracy(proc) == pytest.approx(last_swa_accuracy(out), abs=1e-4)


def eval_py(capsys, *args: str) -> subprocess.CompletedProcess:
    """``python eval.py ARGS`` run in this process (no second import of both frameworks)."""
    capsys.readouterr()
    code = run(lambda: eval_main(eval_parser().parse_args(args)), debug=True)
    return subprocess.CompletedProcess(["eval.py", *args], code, capsys.readouterr().out)


# ---------------------------------------------------------------- the original repo's files


def original_checkpoint(model: str, path) -> torch.nn.Module:
    """A full-size checkpoint as timgaripov/swa's train.py saves it (``utils.save_checkpoint``:
    epoch, state_dict, swa_state_dict of a plain model copy, swa_n, optimizer; no config),
    built with the torch twin's classes, which carry the original's module names. Returns
    the SWA model, with BN statistics of real activations."""
    cfg = validate(merge(default_config(), {"Arch": {"model": model}}, "test"))
    torch.manual_seed(0)
    sgd, swa = th_models.build_model(cfg), th_models.build_model(cfg)
    rng = np.random.default_rng(0)
    torch_swa.update_bn([torch.from_numpy(rng.standard_normal((4, 3, 32, 32), np.float32))
                         for _ in range(2)], swa)
    opt = torch.optim.SGD(sgd.parameters(), lr=0.1, momentum=0.9, weight_decay=3e-4)
    torch.save({"epoch": 225, "state_dict": sgd.state_dict(), "swa_state_dict": swa.state_dict(),
                "swa_n": 100, "optimizer": opt.state_dict()}, path)
    return swa.eval()


@pytest.mark.parametrize("model", ["PreResNet164", "WideResNet28x10"])
def test_original_checkpoint_evaluates_and_converts(model, archive, tmp_path, capsys):
    """eval.py evaluates the original's file with ``--model``; tools/convert.py turns it into a
    Paddle checkpoint whose SWA logits equal torch's (mean |diff| <= 1e-6) and which
    evaluates to the same accuracy and loss."""
    src, dst = tmp_path / "checkpoint-225.pt", tmp_path / "checkpoint-225.pdparams"
    swa = original_checkpoint(model, src)
    flags = ["--model", model, "--data_path", str(archive), "-o", "Data.test_subset=4"]
    th_eval = eval_py(capsys, "--model_path", str(src), *flags)
    assert th_eval.stdout.startswith("SWA weights") and "(4 images)" in th_eval.stdout
    args = convert_parser().parse_args([str(src), str(dst), "--model", model])
    assert run(lambda: convert_main(args), debug=True) == 0
    pd_eval = eval_py(capsys, "--model_path", str(dst), *flags)
    assert pd_eval.stdout.split(":", 1)[1] == th_eval.stdout.split(":", 1)[1]

    converted = pd_ckpt.load(str(dst))
    assert converted["epoch"] == 225 and converted["swa_n"] == 100
    cfg = validate(merge(default_config(), {"Arch": {"model": model}}, "test"))
    pd_model = pd_models.build_model(cfg)
    pd_ckpt.load_weights(pd_model, converted["swa_state_dict"], str(dst))
    pd_model.eval()
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        th_logits = swa(torch.from_numpy(x)).numpy()
    with paddle.no_grad():
        pd_logits = pd_model(paddle.to_tensor(x)).numpy()
    assert np.abs(th_logits).mean() > 0.05
    assert float(np.abs(th_logits - pd_logits).mean()) <= 1e-6
