"""What a GPU or several nodes need, checked on CPU: device choice, loader workers, dropout masks
that do not depend on the process count, host reads only at log lines, resume agreed by rank 0."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import ROOT, tiny_config
from swa_recipe.config import ConfigError, default_config, merge, validate
from swa_recipe.device import MAX_AUTO_WORKERS, loader_workers, resolve_device
from swa_recipe.dropout import keep_masks

sys.path.insert(0, str(ROOT / "bench"))
from throughput import host_reads  # noqa: E402

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=300)


# ------------------------------------------------------------------------------------ device


def test_device_auto_is_a_gpu_only_when_one_is_visible():
    assert resolve_device("auto", "torch", True, 2) == ("gpu", None)
    assert resolve_device("gpu", "paddle", True, 1) == ("gpu", None)
    assert resolve_device("cpu", "torch", True, 4) == ("cpu", None)
    device, note = resolve_device("auto", "paddle", True, 0)  # a GPU build, no GPU visible
    assert device == "cpu" and note.startswith("note:") and "no GPU is visible" in note
    assert resolve_device("auto", "torch", False, 0) == ("cpu", None)  # a CPU-only build


@pytest.mark.parametrize("framework, package", [("paddle", "paddlepaddle-gpu"),
                                                ("torch", "CUDA build of torch")])
def test_device_gpu_without_one_names_what_to_install(framework, package):
    with pytest.raises(ConfigError, match=package):
        resolve_device("gpu", framework, False, 0)
    with pytest.raises(ConfigError, match="sees no GPU .*CUDA_VISIBLE_DEVICES"):
        resolve_device("gpu", framework, True, 0)


@pytest.mark.parametrize("framework", ["paddle", "torch"])
def test_gpu_asked_of_a_cpu_build_is_refused_in_one_line(framework, archive, tmp_path):
    """train.py and eval.py honour Global.device; a refused start writes no train.log."""
    import torch

    from swa_torch.models import VGG

    out = tmp_path / "run"
    proc = cli("train.py", "--framework", framework, "--data_path", str(archive), "--dir",
               str(out), "-o", "Global.device=gpu", "-o", "Arch.width=0.0625")
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr
    assert "Global.device is gpu" in errors[0]
    assert not (out / "train.log").exists()

    weights = tmp_path / "weights.pt"
    torch.save(VGG(width=0.0625).state_dict(), weights)
    proc = cli("eval.py", "--model_path", str(weights), "--data_path", str(archive),
               "--model", "VGG16", "-o", "Arch.width=0.0625", "-o", "Global.device=gpu")
    assert proc.returncode == 2 and "CUDA build of torch" in proc.stderr
    proc = cli("eval.py", "--model_path", str(weights), "--data_path", str(archive),
               "--model", "VGG16", "-o", "Arch.width=0.0625")
    assert proc.returncode == 0 and "note:" not in proc.stderr  # a CPU-only build: no note


# ----------------------------------------------------------------------------------- workers


def test_num_workers_auto_follows_the_device_and_the_cores():
    assert loader_workers("auto", "cpu", cpus=32, local_processes=1) == 0
    assert loader_workers("auto", "gpu", cpus=16, local_processes=1) == MAX_AUTO_WORKERS
    assert loader_workers("auto", "gpu", cpus=16, local_processes=4) == 3
    assert loader_workers("auto", "gpu", cpus=2, local_processes=2) == 1
    assert loader_workers("3", "gpu") == loader_workers("3", "cpu") == 3


def test_num_workers_accepts_auto_or_a_count():
    def data(value):
        return validate(merge(default_config(), {"Data": {"num_workers": value}}, "test"))

    assert data("auto")["Data"]["num_workers"] == "auto"
    assert data(4)["Data"]["num_workers"] == "4"
    for bad in (-1, "many", 257, "9" * 5000):
        with pytest.raises(ConfigError, match=r"'auto' or an integer in \[0, 256\]"):
            data(bad)


# ----------------------------------------------------------------------------------- dropout


def test_dropout_masks_belong_to_samples_not_to_ranks():
    """A sample's masks are the same in a batch of 128 on one rank and in a shard of 64 on
    rank 1 of 2; they change with the epoch; p of the units are dropped, the rest scaled."""
    batch = list(np.random.default_rng(0).permutation(50000)[:128])
    whole = keep_masks(1, 3, batch, 0.5, [64, 64])
    shard = keep_masks(1, 3, batch[1::2], 0.5, [64, 64])
    for a, b in zip(whole, shard, strict=True):
        assert np.array_equal(a[1::2], b)
    assert not np.array_equal(keep_masks(1, 4, batch, 0.5, [64])[0], whole[0])
    assert not np.array_equal(whole[0], whole[1])  # each layer its own mask
    big = keep_masks(7, 0, range(2000), 0.3, [512])[0]
    assert set(np.unique(big)) == {np.float32(0), np.float32(1 / 0.7)}
    assert abs((big == 0).mean() - 0.3) < 0.005


@pytest.mark.parametrize("framework", ["paddle", "torch"])
def test_model_applies_the_masks_in_training_only(framework):
    from swa_apps.cli import import_twin

    twin = import_twin(framework)
    cfg = tiny_config(None, Arch={"dropout": 0.5})
    model = twin.models.build_model(cfg)
    layers = twin.models.dropout_layers(model)
    mask = np.zeros((2, 32), np.float32)
    mask[:, ::2] = 2.0
    x = np.ones((2, 32), np.float32)
    to = (lambda a: __import__("paddle").to_tensor(a)) if framework == "paddle" else (
        lambda a: __import__("torch").from_numpy(a))
    twin.models.set_dropout_masks(model, [to(mask), to(mask)])
    model.train()
    assert np.array_equal(np.asarray(layers[0](to(x))), mask)
    model.eval()
    assert np.array_equal(np.asarray(layers[0](to(x))), x)
    twin.models.set_dropout_masks(model, None)
    assert all(layer.mask is None for layer in layers)


# -------------------------------------------------------------------------------- host syncs


@pytest.mark.parametrize("framework", ["paddle", "torch"])
def test_step_values_are_read_only_when_a_line_is_due(framework, archive, tmp_path):
    """10 steps with log_freq 4: 3 reads (steps 4, 8 and the epoch's last), none between;
    evaluation reads once."""
    from swa_apps.cli import import_twin

    cfg = tiny_config(archive, Global={"log_freq": 4, "framework": framework,
                                       "dir": str(tmp_path)},
                      Arch={"dropout": 0.5}, Data={"batch_size": 10})
    trainer = import_twin(framework).trainer.Trainer(cfg)
    assert trainer.iters == 10
    with host_reads(framework) as reads:
        trainer.train_epoch(0)
    assert len(reads) == math.ceil(10 / 4), reads
    with host_reads(framework) as reads:
        trainer.evaluate()
    assert len(reads) == 1, reads


# ------------------------------------------------------------------------------------ resume


def test_resume_auto_is_rank_zeros_choice(tmp_path):
    """Rank 1 does not look at its own file system: it takes what rank 0 broadcasts."""
    from swa_recipe.loop import agreed_resume_path

    sent = []

    def broadcast_object(obj, world_size):
        sent.append(obj)
        return str(tmp_path / "checkpoint-7.pdparams")

    cfg = {"Global": {"resume": "auto", "framework": "paddle"}}
    rank1 = SimpleNamespace(rank=1, world_size=2,
                            dist=SimpleNamespace(broadcast_object=broadcast_object))
    got = agreed_resume_path(rank1, cfg, str(tmp_path / "absent"))
    assert got == str(tmp_path / "checkpoint-7.pdparams")
    assert sent == [None]
    (tmp_path / "checkpoint-3.pdparams").write_bytes(b"x")
    rank0 = SimpleNamespace(rank=0, world_size=2,
                            dist=SimpleNamespace(broadcast_object=lambda obj, w: obj))
    assert agreed_resume_path(rank0, cfg, str(tmp_path)).endswith("checkpoint-3.pdparams")


NO_PADDLE = '''import sys


class NoPaddle:
    """A machine without Paddle (the lent GPU machine has only CUDA torch)."""

    def find_spec(self, name, path=None, target=None):
        if name == "paddle" or name.startswith("paddle."):
            raise ImportError(f"No module named {name!r}")


sys.meta_path.insert(0, NoPaddle())
'''


def test_the_torch_twin_trains_and_evaluates_without_paddle(tmp_path, lite_archive):
    """``train.py --framework torch`` and ``eval.py`` on its checkpoint never import Paddle."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NO_PADDLE)
    env = {**ENV, "PYTHONPATH": str(site)}
    blocked = subprocess.run([sys.executable, "-c", "import paddle"], env=env,
                             capture_output=True, text=True)
    assert blocked.returncode == 1 and "No module named 'paddle'" in blocked.stderr
    run = tmp_path / "run"
    for cmd in (["train.py", "--config", "configs/lite.yaml", "--framework", "torch",
                 "--data_path", str(lite_archive), "--dir", str(run), "-o", "Global.epochs=1",
                 "-o", "SWA.swa_start=1"],
                ["eval.py", "--model_path", str(run / "checkpoint-1.pt"), "--data_path",
                 str(lite_archive)]):
        proc = subprocess.run([sys.executable, *cmd], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-1500:]
    assert "SWA weights of" in proc.stdout and "accuracy" in proc.stdout
