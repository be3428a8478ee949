"""Run a study: ``python tools/study.py configs/study/cpu.yaml --data_path ...``.

Skips finished runs, continues interrupted ones; ``--dry_run`` prints the grid and its estimate.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from swa_apps.console import command  # noqa: E402
from swa_study.study import study_main, study_parser  # noqa: E402

if __name__ == "__main__":
    sys.exit(command(study_parser, study_main)())
