"""What a new user meets in the first hour: an interrupted run continued with the command it
prints, progress without a terminal, checkpoint names by position, a quiet library, commands
that leave committed files alone, and a front page whose links resolve."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}
# 100 images in batches of 2: 50 iterations an epoch (time to interrupt one), two epochs, SWA
# from the first.
TINY = ["train.py", "--data_path", "{archive}", "--epochs", "2", "--swa", "--swa_start", "1",
        "-o", "Arch.width=0.0625", "-o", "Data.batch_size=2", "-o", "Global.log_freq=1",
        "-o", "Global.eval_freq=1", "-o", "Global.save_freq=1"]


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=600)


def tiny(archive: Path, *extra: str) -> list[str]:
    return [a.format(archive=archive) for a in TINY] + list(extra)


def refusal(proc: subprocess.CompletedProcess) -> str:
    """The one ``error:`` line of a refused start (exit 2, no traceback)."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:") or "Traceback" in ln]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr[-2000:]
    return lines[0]


def weights(path: Path) -> dict:
    from swa_paddle import checkpoint

    return checkpoint.to_numpy(checkpoint.load(str(path)))


@pytest.fixture(scope="module")
def reference(archive, tmp_path_factory) -> Path:
    """The uninterrupted run, output redirected (no terminal), a progress line every 0.05 s."""
    out = tmp_path_factory.mktemp("newcomer") / "ref"
    proc = cli(*tiny(archive, "--dir", str(out), "--progress", "0.05"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


# ------------------------------------------------------------------------------ 1. resume


def interrupt_at(args: list[str], log: Path, line: str) -> subprocess.CompletedProcess:
    """Start a run, send SIGINT once ``line`` is in its log, wait for it to stop."""
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=ENV, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and not (log.exists() and line in log.read_text()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(args, proc.returncode, "", err)


def test_printed_command_continues_the_same_run_exactly(reference, archive, tmp_path):
    """Ctrl-C in epoch 2; the printed command, typed as printed from another directory and
    without the data path, continues that run in its folder and ends bit-identical."""
    run = tmp_path / "run"
    proc = interrupt_at(tiny(archive, "--dir", str(run)), run / "train.log",
                        "[Epoch 2/2, iter 3/50]")
    assert proc.returncode == 130, proc.stderr[-2000:]
    said = re.search(r"interrupted: stopped by SIGINT; continue with: (.+)$", proc.stderr, re.M)
    assert said, proc.stderr[-2000:]
    command = shlex.split(said.group(1))
    assert command[:2] == ["python", "train.py"] and command[2] == "--resume"
    name = Path(command[3]).name
    stopped = re.fullmatch(r"checkpoint-2-iter(\d+)\.pdparams", name)
    assert stopped, name  # the position as the log counts it: epoch 2, 1-based iteration
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    resumed = cli(str(ROOT / "train.py"), *command[2:], cwd=elsewhere)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    log = (run / "train.log").read_text()
    assert f"at epoch 2, iteration {stopped.group(1)}/50" in log
    assert not (elsewhere / "output").exists()
    a, b = weights(reference / "checkpoint-2.pdparams"), weights(run / "checkpoint-2.pdparams")
    assert a["config"]["SWA"]["swa"] is b["config"]["SWA"]["swa"] is True
    for key in ("state_dict", "swa_state_dict"):
        for param in a[key]:
            assert np.array_equal(a[key][param], b[key][param]), (key, param)
    strip = lambda p: [ln.rsplit(",", 1)[0] for ln in p.read_text().splitlines()]  # noqa: E731
    assert strip(reference / "metrics.csv") == strip(run / "metrics.csv")


@pytest.mark.parametrize(("extra", "key"), [
    (["--lr_init", "0.1"], "Optimizer.lr_init=0.1"),
    (["-o", "SWA.swa=false"], "SWA.swa=false"),
    (["--seed", "2"], "Global.seed=2"),
    (["--model", "VGG19"], "Arch.model=VGG19"),
])
def test_override_that_changes_the_run_is_refused(reference, extra, key):
    before = sorted(p.name for p in reference.iterdir())
    line = refusal(cli("train.py", "--resume", str(reference / "checkpoint-1.pdparams"),
                       *extra))
    assert key in line and "would change what" in line, line
    assert sorted(p.name for p in reference.iterdir()) == before


def test_safe_overrides_and_same_values_are_accepted(reference, archive, tmp_path):
    """An extension into a new folder, as the study runner asks for it: the full command line
    again, with the same values, and Global.epochs and Global.dir changed."""
    longer = tmp_path / "longer"
    proc = cli(*tiny(archive, "--resume", str(reference / "checkpoint-2.pdparams"),
                     "-o", "Global.epochs=3", "-o", f"Global.dir={longer}",
                     "-o", "Global.log_freq=5", "-o", "Data.num_workers=0"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = (longer / "train.log").read_text()
    assert "at the end of epoch 2" in log and "[Epoch 3/3, iter 50/50]" in log
    assert "[Epoch 3/3, iter 49/50]" not in log  # log_freq 5 took effect
    assert (longer / "checkpoint-3.pdparams").is_file()


def test_help_documents_both_kinds_of_resume():
    text = cli("train.py", "--help").stdout
    assert "--resume PATH" in text and "--resume auto" in text and "Global.epochs" in text


def test_continued_config_takes_the_checkpoints_and_names_the_changed_key(archive):
    """In process, no training: the checkpoint's config and folder, the command line's same
    values and safe keys on top; ``--config`` repeated with the run's own file is accepted."""
    from conftest import tiny_config
    from swa_apps.cli import train_parser
    from swa_recipe.config import ConfigError, continued_config

    saved = tiny_config(archive, Global={"dir": "elsewhere", "seed": 7})
    path = os.path.join("runs", "a", "checkpoint-2-iter3.pdparams")

    def continued(*argv: str) -> dict:
        return continued_config(train_parser().parse_args(["--resume", path, *argv]), saved,
                                path)

    cfg = continued()
    assert cfg["Global"]["dir"] == os.path.join("runs", "a") and cfg["Global"]["resume"] == path
    assert cfg["Global"]["seed"] == 7 and cfg["SWA"]["swa"] is True
    assert cfg["Data"]["data_path"] == str(archive) and cfg["Arch"]["width"] == 0.0625
    cfg = continued("--seed", "7", "--swa", "--epochs", "5", "-o", "Data.num_workers=1",
                    "-o", "Global.save_freq=2")
    assert (cfg["Global"]["epochs"], cfg["Data"]["num_workers"]) == (5, "1")
    with pytest.raises(ConfigError, match=r"^Optimizer\.momentum=0\.5 would change what"):
        continued("-o", "Optimizer.momentum=0.5")
    lite = tiny_config(archive, Global={"epochs": 3, "log_freq": 4}, Data={"batch_size": 128})
    lite["Data"].update(train_subset=1000, test_subset=500)
    lite["SWA"]["swa_start"] = 2
    cfg = continued_config(train_parser().parse_args(["--resume", path, "--config",
                                                      str(ROOT / "configs" / "lite.yaml")]), lite,
                           path)
    assert cfg["Arch"]["dropout"] == 0.0  # the checkpoint's, which lite.yaml does not name
    with pytest.raises(ConfigError, match=r"^Arch\.dropout=null would change"):
        continued_config(train_parser().parse_args(["--resume", path, "--config",
                                                    str(ROOT / "configs" / "lite.yaml"), "-o",
                                                    "Arch.dropout=null"]), lite, path)


# ------------------------------------------------------------------- 2. progress, 3. names


def test_progress_lines_without_a_terminal(reference):
    log = (reference / "train.log").read_text()
    assert re.search(r"estimated time to the end of the run: \d+ s \(", log), log[:2000]
    lines = re.findall(r"progress: epoch \d/2, iteration \d+/50, [\d.]+ images/sec, "
                       r"epoch left .+, run left .+", log)
    assert lines, log[:2000]
    assert not re.search(r"\d\d:\d\d:\d\d \n", log)  # no empty timestamped lines


def test_progress_clock_estimates_from_the_step_rate(monkeypatch):
    """Steps of 0.5 s after a slow first one (not counted in the rate): a line whenever a
    second has passed, and after five timed steps the estimate of the whole run."""
    import logging

    from swa_recipe import logs

    ticks = iter([0.0, 0.0, 10.0] + [10.0 + 0.5 * k for k in range(1, 20)])
    monkeypatch.setattr(logs.time, "perf_counter", lambda: next(ticks))
    records: list[str] = []
    logger = logging.getLogger("test-progress-clock")
    logger.handlers = []
    logger.addHandler(type("Keep", (logging.Handler,), {
        "emit": lambda self, r: records.append(r.getMessage())})())
    logger.setLevel(logging.INFO)
    logger.propagate = False
    clock = logs.ProgressClock(logger, epochs=3, iters=10, batch_size=8, lines=True,
                               interval=1.0)
    clock.begin_epoch()
    for done in range(1, 8):
        clock.step_done(0, done)
    progress = [r for r in records if r.startswith("progress:")]
    assert [r.split(", ")[1] for r in progress] == ["iteration 2/10", "iteration 4/10",
                                                    "iteration 6/10"]
    # after step 6: 4 steps of 0.5 s left in epoch 1, then 2 epochs of 10 steps
    assert progress[2] == ("progress: epoch 1/3, iteration 6/10, 16.0 images/sec, "
                           "epoch left 2 s, run left 12 s")
    estimates = [r for r in records if r.startswith("estimated")]
    assert len(estimates) == 1 and len(records) == 4
    assert estimates[0].startswith("estimated time to the end of the run: 12 s (0.500 s per")


def test_duration_reads_as_a_person_would():
    from swa_recipe.logs import duration

    assert [duration(s) for s in (0.4, 40, 750, 3 * 3600 + 300, 2 * 86400 + 4 * 3600)] == [
        "0 s", "40 s", "12 min 30 s", "3 h 05 min", "2 d 04 h"]


def test_checkpoint_names_by_position(tmp_path):
    from swa_recipe.checkpoint import checkpoint_path, latest_checkpoint

    assert checkpoint_path("d", 0, "paddle") == os.path.join("d", "checkpoint-0.pdparams")
    assert checkpoint_path("d", 3, "torch") == os.path.join("d", "checkpoint-3.pt")
    # 1 epoch done, 7 steps of the second: epoch 2, iteration 7
    assert checkpoint_path("d", 1, "paddle", 7) == os.path.join("d", "checkpoint-2-iter7.pdparams")
    names = ["checkpoint-0", "checkpoint-1", "checkpoint-2-iter7", "checkpoint-2-iter12"]
    for name in names:
        (tmp_path / f"{name}.pdparams").write_bytes(b"")
    assert latest_checkpoint(str(tmp_path), "paddle").endswith("checkpoint-2-iter12.pdparams")
    (tmp_path / "checkpoint-2.pdparams").write_bytes(b"")
    assert latest_checkpoint(str(tmp_path), "paddle").endswith("checkpoint-2.pdparams")


# ------------------------------------------------------------------------ 4. quiet library


def test_importing_the_library_prints_nothing(tmp_path):
    """Paddle's ccache warning and its OMP_NUM_THREADS banner are filtered where they arise."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env.update(OMP_NUM_THREADS="2", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", "import swa_paddle, swa_paddle.callbacks"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == "", proc.stderr


# ---------------------------------------------------- 5. nothing committed overwritten


def git_status(*paths: str) -> str:
    return subprocess.run(["git", "status", "--porcelain", "--", *paths], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git checkout")
def test_align_writes_outside_the_committed_files():
    before, start = git_status("diff"), time.time()
    proc = cli("diff/align.py", "--steps", "lr")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    written = ROOT / "output" / "diff" / "lr_paddle.npy"
    assert written.stat().st_mtime >= start - 1
    assert f"files written to {written.parent}" in proc.stdout
    assert git_status("diff") == before and git_status("output") == ""


# --------------------------------------------------------- 6. front page, docs, licence


PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def prose(page: Path) -> list[str]:
    """The lines of a Markdown page outside its code blocks."""
    out, fenced = [], False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            out.append(line)
    return out


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to -."""
    return {re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            for line in prose(page) if line.startswith("#")}


def local_links(page: Path) -> list[str]:
    return [t for line in prose(page) for t in LINK.findall(line)
            if not t.startswith(("http://", "https://", "mailto:"))]


def test_every_link_of_the_readme_and_docs_resolves():
    checked = 0
    for page in PAGES:
        for target in local_links(page):
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            assert file.exists(), f"{page.name}: {target} does not exist"
            if anchor:
                assert anchor in anchors(file), f"{page.name}: no heading #{anchor} in {file.name}"
            checked += 1
    assert checked > 40


def test_front_page_is_short_and_reaches_every_doc():
    readme = ROOT / "README.md"
    assert len(readme.read_text().splitlines()) <= 250
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in local_links(readme)}
    assert {p.resolve() for p in PAGES[1:]} <= linked
    text = readme.read_text()
    assert "36" in text.split("## Results")[0] and "hours on a 2-core CPU" in text


def test_licence_and_citation():
    import yaml

    assert (ROOT / "LICENSE").read_text().startswith("BSD 2-Clause License")
    assert re.search(r'^license = "BSD-2-Clause"', (ROOT / "pyproject.toml").read_text(), re.M)
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    paper = cff["preferred-citation"]
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "BSD-2-Clause"
    assert paper["title"] == "Averaging Weights Leads to Wider Optima and Better Generalization"
    assert paper["year"] == 2018 and "1803.05407" in paper["url"]
    assert paper["authors"][0]["family-names"] == "Izmailov"
    assert "UAI" in paper["conference"]["name"]
    assert (ROOT / "CHANGELOG.md").read_text().startswith("# Changelog")


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git checkout")
def test_build_outputs_are_ignored():
    """``pip install .`` leaves build/ and *.egg-info/ in the tree; align.py and the examples
    write under output/: none of them shows in ``git status``."""
    paths = ["build/", "swa_paddle.egg-info/", "output/diff/lr_paddle.npy",
             "output/swa_hapi.pdparams"]
    proc = subprocess.run(["git", "check-ignore", *paths], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.stdout.split() == paths
