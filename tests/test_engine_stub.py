"""vdigui/engine/__init__.pyi gives type checkers the lazily loaded public names: it must name
exactly the keys of the engine's ``_EXPORTS`` table, each from the module the table gives."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import vdigui.engine as engine

STUB = Path(engine.__file__).with_suffix(".pyi")


def stub_imports() -> dict[str, str]:
    """Public name -> module, for every ``from M import N as N`` in the stub."""
    tree = ast.parse(STUB.read_text(encoding="utf-8"), filename=str(STUB))
    names: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                # "as" the same name: the form that re-exports a name from a stub (PEP 484).
                assert alias.asname == alias.name, f"{alias.name} is imported without 'as'"
                assert alias.name not in names, f"{alias.name} is imported twice"
                names[alias.name] = node.module or ""
    return names


def test_stub_names_exactly_the_exports() -> None:
    imports = stub_imports()
    exports = engine._EXPORTS
    assert sorted(set(exports) - set(imports)) == [], "missing from the stub"
    assert sorted(set(imports) - set(exports)) == [], "in the stub but not in _EXPORTS"
    assert imports == exports


def test_every_export_resolves() -> None:
    for name, module in engine._EXPORTS.items():
        assert hasattr(importlib.import_module(module), name), f"{module} has no {name}"
