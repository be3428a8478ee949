"""The framework-free package imports without cycles (cli uses convert, never the reverse)."""

from __future__ import annotations

import ast

from conftest import ROOT

PACKAGE = ROOT / "swa_recipe"


def relative_imports(path) -> set[str]:
    """Modules of the package that ``path`` imports, at any depth of its code (lazy ones too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module} if node.module else {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("swa_recipe."):
            found.add(node.module.split(".", 1)[1])
    return found


def test_swa_recipe_has_no_import_cycle():
    graph = {p.stem: relative_imports(p) for p in PACKAGE.glob("*.py")}
    assert "cli" not in graph["convert"] and "convert" in graph["cli"]

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, " -> ".join(path + (module,))
        for dep in graph.get(module, ()):
            visit(dep, path + (module,))

    for module in graph:
        visit(module, ())
