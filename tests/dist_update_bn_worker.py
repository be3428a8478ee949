"""Run under a launcher by tests/test_distributed.py: distributed ``update_bn`` of one twin.

``python -m paddle.distributed.launch --nproc_per_node 2 THIS_FILE paddle ARCHIVE OUT MODEL DEPTH``
(or ``torchrun ... torch ...``): MODEL (DEPTH or null) at 1/16 width with weights from
``OUT/init.npz``, BN statistics recomputed over this rank's shard of every training batch;
rank 0 writes them to ``OUT/<framework>.npz``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from conftest import tiny_config  # noqa: E402
from swa_apps.cli import import_twin  # noqa: E402


def main(framework: str, archive: str, out: str, name: str, depth: str) -> None:
    twin = import_twin(framework)
    rank, world = twin.dist.init_distributed()
    arch = {"model": name, "depth": None if depth == "null" else int(depth)}
    cfg = tiny_config(archive, Arch=arch, Data={"batch_size": 20})
    model = twin.models.build_model(cfg)
    init = dict(np.load(os.path.join(out, "init.npz")))
    twin.checkpoint.load_weights(model, twin.checkpoint.from_numpy(init), "init.npz")
    train_loader, _ = twin.data.build_loaders(cfg, rank, world)
    twin.dist.update_bn(train_loader, model, world)
    if rank == 0:
        state = twin.checkpoint.to_numpy(model.state_dict())
        np.savez(os.path.join(out, f"{framework}.npz"), **state)
    twin.dist.shutdown(world)


if __name__ == "__main__":
    main(*sys.argv[1:6])
