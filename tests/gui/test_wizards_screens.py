"""Every page of every wizard renders offscreen, with real plan data, without writing a byte."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtGui import QImage

from tests.gui.wizard_kit import files_state
from vdigui.gui.wizards import render_wizard_screenshot
from vdigui.gui.wizards.base import PAGE_NAMES
from vdigui.gui.wizards.registry import OPERATIONS

SIZE = (720, 540)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo VM, built once for this module."""
    from vdigui.engine.demo import build_demo_vm

    return build_demo_vm(tmp_path_factory.mktemp("demo-screens"))


def distinct_colours(image: QImage, step: int = 7) -> int:
    """How many different colours a sparse grid of pixels has (a blank page has one or two)."""
    seen = set()
    for x in range(0, image.width(), step):
        for y in range(0, image.height(), step):
            seen.add(image.pixel(x, y))
    return len(seen)


@pytest.mark.parametrize("kind", OPERATIONS)
def test_every_page_renders(qapp: object, demo: Path, tmp_path: Path, kind: str) -> None:
    before = files_state(demo)
    target = "Demo VM.vdi" if kind == "compact" else None
    for page in PAGE_NAMES:
        out = tmp_path / f"{kind}-{page}.png"
        render_wizard_screenshot(kind, demo, target, page, out, SIZE)
        image = QImage(str(out))
        assert (image.width(), image.height()) == SIZE, page
        assert distinct_colours(image) > 8, f"{kind}/{page} looks blank"
    assert files_state(demo) == before


def test_refused_target_renders_the_reason(qapp: object, demo: Path, tmp_path: Path) -> None:
    out = tmp_path / "refused.png"
    render_wizard_screenshot("delete-snapshot", demo, "Updates", "result", out, SIZE)
    assert QImage(str(out)).width() == SIZE[0]


def test_strip_keeps_sparse_data_visible(qapp: object) -> None:
    import numpy as np
    from PySide6.QtGui import QColor

    from vdigui.gui.wizards.widgets import strip_colours

    codes = np.zeros(90, dtype=np.uint8)
    codes[5] = 2  # one data block among 9 per cell
    palette = (QColor("#ffffff"), QColor("#808080"), QColor("#000000"))
    cells = strip_colours(codes, 10, palette)
    assert cells.shape == (10, 4)
    assert cells[0, 0] <= 128  # at least half strength, though 1/9 of the cell
    assert (cells[1:, :3] == 255).all()  # empty cells keep the background
    full = strip_colours(np.full(20, 2, dtype=np.uint8), 40, palette)
    assert full.shape == (20, 4) and (full[:, :3] == 0).all()  # one cell per block


def test_bare_image_renders(qapp: object, demo: Path, tmp_path: Path) -> None:
    out = tmp_path / "bare.png"
    render_wizard_screenshot("clone", demo / "data.vdi", None, "preview", out, SIZE)
    assert distinct_colours(QImage(str(out))) > 8
