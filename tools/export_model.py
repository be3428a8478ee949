"""Export a checkpoint for inference: ``paddle.jit.save`` (Paddle Inference) or ``torch.export``.

``python tools/export_model.py --model_path RUN/checkpoint-200.pdparams --save_dir DIR``
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from swa_apps.console import export  # noqa: E402

if __name__ == "__main__":
    sys.exit(export())
