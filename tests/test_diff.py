"""diff/align.py, the step-by-step alignment of the twins: a fast subset on the synthetic archive,
deliberately broken twins that must fail and name the layer, and the committed results."""

from __future__ import annotations

import importlib.util
import re
import sys

import numpy as np
import pytest
from reprod_log import ReprodDiffHelper

from conftest import ROOT

DIFF = ROOT / "diff"
FAST = ("forward", "loss", "data", "lr", "backward", "swa")


@pytest.fixture(scope="module")
def align():
    spec = importlib.util.spec_from_file_location("align", DIFF / "align.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["align"] = module
    spec.loader.exec_module(module)
    return module


def test_fast_steps_pass(align, archive, tmp_path, capsys):
    code = align.main(["--steps", ",".join(FAST), "--data_path", str(archive),
                       "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "all steps passed" in out
    assert (tmp_path / "fake_data.npy").is_file() and (tmp_path / "fake_label.npy").is_file()
    helper = ReprodDiffHelper()
    for step in FAST:
        pd_info = helper.load_info(str(tmp_path / f"{step}_paddle.npy"))
        th_info = helper.load_info(str(tmp_path / f"{step}_torch.npy"))
        assert set(pd_info) == set(th_info) and pd_info
        helper.compare_info(pd_info, th_info)  # the official tooling reads our files
        log = (tmp_path / f"{step}_diff.log").read_text()
        assert "diff check passed" in log
    lr = helper.load_info(str(tmp_path / "lr_paddle.npy"))
    assert lr["lr_original"].shape == (200, 391)  # the full recipe, whatever the archive
    assert lr["lr_cyclic"][-1, 0] > lr["lr_cyclic"][-1, -1]  # per-iteration cycles


def test_broken_linear_fails_forward_and_names_layer(align, tmp_path, capsys):
    code = align.main(["--steps", "forward", "--break", "linear_transpose",
                       "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1
    assert "first layer whose output diverges: classifier.1 (Linear)" in out
    assert "FAILED: forward" in out


def test_broken_bn_momentum_fails_forward_and_names_layer(align, tmp_path, capsys):
    code = align.main(["--steps", "forward", "--break", "bn_momentum", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1
    assert "first layer whose running mean diverges: features.1 (BatchNorm2D)" in out


def test_broken_maxpool_grad_fails_backward_and_names_layer(align, tmp_path, capsys):
    code = align.main(["--steps", "backward", "--break", "maxpool_grad", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1
    assert "responsible: the backward of features.30 (BrokenMaxPool)" in out


def test_unknown_step_refused(align):
    with pytest.raises(SystemExit):
        align.parse_args(["--steps", "forward,nope"])


def test_unknown_model_refused(align):
    with pytest.raises(SystemExit):
        align.parse_args(["--model", "VGG16,ResNet50"])
    assert align.parse_args(["--model", "all"]).model == align.MODELS


def test_residual_model_passes(align, archive, tmp_path, capsys):
    """forward, backward (float32, and float64 gated twin against twin) and swa (update_bn)
    for WideResNet28x10 at its CPU width: every gated row passes (PreResNet's, slower, are in
    the committed results)."""
    code = align.main(["--steps", "forward,backward,swa", "--model", "WideResNet28x10",
                       "--data_path", str(archive), "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "update_bn on the averaged WideResNet28x10" in out
    for tag in ("forward", "backward", "swa"):
        assert "diff check" in (tmp_path / f"{tag}_wideresnet28x10_diff.log").read_text()
    assert "float64): loss of each of 10" in out
    assert "diff check" in (tmp_path / "backward_wideresnet28x10_float64_diff.log").read_text()


VALUE = re.compile(r"^\[[^]]*\] root INFO: (?:\t*)(\S.*?): $|mean diff: check passed: \w+, "
                   r"value: (\S+)$")


@pytest.mark.parametrize("step", sorted(p.name[:-len("_paddle.npy")]
                                         for p in DIFF.glob("*_paddle.npy")))
def test_committed_results_are_consistent(step):
    """The committed logs are the committed arrays' diffs, as the official tooling computes."""
    pd_path, th_path = DIFF / f"{step}_paddle.npy", DIFF / f"{step}_torch.npy"
    log_path = DIFF / f"{step}_diff.log"
    if not (pd_path.is_file() and th_path.is_file() and log_path.is_file()):
        pytest.skip(f"no committed results for {step}")
    helper = ReprodDiffHelper()
    pd_info, th_info = helper.load_info(str(pd_path)), helper.load_info(str(th_path))
    key, logged = None, {}
    for line in log_path.read_text().splitlines():
        m = VALUE.search(line)
        if m and m.group(1):
            key = m.group(1)
        elif m and m.group(2):
            logged[key] = float(m.group(2))
    assert set(logged) == set(pd_info) == set(th_info)
    for k, value in logged.items():
        diff = np.abs(np.asarray(pd_info[k]) - np.asarray(th_info[k])).mean()
        assert diff == pytest.approx(value, rel=1e-9, abs=0), k

