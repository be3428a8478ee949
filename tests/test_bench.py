"""bench/throughput.py's behaviour (its figures are measurements, not checked here): every
width in one invocation, the machine named, the loop compared with its own step."""

import json
import subprocess
import sys

from conftest import ROOT
from swa_study.provenance import cpuinfo


def test_bench_measures_each_width_and_names_the_machine(tmp_path, lite_archive):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "throughput.py"), "--frameworks", "torch",
         "--part", "speed", "--width", "0.0625,0.125", "--steps", "2", "--warmup", "0",
         "--loop_images", "256", "--eval_images", "128", "--data_path", str(lite_archive),
         "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["machine"]["cpu"] == cpuinfo()[0] and report["machine"]["threads"]
    assert set(report["widths"]) == {"0.0625", "0.125"}
    for width in report["widths"].values():
        torch = width["results"]["torch"]
        assert torch["step_ips"] > 0 and torch["loop_ips"] > 0
        assert torch["loop_efficiency"] == torch["loop_ips"] / torch["step_ips"]
    assert cpuinfo()[0] in proc.stdout
    assert "width 0.0625" in proc.stdout and "width 0.125" in proc.stdout
    assert "train step, batches in memory" in proc.stdout


def test_bench_measures_each_option_through_the_config_with_its_numerics(tmp_path, lite_archive):
    """``--part options``: every torch option set as config keys and measured through
    ``Trainer.step`` against float32 eager on the same batches and initial weights; options that
    need CUDA say so on a CPU."""
    import torch

    out = tmp_path / "options.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "throughput.py"), "--frameworks", "torch",
         "--part", "options", "--width", "0.0625", "--steps", "2", "--warmup", "0",
         "--loop_images", "256", "--eval_images", "128", "--data_path", str(lite_archive),
         "--options", "amp_bf16,amp_fp16,tf32,channels_last,on_device,amp_bf16+channels_last",
         "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    options = json.loads(out.read_text())["widths"]["0.0625"]["results"]["torch"]["options"]
    fp32 = options["fp32"]
    assert fp32["step_ips"] > 0 and fp32["loop_ips"] > 0 and fp32["max_loss_diff"] == 0
    assert len(fp32["losses"]) == 2 and all(0 < loss < 10 for loss in fp32["losses"])
    if not torch.cuda.is_available():
        assert options["amp_fp16"] == {"option": "amp_fp16", "skipped": "skipped: needs CUDA"}
        assert options["tf32"]["skipped"] == "skipped: needs CUDA"
    for name in ("channels_last", "on_device"):  # the same float32 arithmetic, other layouts
        assert options[name]["max_loss_diff"] < 1e-4, (name, options[name])
    for name in ("amp_bf16", "amp_bf16+channels_last"):  # rounded, not broken
        assert 0 <= options[name]["max_loss_diff"] < 0.1, (name, options[name])
    assert "torch options, 2 steps against float32 eager" in proc.stdout
    assert "skipped: needs CUDA" in proc.stdout or torch.cuda.is_available()


def test_bench_refuses_an_unknown_option():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "throughput.py"), "--options",
                           "fp32,warp"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown option 'warp'" in proc.stderr
