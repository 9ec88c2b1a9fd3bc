"""Shared fixtures: external oracles (qemu-img, qemu-io), the real-world samples, markers.

Oracle tools and the samples folder are optional on a developer machine (the test skips with
a message) but mandatory in CI (``CI`` set): there a missing oracle fails the test, so a green
CI run always means the oracles ran.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support import IN_CI, SAMPLES, require_tool


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
