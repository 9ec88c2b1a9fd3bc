"""The wheel carries every package and the runtime assets (pyproject lists packages by hand)."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_package_is_listed() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    listed = set(config["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "vdigui").rglob("__init__.py")
    }
    assert listed == found | {"vdigui.resources"}
    assert config["tool"]["setuptools"]["package-dir"] == {"vdigui.resources": "resources"}
