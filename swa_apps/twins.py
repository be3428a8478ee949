"""Choosing a twin: the framework's modules by role, imported on demand, after
``runtime.tune_cpu_env`` (CPU settings must reach the environment before Paddle is imported).

An application module: the core and the twins never choose a framework. The imports are
written out (no computed module names), so that tests/test_imports.py sees every arrow.
"""

from __future__ import annotations

from types import ModuleType, SimpleNamespace

from swa_recipe.runtime import import_banner_hidden

ROLES = ("models", "data", "checkpoint", "trainer", "dist", "landscape")


def import_twin(framework: str) -> SimpleNamespace:
    """``swa_<framework>``'s modules by role (``twin.models.build_model``, ...)."""
    with import_banner_hidden():
        package = _paddle() if framework == "paddle" else _torch()
    return SimpleNamespace(**{role: getattr(package, role) for role in ROLES})


def import_export(framework: str) -> ModuleType:
    """``swa_<framework>.export`` (export and inference), imported as :func:`import_twin`
    imports; not a role of every twin object, as Paddle's inference library is heavy."""
    with import_banner_hidden():
        if framework == "paddle":
            import swa_paddle.export
            return swa_paddle.export
        import swa_torch.export
        return swa_torch.export


def _paddle() -> ModuleType:
    import swa_paddle.checkpoint
    import swa_paddle.data
    import swa_paddle.dist
    import swa_paddle.landscape
    import swa_paddle.models
    import swa_paddle.trainer
    return swa_paddle


def _torch() -> ModuleType:
    import swa_torch.checkpoint
    import swa_torch.data
    import swa_torch.dist
    import swa_torch.landscape
    import swa_torch.models
    import swa_torch.trainer
    return swa_torch
