"""Tables and plot of a study: ``python tools/summarize.py results/cpu``.

Writes ``results/<study>/README.md`` and ``study.png``; works on a study in progress.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from swa_apps.console import command  # noqa: E402
from swa_study.summary import summarize_main, summarize_parser  # noqa: E402

if __name__ == "__main__":
    sys.exit(command(summarize_parser, summarize_main)())
