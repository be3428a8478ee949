"""VisualDL scalars of a Paddle run (``Global.use_visualdl``); ``swa_torch.visual`` writes
TensorBoard's. ``swa_recipe.logs.Scalars`` decides what is written and when."""

from __future__ import annotations

from swa_recipe.config import ConfigError
from swa_recipe.logs import Writer

INSTALL = "pip install visualdl"


def require() -> None:
    """Refuse ``Global.use_visualdl`` in one line when VisualDL is not installed (an optional
    dependency: the ``visual`` extra), before the run does any work."""
    try:
        import visualdl  # noqa: F401
    except ImportError:
        raise ConfigError(f"Global.use_visualdl needs VisualDL, which is not installed; "
                          f"{INSTALL}, or set Global.use_visualdl false") from None


def open_writer(path: str) -> Writer:
    """A ``visualdl.LogWriter`` into the folder ``path`` (``visualdl --logdir path`` shows it):
    ``add_scalar(tag, value, step)`` and ``close()``."""
    require()
    from visualdl import LogWriter

    return LogWriter(logdir=path)
