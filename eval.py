"""Evaluate a checkpoint on the CIFAR-10 test set.

``python eval.py --model_path RUN/checkpoint-200.pdparams [--data_path ...] [--which swa|sgd]``
"""

import sys

from swa_recipe.cli import eval_main, eval_parser, run

if __name__ == "__main__":
    args = eval_parser().parse_args()
    sys.exit(run(lambda: eval_main(args), args.debug))
