"""tools/gpu_check.py, the one command a lent GPU runs, exercised on the CPU (``--dry``) so that
it cannot rot between the rare GPU sessions: every phase reports, CUDA-only options say they were
skipped, the recipe runs stop with a checkpoint before the budget ends and ``--resume``
continues them; bad input is one line and exit 2."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from swa_recipe.config import merge, parse_override, validate
from swa_recipe.logs import read_metrics

sys.path.insert(0, str(ROOT / "tools"))
import gpu_check  # noqa: E402

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}
NEEDS_CUDA = "skipped: needs CUDA"
STOPPED = (gpu_check.STOPPED, "finished")


def check(*args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_check.py"), *args],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def test_dry_check_reports_every_phase_and_resumes(tmp_path, lite_archive):
    import torch

    from swa_study.provenance import cpuinfo

    out = tmp_path / "gc"
    proc = check("--dry", "--data_path", str(lite_archive), "--out", str(out),
                 "--options", "fp32,amp_fp16,tf32", "--budget_s", "90")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((out / "gpu_check.json").read_text())

    env = report["env"]
    assert env["cpu"] == cpuinfo()[0] and env["torch"] == torch.__version__
    assert env["gpu"] is None and env["commit"]

    lite = report["lite"]
    assert lite["fp32"]["status"] == "pass"
    rows = read_metrics(str(out / "lite" / "fp32" / "metrics.csv"))
    assert lite["fp32"]["final_train_loss"] == rows[-1]["tr_loss"]
    assert lite["amp_fp16"]["status"] == lite["tf32"]["status"] == NEEDS_CUDA

    speed = report["speed"]
    by_option = {r["option"]: r for r in speed["results"]}
    assert by_option["fp32"]["step_ips"] > 0 and by_option["fp32"]["max_loss_diff"] == 0
    assert by_option["tf32"]["skipped"] == by_option["amp_fp16"]["skipped"] == NEEDS_CUDA
    compiled = [r for r in speed["results"] if r.get("stage") == "compile"]
    assert all(r["skipped"].startswith("skipped in --dry") for r in compiled)
    images = gpu_check.paper_row_images()
    for row in speed["projection"]:
        assert row["paper_row_s"] >= images["train"] / row["ips"]
    assert proc.stdout.count(NEEDS_CUDA) >= 4  # lite and throughput tables, both options
    assert "continue the recipe runs with: python tools/gpu_check.py --resume" in proc.stdout

    for kind, run in report["recipe"]["runs"].items():
        assert run["status"] in STOPPED, (kind, run)
        assert run["checkpoint"] and os.path.isfile(run["checkpoint"])

    again = check("--dry", "--data_path", str(lite_archive), "--out", str(out))
    assert again.returncode == 2 and "--resume" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1

    resumed = check("--dry", "--resume", "--data_path", str(lite_archive), "--out", str(out),
                    "--budget_s", "30")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert len(report["recipe_calls"]) == 2 and "lite" in report  # the first call's phases kept
    for kind, run in report["recipe"]["runs"].items():
        assert run["status"] in STOPPED, (kind, run)
        log = (out / "recipe" / f"vgg16_{kind}" / "train.log").read_text()
        assert "resumed from" in log


def test_the_paper_row_counts_both_runs_and_their_evaluations():
    """SGD and SWA, 200 epochs of 50,000 images each; each evaluates at epoch 1 and every 5th
    (41 times), SWA's average too once collected (epochs 165, 170, ..., 200: 8 times)."""
    assert gpu_check.paper_row_images() == {"train": 2 * 200 * 50000,
                                            "eval": (41 + 41 + 8) * 10000}
    assert gpu_check.row_seconds(1000.0, 2000.0, {"train": 10000, "eval": 4000}) == 12.0
    assert gpu_check.row_seconds(1000.0, None, {"train": 10000, "eval": 4000}) == 10.0


def test_options_become_overrides_that_train_py_accepts():
    from swa_recipe.config import default_config

    texts = gpu_check.option_overrides("amp_bf16+channels_last+on_device")
    assert texts == ["AMP.use_amp=true", "AMP.dtype=bfloat16", "Global.channels_last=true",
                     "Data.on_device=true"]
    cfg = merge(default_config(), {"Global": {"framework": "torch"}}, "test")
    for text in gpu_check.option_overrides("amp_fp16+tf32+compile") + texts:
        section, key, value = parse_override(text)
        cfg = merge(cfg, {section: {key: value}}, "-o")
    cfg = validate(cfg)
    assert cfg["AMP"]["dtype"] == "bfloat16" and cfg["AMP"]["tf32"] and cfg["Global"]["compile"]
    assert gpu_check.option_overrides("fp32") == []


def test_the_fastest_option_is_chosen_only_among_sound_ones():
    def result(option, ips, diff):
        return {"option": option, "step_ips": ips, "max_loss_diff": diff}

    results = [result("fp32", 100, 0.0), result("amp_fp16", 900, math.nan),
               result("tf32", 300, 0.5), result("amp_bf16", 200, 0.01),
               {"option": "compile", "failed": "RuntimeError: x"}]
    assert gpu_check.fastest(results)["option"] == "amp_bf16"
    assert gpu_check.fastest([results[1], results[4]]) is None
    assert gpu_check.with_option("fp32", "compile") == "compile"
    assert gpu_check.with_option("amp_bf16", "compile") == "amp_bf16+compile"


@pytest.mark.parametrize("one, two, concurrent", [(1000.0, 1500.0, True), (1000.0, 900.0, False),
                                                  (1000.0, None, True)])
def test_the_recipe_runs_at_once_when_two_processes_measured_faster(one, two, concurrent):
    speed = {"chosen": {"option": "amp_bf16"},
             "processes": {"1": {"step_ips_total": one},
                           "2": {"step_ips_total": two} if two else {"why": "timed out"}}}
    plan = gpu_check.make_plan(speed, gpu_check.DRY)
    assert plan.concurrent is concurrent and plan.option == "amp_bf16"
    cmd = plan.command("swa", "out/x", "data.npz", resume=True)
    assert cmd[-2:] == ["--resume", "auto"] and "configs/vgg16_swa_cifar10.yaml" in cmd
    assert "AMP.dtype=bfloat16" in cmd and "Global.device=cpu" in cmd
    assert gpu_check.make_plan({}, gpu_check.DRY).option == "fp32"


def test_a_run_stopped_before_training_is_not_reported_as_saved():
    line = "interrupted: stopped by SIGTERM; continue with: python train.py --resume c.pt"
    assert gpu_check.run_status(143, line) == gpu_check.STOPPED
    assert gpu_check.run_status(143, "interrupted: stopped by SIGTERM").startswith(
        "stopped before training began")
    assert gpu_check.run_status(0, "") == "finished"
    assert gpu_check.run_status(2, "error: bad").startswith("FAIL (exit 2): error: bad")
    assert gpu_check.run_status(None, "").startswith("FAIL")


@pytest.mark.parametrize("args, says", [
    (["--budget_s", "-5"], "--budget_s"),
    (["--budget_s", "nan"], "--budget_s"),
    (["--options", "fp32,turbo"], "unknown option 'turbo'"),
    (["--options", "x" * 5000], "unknown option"),
    (["--dry", "--resume"], "no earlier recipe runs"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, says):
    proc = check("--out", str(tmp_path / "gc"), *args, timeout=120)
    assert proc.returncode == 2 and says in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and len(proc.stderr) < 600


@pytest.mark.parametrize("plan", ["[1, 2]", '{"option": "warp", "concurrent": true, '
                                  '"device": "cpu", "overrides": ["Data.evil=1"]}',
                                  '{"option": "fp32", "concurrent": true, "device": "gpu", '
                                  '"overrides": []}'])
def test_a_damaged_or_foreign_plan_is_refused_in_one_line(tmp_path, plan):
    (tmp_path / "gc" / "recipe").mkdir(parents=True)
    (tmp_path / "gc" / "recipe" / "plan.json").write_text(plan)
    proc = check("--dry", "--resume", "--out", str(tmp_path / "gc"), timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "not a plan this tool wrote" in proc.stderr or "without --dry" in proc.stderr


def test_without_a_gpu_only_the_dry_run_starts(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible: the real check would start")
    proc = check("--out", str(tmp_path / "gc"), timeout=120)
    assert proc.returncode == 2 and "no CUDA GPU" in proc.stderr and "--dry" in proc.stderr
    assert not (tmp_path / "gc").exists()
