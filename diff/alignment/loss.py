"""Step ``loss``: cross-entropy of the forward step's VGG16 logits."""

from __future__ import annotations

import paddle
import paddle.nn.functional as pF
import torch
import torch.nn.functional as tF

from .context import T_LOSS, Context
from .forward import eval_twins
from .report import record
from .twins import fake_data


def step_loss(ctx: Context) -> None:
    _, y = fake_data(ctx)
    _, _, th_logits, pd_logits, _ = eval_twins(ctx)
    th_y, pd_y = torch.from_numpy(y), paddle.to_tensor(y)
    th_vals = {"loss": tF.cross_entropy(th_logits, th_y).numpy().reshape(1),
               "loss_per_sample": tF.cross_entropy(th_logits, th_y, reduction="none").numpy()}
    pd_vals = {"loss": pF.cross_entropy(pd_logits, pd_y).numpy().reshape(1),
               "loss_per_sample": pF.cross_entropy(pd_logits, pd_y,
                                                   reduction="none").numpy().reshape(-1)}
    record(ctx, "loss", pd_vals, th_vals,
           [("cross-entropy on VGG16 logits (mean and per sample)", list(th_vals), T_LOSS)])
