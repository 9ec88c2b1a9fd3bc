"""A 2 TiB chain (200,000 allocated blocks under 3 snapshots) opens and pans correctly.

How fast it does so is measured by ``bench/bench_gui.py``, never here: timings on a shared
machine are noise. The files are sparse (200 GiB apparent, a few MiB on disk).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from bigvm import BLOCKS, big_vm

from vdigui.gui.main_window import MainWindow

pytestmark = pytest.mark.slow


def test_two_tib_chain_opens_and_pans(qtbot: Any, window: MainWindow, tmp_path: Path) -> None:
    folder = big_vm(tmp_path / "big")
    window.tabs.setCurrentWidget(window.blockmap)
    with qtbot.waitSignal(window.idle, timeout=60000):
        window.open_path(folder)
    qtbot.waitUntil(lambda: not window.workers.running, timeout=60000)
    assert window.blockmap.blocks == BLOCKS
    assert len(window.chain_data.paths) == 4
    box = window.blockmap.plot.getViewBox()
    for step in range(3):
        box.setXRange(step * 5000, BLOCKS + step * 5000, padding=0)
        window.blockmap.refresh()
    assert not window.workers.running
