"""Step ``data``: the twins' loaders give byte-identical batches."""

from __future__ import annotations

import numpy as np

import swa_paddle.data as pd_data
import swa_torch.data as th_data
from swa_recipe.data.datasets import CIFAR10

from .context import T_DATA, Context, make_cfg
from .report import check, record
from .twins import cached_load_cifar


def first_batch(loader, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    loader.batch_sampler.set_epoch(epoch)
    x, y = next(iter(loader))
    return np.asarray(x.numpy()), np.asarray(y.numpy()).astype(np.int64).reshape(-1)


def step_data(ctx: Context) -> None:
    n_train = len(cached_load_cifar(CIFAR10, ctx.data_path, "auto")[0].labels)
    cfg = make_cfg(Data={"data_path": ctx.data_path, "batch_size": min(128, n_train)})
    pd_train, pd_test = pd_data.build_loaders(cfg)
    th_train, th_test = th_data.build_loaders(cfg)
    pd_vals, th_vals = {}, {}
    for tag, pd_loader, th_loader, epoch in (("test", pd_test, th_test, 0),
                                             ("train_epoch0", pd_train, th_train, 0),
                                             ("train_epoch1", pd_train, th_train, 1)):
        (px, py), (tx, ty) = first_batch(pd_loader, epoch), first_batch(th_loader, epoch)
        pd_vals[f"{tag}_images"], pd_vals[f"{tag}_labels"] = px, py
        th_vals[f"{tag}_images"], th_vals[f"{tag}_labels"] = tx, ty
    n = len(pd_vals["test_labels"])
    record(ctx, "data", pd_vals, th_vals, [
        (f"first batch ({n} images) of the test loader and of the augmented train loader in "
         f"epochs 1 and 2 (images, labels)", list(pd_vals), T_DATA)])
    if np.array_equal(pd_vals["train_epoch0_images"], pd_vals["train_epoch1_images"]):
        check(ctx, "data", "train batches of epochs 1 and 2 differ (reshuffled, re-augmented)",
              0.0, "differ", False)
