"""Convert weights between the twins: ``python tools/convert.py SRC.pt DST.pdparams`` (or back).

Plain state dicts and whole training checkpoints; the model is read from the checkpoint's config,
else from ``--model`` / ``-o Arch.width=...``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from swa_apps.console import convert  # noqa: E402

if __name__ == "__main__":
    sys.exit(convert())
