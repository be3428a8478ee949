"""Train VGG on CIFAR-10 with SGD or SWA.

``python train.py --swa`` (Paddle; ``--framework torch`` for the PyTorch twin).
"""

import sys

from swa_apps.console import train

if __name__ == "__main__":
    sys.exit(train())
