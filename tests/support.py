"""Paths and helpers shared by tests (importable as ``support``; conftest.py re-uses them)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = Path(os.environ.get("VDIGUI_SAMPLES", REPO.parent / "shared" / "samples" / "vbox"))
IN_CI = bool(os.environ.get("CI"))


def require_tool(name: str) -> str:
    """Path of an external tool; fails in CI, skips elsewhere, when it is missing."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (Debian: see the README's test set-up command)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path
