"""Extending a finished SWA run (``swa_study.extend``) and the study runner's extensions:
a run extended from 3 to 5 epochs is, bit for bit, a fresh 5-epoch run, in both twins."""

from __future__ import annotations

import copy
import csv
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

from conftest import ROOT, tiny_config
from swa_study import extend

ENV_RUN = {"PYTHONWARNINGS": "ignore"}


def rows_without_time(path) -> list[dict]:
    with open(path) as fh:
        return [{k: v for k, v in row.items() if k != "time"} for row in csv.DictReader(fh)]


@pytest.mark.parametrize("framework", ["paddle", "torch"])
def test_extended_run_equals_a_fresh_longer_run(framework, archive, tmp_path):
    from swa_apps.twins import import_twin
    from swa_recipe.checkpoint import EXTENSIONS
    from swa_recipe.loop import fit

    twin, ext = import_twin(framework), EXTENSIONS[framework]

    def config(name: str, epochs: int, **global_) -> dict:
        return tiny_config(archive, Arch={"dropout": 0.5}, SWA={"swa_start": 2},
                           Global={"epochs": epochs, "dir": str(tmp_path / name),
                                   "framework": framework, **global_})

    short = config("short", 3)
    fit(twin.trainer.Trainer(short), short)
    long = config("long", 5, resume="auto")
    resumed_from = extend.prepare(short, long)
    assert resumed_from == str(tmp_path / "long" / f"checkpoint-3{ext}")
    fit(twin.trainer.Trainer(long), long)
    fresh = config("fresh", 5)
    fit(twin.trainer.Trainer(fresh), fresh)

    a = twin.checkpoint.load(str(tmp_path / "long" / f"checkpoint-5{ext}"))
    b = twin.checkpoint.load(str(tmp_path / "fresh" / f"checkpoint-5{ext}"))
    for key in ("state_dict", "swa_state_dict"):
        wa, wb = twin.checkpoint.to_numpy(a[key]), twin.checkpoint.to_numpy(b[key])
        assert wa.keys() == wb.keys()
        for name in wa:
            assert np.array_equal(wa[name], wb[name]), (key, name)
    assert a["swa_n"] == b["swa_n"] == 4
    extended = rows_without_time(tmp_path / "long" / "metrics.csv")
    assert [r["ep"] for r in extended] == ["1", "2", "3", "4", "5"]
    assert extended == rows_without_time(tmp_path / "fresh" / "metrics.csv")
    assert (tmp_path / "short" / "metrics.csv").read_text().count("\n") == 4  # left as it was
    assert not (tmp_path / "short" / f"checkpoint-5{ext}").exists()


def base(archive, tmp_path, **sections) -> dict:
    cfg = tiny_config(archive, SWA={"swa_start": 2},
                      Global={"epochs": 3, "dir": str(tmp_path / "short")})
    for section, values in sections.items():
        cfg[section].update(values)
    return cfg


@pytest.mark.parametrize("change, needle", [
    ({"SWA": {"swa": False}}, "an SGD run's learning rate decays over its total epochs"),
    ({"SWA": {"swa_start": 3}}, "SWA.swa_start is 2 in the run to extend and 3"),
    ({"Optimizer": {"lr_init": 0.1}}, "Optimizer.lr_init is 0.05"),
    ({"Global": {"eval_freq": 2}}, "Global.eval_freq is 1"),
    ({"Global": {"epochs": 3}}, "the longer run has 3 epochs, not more than the 3"),
])
def test_an_extension_that_is_not_the_same_run_is_refused(archive, tmp_path, change, needle):
    short = base(archive, tmp_path)
    long = copy.deepcopy(short)
    long["Global"].update(epochs=5, dir=str(tmp_path / "long"))
    for section, values in change.items():
        long[section].update(values)
    if change.get("SWA", {}).get("swa") is False:
        short["SWA"]["swa"] = False
    with pytest.raises(extend.ExtensionError) as exc:
        extend.prepare(short, long)
    assert needle in str(exc.value) and "\n" not in str(exc.value)
    assert not (tmp_path / "long").exists()  # nothing written


def test_a_schedule_that_depends_on_the_total_is_refused(archive, tmp_path):
    short = base(archive, tmp_path)
    long = copy.deepcopy(short)
    long["Global"]["epochs"] = 5
    assert extend.refusal(short, long) is None
    original = extend.schedules.learning_rate
    try:  # a schedule whose lr depends on the total number of epochs
        extend.schedules.learning_rate = (
            lambda cfg, epoch, it=0, iters=1: 0.1 / cfg["Global"]["epochs"])
        assert "epoch 1 would train, average or evaluate differently" in extend.refusal(short, long)
    finally:
        extend.schedules.learning_rate = original


def test_extension_needs_the_last_checkpoint(archive, tmp_path):
    short = base(archive, tmp_path)
    (tmp_path / "short").mkdir()
    (tmp_path / "short" / "checkpoint-2.pdparams").write_bytes(b"x")  # not the last one
    long = copy.deepcopy(short)
    long["Global"].update(epochs=5, dir=str(tmp_path / "long"))
    with pytest.raises(extend.ExtensionError, match="its last checkpoint checkpoint-3.pdparams "
                                                     "is gone; train the longer run from scratch"):
        extend.prepare(short, long)


def test_study_runner_extends_the_shorter_swa_run(lite_archive, tmp_path):
    """A grid with swa_budgets [1, 2]: the dry run shows the 2-budget run extending the
    finished 1-budget one; it then trains 2 epochs, not 4, and its rows start with the
    shorter run's."""
    study = tmp_path / "ext.yaml"
    study.write_text(yaml.safe_dump({
        "name": "ext", "config": "configs/lite.yaml",
        "grid": {"model": "VGG16", "method": "swa", "budget": 2, "swa_budgets": [1.0, 2.0],
                 "seed": 1, "framework": "paddle"},
        "swa_start_fraction": 0.5, "overrides": {"Data.train_subset": 200,
                                                 "Data.test_subset": 100}}))
    out = tmp_path / "out"
    cmd = [sys.executable, "tools/study.py", str(study), "--out", str(out), "--data_path",
           str(lite_archive)]

    def run(*extra: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(cmd + list(extra), cwd=ROOT, capture_output=True, text=True,
                              timeout=600, env={**os.environ, **ENV_RUN})
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc

    planned = run("--dry_run").stdout
    assert "vgg16-swa4-s1-paddle             todo" in planned
    assert "extends vgg16-swa2-s1-paddle once it finishes" in planned
    first = run("--max_runs", "1")
    assert "vgg16-swa2-s1-paddle: done" in first.stdout
    assert "vgg16-swa4-s1-paddle: start" not in first.stdout
    dry = run("--dry_run").stdout
    assert "vgg16-swa4-s1-paddle             extend" in dry
    assert "from vgg16-swa2-s1-paddle" in dry
    run()
    short, long = out / "vgg16-swa2-s1-paddle", out / "vgg16-swa4-s1-paddle"
    assert "(extend from vgg16-swa2-s1-paddle)" in (long / "command.txt").read_text()
    rows = rows_without_time(long / "metrics.csv")
    assert [r["ep"] for r in rows] == ["1", "2", "3", "4"]
    assert rows[:2] == rows_without_time(short / "metrics.csv")
    assert "resumed from" in (long / "train.log").read_text()
    assert sorted(p.name for p in short.glob("checkpoint-*")) == [
        "checkpoint-0.pdparams", "checkpoint-1.pdparams", "checkpoint-2.pdparams"]

    shutil.rmtree(long)
    (short / "checkpoint-2.pdparams").unlink()
    dry = run("--dry_run").stdout
    assert "afresh: vgg16-swa2-s1-paddle is not finished here or its last checkpoint is gone" \
        in dry


# ------------------------------------------------------------------ reproducibility check


def test_machine_record_round_trips_and_reads_cpuinfo(tmp_path):
    from swa_study.provenance import Machine, cpuinfo

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC 7B13\n"
                    "flags\t\t: fpu sse4_2 avx avx2 fma ht\n\nprocessor\t: 1\n")
    assert cpuinfo(str(info)) == ("AMD EPYC 7B13", ["sse4_2", "avx", "avx2", "fma"])
    here = Machine.here({"OMP_NUM_THREADS": "2"})
    assert here.threads == "2" and Machine.parse(here.line()) == here
    assert here.same_kind(Machine.parse(here.line()))
    other = Machine("Intel Xeon", ("avx512f",), "2", here.versions)
    assert not here.same_kind(other) and not here.same_kind(None)
    assert Machine.parse("/usr/bin/python train.py") is None


def test_command_record_is_portable():
    from swa_study.study import ROOT, portable

    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "-o",
           f"Global.dir={os.path.join(ROOT, 'results', 'cpu', 'run')}", "-o",
           f"Data.data_path={os.path.join(os.path.dirname(ROOT), 'shared', 'c.tar.gz')}", "-o",
           "Arch.width=0.25"]
    assert portable(cmd) == ("python train.py -o Global.dir=results/cpu/run -o "
                             "Data.data_path=../shared/c.tar.gz -o Arch.width=0.25")


@pytest.fixture()
def trained_run(lite_archive, tmp_path):
    """A finished 4-epoch lite SGD run made by the runner, with its checkpoints removed as in
    a fresh clone: (runner command, run folder)."""
    study = tmp_path / "repro.yaml"
    study.write_text(yaml.safe_dump({
        "name": "repro", "config": "configs/lite.yaml",
        "grid": {"model": "VGG16", "method": "sgd", "budget": 4, "seed": 1,
                 "framework": "paddle"},
        "overrides": {"Data.train_subset": 200, "Data.test_subset": 100}}))
    out = tmp_path / "out"
    cmd = [sys.executable, "tools/study.py", str(study), "--out", str(out), "--data_path",
           str(lite_archive)]
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                           env={**os.environ, **ENV_RUN})
    assert first.returncode == 0, first.stderr[-2000:]
    run = out / "vgg16-sgd4-s1-paddle"
    record = (run / "command.txt").read_text()
    assert "# machine: cpu=" in record and "python train.py" in record
    assert str(ROOT) not in record.replace(f"--out {ROOT}", "")
    for path in run.glob("checkpoint-*"):
        path.unlink()
    return cmd + ["--retrain"], run


def retrain(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **ENV_RUN})


def test_retrained_run_reproduces_its_rows(trained_run):
    cmd, run = trained_run
    proc = retrain(cmd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "retrain" in proc.stdout
    assert "vgg16-sgd4-s1-paddle: reproduces the 4 committed rows bit for bit" in proc.stdout
    assert (run / "checkpoint-4.pdparams").exists()


def test_reproducibility_check_catches_a_planted_difference(trained_run):
    cmd, run = trained_run
    rows = (run / "metrics.csv").read_text().splitlines()
    cells = rows[1].split(",")
    cells[2] = str(float(cells[2]) + 1e-6)  # epoch 1 tr_loss
    (run / "metrics.csv").write_text("\n".join([rows[0], ",".join(cells)] + rows[2:]) + "\n")
    proc = retrain(cmd)
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = proc.stderr.strip()
    assert "\n" not in line and "does not reproduce its committed rows on the same kind of " \
        "machine: epoch 1 tr_loss" in line
    # (a run this short may finish before the next look at its rows: exit 2 all the same)


def test_rows_from_another_machine_are_compared_at_the_end(trained_run):
    cmd, run = trained_run
    text = (run / "command.txt").read_text()
    (run / "command.txt").write_text(text.replace("# machine: cpu=", "# machine: cpu=Other "))
    rows = (run / "metrics.csv").read_text().splitlines()
    cells = rows[2].split(",")
    cells[5] = "12.5"  # epoch 2 te_acc
    (run / "metrics.csv").write_text("\n".join(rows[:2] + [",".join(cells)] + rows[3:]) + "\n")
    proc = retrain(cmd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "committed on another machine (Other " in proc.stdout
    assert "rows differ from epoch 2 te_acc" in proc.stdout
    assert "against the committed 12.5" in proc.stdout
