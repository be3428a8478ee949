"""Exported program vs dynamic model on CIFAR test images: max |logit difference|, top-1.

``python tools/check_export.py --data_path A.tar.gz --model VGG16BN [--model_path CKPT]
[--framework torch] [--n 100] [--tol 1e-5]``: without ``--model_path``, random weights with
BatchNorm statistics of the images. Exit 1 when a logit differs by more than ``--tol`` or a top-1
class differs.
"""

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from swa_apps.cli import run  # noqa: E402
from swa_apps.inference import check_export, load_model  # noqa: E402
from swa_recipe.arguments import ArgumentParser
from swa_recipe.config import add_config_args, resolve  # noqa: E402
from swa_recipe.numbers import float_argument, int_argument  # noqa: E402
from swa_recipe.predict import test_images  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model_path", help="checkpoint (default: random weights)")
    p.add_argument("--which", choices=("auto", "swa", "sgd"), default="auto")
    p.add_argument("--n", type=int_argument(1, 10000), default=100, help="first N test images")
    p.add_argument("--tol", type=float_argument(0), default=1e-5,
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
