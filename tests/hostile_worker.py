"""Runs CLI cases in one process under a memory limit: ``python hostile_worker.py CASES OUT``.

CASES is a JSON list of ``{"id", "main", "argv"}``, ``main`` one of ``MAINS`` (every entry point
that reads a file a user may be handed: train, eval, convert, predict, export, infer).
Paddle and torch are imported first; then the address space is capped at what they took plus
``LIMIT_MB``, and each case runs through ``swa_apps.cli.run`` as the scripts do, with its own
alarm. OUT gets one JSON line per case (written as it ends): exit code, what the case printed
on stderr, anything that escaped ``run`` (a traceback), and its time.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import signal
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from swa_apps import (
    cli,  # noqa: E402
    inference,  # noqa: E402
)
from swa_recipe.runtime import tune_cpu_env  # noqa: E402

LIMIT_MB = int(os.environ.get("HOSTILE_LIMIT_MB", "1536"))
CASE_SECONDS = 30
MAINS = {"train": (cli.train_parser, cli.train_main), "eval": (cli.eval_parser, cli.eval_main),
         "convert": (cli.convert_parser, cli.convert_main),
         "predict": (inference.predict_parser, inference.predict_main),
         "export": (inference.export_parser, inference.export_main),
         "infer": (inference.infer_parser, inference.infer_main)}


def address_space() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize")


def on_alarm(signum, frame):
    raise TimeoutError(f"case ran past {CASE_SECONDS} s")


def run_case(case: dict) -> dict:
    parser, main = MAINS[case["main"]]
    err, out = io.StringIO(), io.StringIO()
    escaped, code = None, None
    start = time.perf_counter()
    signal.alarm(CASE_SECONDS)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            args = parser().parse_args(case["argv"])
            code = cli.run(lambda: main(args), False)
    except SystemExit as exc:  # argparse
        code = exc.code
    except BaseException:  # what a user must never see
        escaped = traceback.format_exc()[-3000:]
    finally:
        signal.alarm(0)
    return {"id": case["id"], "rc": code, "stderr": err.getvalue()[-5000:],
            "escaped": escaped, "seconds": time.perf_counter() - start}


def main() -> None:
    cases_path, out_path = sys.argv[1:3]
    with open(cases_path) as fh:
        cases = json.load(fh)
    tune_cpu_env()
    for twin in ("paddle", "torch"):
        cli.import_twin(twin)
    signal.signal(signal.SIGALRM, on_alarm)
    limit = address_space() + LIMIT_MB * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    with open(out_path, "w") as out:
        for case in cases:
            out.write(json.dumps(run_case(case)) + "\n")
            out.flush()


if __name__ == "__main__":
    main()
