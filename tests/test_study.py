"""tools/study.py (grid, skip, resume, restart) and tools/summarize.py (tables, plot)."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from swa_recipe.config import ConfigError, default_config
from swa_recipe.logs import COLUMNS
from swa_study.runs import read_study
from swa_study.study import Run, expand, load_study, status
from swa_study.summary import report

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def write_run(root: Path, name: str, method: str, seed: int, framework: str, epochs: int,
              accs: list[float], swa_accs: list[float | None] | None = None) -> Path:
    """A run folder as train.py leaves it: config.yaml and metrics.csv (one row per epoch)."""
    run = root / name
    run.mkdir(parents=True)
    cfg = default_config()
    cfg["Global"].update(epochs=epochs, seed=seed, framework=framework)
    cfg["SWA"]["swa"] = method == "swa"
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    cols = COLUMNS if method == "swa" else [c for c in COLUMNS if not c.startswith("swa")]
    with open(run / "metrics.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols)
        writer.writeheader()
        for i, acc in enumerate(accs):
            row = {"ep": i + 1, "lr": 0.05, "tr_loss": 1.0, "tr_acc": 50.0, "te_loss": 1.0,
                   "te_acc": acc, "time": 60.0}
            if method == "swa":
                swa = (swa_accs or [])[i] if i < len(swa_accs or []) else None
                row.update(swa_te_loss="" if swa is None else 1.0,
                           swa_te_acc="" if swa is None else swa)
            writer.writerow(row)
    return run


@pytest.fixture()
def study_dir(tmp_path) -> Path:
    """Two seeds of SGD and SWA in Paddle, one of each in torch, and an incomplete torch run."""
    out = tmp_path / "cpu"
    write_run(out, "vgg16-sgd3-s1-paddle", "sgd", 1, "paddle", 3, [40, 60, 80])
    write_run(out, "vgg16-sgd3-s2-paddle", "sgd", 2, "paddle", 3, [40, 60, 82])
    write_run(out, "vgg16-swa3-s1-paddle", "swa", 1, "paddle", 3, [40, 60, 79], [None, 78, 83])
    write_run(out, "vgg16-swa3-s2-paddle", "swa", 2, "paddle", 3, [40, 60, 80], [None, 80, 84])
    write_run(out, "vgg16-sgd3-s1-torch", "sgd", 1, "torch", 3, [40, 60, 81])
    write_run(out, "vgg16-swa3-s1-torch", "swa", 1, "torch", 3, [40, 60, 80], [None, 80, 82.5])
    write_run(out, "vgg16-sgd3-s2-torch", "sgd", 2, "torch", 3, [40, 55])  # cut off at 2 of 3
    return out


def table_row(text: str, *starts: str) -> str:
    found = [ln for ln in text.splitlines() if ln.startswith("| " + " | ".join(starts) + " |")]
    assert len(found) == 1, (starts, text)
    return found[0]


def test_summary_tables(study_dir):
    text = report(str(study_dir), read_study(str(study_dir)))
    assert "6 of 7 runs complete" in text
    # mean ± sample std over seeds of the final accuracy (SWA: the average's)
    accuracy = text.split("## Final test accuracy")[1].split("##")[0]
    assert table_row(accuracy, "VGG16", "paddle") == ("| VGG16 | paddle | 81.00 ± 1.41 (n=2) | "
                                                  "83.50 ± 0.71 (n=2) |")
    # the incomplete torch seed is left out of the mean and counted
    assert table_row(accuracy, "VGG16", "torch") == ("| VGG16 | torch | 81.00 (n=1), 1 incomplete "
                                                 "| 82.50 (n=1) |")
    gains = text.split("## SWA − SGD")[1].split("##")[0]
    assert "s1: +3.00, s2: +2.00 | +2.50 ± 0.71 (n=2) | 0.50 | 1.41 | 0.71" in gains
    assert "s1: +1.50 | +1.50 (n=1) | — |" in gains
    # over both twins: three paired differences +3, +2, +1.5, standard error 0.76 / sqrt(3)
    assert "| VGG16 | both twins | 3 ep | 3 pairs | +2.17 ± 0.76 (n=3) | 0.44 |  |  |" in gains
    twins = text.split("## Paddle − torch")[1].split("##")[0]
    assert "| VGG16 | SGD 3 ep | s1: -1.00 | -1.00 (n=1) | 1.41 / — |" in twins
    assert "| VGG16 | SWA 3 ep | s1: +0.50 | +0.50 (n=1) | 0.71 / — |" in twins
    assert "| vgg16-sgd3-s2-torch | incomplete (epoch 2/3) | 55.00 | 55.00 |" in text
    assert "| vgg16-swa3-s1-paddle | complete | 83.00 | 83.00 |" in text


def test_summary_shows_the_width_of_the_optima(study_dir):
    from swa_study.summary import landscapes

    (study_dir / "landscape").mkdir()
    (study_dir / "landscape" / "vgg16-s1-paddle-swa3-sgd3.json").write_text(json.dumps({
        "pair": "vgg16-s1-paddle-swa3-sgd3", "distance_swa_sgd": 12.5, "width_swa": 30.0,
        "width_sgd": 20.0, "censored_swa": 1, "censored_sgd": 0, "line_swa_train_loss": 0.61,
        "line_sgd_train_loss": 0.55, "line_swa_test_err": 17.0, "line_sgd_test_err": 18.5,
        "line_min_train_loss_t": 0.9, "line_min_test_err_t": 0.1}))
    text = report(str(study_dir), read_study(str(study_dir)), widths=landscapes(str(study_dir)))
    assert ("| vgg16-s1-paddle-swa3-sgd3 | 12.5 | 30 | 20 | 1.50 (1 rays censored) | "
            "0.6100 / 0.5500 | 17.00 / 18.50 | +0.9 / +0.1 |") in text
    assert "![landscape of vgg16-s1-paddle-swa3-sgd3](landscape/vgg16-s1-paddle-swa3-sgd3.png)" \
        in text
    (study_dir / "landscape" / "bad.json").write_text('{"pair": {"nested": 1}}')
    proc = summarize(study_dir)
    assert_refused(proc, "bad.json is not a landscape summary")


def test_summarize_keeps_the_grid_it_was_written_from(study_dir, tmp_path):
    """A plain ``summarize.py DIR`` reuses the study file named in DIR's README (the runs not
    started yet stay listed), and writes through no symlink."""
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"name": "cpu", "grid": {
        "model": "VGG16", "method": ["sgd", "swa"], "budget": 3, "seed": [1, 2, 3],
        "framework": ["paddle", "torch"]}}))
    first = summarize(study_dir, "--study", grid)
    assert first.returncode == 0, first.stderr
    assert "6 of 12 runs complete, 5 not started" in first.stdout
    target = tmp_path / "elsewhere.md"
    target.write_text("keep")
    readme = study_dir / "README.md"
    text = readme.read_text()
    readme.unlink()
    readme.symlink_to(target)
    target.write_text(text)  # the link's target holds the study's README
    again = summarize(study_dir)
    assert again.returncode == 0, again.stderr
    assert "6 of 12 runs complete, 5 not started" in again.stdout
    assert not readme.is_symlink() and target.read_text() == text


def hostile_run(study: Path, table: str, epochs: str = "2") -> None:
    """A study folder with one run whose metrics.csv is ``table`` and whose epochs is the
    YAML text ``epochs``."""
    (study / "r").mkdir(parents=True)
    (study / "r" / "metrics.csv").write_text(table)
    (study / "r" / "config.yaml").write_text(
        f"Global: {{epochs: {epochs}, seed: 1, framework: paddle}}\nArch: {{model: VGG16}}\n"
        f"SWA: {{swa: false}}\n")


def summarize(*args) -> subprocess.CompletedProcess:
    """``tools/summarize.py`` with ``args``, as a user runs it."""
    return subprocess.run([sys.executable, "tools/summarize.py", *map(str, args)], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=300)


def assert_refused(proc: subprocess.CompletedProcess, needle: str) -> None:
    """Exit 2 with one ``error:`` line that names the problem."""
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error:") and needle in proc.stderr


def test_summarize_cli_writes_readme_and_plot(study_dir):
    proc = summarize(study_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    readme, figure = study_dir / "README.md", study_dir / "study.png"
    assert proc.stdout == readme.read_text() + f"wrote {readme} and {figure}\n"
    assert (study_dir / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("setup, needle", [
    (lambda p: None, "is not a study folder"),
    (lambda p: p.mkdir(), "holds no run with metrics.csv"),
    (lambda p: (p.mkdir(), (p / "r").mkdir(), (p / "r" / "metrics.csv").write_text("ep\n1\n"),
                (p / "r" / "config.yaml").write_text("[1, 2]")), "unreadable"),
    (lambda p: hostile_run(p, "ep,te_acc\n1,nan\n"), "unreadable"),
    (lambda p: hostile_run(p, "ep,te_acc\n1,5\n2,inf\n"), "unreadable"),
    (lambda p: hostile_run(p, "lr,te_acc\n0.1,5\n"), "unreadable"),  # no epoch column
    (lambda p: hostile_run(p, "ep,te_acc\n2,5\n1,6\n"), "unreadable"),
    (lambda p: hostile_run(p, "ep,te_acc\n1" + "0" * 5000 + ",5\n"), "unreadable"),
    (lambda p: hostile_run(p, "ep,te_acc\n1,5\n", epochs=".inf"), "unreadable"),
    (lambda p: hostile_run(p, "ep,te_acc\n1,5\n", epochs="1" + "0" * 5000), "unreadable"),
    (lambda p: hostile_run(p, "ep,te_acc\n1,5\n", epochs="[3]"), "unreadable"),
])
def test_summarize_refuses_in_one_line(setup, needle, tmp_path):
    target = tmp_path / "study"
    setup(target)
    assert_refused(summarize(target), needle)


@pytest.mark.parametrize("content, needle", [
    (None, "cannot be read"), ("a: [1\n", "is not valid YAML"), ("[1, 2]\n", "a 'name'")])
def test_summarize_refuses_a_bad_study_file(study_dir, tmp_path, content, needle):
    study = tmp_path / "study.yaml"
    if content is not None:
        study.write_text(content)
    before = (study_dir / "README.md").exists()
    assert_refused(summarize(study_dir, "--study", study), needle)
    assert (study_dir / "README.md").exists() == before  # nothing written


def test_grid_compresses_the_paper_schedule():
    runs = expand({"grid": {"model": "VGG16", "method": ["sgd", "swa"], "budget": 200,
                            "swa_budgets": [1.0, 1.25, 1.5], "seed": [1, 2],
                            "framework": ["paddle", "torch"]}}, "t.yaml")
    assert len(runs) == 16 and runs[0] == Run("VGG16", "sgd", 200, 1, "paddle")
    assert {r.seed for r in runs[:8]} == {1}  # seed-major: seed 1 complete first
    swa = [r for r in runs if r.method == "swa"]
    assert {r.epochs for r in swa} == {200, 250, 300} and {r.swa_start for r in swa} == {161}
    cpu = load_study(str(ROOT / "configs" / "study" / "cpu.yaml"))
    swa = [r for r in cpu.runs if r.method == "swa"][0]
    assert (swa.epochs, swa.swa_start, swa.name) == (35, 28, "vgg16-swa35-s1-paddle")
    assert "Arch.width=0.25" in cpu.overrides


def test_study_overrides_are_checked_like_a_config_and_reach_train_py_as_typed(tmp_path):
    """A study's overrides are read as a config file's values are: a text key's ``'0'`` reaches
    ``train.py`` as ``0`` (it was quoted, and train.py then refused every run), and a value a
    config refuses, or a run whose whole config is invalid, is one line at load time, before
    any run starts, naming the study file."""
    from swa_study.study import train_command

    def study(overrides: dict, budget: int = 2) -> Path:
        path = tmp_path / "s.yaml"
        path.write_text(yaml.safe_dump({
            "name": "s", "grid": {"model": "VGG16", "method": ["sgd", "swa"], "budget": budget,
                                  "seed": 1, "framework": "torch"}, "overrides": overrides}))
        return path

    loaded = load_study(str(study({"Data.num_workers": "0", "Arch.width": 0.25})))
    cmd = train_command(loaded, loaded.runs[0], "/tmp/x", "todo", [])
    assert "Data.num_workers=0" in cmd and "Arch.width=0.25" in cmd
    refused = [({"Data.num_workers": -3}, "Data.num_workers must be"),
               ({"Data.bogus": 1}, "unknown config key 'Data.bogus'"),
               ({"Arch.width": 9}, "Arch.width must be"),
               ({"SWA.swa_lr": ".nan"}, "SWA.swa_lr"),
               ({"Global.eval_freq": 0}, "Global.eval_freq"),
               ({"Arch.num_classes": 100}, "run vgg16-sgd2-s1-torch: Arch.num_classes is 100")]
    for overrides, needle in refused:
        with pytest.raises(ConfigError, match=re.escape(needle)) as info:
            load_study(str(study(overrides)))
        assert "s.yaml" in str(info.value) and "\n" not in str(info.value)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "grid": {"model": "VGG16", "method": "sgd",
                                    "budget": 2, "seed": 1, "framework": "torch"},
                                    "overrides": ["Arch.width=0.25"]}))
    with pytest.raises(ConfigError, match="'overrides' is a mapping"):
        load_study(str(path))


@pytest.mark.parametrize("grid, needle", [
    ({"model": "VGG17", "method": "sgd", "budget": 2, "seed": 1, "framework": "paddle"},
     "unknown model 'VGG17'"),
    ({"model": "VGG16", "method": "adam", "budget": 2, "seed": 1, "framework": "paddle"},
     "unknown method"),
    ({"model": "VGG16", "method": "sgd", "budget": 0, "seed": 1, "framework": "paddle"},
     "grid.budget must be an integer in [1, 2**63 - 1], got 0"),
    ({"model": "VGG16", "method": "sgd", "budget": 10**5000, "seed": 1, "framework": "paddle"},
     "grid.budget must be an integer in [1, 2**63 - 1], got <an integer of 16610 bits>"),
    ({"model": "VGG16", "method": "sgd", "budget": 2, "seed": 2**32, "framework": "paddle"},
     "grid.seed must be an integer in [1, 4294967295]"),
    ({"model": "VGG16", "method": "swa", "budget": 2, "seed": 1, "framework": "paddle",
      "swa_budgets": float("inf")}, "grid.swa_budgets must be a finite number, got inf"),
    ({"model": "VGG16", "method": "swa", "budget": 2, "seed": 1, "framework": "paddle",
      "swa_budgets": ["1.5"]}, "grid.swa_budgets must be a number, got '1.5'"),
    ({"model": "VGG16", "method": "sgd", "seed": 1, "framework": "paddle"}, "grid.budget"),
    ({"model": "VGG16", "method": "sgd", "budget": 2, "seed": 1, "framework": "jax"},
     "unknown framework"),
])
def test_bad_grids_are_refused(grid, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        expand({"grid": grid}, "t.yaml")


def test_status_of_run_folders(tmp_path):
    run = Run("VGG16", "sgd", 3, 1, "paddle")
    assert status(run, str(tmp_path / "absent")) == "todo"
    write_run(tmp_path, "cut", "sgd", 1, "paddle", 3, [40])
    assert status(run, str(tmp_path / "cut")) == "restart"  # committed tables, no checkpoint
    (tmp_path / "cut" / "checkpoint-1.pdparams").write_bytes(b"x")
    assert status(run, str(tmp_path / "cut")) == "resume"
    write_run(tmp_path, "done", "sgd", 1, "paddle", 3, [40, 50, 60])
    assert status(run, str(tmp_path / "done")) == "done"


def runner(study: Path, out: Path, archive: Path, *extra: str) -> list[str]:
    return [sys.executable, "tools/study.py", str(study), "--out", str(out), "--data_path",
            str(archive), *extra]


def test_study_runs_interrupts_resumes_and_skips(lite_archive, tmp_path):
    """Two lite runs: SIGTERM to the runner stops the first mid-way with a checkpoint; the next
    call resumes it and runs the second; a third call finds both done and starts nothing."""
    study = tmp_path / "lite.yaml"
    study.write_text(yaml.safe_dump({
        "name": "lite", "config": "configs/lite.yaml",
        "grid": {"model": "VGG16", "method": ["sgd", "swa"], "budget": 2, "seed": 1,
                 "framework": "paddle"},
        "overrides": {"Global.log_freq": 1, "Global.save_freq": 1}}))
    out = tmp_path / "out"
    sgd, swa = out / "vgg16-sgd2-s1-paddle", out / "vgg16-swa2-s1-paddle"

    proc = subprocess.Popen(runner(study, out, lite_archive), cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log, deadline = sgd / "train.log", time.time() + 300
    while time.time() < deadline and not (log.exists() and "iter 3/8" in log.read_text()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-2000:]
    assert status(Run("VGG16", "sgd", 2, 1, "paddle"), str(sgd)) == "resume"
    assert not swa.exists()

    first = subprocess.run(runner(study, out, lite_archive), cwd=ROOT, env=ENV,
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "(resume)" in (sgd / "command.txt").read_text()
    for run in (sgd, swa):
        rows = list(csv.DictReader(open(run / "metrics.csv")))
        assert [r["ep"] for r in rows] == ["1", "2"]
    saved = yaml.safe_load((swa / "config.yaml").read_text())
    assert (saved["SWA"]["swa"], saved["SWA"]["swa_start"], saved["Global"]["epochs"]) == (
        True, 2, 2)
    assert rows[-1]["swa_te_acc"] != ""

    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = subprocess.run(runner(study, out, lite_archive), cwd=ROOT, env=ENV,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.count(" done ") == 2, again.stdout
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


def test_summary_of_a_study_just_started(tmp_path):
    write_run(tmp_path, "vgg16-sgd3-s1-paddle", "sgd", 1, "paddle", 3, [40, 60, 80])
    write_run(tmp_path, "vgg16-swa3-s1-paddle", "swa", 1, "paddle", 3, [40], [None])
    text = report(str(tmp_path), read_study(str(tmp_path)))
    assert "1 of 2 runs complete." in text
    grid = ["vgg16-sgd3-s1-paddle", "vgg16-swa3-s1-paddle", "vgg16-sgd3-s1-torch"]
    with_grid = report(str(tmp_path), read_study(str(tmp_path)), grid, "s.yaml")
    assert "1 of 3 runs complete, 1 not started." in with_grid
    assert "| vgg16-sgd3-s1-torch | not started | — | — |" in with_grid
    assert "`tools/summarize.py " + str(tmp_path) + " --study s.yaml`" in with_grid
    assert "No complete SGD/SWA pair of one seed yet." in text
    assert "No run complete in both twins yet." in text
    assert "| vgg16-swa3-s1-paddle | incomplete (epoch 1/3) | — | — |" in text


@pytest.mark.parametrize("name", ["../outside", "a/b", "..", "", "x" * 65, "new\nline"])
def test_a_study_name_must_be_a_plain_folder_name(tmp_path, name):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": name, "grid": {
        "model": "VGG16", "method": "sgd", "budget": 2, "seed": 1, "framework": "paddle"}}))
    with pytest.raises(ConfigError, match="the study name must be a plain folder name"):
        load_study(str(path))


def test_runner_never_deletes_a_run_folder_in_use(tmp_path, archive):
    """A run folder whose lock a live process holds is refused in one line, kept whole."""
    import fcntl

    study = tmp_path / "s.yaml"
    study.write_text(yaml.safe_dump({"name": "s", "grid": {
        "model": "VGG16", "method": "sgd", "budget": 3, "seed": 1, "framework": "paddle"}}))
    out = tmp_path / "out"
    run = write_run(out, "vgg16-sgd3-s1-paddle", "sgd", 1, "paddle", 3, [40])  # restart state
    (run / "train.log").write_text("a live run's log\n")
    with open(run / ".run.lock", "w") as lock:
        lock.write("4242\n")
        lock.flush()
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = subprocess.run([sys.executable, "tools/study.py", str(study), "--out", str(out),
                               "--data_path", str(archive)], cwd=ROOT, env=ENV,
                              capture_output=True, text=True, timeout=300)
    assert_refused(proc, "another process (pid 4242) is writing to")
    assert (run / "train.log").read_text() == "a live run's log\n"
    assert (run / "metrics.csv").exists()


def test_summarize_again_rewrites_nothing(study_dir, tmp_path):
    """Run by default on a folder it summarised before, summarize.py writes the same bytes (a
    committed summary stays as it is in git)."""
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"name": "cpu", "grid": {
        "model": "VGG16", "method": ["sgd", "swa"], "budget": 3, "seed": [1, 2, 3],
        "framework": ["paddle", "torch"]}}))
    assert summarize(study_dir, "--study", grid).returncode == 0
    before = {p.name: p.read_bytes() for p in (study_dir / "README.md", study_dir / "study.png")}
    again = summarize(study_dir)
    assert again.returncode == 0, again.stderr
    assert before == {p.name: p.read_bytes() for p in (study_dir / "README.md",
                                                       study_dir / "study.png")}
