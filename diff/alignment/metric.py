"""Step ``metric``: a Paddle-trained model, converted, evaluates to the same accuracy in torch."""

from __future__ import annotations

import time

import numpy as np

import swa_paddle.trainer as pd_trainer
import swa_torch.trainer as th_trainer
from swa_apps.convert import convert_state_dict
from swa_paddle import checkpoint as pd_ckpt
from swa_torch import checkpoint as th_ckpt
from swa_torch import models as th_models

from .context import CHANCE_FACTOR, T_LOSS, T_METRIC, Context, make_cfg
from .report import check, record
from .twins import apply_break, eval_loaders


def step_metric(ctx: Context) -> None:
    """A short real run of the Paddle twin (the faster one on CPU), converted to torch, both
    evaluated on the whole test set."""
    cfg = make_cfg(Arch={"model": "VGG16BN", "width": 0.125, "dropout": 0.0},
                   Data={"data_path": ctx.data_path, "batch_size": 64, "train_subset": 10000})
    t0 = time.time()
    pt = pd_trainer.Trainer(cfg)
    apply_break(pt.model, ctx.brk)
    train_res = pt.train_epoch(0)
    train_s = time.time() - t0
    pd_test, th_test = eval_loaders(cfg)
    pd_res = pd_trainer.evaluate(pt.model, pd_test)
    th_model = th_models.build_model(cfg)
    state = convert_state_dict(pd_ckpt.to_numpy(pt.model.state_dict()), "paddle2torch")
    th_ckpt.load_weights(th_model, th_ckpt.from_numpy(state), "<paddle trained>")
    th_res = th_trainer.evaluate(th_model, th_test)
    n_test = th_test.batch_sampler.batches.n
    record(ctx, "metric", {"acc": np.array([pd_res["accuracy"]]),
                           "loss": np.array([pd_res["loss"]])},
           {"acc": np.array([th_res["accuracy"]]), "loss": np.array([th_res["loss"]])},
           [(f"test accuracy (%) on {n_test} images, Paddle-trained VGG16BN 1/8 width "
             f"converted to torch", ["acc"], T_METRIC),
            ("mean test loss (cross-entropy) on the same images", ["loss"], T_LOSS)])
    chance = 100.0 / cfg["Arch"]["num_classes"]
    check(ctx, "metric", f"accuracy far above chance (Paddle {pd_res['accuracy']:.2f} %, "
          f"torch {th_res['accuracy']:.2f} %)", min(pd_res["accuracy"], th_res["accuracy"]),
          f">= {CHANCE_FACTOR * chance:g}",
          min(pd_res["accuracy"], th_res["accuracy"]) >= CHANCE_FACTOR * chance)
    ctx.note("metric", f"trained 1 epoch on {cfg['Data']['train_subset']} images in "
             f"{train_s:.0f} s (train acc {train_res['accuracy']:.2f} %); test loss Paddle "
             f"{pd_res['loss']:.6f}, torch {th_res['loss']:.6f}")
