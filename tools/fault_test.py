"""Kill a training run at random moments, resume it each time, compare with an uninterrupted run.

``python tools/fault_test.py --framework paddle --kills 20 --data_path PATH/cifar-10-python.tar.gz``

Trains ``configs/lite.yaml`` stretched to 40 epochs (SWA from 21; ``--model`` picks the network,
e.g. VGG16BN, whose SWA BatchNorm statistics ``update_bn`` recomputes; ``--config`` and ``-o``
change the rest) once without interruption, then again under ``--resume auto``, killing it
``--kills`` times after a uniformly random delay of up to ``--max_delay`` seconds (default:
start-up plus three epochs, measured on the uninterrupted run, and shorter once few epochs are
left, so that every kill lands on a running job), so kills land in start-up,
training, evaluation and checkpoint writes alike. Kills are SIGKILL; every ``--sigterm_every``-th
is a SIGTERM, which must exit 143 after writing a checkpoint. Every kill must land on a running
job, and the final weights, SWA weights, ``swa_n``, optimizer state and ``metrics.csv`` (less its
time column) must equal the uninterrupted run's bit for bit. Exit code 0 when they do.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from swa_apps.cli import import_twin  # noqa: E402
from swa_recipe.arguments import ArgumentParser  # noqa: E402
from swa_recipe.checkpoint import EXTENSIONS, latest_checkpoint  # noqa: E402
from swa_recipe.config import MODELS  # noqa: E402
from swa_recipe.numbers import float_argument, int_argument  # noqa: E402
from swa_recipe.runtime import tune_cpu_env  # noqa: E402


def train_cmd(args: argparse.Namespace, run_dir: str, resume: bool) -> list[str]:
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--config", args.config,
           "--framework", args.framework, "--dir", run_dir]
    if args.model:
        cmd += ["--model", args.model]
    if args.data_path:
        cmd += ["--data_path", args.data_path]
    for override in args.override:
        cmd += ["-o", override]
    return cmd + (["--resume", "auto"] if resume else [])


def run_to_end(cmd: list[str], first_checkpoint: str | None = None) -> tuple[float, float]:
    """Run to completion; (total seconds, seconds until ``first_checkpoint`` appeared)."""
    t0 = time.time()
    startup = None
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    while proc.poll() is None:
        if startup is None and first_checkpoint and os.path.exists(first_checkpoint):
            startup = time.time() - t0
        time.sleep(0.05)
    if proc.returncode:
        sys.exit(f"run failed ({proc.returncode}): {proc.stderr.read().strip()[-2000:]}")
    return time.time() - t0, startup or 0.0


def kill_once(cmd: list[str], delay: float, signum: int) -> int:
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signum)
    proc.wait()
    return proc.returncode


def epochs_done(run_dir: str) -> int:
    """Epochs the run has logged so far (0 before its first ``metrics.csv`` row)."""
    return len(metric_rows(run_dir)) if os.path.isfile(os.path.join(run_dir, "metrics.csv")) else 0


def kill_window(max_delay: float, startup: float, epoch_s: float, left: int) -> float:
    """The longest delay for the next kill: ``max_delay``, shortened once few epochs are left
    so that the kill still lands on a running job. A resumed run can start faster than the
    uninterrupted one whose start-up was measured, so only half of that start-up is counted."""
    return max(0.5, min(max_delay, 0.5 * startup + left * epoch_s))


def metric_rows(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.csv")) as fh:
        return [{k: v for k, v in row.items() if k != "time"} for row in csv.DictReader(fh)]


def flat(obj, prefix: str = "") -> dict:
    """Every array of a checkpoint, keyed by its path."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(flat(v, f"{prefix}{k}/"))
        return out
    if hasattr(obj, "shape"):
        return {prefix: np.asarray(obj)}
    return {}


def compare(framework: str, ref_dir: str, run_dir: str) -> list[str]:
    twin = import_twin(framework)
    ref = twin.checkpoint.load(latest_checkpoint(ref_dir, framework))
    got = twin.checkpoint.load(latest_checkpoint(run_dir, framework))
    problems = []
    for key in ("state_dict", "swa_state_dict", "optimizer"):
        a, b = flat(twin.checkpoint.to_numpy(ref[key])), flat(twin.checkpoint.to_numpy(got[key]))
        if a.keys() != b.keys():
            problems.append(f"{key}: different entries")
        problems += [f"{key}/{n} differs" for n in a if n in b and not np.array_equal(a[n], b[n])]
    for key in ("epoch", "swa_n"):
        if ref[key] != got[key]:
            problems.append(f"{key}: {ref[key]} != {got[key]}")
    if metric_rows(ref_dir) != metric_rows(run_dir):
        problems.append("metrics.csv differs")
    return problems


def main() -> int:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--framework", choices=("paddle", "torch"), default="paddle")
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "lite.yaml"))
    parser.add_argument("--data_path", default=None)
    parser.add_argument("--model", default=None, choices=MODELS,
                        help="default: the config's (VGG16 in lite.yaml)")
    parser.add_argument("-o", "--override", action="append",
                        default=["Global.epochs=40", "SWA.swa_start=21"])
    parser.add_argument("--kills", type=int_argument(1), default=20)
    parser.add_argument("--max_delay", type=float_argument(0, strict=True), default=None,
                        help="default: start-up time + 3 epochs, measured on the first run")
    parser.add_argument("--sigterm_every", type=int_argument(1), default=5)
    parser.add_argument("--seed", type=int_argument(0), default=0)
    parser.add_argument("--work_dir", default=None, help="default: a temporary folder")
    args = parser.parse_args()
    tune_cpu_env()
    rng = random.Random(args.seed)
    work = args.work_dir or tempfile.mkdtemp(prefix="fault-test-")
    ref_dir, run_dir = os.path.join(work, "uninterrupted"), os.path.join(work, "killed")
    first = os.path.join(ref_dir, f"checkpoint-0{EXTENSIONS[args.framework]}")
    duration, startup = run_to_end(train_cmd(args, ref_dir, resume=False), first)
    epochs = len(metric_rows(ref_dir))
    epoch_s = (duration - startup) / epochs
    max_delay = args.max_delay or startup + 3 * epoch_s
    print(f"uninterrupted run: {duration:.1f} s ({startup:.1f} s to the first checkpoint, "
          f"{epoch_s:.2f} s per epoch); kills within {max_delay:.1f} s of each start")
    in_training = 0
    for k in range(1, args.kills + 1):
        sigterm = args.sigterm_every and k % args.sigterm_every == 0
        signum = signal.SIGTERM if sigterm else signal.SIGKILL
        delay = rng.uniform(0.5, kill_window(max_delay, startup, epoch_s,
                                             epochs - epochs_done(run_dir)))
        code = kill_once(train_cmd(args, run_dir, resume=True), delay, signum)
        if code == 0:
            sys.exit(f"kill {k} came after the run had finished: lengthen the run (-o "
                     f"Global.epochs=...) or lower --max_delay")
        latest = latest_checkpoint(run_dir, args.framework)
        in_training += delay > startup  # past the reference run's start-up
        print(f"kill {k:2d}: {signal.Signals(signum).name} after {delay:5.1f} s -> exit {code}, "
              f"latest {os.path.basename(latest) if latest else None}")
        if code != (143 if sigterm else -9):
            sys.exit(f"a {signal.Signals(signum).name} should end the run with "
                     f"{143 if sigterm else -9}, got {code}")
    run_to_end(train_cmd(args, run_dir, resume=True))
    problems = compare(args.framework, ref_dir, run_dir)
    verdict = "PASS" if not problems else "FAIL"
    print(f"{verdict}: {args.kills} kills ({in_training} during training, the rest during "
          f"start-up), final state {'identical to' if not problems else 'differs from'} the "
          f"uninterrupted run")
    for p in problems[:20]:
        print("  " + p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
