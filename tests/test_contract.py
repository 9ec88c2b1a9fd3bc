"""The dependency rule: the engine and the CLI import and run without PySide6 and pyqtgraph."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from builders import MIB, build_chain, pattern

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = ("PySide6", "shiboken6", "pyqtgraph", "vdigui.gui")

BLOCKER = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = {"PySide6", "shiboken6", "pyqtgraph"}

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked by the contract test")
            return None

    sys.meta_path.insert(0, Blocker())
    for name in list(sys.modules):
        if name.split(".")[0] in BLOCKED:
            del sys.modules[name]
""")


def run_blocked(body: str, *args: str) -> subprocess.CompletedProcess[str]:
    code = BLOCKER + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, cwd=REPO
    )


def test_blocker_really_blocks() -> None:
    r = run_blocked("""
        try:
            import PySide6.QtCore
        except ImportError as exc:
            print("blocked", exc)
        try:
            import pyqtgraph
        except ImportError as exc:
            print("blocked", exc)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("is blocked by the contract test") == 2


def test_engine_and_cli_run_without_qt(tmp_path: Path) -> None:
    ch = build_chain(
        tmp_path,
        4 * MIB,
        [{0: pattern(0, MIB)}, {1: pattern(1, MIB), 2: "zero"}],
        names=["base.vdi", "leaf.vdi"],
    )
    r = run_blocked(
        """
        import json, sys
        import vdigui.engine
        from vdigui.engine import open_chain
        from vdigui.cli import main
        leaf, out = sys.argv[1], sys.argv[2]
        with open_chain(leaf) as chain:
            assert chain.read(0, chain.disk_size)
        try:
            main(["--help"])
        except SystemExit as exc:
            assert exc.code == 0, exc.code
        else:
            raise AssertionError("--help did not exit")
        codes = {
            "info": main(["info", leaf]),
            "info-json": main(["info", "--json", leaf]),
            "map": main(["map", leaf]),
            "check": main(["check", leaf]),
            "frag": main(["frag", leaf]),
            "export": main(["export", leaf, out]),
        }
        bad = sorted(m for m in sys.modules
                     if m.split(".")[0] in ("PySide6", "shiboken6", "pyqtgraph")
                     or m.startswith("vdigui.gui"))
        print("RESULT", json.dumps({"codes": codes, "bad": bad}))
    """,
        str(ch.leaf),
        str(tmp_path / "out.raw"),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "usage: vdictl" in r.stdout
    assert "Traceback" not in r.stderr
    result = json.loads(r.stdout.rsplit("RESULT ", 1)[1])
    assert result["bad"] == []
    assert result["codes"] == {
        "info": 0,
        "info-json": 0,
        "map": 0,
        "check": 0,
        "frag": 0,
        "export": 0,
    }
    assert (tmp_path / "out.raw").read_bytes() == ch.expected


def _imports(path: Path) -> list[tuple[int, str]]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    rel = path.relative_to(REPO).with_suffix("")
    package = list(rel.parts[:-1])  # the same for a module and a package __init__
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.append((node.lineno, mod))
            found += [(node.lineno, f"{mod}.{alias.name}") for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Name) and node.func.id == "__import__")
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def _sources() -> list[Path]:
    files = sorted((REPO / "vdigui" / "engine").rglob("*.py"))
    files += sorted((REPO / "vdigui" / "cli").rglob("*.py"))
    return files


def test_sources_exist() -> None:
    names = {p.relative_to(REPO).as_posix() for p in _sources()}
    assert {
        "vdigui/engine/__init__.py",
        "vdigui/engine/format.py",
        "vdigui/cli/__init__.py",
    } <= names


@pytest.mark.parametrize("path", _sources(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_no_gui_imports_in_engine_or_cli(path: Path) -> None:
    bad = [
        (line, name)
        for line, name in _imports(path)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)
    ]
    assert not bad, f"{path.relative_to(REPO)} imports GUI modules: {bad}"


def test_import_scanner_catches_relative_gui_import(tmp_path: Path) -> None:
    fake = REPO / "vdigui" / "cli" / "_contract_probe_tmp.py"
    fake.write_text("from ..gui import app\nimport importlib\nimportlib.import_module('PySide6')\n")
    try:
        names = [n for _, n in _imports(fake)]
    finally:
        fake.unlink()
    assert "vdigui.gui" in names and "PySide6" in names


@pytest.mark.parametrize(
    "path",
    sorted((REPO / "vdigui" / "gui").rglob("*.py")),
    ids=lambda p: p.relative_to(REPO).as_posix(),
)
def test_gui_uses_only_the_engines_public_names(path: Path) -> None:
    """The GUI imports ``vdigui.engine`` itself, never its submodules (architecture 2.2)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    modules = [
        (node.lineno, node.module or "")
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    ]
    modules += [
        (node.lineno, alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    ]
    deep = [(line, name) for line, name in modules if name.startswith("vdigui.engine.")]
    assert not deep, f"{path.relative_to(REPO)} reaches into engine internals: {deep}"
