"""diff/align.py, the step-by-step alignment of the twins: a fast subset on the synthetic archive
(its fresh arrays against its fresh logs, its logs' keys against the committed ones), deliberately
broken twins that must fail and name the layer, and the committed logs. The ``.npy`` dumps are
regenerated, not committed (diff/README.md): the committed ``S_diff.log`` files are the record."""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from reprod_log import ReprodDiffHelper

from conftest import ROOT

DIFF = ROOT / "diff"
FAST = ("forward", "loss", "data", "lr", "backward", "swa")
MODEL_STEPS = ("forward", "backward", "swa")  # the steps that --model multiplies
LONG_TAG = "train_align"  # --long's files


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
    for name in ("fake_data.npy", "fake_label.npy"):  # committed: the guide's fake batch
        assert np.array_equal(np.load(tmp_path / name), np.load(DIFF / name)), name
    helper = ReprodDiffHelper()
    for step in FAST:
        pd_info = helper.load_info(str(tmp_path / f"{step}_paddle.npy"))
        th_info = helper.load_info(str(tmp_path / f"{step}_torch.npy"))
        assert set(pd_info) == set(th_info) and pd_info
        helper.compare_info(pd_info, th_info)  # the official tooling reads our files
        assert_log_is_the_arrays_diff(tmp_path, step)
        assert_same_reports_as_committed(tmp_path, step)
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
    assert "float64): loss of each of 10" in out
    for tag in ("forward_wideresnet28x10", "backward_wideresnet28x10",
                "backward_wideresnet28x10_float64", "swa_wideresnet28x10"):
        assert_log_is_the_arrays_diff(tmp_path, tag)
        assert_same_reports_as_committed(tmp_path, tag)


# ------------------------------------------------------------- the logs, fresh and committed

STAMP = re.compile(r"^\[\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\] root INFO: (.*)$")
KEY = re.compile(r"^(\S.*?): $")
VALUE = re.compile(r"^\tmean diff: check passed: (True|False), value: (\S+)$")
VERDICT = re.compile(r"^diff check (passed|failed)$")


@dataclass
class Report:
    """One ``ReprodDiffHelper.report`` (align.py writes one per threshold group into a log):
    ``(key, passed, mean abs diff)`` per key, then the report's verdict."""

    entries: list[tuple[str, bool, float]]
    passed: bool

    @property
    def keys(self) -> list[str]:
        return [key for key, _, _ in self.entries]


def parse_log(path: Path) -> list[Report]:
    """The reports of an ``S_diff.log`` in the official layout (``report(diff_method="mean")``):
    key line, mean-diff line, ..., verdict. Any other line, or a log that ends inside a report,
    is an error, so that a truncated or hand-edited log does not parse."""
    reports, entries, key = [], [], None
    for n, line in enumerate(path.read_text().splitlines(), 1):
        stamped = STAMP.match(line)
        assert stamped, f"{path.name}:{n} is not a reprod_log line: {line!r}"
        body = stamped.group(1)
        if key is not None and (value := VALUE.match(body)):
            entries.append((key, value.group(1) == "True", float(value.group(2))))
            key = None
        elif key is None and entries and (verdict := VERDICT.match(body)):
            reports.append(Report(entries, verdict.group(1) == "passed"))
            entries = []
        elif key is None and (named := KEY.match(body)):
            key = named.group(1)
        else:
            raise AssertionError(f"{path.name}:{n} out of place: {line!r}")
    assert key is None and not entries, f"{path.name} ends inside a report"
    return reports


def is_gated(tag: str, report: Report) -> bool:
    """Whether align.py lets this report decide pass/fail (its group's ``gate``). Reported, not
    gated (diff/README.md): gradients relative to their scale at 1e-6 (below float32's own
    accuracy), the float32 twin-against-twin rows of the residual models (gated on float64 and on
    the first loss instead) and the long mode (two runs that separate chaotically)."""
    relative = all(key.startswith("grad_rel/") for key in report.keys)
    residual_float32 = tag.startswith("backward_") and not tag.endswith("_float64")
    return not (relative or residual_float32 or tag == LONG_TAG)


def expected_tags(align) -> set[str]:
    """The logs a full run writes (``--model all --long``): one per step, one per residual model
    and model step (backward twice: float32 and float64), and the long mode's."""
    from alignment.context import file_tag  # importable once the align fixture has run

    tags = set(align.STEPS) | {LONG_TAG}
    for model in align.MODELS:
        tags |= {file_tag(step, model) for step in MODEL_STEPS}
        if model != "VGG16":
            tags.add(f"{file_tag('backward', model)}_float64")
    return tags


def assert_log_is_the_arrays_diff(out: Path, tag: str) -> None:
    """What the committed dumps were once checked for, now on a fresh run: the log holds exactly
    the arrays' keys and, for each, the mean abs diff the official tooling computes; every report
    that gates passed."""
    helper = ReprodDiffHelper()
    pd_info = helper.load_info(str(out / f"{tag}_paddle.npy"))
    th_info = helper.load_info(str(out / f"{tag}_torch.npy"))
    reports = parse_log(out / f"{tag}_diff.log")
    logged = {key: value for report in reports for key, _, value in report.entries}
    assert set(logged) == set(pd_info) == set(th_info), tag
    for key, value in logged.items():
        diff = np.abs(np.asarray(pd_info[key]) - np.asarray(th_info[key])).mean()
        assert diff == pytest.approx(value, rel=1e-9, abs=0), f"{tag}: {key}"
    assert all(report.passed for report in reports if is_gated(tag, report)), tag


def assert_same_reports_as_committed(out: Path, tag: str) -> None:
    """The committed log has the reports and keys, in order, that today's code writes: a change
    to a step's keys or groups fails here until the logs are refreshed (``--out diff/``)."""
    fresh = [report.keys for report in parse_log(out / f"{tag}_diff.log")]
    committed = [report.keys for report in parse_log(DIFF / f"{tag}_diff.log")]
    assert fresh == committed, f"{tag}: the committed log is stale"


def test_committed_logs_are_those_a_full_run_writes(align):
    committed = {path.name[:-len("_diff.log")] for path in DIFF.glob("*_diff.log")}
    assert committed == expected_tags(align)


@pytest.mark.parametrize("log", sorted(path.name for path in DIFF.glob("*_diff.log")))
def test_committed_log_is_consistent_and_its_gates_pass(log):
    """Each committed log parses; each report's verdict is its keys' checks, all against one
    threshold (no passed value above a failed one); no value is NaN (reprod_log's
    ``value > threshold`` would let NaN pass); no key twice; every gated report passed."""
    tag = log[:-len("_diff.log")]
    reports = parse_log(DIFF / log)
    keys = [key for report in reports for key in report.keys]
    assert reports and len(keys) == len(set(keys))
    for report in reports:
        passed = [value for _, ok, value in report.entries if ok]
        failed = [value for _, ok, value in report.entries if not ok]
        assert not any(math.isnan(value) for value in passed + failed), report.keys
        assert report.passed == (not failed), report.keys
        assert not (passed and failed) or max(passed) < min(failed), report.keys
        assert report.passed or not is_gated(tag, report), f"gated report failed: {report.keys}"
