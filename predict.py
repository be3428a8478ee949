"""Classify images with a checkpoint (the dynamic model, either twin).

``python predict.py --model_path RUN/checkpoint-200.pdparams (--img_path IMG | --index N ...)``
"""

import sys

from swa_apps.console import predict

if __name__ == "__main__":
    sys.exit(predict())
