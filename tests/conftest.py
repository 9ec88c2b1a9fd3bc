"""Shared fixtures: external oracles (qemu-img, qemu-io), the real-world samples, markers.

Oracle tools and the samples folder are optional on a developer machine (the test skips with
a message) but mandatory in CI (``CI`` set): there a missing oracle fails the test, so a green
CI run always means the oracles ran.
"""

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


@pytest.fixture
def qemu_img() -> str:
    """Path of qemu-img, the independent oracle for base images."""
    return require_tool("qemu-img")


@pytest.fixture
def qemu_io() -> str:
    """Path of qemu-io, used to write patterns into qemu-made images."""
    return require_tool("qemu-io")


@pytest.fixture
def samples() -> Path:
    """The folder of real VirtualBox files (shared/samples/vbox beside the repository)."""
    if not SAMPLES.is_dir():
        message = f"the real-world samples folder {SAMPLES} is absent"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return SAMPLES


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests that use Qt fixtures as ``gui`` so ``-m 'not gui'`` runs the engine alone."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "qtbot" in fixtures or "qapp" in fixtures or "tests/gui" in str(item.path):
            item.add_marker(pytest.mark.gui)
