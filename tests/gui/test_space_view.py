"""The Space tab on a real VM folder: bars, treemap, hover, the buttons, and the worker.

The folder is built here: a real ext4 + NTFS + FAT16 guest (Debian's tools, files deleted so
its free space holds stale data) written into the base image by the VM builder, a snapshot,
two blocks rewritten after it (so the base holds blocks only the snapshot sees), one stored
slot of the base punched into a host hole (all zero), and undo data. The expected figures are
the files' sizes from ``os.stat`` and what this test wrote, never the engine's account.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from PySide6.QtCore import QPoint, QRectF, Qt
from PySide6.QtTest import QTest

from tests.engine.merge.vmbuild import MIB, VmBuilder, read_header_fields
from tests.gui.gui_vmkit import open_and_wait
from vdigui.engine.palette import CATEGORY_COLOURS
from vdigui.engine.space_account import CATEGORIES, Category
from vdigui.gui.main_window import MainWindow
from vdigui.gui.models.snapshots import CostState
from vdigui.gui.views import space as space_module
from vdigui.gui.views.space import (
    Action,
    SpaceView,
    bar_pixels,
    segments,
    split_rect,
    squarify,
)
from vdigui.gui.wizards import undo
from vdigui.gui.wizards.compact import CompactWizard
from vdigui.gui.wizards.delete_snapshot import DeleteSnapshotWizard

HIDDEN_BLOCKS = 2
UNDO_BYTES = 70_000


class Folder:
    """The test VM and what the test knows about it without the engine."""

    def __init__(self, vm: VmBuilder) -> None:
        self.vm = vm
        self.folder = vm.folder
        self.base = vm.disks[vm.snaps[0].disks[0]].path
        self.child = vm.disks[vm.leaves[0]].path


@pytest.fixture(scope="module")
def vm_folder(tmp_path_factory: pytest.TempPathFactory) -> Folder:
    """The VM of the module docstring (built once; the tests only read it)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine" / "operations"))
    from fsaware_disk import build_raw  # skips when the filesystem tools are missing

    tmp = tmp_path_factory.mktemp("space")
    raw, _hashes = build_raw(tmp / "build")
    size = raw.stat().st_size
    content = np.fromfile(raw, dtype=np.uint8).reshape(size // MIB, MIB)
    vm = VmBuilder(tmp / "vm", disk_size=size)
    stored = [int(b) for b in np.flatnonzero(content.any(axis=1))]
    for block in stored:
        vm.write(block * MIB, content[block].tobytes())
    vm.take_snapshot("S1")
    # Two stored base blocks rewritten after the snapshot: only S1 still sees the base's copy.
    vm.scribble(stored[1 : 1 + HIDDEN_BLOCKS])
    base = vm.disks[vm.snaps[0].disks[0]].path
    # The base's last slot (the highest stored block) becomes a host hole: all zero.
    header = read_header_fields(base)
    assert base.stat().st_size == int(header["off_data"]) + len(stored) * MIB  # type: ignore[call-overload]
    subprocess.run(
        [
            "fallocate",
            "--punch-hole",
            "--offset",
            str(base.stat().st_size - MIB),
            "--length",
            str(MIB),
            str(base),
        ],
        check=True,
    )
    backup = vm.folder / ".vdigui" / "backups" / "20260101-000000-merge"
    backup.mkdir(parents=True)
    (backup / "before.bin").write_bytes(b"u" * UNDO_BYTES)
    return Folder(vm)


def all_files(folder: Path) -> dict[Path, int]:
    """Every regular file under ``folder`` and its size, from os.stat."""
    out = {}
    for root, _dirs, files in os.walk(folder):
        for name in files:
            path = Path(root, name)
            out[path.resolve()] = os.stat(path).st_size  # noqa: PTH116 - the plain syscall
    return out


def show_space(qtbot: Any, window: MainWindow) -> SpaceView:
    """Switch to the Space tab and wait until its account is drawn."""
    view = window.space
    with qtbot.waitSignal(view.shown, timeout=20000):
        window.tabs.setCurrentWidget(view)
        # Nothing is counted on the GUI thread: the tab says so while the worker counts.
        assert view.account is None and "Counting" in view.summary.text()
    return view


def settle(qtbot: Any, window: MainWindow) -> None:
    qtbot.waitUntil(
        lambda: (
            not window.busy
            and not window.operations.checking
            and not window.operations.undo.checking
        ),
        timeout=20000,
    )


def test_space_view_fills_on_a_worker_and_adds_up(
    qtbot: Any, window: MainWindow, vm_folder: Folder, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[threading.Thread] = []
    real = space_module.account_space

    def counted(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread())
        return real(*args, **kwargs)

    monkeypatch.setattr(space_module, "account_space", counted)
    open_and_wait(qtbot, window, vm_folder.folder)
    assert not threads  # the tab is hidden: nothing was counted
    view = show_space(qtbot, window)
    assert len(threads) == 1 and threads[0] is not threading.main_thread()

    # One bar per file of the folder, and each bar's parts sum to the file's size (os.stat).
    truth = all_files(vm_folder.folder)
    rows = {r.space.path.resolve(): r for r in view.bars.rows}
    assert set(rows) == set(truth)
    for path, size in truth.items():
        parts = segments(rows[path].space)
        assert sum(v for _, v in parts) == size, path
        assert all(v > 0 for _, v in parts)
    base = rows[vm_folder.base.resolve()].space.categories
    assert base[Category.HIDDEN] == HIDDEN_BLOCKS * MIB
    assert base[Category.ZERO_BLOCKS] == MIB
    assert base[Category.GUEST_UNUSED] > 0 and base[Category.GUEST_DATA] > 0
    undo_file = next(p for p in truth if p.name == "before.bin")
    assert rows[undo_file].space.categories[Category.UNDO_DATA] == UNDO_BYTES

    # The legend's totals are the folder's: they sum to every byte of every file.
    assert view.account is not None
    assert sum(view.account.total.values()) == sum(truth.values())
    shown = [c for c in CATEGORIES if view.legend_rows[c][2].isVisibleTo(view)]
    assert shown == [c for c in CATEGORIES if view.account.total[c]]

    # The bars and the treemap draw what they say: parts fill the bar; files tile the map.
    width = 500.0
    for row in view.bars.rows:
        pixels = bar_pixels(segments(row.space), width)
        assert sum(w for _, _, w in pixels) == pytest.approx(width)
    cells = view.treemap.cells()
    area = sum(rect.width() * rect.height() for _, rect, _ in cells)
    assert area == pytest.approx((view.treemap.width() - 2) * (view.treemap.height() - 2))
    big = max(cells, key=lambda c: c[1].width() * c[1].height())
    assert big[0].space.path.resolve() == max(truth, key=lambda p: truth[p])

    # The current state's image is selected; another image of the same folder is drawn at
    # once from the cache (within the call), nothing is counted again.
    assert [r.space.path for r in view.bars.rows if r.selected] == [vm_folder.child.resolve()]
    base_node = window.session.find_disk(vm_folder.base.name)  # type: ignore[union-attr]
    drawn: list[object] = []
    view.shown.connect(drawn.append)
    window.select_disk(base_node)
    assert drawn and len(threads) == 1
    assert [r.space.path for r in view.bars.rows if r.selected] == [vm_folder.base.resolve()]
    settle(qtbot, window)


def test_hover_gives_exact_bytes_and_meaning(
    qtbot: Any, window: MainWindow, vm_folder: Folder
) -> None:
    open_and_wait(qtbot, window, vm_folder.folder)
    view = show_space(qtbot, window)
    index = next(
        i
        for i, r in enumerate(view.bars.rows)
        if r.space.path.resolve() == vm_folder.base.resolve()
    )
    rect = view.bars.segment_rect(index, Category.HIDDEN)
    assert not rect.isEmpty()
    QTest.mouseMove(view.bars, rect.center().toPoint())
    text = view.hover.text()
    assert f"{HIDDEN_BLOCKS * MIB:,} bytes" in text
    assert "Hidden by a later layer" in text and "Deleting that snapshot frees them" in text
    # The treemap says the same for the same part of the same file.
    for row, _rect, parts in view.treemap.cells():
        if row.space.path.resolve() == vm_folder.base.resolve():
            part = dict(parts)[Category.ZERO_BLOCKS]
            QTest.mouseMove(view.treemap, QPoint(int(part.center().x()), int(part.center().y())))
    assert f"{MIB:,} bytes" in view.hover.text() and "All-zero blocks" in view.hover.text()
    settle(qtbot, window)


def test_each_button_opens_the_wizard_that_frees_it(
    qtbot: Any, window: MainWindow, vm_folder: Folder, monkeypatch: pytest.MonkeyPatch
) -> None:
    open_and_wait(qtbot, window, vm_folder.folder)
    window.select_disk(window.session.find_disk(vm_folder.base.name))  # type: ignore[union-attr]
    qtbot.waitUntil(lambda: not window.workers.running, timeout=20000)
    view = show_space(qtbot, window)
    settle(qtbot, window)
    base = vm_folder.base.resolve()
    opened = []

    def press(category: Category) -> Any:
        button = view.buttons[category]
        assert button.isVisible() and button.isEnabled(), button.toolTip()
        before = list(window.operations.wizards)
        button.click()
        new = [w for w in window.operations.wizards if w not in before]
        opened.extend(new)
        return new[0] if new else None

    compact = press(Category.ZERO_BLOCKS)
    assert isinstance(compact, CompactWizard) and compact.target.image.resolve() == base
    assert not compact.opts.fs_aware.isChecked()
    fs_aware = press(Category.GUEST_UNUSED)
    assert isinstance(fs_aware, CompactWizard) and fs_aware.target.image.resolve() == base
    assert fs_aware.opts.fs_aware.isChecked()
    # The cost map (worked out on a worker) names what deleting S1 frees; the button says it.
    model = window.snapshot_model
    qtbot.waitUntil(lambda: model.cost_state == CostState.READY, timeout=20000)
    qtbot.waitUntil(lambda: "cost map" in view.offers[Category.HIDDEN].tip, timeout=5000)
    s1 = window.session.find_snapshot("S1")  # type: ignore[union-attr]
    cost = model.cost_of(s1)
    assert cost is not None and cost.frees_without_undo is not None
    assert f"{cost.frees_without_undo:,} bytes" in view.buttons[Category.HIDDEN].toolTip()
    delete = press(Category.HIDDEN)
    assert isinstance(delete, DeleteSnapshotWizard)
    assert delete.target.kind == "snapshot" and delete.target.snapshot_name == "S1"
    for wizard in opened:
        wizard.reject()

    # Undo data: the Overview's own "Discard undo data…" (its confirmation, its figures).
    asked: list[str] = []
    monkeypatch.setattr(
        undo, "confirm_discard", lambda _parent, _title, text: (asked.append(text), False)[1]
    )
    assert view.offers[Category.UNDO_DATA].action == Action.DISCARD_UNDO
    view.buttons[Category.UNDO_DATA].click()
    assert len(asked) == 1 and f"{UNDO_BYTES:,} bytes" in asked[0]
    assert (vm_folder.folder / ".vdigui" / "backups").exists()  # answered "No"

    # A deletion the cost map says would be refused is not offered; the button says why.
    view._cost_of = lambda _snap: SimpleNamespace(
        refused_reason="It has two children.", frees_without_undo=None
    )
    view._refresh_offers()
    assert not view.buttons[Category.HIDDEN].isEnabled()
    assert "It has two children." in view.buttons[Category.HIDDEN].toolTip()

    # A click on a bar's part that compaction frees opens it for that file.
    index = next(i for i, r in enumerate(view.bars.rows) if r.space.path.resolve() == base)
    rect = view.bars.segment_rect(index, Category.ZERO_BLOCKS)
    before = list(window.operations.wizards)
    QTest.mouseClick(view.bars, Qt.MouseButton.LeftButton, pos=rect.center().toPoint())
    new = [w for w in window.operations.wizards if w not in before]
    assert len(new) == 1 and isinstance(new[0], CompactWizard)
    assert new[0].target.image.resolve() == base and not new[0].opts.fs_aware.isChecked()
    new[0].reject()
    settle(qtbot, window)


def test_a_single_image_is_counted_alone(qtbot: Any, window: MainWindow, vm_folder: Folder) -> None:
    open_and_wait(qtbot, window, vm_folder.base)
    view = show_space(qtbot, window)
    assert [r.space.path.resolve() for r in view.bars.rows] == [vm_folder.base.resolve()]
    (row,) = view.bars.rows
    assert sum(v for _, v in segments(row.space)) == os.stat(vm_folder.base).st_size  # noqa: PTH116
    # No snapshot of an opened folder froze it: the deletion is offered but cannot open.
    offer = view.offers.get(Category.HIDDEN)
    assert offer is None or not offer.enabled
    settle(qtbot, window)


def test_squarify_tiles_the_rectangle_in_proportion() -> None:
    values = [60.0, 25.0, 10.0, 5.0, 0.0]
    rects = squarify(values, QRectF(0, 0, 300, 200))
    total = 300 * 200
    for value, rect in zip(values, rects, strict=True):
        assert rect.width() * rect.height() == pytest.approx(total * value / 100)
        assert value == 0 or (
            rect.left() >= -1e-9
            and rect.right() <= 300 + 1e-9
            and rect.top() >= -1e-9
            and rect.bottom() <= 200 + 1e-9
        )
    # No two rectangles overlap.
    real = [r for r in rects if not r.isEmpty()]
    for i, a in enumerate(real):
        for b in real[i + 1 :]:
            inter = a.intersected(b)
            assert inter.width() * inter.height() == pytest.approx(0, abs=1e-6)
    parts = split_rect(QRectF(0, 0, 100, 10), [(Category.GUEST_DATA, 3), (Category.SLACK, 1)])
    assert [p.width() for _, p in parts] == [75, 25]


def test_nothing_clipped_at_1400x900(
    qtbot: Any, window: MainWindow, vm_folder: Folder, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The demo VM and the test VM: no horizontal scrolling, every label and button whole."""
    from PySide6.QtWidgets import QAbstractScrollArea, QLabel, QPushButton

    from vdigui.engine.demo import build_demo_vm

    window.resize(1400, 900)
    demo = build_demo_vm(tmp_path_factory.mktemp("demo-space"))
    for folder in (demo, vm_folder.folder):
        open_and_wait(qtbot, window, folder, timeout=30000)
        view = (
            show_space(qtbot, window)
            if window.tabs.currentWidget() is not window.space
            else window.space
        )
        qtbot.waitUntil(lambda: window.space.account is not None, timeout=20000)
        settle(qtbot, window)
        for _ in range(3):
            qtbot.wait(30)
        bad = []
        for area in window.findChildren(QAbstractScrollArea):
            if area.isVisible() and area.horizontalScrollBar().isVisible():
                bad.append(f"horizontal scroll bar on {type(area).__name__}")
        for widget in view.findChildren(QLabel) + view.findChildren(QPushButton):
            wraps = isinstance(widget, QLabel) and widget.wordWrap()
            if widget.isVisible() and not wraps and widget.width() < widget.sizeHint().width():
                bad.append(f"{type(widget).__name__} {widget.text()!r} is cut")
        assert view.treemap.width() >= 200 and view.bars.width() <= view.scroller.width()
        assert bad == [], folder


def test_screenshot_of_the_space_tab_waits_for_the_count(vm_folder: Folder, tmp_path: Path) -> None:
    from PySide6.QtGui import QColor, QImage

    out = tmp_path / "space.png"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vdigui",
            str(vm_folder.folder),
            "--screenshot",
            str(out),
            "--tab",
            "space",
            "--size",
            "1400x900",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
    )
    assert result.returncode == 0, result.stderr
    image = QImage(str(out))
    assert (image.width(), image.height()) == (1400, 900)
    # The account is drawn, not "Counting…": the treemap's and the bars' colours are there.
    wanted = {
        QColor(CATEGORY_COLOURS[c]).rgb()
        for c in (Category.GUEST_DATA, Category.HIDDEN, Category.UNDO_DATA)
    }
    seen = {image.pixel(x, y) for x in range(0, 1400, 3) for y in range(0, 900, 3)}
    assert wanted <= seen
