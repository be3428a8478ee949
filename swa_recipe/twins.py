"""The twin of a framework, by role: imported on demand, after ``runtime.tune_cpu_env`` (CPU
settings must reach the environment before Paddle is imported)."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

from .runtime import import_banner_hidden

ROLES = ("models", "data", "checkpoint", "trainer", "dist", "landscape")


def import_twin(framework: str) -> SimpleNamespace:
    """``swa_<framework>``'s modules by role (``twin.models.build_model``, ...)."""
    with import_banner_hidden():
        modules = {n: importlib.import_module(f"swa_{framework}.{n}") for n in ROLES}
    return SimpleNamespace(**modules)
