"""Export a checkpoint for inference: ``paddle.jit.save`` (Paddle Inference) or ``torch.export``.

``python tools/export_model.py --model_path RUN/checkpoint-200.pdparams --save_dir DIR``
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from swa_recipe.cli import run  # noqa: E402
from swa_recipe.inference import export_main, export_parser  # noqa: E402

if __name__ == "__main__":
    args = export_parser().parse_args()
    sys.exit(run(lambda: export_main(args), args.debug))
