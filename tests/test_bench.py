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
