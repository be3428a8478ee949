"""``swa_paddle`` as a library: installable with pip into a fresh environment, importable from
anywhere without torch or the CIFAR-10 code, console entry points, and a quiet console."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import ROOT

LIBRARY_IMPORT = ("from swa_paddle import AveragedModel, SWALR, update_bn; "
                  "from swa_paddle.callbacks import SWA")
TINY = ["-o", "Global.epochs=1", "-o", "SWA.swa_start=1", "-o", "Data.train_subset=128",
        "-o", "Data.test_subset=64", "-o", "Data.batch_size=64"]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH into the repository, no glog level."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GLOG_minloglevel")}
    return {**env, **extra}


def test_import_loads_neither_torch_nor_cifar(tmp_path):
    code = (f"import sys; {LIBRARY_IMPORT}; "
            "bad = [m for m in sys.modules if m.split('.')[0] == 'torch' "
            "or m in ('swa_recipe.data.cifar', 'swa_paddle.data', 'swa_torch')]; print(bad)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, env=clean_env(PYTHONPATH=str(ROOT)), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def make_venv(tmp_path: Path) -> Path:
    """A fresh venv that sees this interpreter's packages (paddle, pip, setuptools) through a
    ``.pth`` file: ``--system-site-packages`` would see the base interpreter's instead when the
    tests themselves run in a venv (CI)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; "
                           "print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    outer = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site, "outer.pth").write_text("\n".join(sorted(outer)) + "\n")
    return python


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """``pip install`` of a copy of the repository (setuptools builds in the source tree) into
    a fresh venv; ``--no-deps --no-build-isolation`` keep it offline and fast."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in ("swa_recipe", "swa_apps", "swa_paddle", "swa_torch", "swa_study"):
        shutil.copytree(ROOT / package, src / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    python = make_venv(tmp)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--no-index", str(src)], check=True, cwd=tmp,
                   env=clean_env(), timeout=300)
    return python


def test_installed_package_imports_from_anywhere(installed, tmp_path):
    code = f"{LIBRARY_IMPORT}; import swa_paddle; print(swa_paddle.__file__)"
    proc = subprocess.run([str(installed), "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, env=clean_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith(str(installed.parents[1]))  # the venv's copy


def test_the_study_tooling_is_not_shipped(installed, tmp_path):
    """swa_study runs train.py from a source checkout: the wheel leaves it out (the copy that
    was installed had it), and the data input subpackage is in."""
    code = ("import importlib.util as u; print(u.find_spec('swa_study') is None, "
            "u.find_spec('swa_recipe.data.cifar') is not None)")
    proc = subprocess.run([str(installed), "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, env=clean_env(), timeout=300)
    assert proc.stdout.split() == ["True", "True"], proc.stdout + proc.stderr


def test_installed_swa_train_trains_and_swa_eval_evaluates(installed, lite_archive, tmp_path):
    bin_dir = installed.parent
    out = tmp_path / "run"
    proc = subprocess.run([str(bin_dir / "swa-train"), "--config", str(ROOT / "configs" /
                           "lite.yaml"), "--data_path", str(lite_archive), "--dir", str(out),
                           *TINY], cwd=tmp_path, capture_output=True, text=True,
                          env=clean_env(), timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (out / "checkpoint-1.pdparams").is_file()
    proc = subprocess.run([str(bin_dir / "swa-eval"), "--model_path",
                           str(out / "checkpoint-1.pdparams"), "--data_path", str(lite_archive)],
                          cwd=tmp_path, capture_output=True, text=True, env=clean_env(),
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("SWA weights") and "(64 images)" in proc.stdout


# What the project prints: its logger's lines (a timestamp first) and the epoch table's rows.
PROJECT_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d |[- ]+$|\s+ep\s+lr\s|\s+\d+\s+\d)")


def train_lines(tmp_path: Path, lite_archive: Path, *extra: str) -> list[str]:
    """stdout and stderr of a tiny ``train.py`` run, with a fresh matplotlib cache (whose
    creation Paddle's root-logger handler would print) and OMP_NUM_THREADS > 1 (Paddle's
    banner)."""
    env = clean_env(MPLCONFIGDIR=str(tmp_path / "mpl"), OMP_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config",
                           str(ROOT / "configs" / "lite.yaml"), "--data_path",
                           str(lite_archive), "--dir", str(tmp_path / "run"), *TINY, *extra],
                          cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return (proc.stdout + proc.stderr).splitlines()


def test_console_shows_only_the_projects_lines(tmp_path, lite_archive):
    lines = train_lines(tmp_path, lite_archive)
    foreign = [line for line in lines if line and not PROJECT_LINE.match(line)]
    assert foreign == []
    assert "CPU settings applied" in lines[0] or "paddle: VGG16" in lines[0]
    assert any("plot written to" in line for line in lines)


def test_debug_shows_paddles_start_up_lines(tmp_path, lite_archive):
    """The filter above is what hides them: with --debug they are there."""
    lines = train_lines(tmp_path, lite_archive, "--debug")
    foreign = [line for line in lines if line and not PROJECT_LINE.match(line)]
    assert any("OMP_NUM_THREADS" in line for line in foreign)
    assert any(re.match(r"I\d{4} ", line) for line in foreign)  # glog INFO
