"""The Paddle twin: models, Paddle's missing ``swa_utils``, loaders, checkpoints and the trainer.

As a library: ``from swa_paddle import AveragedModel, SWALR, update_bn`` (torch's
``swa_utils`` API) and ``from swa_paddle.callbacks import SWA`` (for ``paddle.Model.fit``).
Importing it loads neither torch nor the CIFAR-10 code, and prints nothing: Paddle's import
banner and its warnings that ask nothing of the user are filtered where they arise
(``swa_recipe.runtime.PADDLE_NOISE``); every other warning is shown.
"""

from swa_recipe.runtime import (
    filter_paddle_warnings,
    import_banner_hidden,
    python_signal_handlers,
    use_writable_home,
)

filter_paddle_warnings()
use_writable_home()
with import_banner_hidden(always=True), python_signal_handlers():
    import paddle  # noqa: F401  (first here: its banner dropped, Python's SIGTERM kept)

from .swa_utils import (  # noqa: E402
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
