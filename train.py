"""Train VGG on CIFAR-10 with SGD or SWA.

``python train.py --swa`` (Paddle; ``--framework torch`` for the PyTorch twin).
"""

import sys

from swa_recipe.cli import run, train_main, train_parser

if __name__ == "__main__":
    args = train_parser().parse_args()
    sys.exit(run(lambda: train_main(args), args.debug))
