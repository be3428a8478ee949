"""Layers that only look down: every module of the project's packages sits in one layer and imports
only its own layer or lower ones (static imports at any depth of the code, and ``importlib`` /
``__import__`` calls, which must name their module literally); no import cycle; the core imports
neither Paddle nor torch. README "Map" and docs/layout.md describe the layers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGES = ("swa_recipe", "swa_paddle", "swa_torch", "swa_apps", "swa_study")
FRAMEWORKS = ("paddle", "torch")

# Lowest first. A module may import modules of its own layer and of the layers before it.
LAYERS = {
    "core": {"swa_recipe.*"},  # with data input, swa_recipe.data
    "twins": {"swa_paddle.*", "swa_torch.*"},
    "applications": {"swa_apps.*"},
    "study": {"swa_study.*"},
}
IMPORTERS = {"import_module", "__import__"}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def layer_of(module: str) -> str:
    for layer, members in LAYERS.items():
        for member in members:
            if module == member or (member.endswith(".*") and module.startswith(member[:-1])):
                return layer
    raise AssertionError(f"{module} is in no layer: add it to LAYERS (and to the README's map)")


def package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def absolute(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    base = package.split(".")
    base = base[:len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def dynamic_target(node: ast.Call, where: str = "<source>") -> str | None:
    """The module an ``importlib.import_module(...)`` / ``__import__(...)`` call names; a
    non-literal name fails (this test could not see where it points)."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name not in IMPORTERS or not node.args:
        return None
    arg = node.args[0]
    assert isinstance(arg, ast.Constant) and isinstance(arg.value, str), (
        f"{where}:{node.lineno}: {name}() of a computed name; import the module literally")
    return arg.value


def imported_names(module: str, path: Path) -> set[str]:
    """Every module name ``path`` imports, at any depth of its code (lazy imports too)."""
    return imports_in(path.read_text(), package_of(module, path), str(path.relative_to(ROOT)))


def imports_in(source: str, package: str, where: str = "<source>") -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = absolute(node, package)
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Call) and (target := dynamic_target(node, where)):
            found.add(target)
    return found


def project_edges(names: set[str], modules: dict[str, Path]) -> set[str]:
    """The project modules that importing ``names`` runs: each one and its packages'
    ``__init__``."""
    out = set()
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            for candidate in (prefix, f"{prefix}.__init__"):
                if candidate in modules:
                    out.add(candidate)
    return out


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {m: project_edges(imported_names(m, p), modules) - {m} for m, p in modules.items()}


def test_every_import_points_down():
    order = list(LAYERS)
    upward = [f"{m} ({layer_of(m)}) imports {d} ({layer_of(d)})"
              for m, deps in sorted(graph().items()) for d in sorted(deps)
              if order.index(layer_of(d)) > order.index(layer_of(m))]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    edges = graph()
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, " -> ".join(path[path.index(module):] + (module,))
        if module in done:
            return
        for dep in sorted(edges[module]):
            visit(dep, path + (module,))
        done.add(module)

    for module in sorted(edges):
        visit(module, ())


def test_core_imports_no_framework():
    modules = project_modules()
    offenders = [f"{m} imports {n}" for m, p in sorted(modules.items())
                 if layer_of(m) == "core" for n in sorted(imported_names(m, p))
                 if n.split(".")[0] in FRAMEWORKS]
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("source, complaint", [
    ("import swa_study.study", "imports swa_study.study (study)"),
    ("from swa_apps import cli", "imports swa_apps.cli (applications)"),
    ("importlib.import_module('swa_paddle.trainer')", "imports swa_paddle.trainer (twins)"),
    ("__import__('swa_torch')", "imports swa_torch.__init__ (twins)"),
    ("importlib.import_module('swa_apps.twins')", "imports swa_apps.twins (applications)"),
])
def test_the_layer_check_sees_static_and_dynamic_imports(source, complaint):
    """What the checks above run on a planted upward import in a core module."""
    deps = project_edges(imports_in(source, "swa_recipe.data"), project_modules())
    order = list(LAYERS)
    found = [f"imports {d} ({layer_of(d)})" for d in sorted(deps)
             if order.index(layer_of(d)) > order.index("core")]
    assert complaint in found, found


def test_a_computed_dynamic_import_is_refused():
    call = ast.parse("importlib.import_module(f'swa_{framework}.trainer')").body[0].value
    with pytest.raises(AssertionError, match="computed name"):
        dynamic_target(call)
