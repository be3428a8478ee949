"""The Paddle twin: models, Paddle's missing ``swa_utils``, loaders, checkpoints and the trainer.

As a library: ``from swa_paddle import AveragedModel, SWALR, update_bn`` (torch's
``swa_utils`` API) and ``from swa_paddle.callbacks import SWA`` (for ``paddle.Model.fit``).
Importing it loads neither torch nor the CIFAR-10 code.
"""

from .swa_utils import (
    SWALR,
    AveragedModel,
    get_ema_avg_fn,
    get_ema_multi_avg_fn,
    get_swa_avg_fn,
    get_swa_multi_avg_fn,
    update_bn,
)

__all__ = ["AveragedModel", "SWALR", "get_ema_avg_fn", "get_ema_multi_avg_fn", "get_swa_avg_fn",
           "get_swa_multi_avg_fn", "update_bn"]
