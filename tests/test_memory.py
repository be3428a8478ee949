"""A Paddle run's resident memory stops growing after its second epoch (issue 25).

With the oneDNN convolutions, the heap in use is flat from the second epoch on, but glibc kept
the freed holes between its blocks resident: a lite run's RSS grew 18-40 MiB over epochs 2-12.
``fit`` now hands those pages back after every epoch (``runtime.release_free_memory``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from swa_recipe import runtime

EPOCHS = 8
# MiB an epoch after the second may add to the second's RSS. Measured on a 2-core Intel Xeon
# (lite config, synthetic archive, one arena): 14-24 without the trim, 1.2 with it.
GROWTH_TOLERANCE_MIB = 8

# train.py, printing the resident memory after each epoch's row (after fit's trim).
MEASURED_RUN = """
import os, sys
from swa_recipe import loop
from swa_apps.console import train

def rss_mib():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

add = loop.RunLog.add

def add_and_measure(self, row):
    add(self, row)
    print("rss", rss_mib(), flush=True)

loop.RunLog.add = add_and_measure
sys.argv[0] = "train.py"
sys.exit(train())
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists() or not runtime.release_free_memory(),
                    reason="needs Linux's /proc and glibc")
def test_resident_memory_is_flat_after_the_second_epoch(tmp_path, lite_archive):
    """One malloc arena: ``malloc_trim`` releases only the main arena's top, so a second arena
    (another thread's) can still add a few MiB once, at an epoch that varies from run to run;
    that residue is measured in docs/speed.md, not here."""
    env = {**os.environ, "MALLOC_ARENA_MAX": "1"}
    run = subprocess.run(
        [sys.executable, "-c", MEASURED_RUN, "--config", str(ROOT / "configs" / "lite.yaml"),
         "--data_path", str(lite_archive), "--dir", str(tmp_path / "run"),
         "--epochs", str(EPOCHS)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    rss = [float(line.split()[1]) for line in run.stdout.splitlines() if line.startswith("rss ")]
    assert len(rss) == EPOCHS
    assert max(rss[2:]) - rss[1] < GROWTH_TOLERANCE_MIB, f"RSS after each epoch (MiB): {rss}"
