"""The width of the optima (``swa_study.landscape``, ``tools/landscape.py``) on tiny runs:
the line passes through both solutions, rays start at them and share their directions."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, tiny_config
from swa_study import landscape


def test_width_interpolates_the_rise():
    assert landscape.width([0, 1, 2], [1.0, 1.05, 1.25]) == pytest.approx(1.25)
    assert landscape.width([0, 1, 2], [1.0, 1.02, 1.05]) is None
    assert landscape.width([0, 2], [0.5, 0.6]) == pytest.approx(2.0)


def test_line_ends_exactly_at_both_solutions():
    a, b = np.float32([0.1, -3.0, 7e-8]).astype(np.float64), np.float64([2.0, 1e-30, -5.0])
    assert landscape.interpolate(a, b, 0.0) is a and landscape.interpolate(a, b, 1.0) is b
    assert 0.0 in landscape.LINE_T and 1.0 in landscape.LINE_T and len(landscape.LINE_T) >= 21
    assert (landscape.LINE_T[0], landscape.LINE_T[-1]) == (-0.5, 1.5)


class FakeProbe:
    """A quadratic bowl: train loss = |w - c|^2 / 2; records every point it is set to."""

    def __init__(self, centre: np.ndarray):
        self.centre, self.points, self.w = centre, [], None

    def set_flat(self, w: np.ndarray) -> None:
        self.w = w.copy()
        self.points.append(self.w)

    def evaluate(self, split: str) -> dict:
        return {"loss": float(((self.w - self.centre) ** 2).sum() / 2), "accuracy": 100.0}


def test_rays_use_the_same_unit_directions_from_both_solutions():
    dim, rng = 50, np.random.default_rng(0)
    solutions = {"swa": rng.standard_normal(dim), "sgd": rng.standard_normal(dim)}
    probe, result = FakeProbe(np.zeros(dim)), landscape.Landscape("fake", wd=0.0)
    landscape.measure_rays(probe, solutions, result, 3, [0.0, 0.5, 1.0], seed=7, log=lambda s: 0)
    steps: dict[str, list] = {"swa": [], "sgd": []}
    for origin, w in solutions.items():
        for point in probe.points:
            r = np.linalg.norm(point - w)
            if 0.4 < r < 0.6:  # this origin's points at distance 0.5
                steps[origin].append((point - w) / r)
    assert len(steps["swa"]) == len(steps["sgd"]) == 3
    for u, v in zip(steps["swa"], steps["sgd"], strict=True):
        assert np.allclose(u, v) and np.isclose(np.linalg.norm(u), 1.0)
    zero = [r for r in result.rows if r["position"] == 0.0]
    assert all(r["train_loss"] == result.ray(r["origin"], 0)[0]["train_loss"] for r in zero)
    summary = result.summary()
    assert summary["directions_swa"] == summary["directions_sgd"] == 3
    assert np.array_equal(landscape.direction(dim, 7, 2), landscape.direction(dim, 7, 2))
    assert not np.array_equal(landscape.direction(dim, 7, 1), landscape.direction(dim, 7, 2))


def last_row(run_dir) -> dict:
    with open(run_dir / "metrics.csv") as fh:
        return list(csv.DictReader(fh))[-1]


@pytest.mark.parametrize("framework", ["paddle", "torch"])
def test_landscape_tool_on_a_tiny_pair(framework, archive, tmp_path):
    from swa_apps.twins import import_twin
    from swa_recipe.loop import fit

    twin = import_twin(framework)
    for method in ("swa", "sgd"):
        cfg = tiny_config(archive, SWA={"swa": method == "swa", "swa_start": 1},
                          Global={"epochs": 2, "framework": framework,
                                  "dir": str(tmp_path / "study" / method)})
        fit(twin.trainer.Trainer(cfg), cfg)
    proc = subprocess.run(
        [sys.executable, "tools/landscape.py", "--swa", str(tmp_path / "study" / "swa"),
         "--sgd", str(tmp_path / "study" / "sgd"), "--train_images", "100", "--rays",
         "--directions", "2", "--distances", "3"], cwd=ROOT, capture_output=True, text=True,
        timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    base = tmp_path / "study" / "landscape" / f"vgg16-s1-{framework}-swa2-sgd2"
    with open(f"{base}.csv") as fh:
        rows = list(csv.DictReader(fh))
    line = {float(r["position"]): r for r in rows if r["kind"] == "line"}
    assert len(line) == 21
    swa_row, sgd_row = last_row(tmp_path / "study" / "swa"), last_row(tmp_path / "study" / "sgd")
    assert float(line[0.0]["test_loss"]) == pytest.approx(float(swa_row["swa_te_loss"]), rel=1e-6)
    assert float(line[1.0]["test_loss"]) == pytest.approx(float(sgd_row["te_loss"]), rel=1e-6)
    assert 100 - float(line[0.0]["test_err"]) == pytest.approx(float(swa_row["swa_te_acc"]))
    for origin, t in (("swa", 0.0), ("sgd", 1.0)):
        at_zero = [r for r in rows if r["kind"] == "ray" and r["origin"] == origin
                   and float(r["position"]) == 0.0]
        assert len(at_zero) == 2
        assert all(r["train_loss"] == line[t]["train_loss"] for r in at_zero)
    summary = json.loads(open(f"{base}.json").read())
    assert summary["directions_swa"] == summary["directions_sgd"] == 2
    assert summary["distance_swa_sgd"] > 0 and summary["max_distance"] > 0
    assert (open(f"{base}.png", "rb").read(8)) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("measured, panels", [(("line",), 1), (("ray",), 2),
                                               (("line", "ray"), 3)])
def test_plot_draws_a_panel_for_what_was_measured_only(tmp_path, measured, panels):
    """``--landscape line`` gets the line alone: no empty ray panels (5 inches at 110 dpi each)."""
    from PIL import Image

    result = landscape.Landscape("pair", wd=0.0)
    weights = np.zeros(3)
    for t in (0.0, 0.5, 1.0):
        point = {"train_loss": 1 + t, "train_err": 10.0, "test_loss": 1.0, "test_err": 20 + t}
        if "line" in measured:
            result.add("line", "swa", None, t, weights, point)
        if "ray" in measured:
            for origin in ("swa", "sgd"):
                result.add("ray", origin, 0, t, weights, point)
    path = tmp_path / "pair.png"
    landscape.plot(result, lambda save: save(str(path)))
    with Image.open(path) as image:
        assert image.size[0] == panels * 5 * 110


def test_landscape_refuses_a_run_without_its_last_checkpoint(tmp_path):
    for method in ("swa", "sgd"):
        (tmp_path / method).mkdir()
        (tmp_path / method / "config.yaml").write_text(
            f"SWA: {{swa: {str(method == 'swa').lower()}}}\nGlobal: {{epochs: 3}}\n")
    proc = subprocess.run([sys.executable, "tools/landscape.py", "--swa", str(tmp_path / "swa"),
                           "--sgd", str(tmp_path / "sgd")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "has no checkpoint of its last epoch (3); train it again with tools/study.py " \
        "--retrain" in proc.stderr
    proc = subprocess.run([sys.executable, "tools/landscape.py", "--swa", str(tmp_path / "sgd"),
                           "--sgd", str(tmp_path / "swa")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "is an SGD run; pass it as --sgd" in proc.stderr


def test_study_runner_measures_the_landscape_of_finished_pairs(lite_archive, tmp_path):
    import yaml

    study = tmp_path / "pair.yaml"
    study.write_text(yaml.safe_dump({
        "name": "pair", "config": "configs/lite.yaml",
        "grid": {"model": "VGG16", "method": ["sgd", "swa"], "budget": 2, "seed": 1,
                 "framework": "torch"},
        "overrides": {"Data.train_subset": 200, "Data.test_subset": 100}}))
    out = tmp_path / "out"
    cmd = [sys.executable, "tools/study.py", str(study), "--out", str(out), "--data_path",
           str(lite_archive), "--landscape", "line"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "landscape vgg16-swa2-s1-torch / vgg16-sgd2-s1-torch: waiting" in proc.stdout
    assert "landscape vgg16-swa2-s1-torch / vgg16-sgd2-s1-torch: done" in proc.stdout
    summary = json.loads((out / "landscape" / "vgg16-s1-torch-swa2-sgd2.json").read_text())
    assert "width_swa" not in summary and summary["line_sgd_train_loss"] > 0  # line only
    dry = subprocess.run(cmd + ["--dry_run"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env=env)
    assert "landscape vgg16-swa2-s1-torch / vgg16-sgd2-s1-torch: done" in dry.stdout
    rays = subprocess.run(cmd[:-1] + ["rays", "--dry_run"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=env)
    assert "landscape vgg16-swa2-s1-torch / vgg16-sgd2-s1-torch: ready" in rays.stdout
