"""Exported program vs dynamic model on CIFAR test images: max |logit difference|, top-1.

``python tools/check_export.py --data_path A.tar.gz --model VGG16BN [--model_path CKPT]
[--framework torch] [--n 100] [--tol 1e-5]``: without ``--model_path``, random weights with
BatchNorm statistics of the images. Exit 1 when a logit differs by more than ``--tol`` or a top-1
class differs.
"""

import argparse
import math
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from swa_recipe.cli import run  # noqa: E402
from swa_recipe.config import add_config_args, resolve  # noqa: E402
from swa_recipe.inference import check_export, load_model  # noqa: E402
from swa_recipe.predict import test_images  # noqa: E402


def image_count(text: str) -> int:
    """``--n``: 1 to 10000 (a CIFAR test set), so that argparse says so in one line instead of
    a traceback on an empty or oversized comparison."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 10000:
        raise argparse.ArgumentTypeError(f"must be an integer in 1..10000, got {text[:40]!r}")
    return value


def tolerance(text: str) -> float:
    """``--tol``: a finite number >= 0 (NaN would make every comparison FAIL)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text[:40]!r}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model_path", help="checkpoint (default: random weights)")
    p.add_argument("--which", choices=("auto", "swa", "sgd"), default="auto")
    p.add_argument("--n", type=image_count, default=100, help="first N test images")
    p.add_argument("--tol", type=tolerance, default=1e-5,
                   help="largest accepted logit difference")
    p.add_argument("--save_dir", help="where to export (default: a temporary folder)")
    add_config_args(p)
    p.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    return p


def main(args: argparse.Namespace) -> int:
    weights = None
    if args.model_path:
        _, cfg, _, model = load_model(args)
        weights = model.state_dict()
    else:
        cfg = resolve(args)
    images = test_images(cfg, list(range(args.n))).images
    with tempfile.TemporaryDirectory() as tmp:
        res = check_export(cfg["Global"]["framework"], cfg, weights, images, args.save_dir or tmp)
    ok = res["max_abs_diff"] <= args.tol and res["top1_same"] == res["n"]
    print(f"{cfg['Arch']['model']} width {cfg['Arch']['width']}, {cfg['Global']['framework']} "
          f"({'+'.join(f for f in res['files'] if not f.endswith('.info'))}): on {res['n']} test "
          f"images, max |logit difference| {res['max_abs_diff']:.2e}, top-1 identical "
          f"{res['top1_same']}/{res['n']}: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    args = parser().parse_args()
    sys.exit(run(lambda: main(args), args.debug))
