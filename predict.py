"""Classify images with a checkpoint (the dynamic model, either twin).

``python predict.py --model_path RUN/checkpoint-200.pdparams (--img_path IMG | --index N ...)``
"""

import sys

from swa_recipe.cli import run
from swa_recipe.inference import predict_main, predict_parser

if __name__ == "__main__":
    args = predict_parser().parse_args()
    sys.exit(run(lambda: predict_main(args), args.debug))
