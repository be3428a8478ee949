"""Paddle evaluation through one static program against the eager forward, in one process:
``python bench/static_eval.py``.

VGG16 (``--model``) at each ``--width``, batch 128 on CIFAR-shaped random images (a fixed seed),
``swa_paddle.trainer.evaluate`` with ``static=True`` and ``static=False`` alternating round by
round (``--rounds``, medians), so a machine shared with other jobs loads both alike: report the
ratio. Also the largest difference of the mean loss and whether the accuracy counts agree, and
with ``--data_path`` the same comparison on the whole CIFAR-10 test set (10,000 images).
"""

from __future__ import annotations

import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from swa_recipe.arguments import ArgumentParser  # noqa: E402
from swa_recipe.numbers import int_argument  # noqa: E402
from swa_recipe.runtime import tune_cpu_env  # noqa: E402

tune_cpu_env()  # before Paddle: threads and the legacy IR for the oneDNN programs

import numpy as np  # noqa: E402
import paddle  # noqa: E402

from swa_paddle.models import build_model  # noqa: E402
from swa_paddle.trainer import evaluate  # noqa: E402
from swa_recipe.config import default_config, merge, validate  # noqa: E402


def config(model: str, width: float, batch: int, data_path: str | None = None) -> dict:
    cfg = {"Arch": {"model": model, "width": width}, "Data": {"batch_size": batch}}
    if data_path:
        cfg["Data"]["data_path"] = data_path
    return validate(merge(default_config(), cfg, "bench"))


def random_batches(images: int, batch: int) -> list[tuple[paddle.Tensor, paddle.Tensor]]:
    rng = np.random.default_rng(0)
    return [(paddle.to_tensor(rng.standard_normal((min(batch, images - i), 3, 32, 32),
                                                  dtype=np.float32)),
             paddle.to_tensor(rng.integers(0, 10, min(batch, images - i))))
            for i in range(0, images, batch)]


def agreement(model: paddle.nn.Layer, loader) -> dict:
    """Static against eager ``evaluate``: loss difference, accuracy of each."""
    static, eager = evaluate(model, loader), evaluate(model, loader, static=False)
    return {"loss_diff": abs(static["loss"] - eager["loss"]),
            "accuracy": (static["accuracy"], eager["accuracy"])}


def speed(model: paddle.nn.Layer, loader: list, rounds: int) -> dict:
    """Images/s of each path, alternating which goes first, medians."""
    images = sum(int(y.shape[0]) for _, y in loader)
    times: dict[bool, list[float]] = {True: [], False: []}
    evaluate(model, loader[:1]), evaluate(model, loader[:1], static=False)  # build, warm up
    for r in range(rounds):
        for static in ((True, False) if r % 2 == 0 else (False, True)):
            start = time.perf_counter()
            evaluate(model, loader, static=static)
            times[static].append(images / (time.perf_counter() - start))
        print(f"  round {r + 1}: static {times[True][-1]:.0f}, eager {times[False][-1]:.0f} "
              f"img/s", flush=True)
    static, eager = statistics.median(times[True]), statistics.median(times[False])
    return {"static_ips": static, "eager_ips": eager, "ratio": static / eager}


def main() -> int:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="VGG16")
    parser.add_argument("--width", type=float, action="append", help="default: 0.25 and 1")
    parser.add_argument("--batch", type=int_argument(1), default=128)
    parser.add_argument("--images", type=int_argument(1), default=1280)
    parser.add_argument("--rounds", type=int_argument(1), default=3)
    parser.add_argument("--data_path", default=None, help="also the CIFAR-10 test set")
    args = parser.parse_args()
    for width in args.width or [0.25, 1.0]:
        paddle.seed(0)
        model = build_model(config(args.model, width, args.batch))
        loader = random_batches(args.images, args.batch)
        print(f"{args.model}, width {width}, batch {args.batch}, {args.images} images")
        print(f"  {speed(model, loader, args.rounds)}")
        print(f"  random images: {agreement(model, loader)}")
        if args.data_path:
            from swa_paddle.data import build_loaders

            cfg = config(args.model, width, args.batch, args.data_path)
            _, test = build_loaders(cfg, training=False)
            print(f"  CIFAR-10 test set: {agreement(model, test)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
