"""TensorBoard scalars of a PyTorch run (``Global.use_visualdl``); ``swa_paddle.visual`` writes
VisualDL's. ``swa_recipe.logs.Scalars`` decides what is written and when."""

from __future__ import annotations

from swa_recipe.config import ConfigError
from swa_recipe.logs import Writer

INSTALL = "pip install tensorboard"


def require() -> None:
    """Refuse ``Global.use_visualdl`` in one line when TensorBoard is not installed (an optional
    dependency: the ``visual`` extra; ``torch.utils.tensorboard`` needs it), before the run
    does any work."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise ConfigError(f"Global.use_visualdl needs TensorBoard, which is not installed; "
                          f"{INSTALL}, or set Global.use_visualdl false") from None


def open_writer(path: str) -> Writer:
    """A ``torch.utils.tensorboard.SummaryWriter`` into the folder ``path``
    (``tensorboard --logdir path`` shows it): ``add_scalar(tag, value, step)`` and
    ``close()``."""
    require()
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(path)
