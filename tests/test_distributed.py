"""Data parallelism on CPU with gloo, two processes: paddle.distributed.launch and torchrun.

``torch-cuda-only`` runs torchrun's processes with a default group whose backend handles CUDA
tensors only (tests/cuda_only_backend.py), as NCCL does on a GPU host.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, tiny_config
from swa_recipe.config import ConfigError, validate
from swa_recipe.data.cifar import EpochBatches

LAUNCHERS = {
    "paddle": [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2"],
    "torch": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"],
}
LAUNCHERS["torch-cuda-only"] = LAUNCHERS["torch"] + [str(ROOT / "tests" / "cuda_only_backend.py")]
EXT = {"paddle": ".pdparams", "torch": ".pt"}


def run(cmd: list[str], cwd, log_dir=None) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    if log_dir is not None:
        cmd = cmd[:3] + ["--log_dir", str(log_dir)] + cmd[3:] if "paddle" in cmd[2] else cmd
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def train_args(framework: str, archive, out) -> list[str]:
    return ["train.py", "--config", "configs/lite.yaml", "--framework", framework,
            "--data_path", str(archive), "--dir", str(out),
            "-o", "Global.epochs=1", "-o", "SWA.swa_start=1", "-o", "Global.log_freq=2"]


@pytest.fixture(scope="module")
def one_process(lite_archive, tmp_path_factory):
    """The 1-process lite run of each twin, made once."""
    runs = {}

    def get(framework: str):
        if framework not in runs:
            runs[framework] = tmp_path_factory.mktemp(f"one-{framework}")
            run([sys.executable, *train_args(framework, lite_archive, runs[framework])], ROOT)
        return runs[framework]

    return get


@pytest.mark.parametrize("launcher", ["paddle", "torch", "torch-cuda-only"])
def test_two_processes_equal_one(launcher, one_process, lite_archive, tmp_path):
    """Lite config (dropout 0.5), VGG16 without BN, one epoch with SWA and evaluation: weights
    and SWA weights of a 2-process run equal the 1-process run's within 1e-4 (measured: up to
    1.5e-5 on these random images, where max-pooling ties let rounding differences of the
    64- and 128-image sums grow; 6e-8 on real images; with per-rank dropout masks the runs
    differ by orders of magnitude more); one set of outputs is written."""
    from swa_apps.cli import import_twin

    framework = launcher.split("-")[0]
    one, two = one_process(framework), tmp_path / "two"
    run(LAUNCHERS[launcher] + train_args(framework, lite_archive, two), ROOT, tmp_path / "log")
    twin = import_twin(framework)
    a = twin.checkpoint.load(str(one / f"checkpoint-1{EXT[framework]}"))
    b = twin.checkpoint.load(str(two / f"checkpoint-1{EXT[framework]}"))
    for key in ("state_dict", "swa_state_dict"):
        wa, wb = twin.checkpoint.to_numpy(a[key]), twin.checkpoint.to_numpy(b[key])
        worst = max(float(np.abs(wa[k] - wb[k]).max()) for k in wa)
        print(launcher, key, worst)
        assert worst <= 1e-4, (key, worst)
    assert a["swa_n"] == b["swa_n"] == 1
    # exactly one set of outputs: one table row, one log line per logged iteration
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    with open(two / "metrics.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 1
    lines = [ln for ln in (two / "train.log").read_text().splitlines() if "[Epoch 1/1, iter" in ln]
    assert len(lines) == 4  # 8 iterations, log_freq 2


@pytest.mark.parametrize("launcher, name, depth, n_stats", [
    ("paddle", "VGG16BN", None, 26), ("torch", "VGG16BN", None, 26),
    ("torch-cuda-only", "VGG16BN", None, 26),
    ("paddle", "PreResNet164", 47, 92), ("torch", "PreResNet164", 47, 92)])
def test_distributed_update_bn_equals_single_process(launcher, name, depth, n_stats, archive,
                                                     tmp_path):
    """update_bn over 2 ranks equals torch's update_bn in one process within 1e-5."""
    framework = launcher.split("-")[0]
    import torch
    from torch.optim.swa_utils import update_bn

    from swa_apps.convert import convert_state_dict
    from swa_torch.data import build_loaders
    from swa_torch.models import build_model

    cfg = tiny_config(archive, Arch={"model": name, "depth": depth}, Data={"batch_size": 20})
    torch.manual_seed(3)
    model = build_model(cfg)
    init = {k: v.numpy() for k, v in model.state_dict().items()}
    if framework == "paddle":
        init = convert_state_dict(init, "torch2paddle")
    np.savez(tmp_path / "init.npz", **{k: v for k, v in init.items()
                                       if not k.endswith("num_batches_tracked")})
    train_loader, _ = build_loaders(cfg)
    update_bn(train_loader, model)
    want = {k: v.numpy() for k, v in model.state_dict().items()}

    worker = str(ROOT / "tests" / "dist_update_bn_worker.py")
    run(LAUNCHERS[launcher] + [worker, framework, str(archive), str(tmp_path), name,
                               str(depth or "null")], ROOT, tmp_path / "log")
    got = dict(np.load(tmp_path / f"{framework}.npz"))
    if framework == "paddle":
        got = convert_state_dict(got, "paddle2torch")
    stats = [k for k in want if k.endswith(("running_mean", "running_var"))]
    assert len(stats) == n_stats
    for k in stats:  # 1e-5, relative for statistics above 1 (float32 carries 7 digits)
        assert np.abs(got[k] - want[k]).max() <= 1e-5 * max(1.0, np.abs(want[k]).max()), k


def test_shards_cover_every_index_once():
    """Over one epoch on 2 ranks every training index appears exactly once."""
    for n, batch in ((1000, 128), (50000, 128), (100, 32)):
        seen = []
        for rank in range(2):
            batches = EpochBatches(n, batch, seed=1, shuffle=True, rank=rank, world_size=2)
            batches.set_epoch(5)
            shards = list(batches)
            assert len(shards) == len(batches)  # every rank runs the same number of steps
            for it, shard in enumerate(shards):
                assert len(shard) in (batches.global_size(it) // 2,
                                      -(-batches.global_size(it) // 2))
            seen += [i for shard in shards for _, i in shard]
        assert sorted(seen) == list(range(n))


def test_batch_must_divide_over_processes(archive):
    cfg = tiny_config(archive)
    with pytest.raises(ConfigError, match="divide evenly over 3 processes"):
        validate(cfg, world_size=3)
    cfg["Data"].update(batch_size=32, train_subset=97)  # last batch: 1 image
    with pytest.raises(ConfigError, match="last batch .* 1 images, fewer than the 2"):
        validate(cfg, world_size=2)
