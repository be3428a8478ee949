"""Classify images with an exported model: Paddle Inference (oneDNN on CPU, or the GPU), or a
torch ``.pt2``.

``python deploy/inference_python/infer.py --model_dir DIR (--img_path IMG | --index N ...)
[--batch_size B] [--benchmark]``
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from swa_apps.console import infer  # noqa: E402

if __name__ == "__main__":
    sys.exit(infer())
