"""Samples of a CIFAR-10 archive (nothing downloaded).

``python tools/cifar_samples.py lite --data_path A.tar.gz --out DIR/cifar-10-python.tar.gz``
writes the first ``--train`` / ``--test`` images as an archive of the official layout;
``python tools/cifar_samples.py pngs --data_path A.tar.gz --out test_images`` writes the first
``--count`` test images as PNGs with ``labels.txt``.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from swa_apps.cli import run  # noqa: E402
from swa_recipe.arguments import ArgumentParser
from swa_recipe.data.samples import write_lite_archive, write_test_pngs  # noqa: E402
from swa_recipe.numbers import int_argument  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("lite", "pngs"))
    p.add_argument("--data_path", required=True, help="cifar-10-python.tar.gz or its folder")
    p.add_argument("--out", required=True, help="archive (lite) or folder (pngs) to write")
    p.add_argument("--train", type=int_argument(1), default=256, help="lite: training images")
    p.add_argument("--test", type=int_argument(1), default=64, help="lite: test images")
    p.add_argument("--count", type=int_argument(1), default=8, help="pngs: test images")
    p.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    return p


def main(args: argparse.Namespace) -> int:
    if args.what == "lite":
        write_lite_archive(args.data_path, args.out, args.train, args.test)
        print(f"wrote {args.out}: {args.train} training and {args.test} test images")
    else:
        files = write_test_pngs(args.data_path, args.out, args.count)
        print(f"wrote {len(files)} PNGs and labels.txt to {args.out}")
    return 0


if __name__ == "__main__":
    args = parser().parse_args()
    sys.exit(run(lambda: main(args), args.debug))
