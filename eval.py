"""Evaluate a checkpoint on the CIFAR-10 test set.

``python eval.py --model_path RUN/checkpoint-200.pdparams [--data_path ...] [--which swa|sgd]``
"""

import sys

from swa_apps.console import evaluate

if __name__ == "__main__":
    sys.exit(evaluate())
