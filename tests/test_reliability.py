"""Bad input (one line, non-zero exit, nothing damaged), interrupted runs, untrusted files."""

from __future__ import annotations

import hashlib
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, make_batches, write_folder

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}
EXT = {"paddle": ".pdparams", "torch": ".pt"}


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env={**ENV, **(env or {})},
                          capture_output=True, text=True, timeout=600)


def digest(folder: Path) -> dict[str, str]:
    """Every file of a run but train.log, which records each attempt (appending is no harm)."""
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.is_file() and p.name != "train.log"}


def assert_refused(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """One line on stderr naming the problem, exit code 2, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = [ln for ln in proc.stderr.splitlines()
             if ln.startswith("error:") or "Traceback" in ln]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, archive):
    """A finished 2-epoch Paddle run and a torch one, to resume, evaluate and protect."""
    out = tmp_path_factory.mktemp("runs")
    for framework in ("paddle", "torch"):
        proc = cli("train.py", "--config", "configs/lite.yaml", "--framework", framework,
                   "--data_path", str(archive), "--dir", str(out / framework),
                   "-o", "Global.epochs=2", "-o", "Data.train_subset=null",
                   "-o", "Data.test_subset=null", "-o", "Data.batch_size=32")
        assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory, archive):
    root = tmp_path_factory.mktemp("bad")
    raw = archive.read_bytes()
    (root / "truncated.tar.gz").write_bytes(raw[: len(raw) // 2])
    (root / "corrupt.tar.gz").write_bytes(os.urandom(4096))
    batches = make_batches()
    del batches["data_batch_3"]
    write_folder(root / "partial", batches)
    return root


TRAIN = ("train.py", "--config", "configs/lite.yaml", "-o", "Data.train_subset=null",
         "-o", "Data.test_subset=null", "-o", "Data.batch_size=32")

# (case, extra arguments, {placeholders}, words the message must contain)
TRAIN_CASES = [
    ("missing archive", ["--data_path", "{bad}/nowhere.tar.gz"], ["not found", "--data_path"]),
    ("truncated archive", ["--data_path", "{bad}/truncated.tar.gz"], ["truncated or corrupt"]),
    ("corrupt archive", ["--data_path", "{bad}/corrupt.tar.gz"], ["truncated or corrupt"]),
    ("MD5 mismatch", ["--data_path", "{archive}", "-o", f"Data.md5={'0' * 32}"],
     ["MD5", "Data.md5=null"]),
    ("folder missing a batch file", ["--data_path", "{bad}/partial"], ["data_batch_3"]),
    ("unknown config key", ["-o", "Global.epoch=3"], ["Global.epoch", "valid keys"]),
    ("wrong type", ["--epochs", "ten"], ["Global.epochs", "integer"]),
    ("epochs <= 0", ["--epochs", "0"], ["Global.epochs", "> 0"]),
    ("swa_start > epochs", ["--swa_start", "9"], ["SWA.swa_start", "after the last epoch"]),
    ("negative lr", ["--lr_init", "-0.1"], ["Optimizer.lr_init", "> 0"]),
    ("batch larger than the dataset", ["--data_path", "{archive}", "-o",
                                       "Data.train_subset=100", "-o", "Data.batch_size=128"],
     ["batch_size", "larger than the training set"]),
    ("batch larger than the archive", ["--data_path", "{archive}", "-o",
                                       "Data.batch_size=128"],
     ["batch_size", "larger than the training set (100 images)"]),
    ("output directory not writable", ["--data_path", "{archive}", "--dir",
                                       "{archive}/run"], ["cannot write", "--dir"]),
]


@pytest.mark.parametrize(("case", "extra", "needles"), TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_train_refuses(case, extra, needles, archive, bad_data, tmp_path):
    extra = [a.format(bad=bad_data, archive=archive) for a in extra]
    if "--dir" not in extra:
        extra += ["--dir", str(tmp_path / "run")]
    assert_refused(cli(*TRAIN, *extra), *needles)


def test_batch_not_divisible_by_processes(archive, tmp_path):
    proc = cli(*TRAIN, "--data_path", str(archive), "--dir", str(tmp_path / "r"),
               "--batch_size", "32", env={"WORLD_SIZE": "3"})
    assert_refused(proc, "Data.batch_size", "3 processes")


@pytest.mark.parametrize("framework", ["paddle", "torch"])
def test_resume_refusals_leave_the_run_intact(framework, run_dir, archive, tmp_path):
    folder = run_dir / framework
    before = digest(folder)
    ckpt = str(folder / f"checkpoint-1{EXT[framework]}")
    truncated = tmp_path / f"checkpoint-1{EXT[framework]}"
    truncated.write_bytes(Path(ckpt).read_bytes()[:1000])
    other = "torch" if framework == "paddle" else "paddle"
    common = [*TRAIN, "--framework", framework, "--data_path", str(archive), "--dir",
              str(folder), "-o", "Global.epochs=2"]
    cases = [
        (["--resume", ckpt, "--model", "VGG19"], ["Arch.model=VGG16", "VGG19"]),
        (["--resume", ckpt, "-o", "Arch.width=0.125"], ["Arch.width"]),
        (["--resume", str(truncated)], ["truncated"]),
        (["--resume", str(run_dir / other / f"checkpoint-1{EXT[other]}")],
         [f"{other} checkpoint", f"--framework {other}"]),
        (["--resume", str(folder / "missing.pdparams")], ["not found"]),
    ]
    for extra, needles in cases:
        assert_refused(cli(*common, *extra), *needles)
    assert digest(folder) == before


@pytest.mark.parametrize("framework", ["paddle", "torch"])
def test_eval_refusals(framework, run_dir, archive, tmp_path):
    folder = run_dir / framework
    ckpt = folder / f"checkpoint-1{EXT[framework]}"
    truncated = tmp_path / f"t{EXT[framework]}"
    truncated.write_bytes(ckpt.read_bytes()[:1000])
    base = ["eval.py", "--data_path", str(archive)]
    assert_refused(cli(*base, "--model_path", str(folder / f"checkpoint-0{EXT[framework]}"),
                       "--which", "swa"), "no SWA weights", "--which sgd")
    assert_refused(cli(*base, "--model_path", str(truncated)), "truncated")
    assert_refused(cli(*base, "--model_path", str(ckpt), "-o", "Arch.width=0.25"),
                   "Arch.width")
    # a checkpoint of another dataset: its saved config says so
    twin = __import__(f"swa_{framework}.checkpoint", fromlist=["checkpoint"])
    state = twin.load(str(ckpt))
    state["config"]["Data"]["dataset"] = "CIFAR100"
    other = tmp_path / f"c100{EXT[framework]}"
    twin.save(state, str(other))
    assert_refused(cli(*base, "--model_path", str(other)), "Data.dataset")


@pytest.mark.parametrize("framework", ["paddle", "torch"])
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(framework, archive, tmp_path):
    out = tmp_path / "nan"
    proc = cli(*TRAIN, "--framework", framework, "--data_path", str(archive), "--dir", str(out),
               "--lr_init", "1e12", "-o", "Arch.dropout=0")
    assert_refused(proc, "loss became", "epoch 1, iteration")
    assert "error: the loss became" in (out / "train.log").read_text()
    assert (out / f"checkpoint-0{EXT[framework]}").is_file()
    assert not (out / f"checkpoint-1{EXT[framework]}").exists()


def test_debug_shows_the_traceback(archive, tmp_path):
    proc = cli(*TRAIN, "--epochs", "0", "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr


class RunsCode:
    """A pickle payload that would create a file when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("framework", ["paddle", "torch"])
def test_crafted_pickle_runs_nothing(framework, tmp_path):
    from swa_recipe.checkpoint import CheckpointError

    twin = __import__(f"swa_{framework}.checkpoint", fromlist=["checkpoint"])
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil{EXT[framework]}"
    payload = {"epoch": 1, "state_dict": {"w": RunsCode(marker)}}
    if framework == "torch":
        import torch

        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=4))
    with pytest.raises(CheckpointError) as info:
        twin.load(str(path))
    assert not marker.exists()
    assert str(path) in str(info.value)
    proc = cli("eval.py", "--model_path", str(path))
    assert_refused(proc, str(path))
    assert not marker.exists()


def test_paddle_loader_reads_real_checkpoints_like_paddle_load(run_dir):
    import paddle

    from swa_paddle.checkpoint import load, to_numpy

    path = str(run_dir / "paddle" / "checkpoint-2.pdparams")
    ours, theirs = to_numpy(load(path)), to_numpy(paddle.load(path))
    for key in ("state_dict", "swa_state_dict", "optimizer"):
        assert ours[key].keys() == theirs[key].keys()
        for name, value in ours[key].items():
            assert np.array_equal(np.asarray(value), np.asarray(theirs[key][name])), name
    assert ours["config"] == theirs["config"] and ours["swa_n"] == theirs["swa_n"] == 1


@pytest.mark.parametrize("framework", ["paddle", "torch"])
def test_sigterm_mid_epoch_then_resume_is_exact(framework, archive, tmp_path):
    """SIGTERM: the step finishes, a mid-epoch checkpoint is written, exit 143; resuming
    from it ends bit-identical to an uninterrupted run (weights, SWA weights with the BN
    statistics update_bn recomputes over the whole epoch, optimizer, metrics). VGG16BN with
    the recipe's dropout 0.5."""
    from swa_recipe.checkpoint import latest_checkpoint

    args = [*TRAIN, "--framework", framework, "--data_path", str(archive), "-o",
            "Data.batch_size=4", "-o", "Global.log_freq=1", "--epochs", "2", "--swa_start", "1",
            "--model", "VGG16BN", "-o", "Arch.dropout=0.5"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert cli(*args, "--dir", str(ref)).returncode == 0
    proc = subprocess.Popen([sys.executable, *args, "--dir", str(run)], cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = run / "train.log"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and "iter 5/25" in log.read_text()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    latest = latest_checkpoint(str(run), framework)
    assert "-iter" in latest and "interrupted: stopped by SIGTERM" in err
    assert "interrupted: stopped by SIGTERM" in log.read_text()
    assert cli(*args, "--dir", str(run), "--resume", "auto").returncode == 0

    twin = __import__(f"swa_{framework}.checkpoint", fromlist=["checkpoint"])
    a = twin.to_numpy(twin.load(str(ref / f"checkpoint-2{EXT[framework]}")))
    b = twin.to_numpy(twin.load(str(run / f"checkpoint-2{EXT[framework]}")))
    for key in ("state_dict", "swa_state_dict"):
        for name in a[key]:
            assert np.array_equal(a[key][name], b[key][name]), (key, name)
    strip = lambda p: [ln.rsplit(",", 1)[0] for ln in p.read_text().splitlines()]  # noqa: E731
    assert strip(ref / "metrics.csv") == strip(run / "metrics.csv")


def test_fault_test_tool_passes_on_a_short_run(lite_archive, tmp_path):
    """``tools/fault_test.py`` (docs/reliability.md), shortened: a SIGKILL and a SIGTERM, each
    resumed with ``--resume auto``, and the end state bit-identical to an uninterrupted run.
    12 short epochs: a resumed run must outlast the kill delay (start-up plus three epochs)."""
    proc = subprocess.run(
        [sys.executable, "tools/fault_test.py", "--framework", "torch", "--kills", "2",
         "--sigterm_every", "2", "--data_path", str(lite_archive), "--work_dir", str(tmp_path),
         "-o", "Global.epochs=12", "-o", "SWA.swa_start=6", "-o", "Data.train_subset=256",
         "-o", "Data.test_subset=128"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "PASS: 2 kills" in proc.stdout
    assert "SIGKILL" in proc.stdout and "SIGTERM" in proc.stdout and "exit 143" in proc.stdout
