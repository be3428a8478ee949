"""SWA in a ``paddle.Model.fit`` loop with one callback: VGG16BN at 1/16 width on the first
1,000 CIFAR-10 training images (the lite config's scale), 3 epochs, averaging from epoch 2.

    python examples/swa_hapi_cifar10.py --data_path ../shared/data/cifar-10-python.tar.gz

Only the data reading comes from this project (``swa_recipe.data.cifar``); the rest is plain Paddle
plus ``swa_paddle.callbacks.SWA``.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# swa_paddle first: it imports Paddle without Paddle's start-up warnings (swa_paddle/__init__.py)
import swa_paddle  # noqa: E402, F401, I001

import paddle  # noqa: E402

from swa_paddle.callbacks import SWA  # noqa: E402
from swa_paddle.models import VGG  # noqa: E402
from swa_recipe.data.cifar import load_cifar10, normalize  # noqa: E402


class Images(paddle.io.Dataset):
    """The first ``n`` images of a split, normalised as in the original repo."""

    def __init__(self, split, n: int):
        self.images, self.labels = split.images[:n], split.labels[:n]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return normalize(self.images[i]), np.int64(self.labels[i])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_path", required=True,
                        help="cifar-10-python.tar.gz or its extracted cifar-10-batches-py folder")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--swa_start", type=int, default=2)
    parser.add_argument("--out", default=os.path.join("output", "swa_hapi.pdparams"),
                        help="averaged weights (default output/swa_hapi.pdparams, a folder git "
                        "ignores)")
    args = parser.parse_args()
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)

    paddle.seed(1)
    train, test = load_cifar10(args.data_path, md5=None)
    train_loader = paddle.io.DataLoader(Images(train, 1000), batch_size=128, shuffle=True)
    test_loader = paddle.io.DataLoader(Images(test, 500), batch_size=500)

    network = VGG(depth=16, batch_norm=True, width=0.0625)
    model = paddle.Model(network)
    optimizer = paddle.optimizer.Momentum(learning_rate=0.05, momentum=0.9, weight_decay=5e-4,
                                          parameters=network.parameters())
    model.prepare(optimizer, paddle.nn.CrossEntropyLoss(), paddle.metric.Accuracy())
    swa = SWA(swa_start=args.swa_start, swa_lr=0.01, schedule="original",
              bn_loader=train_loader, swap=False, save_path=args.out)
    model.fit(train_loader, epochs=args.epochs, callbacks=[swa], verbose=1)

    sgd_acc = model.evaluate(test_loader, verbose=0)["acc"]
    averaged = paddle.Model(swa.averaged_model.module)
    averaged.prepare(metrics=paddle.metric.Accuracy())
    swa_acc = averaged.evaluate(test_loader, verbose=0)["acc"]
    print(f"test accuracy: SGD {100 * sgd_acc:.2f} %, SWA {100 * swa_acc:.2f} % "
          f"(average of {int(swa.averaged_model.n_averaged)} epochs, saved to {args.out})")


if __name__ == "__main__":
    main()
