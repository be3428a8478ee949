"""``Global.use_visualdl``: a run's scalars in VisualDL (Paddle) and TensorBoard (torch), read
back with each tool's own reader and compared with the run's log lines and metrics.csv; the
one-line refusal when the package is missing."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, tiny_config
from swa_apps.twins import import_twin
from swa_recipe.logs import EVAL_TAGS, TRAIN_TAGS, IterMeter, read_metrics
from swa_recipe.loop import Interrupted, fit

LINE = re.compile(r"\[Epoch (\d+)/\d+, iter (\d+)/(\d+)\] lr: ([\d.]+), loss: ([\d.]+), "
                  r"acc: ([\d.]+)")


def read_visualdl(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of the VisualDL records in ``folder``: [(step, value)]."""
    from visualdl import LogReader

    out: dict[str, list[tuple[int, float]]] = {}
    for name in sorted(os.listdir(folder)):
        reader = LogReader(file_path=str(folder / name))
        for tag in reader.get_tags().get("scalar", []):
            out.setdefault(tag, []).extend((r.id, r.value) for r in reader.get_data("scalar", tag))
    return out


def read_tensorboard(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of the TensorBoard event files in ``folder``: [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


READERS = {"paddle": read_visualdl, "torch": read_tensorboard}


def logged_lines(log: Path) -> list[tuple[int, float, float, float]]:
    """(global step, lr, loss, acc) of each training line of ``train.log``."""
    out = []
    for match in LINE.finditer(log.read_text()):
        epoch, it, iters = (int(g) for g in match.groups()[:3])
        out.append(((epoch - 1) * iters + it, *(float(g) for g in match.groups()[3:])))
    return out


@pytest.mark.parametrize("framework", ["paddle", "torch"])
def test_scalars_read_back_equal_the_log_and_metrics(framework, archive, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(archive, Global={"framework": framework, "dir": str(out), "epochs": 2,
                                       "log_freq": 2, "use_visualdl": True})
    fit(import_twin(framework).trainer.Trainer(cfg), cfg)
    scalars = READERS[framework](out / "vdl")
    assert set(scalars) == set(TRAIN_TAGS) | set(EVAL_TAGS.values())

    lines = logged_lines(out / "train.log")
    assert [s for s, *_ in lines] == [2, 4, 6, 8]  # 4 iterations an epoch, a line every 2
    for k, tag in enumerate(TRAIN_TAGS):
        assert [s for s, _ in scalars[tag]] == [s for s, *_ in lines]
        decimals = (6, 5, 3)[k]  # as the line prints lr, loss and acc
        for (_, value), line in zip(scalars[tag], lines, strict=True):
            assert abs(value - line[k + 1]) <= 0.5 * 10 ** -decimals + 1e-6, (tag, value, line)

    rows = read_metrics(str(out / "metrics.csv"))
    iters = 4
    for column, tag in EVAL_TAGS.items():
        expected = [(r["ep"] * iters, float(np.float32(r[column]))) for r in rows
                    if r[column] is not None]
        assert scalars[tag] == expected and expected, tag  # stored as float32


class StopInEpoch2(IterMeter):
    """SIGTERM to this process once epoch 2's second step is recorded: ``fit`` stops after the
    third of 4 and writes a mid-epoch checkpoint."""

    def step(self, it: int, lr: float, loss: float, correct: int, n: int) -> None:
        super().step(it, lr, loss, correct, n)
        if self.epoch == 1 and it == 1:
            signal.raise_signal(signal.SIGTERM)


@pytest.mark.parametrize("framework", ["paddle", "torch"])
def test_an_interrupted_run_closes_its_writer_and_the_resumed_one_appends(framework, archive,
                                                                           tmp_path):
    """The writer is closed on the interruption (both tools buffer: unclosed, the steps before
    the stop would not be on disk), and the resumed run adds the steps after the checkpoint,
    each step once."""
    out = tmp_path / "run"
    trainer_class = import_twin(framework).trainer.Trainer

    def cfg_of(**global_) -> dict:
        return tiny_config(archive, Global={"framework": framework, "dir": str(out),
                                            "epochs": 2, "use_visualdl": True, **global_})

    with pytest.raises(Interrupted) as info:
        fit(trainer_class(cfg_of(), meter_class=StopInEpoch2), cfg_of())
    scalars = READERS[framework](out / "vdl")
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3, 4, 5, 6, 7]
    assert [s for s, _ in scalars["test/acc"]] == [4]
    cfg = cfg_of(resume=info.value.path)
    fit(trainer_class(cfg), cfg)
    scalars = READERS[framework](out / "vdl")
    assert sorted(s for s, _ in scalars["train/loss"]) == list(range(1, 9))
    assert sorted(s for s, _ in scalars["test/acc"]) == [4, 8]


NO_PACKAGE = '''
import sys


class NoPackage:
    """A machine without {name}."""

    def find_spec(self, name, path=None, target=None):
        if name == "{name}" or name.startswith("{name}."):
            raise ImportError(f"No module named {{name!r}}")


sys.meta_path.insert(0, NoPackage())
'''


@pytest.mark.parametrize("framework, package", [("paddle", "visualdl"),
                                                ("torch", "tensorboard")])
def test_a_missing_package_is_one_line_naming_the_install(framework, package, archive,
                                                         tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NO_PACKAGE.format(name=package))
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(site)}
    blocked = subprocess.run([sys.executable, "-c", f"import {package}"], env=env,
                             capture_output=True, text=True)
    assert blocked.returncode == 1 and f"No module named '{package}'" in blocked.stderr
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "train.py", "--framework", framework, "--data_path", str(archive),
         "--dir", str(out), "-o", "Global.use_visualdl=true", "-o", "Arch.width=0.0625",
         "-o", "Global.epochs=1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, \
        proc.stderr[-2000:]
    assert f"pip install {package}" in errors[0]
    assert not (out / "train.log").exists() and not (out / "vdl").exists()
