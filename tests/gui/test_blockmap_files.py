"""The block map names the guest files under the hovered block (issue 14, the reverse way).

The VM (tests/engine/guestfs/files/diffvm.py) holds an ext4 (p1) and a FAT16 (p2) volume in a
chain of three images. Which VDI block holds a file comes from ``debugfs blocks`` on the
state's own filesystem image and the partition start the builder gave sfdisk; free blocks
from ``dumpe2fs`` (tests/engine/guestfs/files/test_block_files.py's helper).
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import QPointF, Qt
from PySide6.QtWidgets import QApplication, QMenu

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "engine" / "guestfs" / "files"))

from diffvm import EXT_BLOCK, DiffVm, build  # noqa: E402
from fsbuild import MiB, debugfs_blocks, need  # noqa: E402
from gui_vmkit import make_vm, open_and_wait  # noqa: E402
from test_block_files import free_vdi_blocks  # noqa: E402

from vdigui.cli.common import resolve_source  # noqa: E402
from vdigui.engine import index_block_files, open_paths  # noqa: E402
from vdigui.engine.usage_report import GuestReader  # noqa: E402
from vdigui.gui.main_window import MainWindow  # noqa: E402
from vdigui.gui.views.blockmap import BlockMapView, FilesState  # noqa: E402


@pytest.fixture(scope="module")
def dvm(tmp_path_factory: pytest.TempPathFactory) -> DiffVm:
    need("dumpe2fs")
    return build(tmp_path_factory.mktemp("blockmap-files"))


@pytest.fixture
def gui_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """ "GUI" for every guest read made on the GUI thread (there must be none)."""
    seen: list[str] = []
    original = GuestReader.read

    def read(self: GuestReader, offset: int, length: int) -> bytes:
        if threading.current_thread() is threading.main_thread():
            seen.append("GUI")
        return original(self, offset, length)

    monkeypatch.setattr(GuestReader, "read", read)
    return seen


def settle(qtbot: Any, window: MainWindow) -> None:
    view = window.blockmap
    qtbot.waitUntil(
        lambda: view.files_state is not FilesState.READING and not window.busy, timeout=30000
    )


def show_map(qtbot: Any, window: MainWindow, folder: Path) -> BlockMapView:
    window.resize(1400, 900)
    window.tabs.setCurrentWidget(window.blockmap)
    open_and_wait(qtbot, window, folder, timeout=30000)
    settle(qtbot, window)
    return window.blockmap


def big_file_block(dvm: DiffVm) -> int:
    """The VDI block holding most of /big.bin: at least half of it, so it is named first."""
    base = dvm.starts[0] * 512
    counts = Counter(
        (base + b * EXT_BLOCK) // MiB for b in debugfs_blocks(dvm.exts["current"], "/big.bin")
    )
    block, count = counts.most_common(1)[0]
    assert count * EXT_BLOCK >= MiB // 2
    return block


def test_hover_names_the_files_debugfs_places_in_the_block(
    qtbot: Any, window: MainWindow, dvm: DiffVm, gui_reads: list[str]
) -> None:
    view = show_map(qtbot, window, dvm.folder)
    data = window.chain_data
    assert data is not None
    assert list(data.paths) == list(resolve_source(dvm.folder, None, True))
    assert view.files_state is FilesState.READY and view.bin_size == 1, view.files_error
    block = big_file_block(dvm)
    # Through the mouse: the served row ("Guest sees") over the block.
    layers = len(view.labels)
    vb = view.plot.getViewBox()
    view._hover(vb.mapViewToScene(QPointF(block + 0.5, layers + 0.5)))
    text = view.info.text()
    assert text.startswith(f"Guest block {block:,} ")
    assert " Files: p1:/big.bin" in text  # two volumes: each path names its volume
    # Every row of the block says so; a layer whose copy is hidden says it is the guest's view.
    for row in range(view.rows):
        assert "p1:/big.bin" in view.describe(block, row)
    hidden = [r for r in range(layers) if int(view.serving[block]) != r]
    assert hidden and "as the guest reads it now" in view.describe(block, hidden[0])
    # A block of free space in the ext volume names no file.
    free = free_vdi_blocks(dvm)
    assert free
    for b in free:
        assert "No guest file uses it (free space or filesystem metadata)." in view.describe(b)
    # A zoomed-out cell sums its blocks (the map is binned on big disks).
    view.bin_size = 64
    try:
        cell = view.describe(block)
        assert "Files in this cell: p1:/big.bin" in cell and " more" in cell
        assert "blocks hold none" in cell
    finally:
        view.bin_size = 1
    assert gui_reads == [], "the guest was read on the GUI thread"
    # The block's right-click menu shows a file in the Files tab, selected in its folder.
    assert view.files_menu(free[0]) is None
    scene = vb.mapViewToScene(QPointF(block + 0.5, layers + 0.5))
    at = view.plot.mapFromScene(scene)
    qtbot.mouseClick(view.plot.viewport(), Qt.MouseButton.RightButton, pos=at)
    qtbot.waitUntil(lambda: isinstance(QApplication.activePopupWidget(), QMenu), timeout=5000)
    menu = QApplication.activePopupWidget()
    assert isinstance(menu, QMenu)
    first = menu.actions()[0]
    assert first.text().startswith("Show p1:/big.bin in the Files tab")
    first.trigger()
    menu.close()  # as a click on the action does
    files = window.files
    assert window.tabs.currentWidget() is files

    def selected() -> list[str]:
        rows = files.table.selectionModel().selectedRows()
        return [files.model.entries[r.row()].name for r in rows]

    qtbot.waitUntil(lambda: selected() == ["big.bin"], timeout=30000)
    assert files.volume == "p1"
    settle(qtbot, window)


def test_stale_results_are_dropped_and_results_are_kept_per_chain(
    qtbot: Any, window: MainWindow, dvm: DiffVm
) -> None:
    view = show_map(qtbot, window, dvm.folder)
    current = list(resolve_source(dvm.folder, None, True))
    s1 = list(resolve_source(dvm.folder, "S1", False))
    view._files_cache.clear()
    view.index_files(window.workers, current)
    assert view.files_state is FilesState.READING
    assert "Files: still reading the guest's directories…" in view.describe(0)
    view.index_files(window.workers, s1)  # the selection changed before the first finished
    settle(qtbot, window)
    assert view.files_state is FilesState.READY and view.block_files is not None
    names = {(f.volume, f.path) for f in view.block_files.files}
    # S1 still has /hard1 and not /new.txt (what diffvm.py changed from S1 to S2).
    assert ("p1", "/hard1") in names and ("p1", "/new.txt") not in names
    # The cancelled index was not kept; read again, it is, and so is S1's.
    view.index_files(window.workers, current)
    settle(qtbot, window)
    assert view.block_files is not None
    assert ("p1", "/new.txt") in {(f.volume, f.path) for f in view.block_files.files}
    view.index_files(window.workers, s1)
    assert view.files_state is FilesState.READY and view._files_runner is None
    assert ("p1", "/hard1") in {(f.volume, f.path) for f in view.block_files.files}
    # A walk stopped at the file cap says so, even where it found no file.
    with open_paths(current) as chain:
        partial = index_block_files(chain, max_files=5)
    view._files_ready(view._files_key, partial)  # type: ignore[arg-type]
    free = free_vdi_blocks(dvm)[0]
    assert "(only the first 5 files were read)." in view.describe(free)
    # An incomplete chain says nothing about files.
    view.index_files(window.workers, None)
    assert view.files_words(0) == ""


def test_a_disk_without_filesystems_says_nothing_about_files(
    qtbot: Any, window: MainWindow, tmp_path: Path
) -> None:
    vm = make_vm(tmp_path / "vm")
    view = show_map(qtbot, window, vm.folder)
    assert view.files_state is FilesState.NONE and view.blocks == 4
    for block in range(view.blocks):
        text = view.describe(block)
        assert "file" not in text.lower().replace("file offset", ""), text
