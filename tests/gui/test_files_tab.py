"""The Files tab on a real VM folder: it fills on workers, browses, finds, extracts, cancels.

The VM (tests/engine/guestfs/files/diffvm.py) holds an ext4 and a FAT16 volume made with
mke2fs -d and mtools, in three states changed with debugfs and mtools. Expected listings and
bytes come from debugfs on the state's own filesystem image and from the source tree.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "engine" / "guestfs" / "files"))

from diffvm import DiffVm, build  # noqa: E402
from fsbuild import debugfs_bytes, debugfs_ls  # noqa: E402

from tests.gui.gui_vmkit import open_and_wait, open_files_tab  # noqa: E402
from vdigui.engine import fileio  # noqa: E402
from vdigui.engine.guestfs.files import EntryKind  # noqa: E402
from vdigui.engine.guestfs.files import extract as extract_module  # noqa: E402
from vdigui.engine.usage_report import GuestReader  # noqa: E402
from vdigui.gui.main_window import MainWindow  # noqa: E402
from vdigui.gui.views.files import FilesView  # noqa: E402


@pytest.fixture(scope="module")
def dvm(tmp_path_factory: pytest.TempPathFactory) -> DiffVm:
    return build(tmp_path_factory.mktemp("filestab"))


@pytest.fixture
def gui_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the threads that read guest bytes through a GuestReader."""
    seen: list[str] = []
    original = GuestReader.read

    def read(self: GuestReader, offset: int, length: int) -> bytes:
        seen.append(
            threading.current_thread().name
            if threading.current_thread() is not threading.main_thread()
            else "GUI"
        )
        return original(self, offset, length)

    monkeypatch.setattr(GuestReader, "read", read)
    return seen


def settle(qtbot: Any, window: MainWindow) -> None:
    qtbot.waitUntil(lambda: not window.busy, timeout=20000)


def show_files(qtbot: Any, window: MainWindow, dvm: DiffVm) -> FilesView:
    view: FilesView = open_files_tab(qtbot, window, dvm.folder)
    return view


def names(view: FilesView) -> set[str]:
    return {e.name for e in view.model.entries}


def test_tab_fills_on_workers_and_lists_like_debugfs(
    qtbot: Any,
    window: MainWindow,
    dvm: DiffVm,
    gui_reads: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[str] = []
    original = window.workers.start

    def start(job: Any, name: str, **kw: Any) -> Any:
        started.append(name)
        return original(job, name, **kw)

    monkeypatch.setattr(window.workers, "start", start)
    view = show_files(qtbot, window, dvm)
    assert view.state_label.text().startswith("Current state")
    assert [view.volume_box.itemData(i) for i in range(view.volume_box.count())] == ["p1", "p2"]
    expected = set(debugfs_ls(dvm.exts["current"], "/")) - {"lost+found"}
    assert names(view) - {"lost+found"} == expected
    # Folders first, then the list sorts by size (largest first when descending).
    view.table.sortByColumn(1, Qt.SortOrder.DescendingOrder)
    files = [e for e in view.model.entries if not e.is_dir]
    assert files and files[0].name == "sparse.img"  # 9 MiB + 3 bytes, the largest
    assert all(e.is_dir for e in view.model.entries[: len(view.model.entries) - len(files)])
    view.open_folder("/etc")
    settle(qtbot, window)
    etc = {e.name: e for e in view.model.entries}
    assert etc["hostname"].size == len(debugfs_bytes(dvm.exts["current"], "cat /etc/hostname"))
    view.volume_box.setCurrentIndex(1)
    settle(qtbot, window)
    assert names(view) == {"README.TXT", "KEEP.TXT", "NEW.TXT"}
    assert "files-open" in started and "files-list" in started
    assert gui_reads and "GUI" not in gui_reads, "the GUI thread read the disk"


def test_selecting_a_snapshot_shows_its_files(
    qtbot: Any, window: MainWindow, dvm: DiffVm, gui_reads: list[str]
) -> None:
    view = show_files(qtbot, window, dvm)
    assert window.session is not None
    row = window.session.find_snapshot("S1")
    assert row is not None
    with qtbot.waitSignal(view.loaded, timeout=20000):
        window.select_snapshot(row)
    settle(qtbot, window)
    assert view.state_label.text().startswith("Snapshot 'S1'")
    assert names(view) - {"lost+found"} == set(debugfs_ls(dvm.exts["S1"], "/")) - {"lost+found"}
    assert "hard1" in names(view) and "new.txt" not in names(view)
    assert "GUI" not in gui_reads


def test_find_by_glob(qtbot: Any, window: MainWindow, dvm: DiffVm) -> None:
    view = show_files(qtbot, window, dvm)
    view.search.setText("file00*.dat")
    view.find_files()
    settle(qtbot, window)
    expected = {
        f"/many/{p.name}" for p in (dvm.tree / "many").iterdir() if p.name.startswith("file00")
    }
    assert {e.path for e in view.model.entries} == expected
    assert view.model.show_paths


def test_extract_writes_the_bytes_and_asks_before_replacing(
    qtbot: Any, window: MainWindow, dvm: DiffVm, tmp_path: Path
) -> None:
    view = show_files(qtbot, window, dvm)
    top = {e.name: e for e in view.model.entries}
    dest = tmp_path / "out"
    view.extract([top["big.bin"], top["a"], top["sparse.img"]], dest)
    settle(qtbot, window)
    ext = dvm.exts["current"]
    assert (dest / "big.bin").read_bytes() == debugfs_bytes(ext, "cat /big.bin")
    assert (dest / "sparse.img").read_bytes() == debugfs_bytes(ext, "cat /sparse.img")
    assert (dest / "a" / "hard2").read_bytes() == b"linked twice\n"
    assert not (dest / "a" / "b" / "c" / "d" / "e").exists()  # removed in S2 -> current
    assert "Extracted" in view.status.text()

    asked: list[list[str]] = []
    (dest / "big.bin").write_bytes(b"mine")

    def refuse(existing: list[str]) -> bool:
        asked.append(existing)
        return False

    view.confirm_replace = refuse
    view.extract([top["big.bin"]], dest)
    settle(qtbot, window)
    assert len(asked) == 1 and "big.bin" in asked[0][0]
    assert (dest / "big.bin").read_bytes() == b"mine"  # the user said no
    view.confirm_replace = lambda existing: True
    view.extract([top["big.bin"]], dest)
    settle(qtbot, window)
    assert (dest / "big.bin").read_bytes() == debugfs_bytes(ext, "cat /big.bin")


class CancelOnFirstWrite(fileio.FileOps):
    """Cancels the view's extraction from inside its first write (no timing involved)."""

    def __init__(self, view: FilesView) -> None:
        self.view = view
        self.writes = 0

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        self.writes += 1
        if self.writes == 1:
            self.view.cancel()
        return super().pwrite(fd, data, offset)


def test_cancel_leaves_no_partial_file(
    qtbot: Any, window: MainWindow, dvm: DiffVm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    view = show_files(qtbot, window, dvm)
    big = next(e for e in view.model.entries if e.name == "big.bin")
    assert big.kind is EntryKind.FILE and big.size > 3 << 20
    monkeypatch.setattr(extract_module, "_CHUNK", 256 << 10)  # several writes per file
    dest = tmp_path / "out"
    ops = CancelOnFirstWrite(view)
    with fileio.use(ops):
        view.extract([big], dest)
        settle(qtbot, window)
    assert ops.writes >= 1
    assert "cancelled" in view.status.text()
    assert not view.extracting and not view.cancel_button.isVisible()
    assert list(dest.iterdir()) == []  # neither big.bin nor its temporary file


def test_changes_since_lists_the_recorded_changes_and_opens_them(
    qtbot: Any, window: MainWindow, dvm: DiffVm, gui_reads: list[str]
) -> None:
    from vdigui.gui.views.changes import ChangesDialog

    view = show_files(qtbot, window, dvm)
    assert view.changes_action is not None
    view.changes_action.trigger()
    dialog = getattr(window, "changes_dialog", None)
    assert isinstance(dialog, ChangesDialog)
    names_ = [dialog.from_box.itemText(i) for i in range(dialog.from_box.count())]
    assert names_ == ["S1", "S2", "Current state"]
    dialog.from_box.setCurrentIndex(0)
    dialog.to_box.setCurrentIndex(2)
    with qtbot.waitSignal(dialog.finished_comparing, timeout=20000):
        dialog.compare()
    assert dialog.diff is not None
    got = {(c.volume, c.path): (c.change.value, c.content_changed) for c in dialog.diff.changes}
    assert got == dvm.expected("S1", "current")
    assert dialog.model.rowCount() == len(got)
    assert "GUI" not in gui_reads

    def select(path: str) -> None:
        for row in range(dialog.proxy.rowCount()):
            if dialog.proxy.index(row, 1).data() == path:
                dialog.table.selectRow(row)
                return
        raise AssertionError(path)

    select("p1:/new.txt")
    dialog.open_selected(after=True)  # the current state is shown already
    settle(qtbot, window)
    assert [e.name for e in view.selected_entries()] == ["new.txt"]
    select("p1:/etc/hostname")
    dialog.open_selected(after=True)
    settle(qtbot, window)
    assert [e.path for e in view.selected_entries()] == ["/etc/hostname"]
    assert view.selected_entries()[0].size == 30
    select("p2:/NEW.TXT")
    dialog.open_selected(after=False)  # added: it does not exist in "From"
    assert "does not exist" in dialog.status.text()
    select("p1:/hard1")
    with qtbot.waitSignal(view.loaded, timeout=20000):
        dialog.open_selected(after=False)  # S1: the window selects that snapshot
    settle(qtbot, window)
    assert view.state_label.text().startswith("Snapshot 'S1'")
    assert [e.name for e in view.selected_entries()] == ["hard1"]
    assert window.tabs.currentWidget() is view
    dialog.close()


def test_show_in_block_map_highlights_the_files_blocks(
    qtbot: Any, window: MainWindow, dvm: DiffVm
) -> None:
    from fsbuild import MiB, debugfs_blocks

    view = show_files(qtbot, window, dvm)
    big = next(e for e in view.model.entries if e.name == "big.bin")
    with qtbot.waitSignal(view.blocks_ready, timeout=20000):
        view.show_blocks(big)
    settle(qtbot, window)
    base = dvm.starts[0] * 512
    expected = {(base + b * 4096) // MiB for b in debugfs_blocks(dvm.exts["current"], "/big.bin")}
    assert window.tabs.currentWidget() is window.blockmap
    assert set(window.blockmap.highlighted.tolist()) == expected
    text = window.blockmap.highlight_label.text()
    assert "guest extent" in text and "p1:/big.bin" in text and "run(s)" in text


def test_what_a_snapshot_image_holds(qtbot: Any, window: MainWindow, dvm: DiffVm) -> None:
    view = show_files(qtbot, window, dvm)
    assert window.session is not None
    row = window.session.find_snapshot("S2")
    assert row is not None
    with qtbot.waitSignal(view.loaded, timeout=20000):
        window.select_snapshot(row)
    settle(qtbot, window)
    assert view.holds_button.isVisibleTo(view)
    view.holds_button.click()
    settle(qtbot, window)
    assert view.holdings is not None and view.holdings.complete
    items = [view.holds_table.item(r, 0) for r in range(view.holds_table.rowCount())]
    shown = [i.text() for i in items if i is not None]
    assert "p1:/newdir/inner.bin" in shown and "p2:/README.TXT" in shown
    assert "This image stores" in view.holds_label.text()


def test_screenshot_of_the_files_tab(dvm: DiffVm, tmp_path: Path) -> None:
    import subprocess

    from PySide6.QtGui import QImage

    out = tmp_path / "files.png"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vdigui",
            str(dvm.folder),
            "--screenshot",
            str(out),
            "--tab",
            "files",
            "--size",
            "1400x900",
            "--select",
            "S2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "QT_QPA_PLATFORM": "offscreen"},
    )
    assert result.returncode == 0, result.stderr
    image = QImage(str(out))
    assert (image.width(), image.height()) == (1400, 900)
    colours = {image.pixel(x, y) for x in range(0, 1400, 7) for y in range(0, 900, 7)}
    assert len(colours) > 20, "the screenshot looks blank"


def test_a_disk_without_filesystems_says_so(qtbot: Any, window: MainWindow, tmp_path: Path) -> None:
    from tests.gui.gui_vmkit import make_vm

    vm = make_vm(tmp_path / "vm")
    open_and_wait(qtbot, window, vm.folder)
    view = window.files
    with qtbot.waitSignal(view.loaded, timeout=20000):
        window.tabs.setCurrentWidget(view)
    settle(qtbot, window)
    assert "holds no filesystem whose files can be read" in view.status.text()
    assert not view.extract_button.isEnabled() and not view.search.isEnabled()
    assert view.model.rowCount() == 0
