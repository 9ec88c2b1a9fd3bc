"""The main window: opening each kind of path, the views' arrays, Locate byte, read-only."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from builders import build_chain, folder_state, pattern
from gui_vmkit import FREE, MIB, ZERO, break_vm, make_vm, open_and_wait
from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QImage

from vdigui.gui.main_window import MainWindow
from vdigui.gui.views.blockmap import ALLOCATED, bin_colours
from vdigui.gui.views.blockmap import FREE as S_FREE
from vdigui.gui.views.blockmap import ZERO as S_ZERO
from vdigui.gui.views.fragmentation import jump_classes
from vdigui.gui.views.locate import LocateDialog


def _tree_titles(model: Any) -> list[str]:
    return [n.title if hasattr(n, "title") else n.name for n in model.iter_nodes()]


def test_open_vm_folder_fills_trees_and_selects_current_state(
    qtbot: Any, window: MainWindow, tmp_path: Path
) -> None:
    from PySide6.QtCore import QThread

    vm = make_vm(tmp_path / "vm")
    threads = []
    window.chain_loaded.connect(lambda _data: threads.append(QThread.currentThread()))
    open_and_wait(qtbot, window, vm.folder)
    assert threads == [window.thread()], "results must be handled on the GUI thread"
    assert [n.name for n in window.snapshot_model.iter_nodes()] == ["First", "Current State"]
    assert _tree_titles(window.media_model) == ["disk.vdi", vm.diff.name]
    data = window.chain_data
    assert data is not None and data.paths == (vm.base.resolve(), vm.diff.resolve())
    assert window.problems_model.rowCount() == 0
    assert "Test VM" in window.windowTitle()
    assert window.recent()[0] == str(vm.folder)


def test_selecting_a_snapshot_selects_the_image_it_froze(
    qtbot: Any, window: MainWindow, tmp_path: Path
) -> None:
    vm = make_vm(tmp_path / "vm")
    open_and_wait(qtbot, window, vm.folder)
    first = window.session.find_snapshot("First")
    with qtbot.waitSignal(window.chain_loaded, timeout=10000) as blocker:
        window.select_snapshot(first)
    assert blocker.args[0].paths == (vm.base.resolve(),)
    assert window.selected_disk.path == vm.base.resolve()
    assert window.media_model.highlighted == {vm.base_uuid}


def test_open_vbox_file(qtbot: Any, window: MainWindow, tmp_path: Path) -> None:
    vm = make_vm(tmp_path / "vm")
    open_and_wait(qtbot, window, vm.vbox)
    assert window.session.kind == "vm"
    assert window.chain_data.target.path == vm.diff.resolve()


def test_open_single_vdi_resolves_its_chain(qtbot: Any, window: MainWindow, tmp_path: Path) -> None:
    vm = make_vm(tmp_path / "vm")
    vm.vbox.unlink()
    open_and_wait(qtbot, window, vm.diff)
    assert window.session.kind == "image"
    assert window.snapshot_model.rowCount() == 0
    assert window.chain_data.paths == (vm.base.resolve(), vm.diff.resolve())
    assert _tree_titles(window.media_model) == ["disk.vdi", vm.diff.name]


def test_broken_folder_opens_with_problems_and_a_partial_chain(
    qtbot: Any, window: MainWindow, tmp_path: Path
) -> None:
    vm = make_vm(tmp_path / "vm")
    break_vm(vm, "missing-parent")
    open_and_wait(qtbot, window, vm.folder)
    kinds = {p.kind for p in window.problems_model.problems}
    assert "missing-parent" in kinds
    assert window.problems_dock.isVisibleTo(window)
    data = window.chain_data
    assert data is not None and data.paths == (vm.diff.resolve(),)
    assert "was not found" in data.error
    window.tabs.setCurrentWidget(window.blockmap)
    assert not window.blockmap.notice.isHidden()


def test_folder_without_settings_is_rebuilt_from_headers(
    qtbot: Any, window: MainWindow, tmp_path: Path
) -> None:
    vm = make_vm(tmp_path / "vm")
    vm.vbox.unlink()
    open_and_wait(qtbot, window, vm.folder)
    assert window.session.kind == "image"
    assert _tree_titles(window.media_model) == ["disk.vdi", vm.diff.name]
    assert [p.kind for p in window.problems_model.problems] == ["no-settings"]
    assert window.chain_data.paths == (vm.base.resolve(), vm.diff.resolve())


def test_empty_folder_gives_a_clear_message(
    qtbot: Any, window: MainWindow, tmp_path: Path, reports: list[tuple[str, str]]
) -> None:
    (tmp_path / "empty").mkdir()
    with qtbot.waitSignal(window.idle, timeout=10000):
        window.open_path(tmp_path / "empty")
    assert len(reports) == 1 and reports[0][0] == "Cannot open empty"
    assert str(tmp_path / "empty") in reports[0][1]


def test_non_vdi_file_gives_a_clear_message(
    qtbot: Any, window: MainWindow, tmp_path: Path, reports: list[tuple[str, str]]
) -> None:
    junk = tmp_path / "notes.vdi"
    junk.write_bytes(b"hello world, not a disk" * 40)
    with qtbot.waitSignal(window.idle, timeout=10000):
        window.open_path(junk)
    assert len(reports) == 1
    title, text = reports[0]
    assert title == "Cannot open notes.vdi"
    # The engine names what the file is (vdigui.engine.sniff), the file once, then the advice.
    assert text == f"{junk} is not a VDI image (it is a text file); it holds no disk at all."
    assert window.session is None


def test_missing_path_gives_a_clear_message(
    qtbot: Any, window: MainWindow, tmp_path: Path, reports: list[tuple[str, str]]
) -> None:
    with qtbot.waitSignal(window.idle, timeout=10000):
        window.open_path(tmp_path / "nowhere")
    assert reports == [("Cannot open nowhere", f"'{tmp_path / 'nowhere'}' does not exist.")]


def test_block_map_receives_the_chain_arrays(
    qtbot: Any, window: MainWindow, tmp_path: Path
) -> None:
    vm = make_vm(tmp_path / "vm")
    open_and_wait(qtbot, window, vm.folder)
    view = window.blockmap
    assert view.entries.shape == (0, 0)  # drawn only when its tab is shown
    window.tabs.setCurrentWidget(view)
    assert view.entries.shape == (2, 4)
    np.testing.assert_array_equal(view.entries[0], [1, 2, FREE, 0])
    np.testing.assert_array_equal(view.entries[1], [FREE, 0, FREE, ZERO])
    np.testing.assert_array_equal(view.serving, [0, 1, -1, 1])
    np.testing.assert_array_equal(
        view.layer_codes,
        [[ALLOCATED, ALLOCATED, S_FREE, ALLOCATED], [S_FREE, ALLOCATED, S_FREE, S_ZERO]],
    )
    # served row: 2 + layer for data, 1 for a ZERO entry, 0 for nothing.
    np.testing.assert_array_equal(view.served_codes, [2, 3, 0, 1])
    window.tabs.setCurrentWidget(view)
    view.resize(900, 400)
    view.refresh()
    image = view.cells
    assert image.shape == (3, 4, 4)  # 2 layers + the served row, one cell per block
    assert view.item.image.shape == (3, 32, 4)  # close up: 8 pixels a block, edges marked
    # Cell colours: base row block 2 is free, served row block 3 is a zero entry.
    from vdigui.gui import theme

    assert list(image[0, 2, :3]) == list(theme.rgba(theme.free_colour())[:3].astype(int))
    assert list(image[2, 3, :3]) == list(theme.rgba(theme.ZERO_COLOUR)[:3].astype(int))
    assert list(image[2, 1, :3]) == list(theme.rgba(theme.layer_colour(1))[:3].astype(int))
    # Hovering the served row over block 1 names the layer, slot and file offset.
    from PySide6.QtCore import QPointF

    view._hover(view.plot.getViewBox().mapViewToScene(QPointF(1.5, 2.5)))
    assert view.info.text().startswith("Guest block 1 ")
    assert "served by layer 1 (Current State)" in view.info.text()
    assert view.labels == ["First", "Current State"]
    assert "served by layer 1" in view.describe(1)
    assert "slot 0" in view.describe(1)
    assert "zero entry" in view.describe(3)
    assert "no layer holds it" in view.describe(2)


def test_block_map_bins_mixed_cells_honestly() -> None:
    palette = np.array([[0, 0, 0, 255], [255, 255, 255, 255]], dtype=np.float32)
    codes = np.array([0, 0, 0, 0, 1, 1, 1, 1, 0, 1, 1, 1], dtype=np.uint8)
    rgba = bin_colours(codes, 4, palette)
    assert rgba.shape == (3, 4)
    assert list(rgba[0]) == [0, 0, 0, 255]  # uniform cells keep their exact colour
    assert list(rgba[1]) == [255, 255, 255, 255]
    assert list(rgba[2][:3]) == [191, 191, 191]  # 3 of 4 white: mixed, in proportion


def test_block_map_scales_to_millions_of_blocks(qapp: Any) -> None:
    from vdigui.engine.image import new_header
    from vdigui.gui.views.blockmap import BlockMapView

    blocks = 2_000_000
    entries = np.full((2, blocks), FREE, dtype=np.uint32)
    entries[0, ::3] = np.arange(entries[0, ::3].size, dtype=np.uint32)
    entries[1, 5::7] = ZERO
    serving = np.where(entries[1] != FREE, 1, np.where(entries[0] != FREE, 0, -1)).astype(np.int16)
    header = new_header(blocks * MIB)
    view = BlockMapView()
    view.resize(1000, 400)
    view.set_data(["base", "diff"], entries, serving, (header, header))
    assert view.bin_size >= 1024
    assert view.cells.shape[0] == 3
    assert view.cells.shape[1] <= blocks // view.bin_size + 1
    view.show_block(123_456)
    assert view.bin_size == 1
    view.deleteLater()


def test_fragmentation_view_receives_slots_in_guest_order(
    qtbot: Any, window: MainWindow, tmp_path: Path
) -> None:
    chain = build_chain(
        tmp_path / "img",
        8 * MIB,
        [{b: pattern(b, MIB) for b in (0, 1, 2, 5, 6)}],
        slot_order="reverse",
    )
    open_and_wait(qtbot, window, chain.leaf)
    view = window.fragmentation
    window.tabs.setCurrentWidget(view)
    blocks, slots, classes = view.points
    np.testing.assert_array_equal(blocks, [0, 1, 2, 5, 6])
    np.testing.assert_array_equal(slots, [4, 3, 2, 1, 0])
    np.testing.assert_array_equal(classes, jump_classes(np.array([4, 3, 2, 1, 0])))
    assert list(classes) == [0, 1, 1, 1, 1]  # every step jumps back two slots
    frag = window.chain_data.analysis.layer_frag[0]
    assert view.figure_labels["discontinuities"].text() == str(frag.discontinuities) == "4"
    assert "jumps 4 times" in view.paragraph.text()


def test_locate_byte_answers_with_block_layer_slot_and_offset(
    qtbot: Any, window: MainWindow, tmp_path: Path
) -> None:
    vm = make_vm(tmp_path / "vm")
    open_and_wait(qtbot, window, vm.folder)
    data = window.chain_data
    dialog = LocateDialog(data.chain, window.layer_labels(data), window)
    qtbot.addWidget(dialog)
    dialog.edit.setText("0x100010")  # block 1, byte 16: the diff's slot 0
    dialog.run()
    loc = dialog.location
    assert (loc.block, loc.within, loc.layer, loc.state, loc.slot) == (1, 16, 1, "allocated", 0)
    assert loc.file_offset == data.headers[1].slot_offset(0) + 16
    assert "slot 0" in dialog.result_label.text()
    dialog.edit.setText("3M")  # block 3: ZERO in the diff
    dialog.run()
    assert (dialog.location.block, dialog.location.state) == (3, "zero")
    dialog.edit.setText("2.5M")
    dialog.run()
    assert dialog.location.state == "free"
    dialog.edit.setText("1G")
    dialog.run()
    assert dialog.location is None and "past the end" in dialog.result_label.text()
    with qtbot.waitSignal(dialog.show_block) as blocker:
        dialog.edit.setText("0")
        dialog.run()
        dialog.show_button.click()
    assert blocker.args == [0]
    dialog.close()


def test_header_tab_annotates_fields(qtbot: Any, window: MainWindow, tmp_path: Path) -> None:
    vm = make_vm(tmp_path / "vm")
    open_and_wait(qtbot, window, vm.folder)
    header = window.header_view
    names = [s.title for s in header.hex.spans]
    assert "u32Signature" in names and "uuidLinkage" in names
    span = header.hex.span_for(0x40)
    assert span.title == "u32Signature" and "a VDI image" in span.value
    linkage = header.hex.span_for(0x1A8)
    assert str(vm.base_uuid) in linkage.value
    # The hover position maps back to the byte offset.
    char, line, hex_x, _ = header.hex._metrics()
    assert header.hex.offset_at(QPoint(hex_x + 3 * char * 3 + 1, 2 + 4 * line + 1)) == 0x43
    window.show_map_region()
    assert header.map_scroll.isVisibleTo(window)
    assert "slot 0" in header.map_hex.span_for(data_offset(window) + 4).value


def data_offset(window: MainWindow) -> int:
    return window.chain_data.chain.top.header.offset_blocks


def test_zero_scan_marks_all_zero_blocks(qtbot: Any, window: MainWindow, tmp_path: Path) -> None:
    vm = make_vm(tmp_path / "vm")
    from gui_vmkit import write_blocks

    write_blocks([vm.base], [(0, bytes(MIB))])  # allocated block 0 now holds only zeros
    open_and_wait(qtbot, window, vm.folder)
    with qtbot.waitSignal(window.idle, timeout=10000):
        window.scan_zero_blocks()
    masks = window.chain_data.zero_masks
    assert list(masks[0]) == [True, False, False, False]
    window.tabs.setCurrentWidget(window.blockmap)
    assert window.blockmap.layer_codes[0, 0] == 3
    assert "only zeros" in window.blockmap.describe(0, 0)


def test_opening_and_visiting_every_tab_writes_nothing(
    qtbot: Any, window: MainWindow, tmp_path: Path
) -> None:
    vm = make_vm(tmp_path / "vm")
    break_vm(vm, "orphan-image")
    before = folder_state(vm.folder)
    open_and_wait(qtbot, window, vm.folder)
    for row in window.session.iter_snapshots():
        window.select_snapshot(row)
        qtbot.waitUntil(lambda: not window.workers.running, timeout=10000)
        for tab in range(window.tabs.count()):
            window.tabs.setCurrentIndex(tab)
            qtbot.wait(10)
    for disk in window.session.iter_disks():
        window.select_disk(disk)
        qtbot.waitUntil(lambda: not window.workers.running, timeout=10000)
    window.show_map_region()
    with qtbot.waitSignal(window.idle, timeout=10000):
        window.scan_zero_blocks()
    window.reload()
    qtbot.waitUntil(lambda: not window.workers.running, timeout=10000)
    window.close()
    assert folder_state(vm.folder) == before


def test_drop_opens_the_path(qtbot: Any, window: MainWindow, tmp_path: Path) -> None:
    from PySide6.QtCore import QMimeData, QPointF, QUrl
    from PySide6.QtGui import QDropEvent

    vm = make_vm(tmp_path / "vm")
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(vm.folder))])
    event = QDropEvent(
        QPointF(10, 10),
        Qt.DropAction.CopyAction,
        mime,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    with qtbot.waitSignal(window.session_loaded, timeout=10000):
        window.dropEvent(event)
    qtbot.waitUntil(lambda: not window.workers.running, timeout=10000)
    assert window.session.source == vm.folder


def test_every_menu_action_has_a_shortcut_and_tooltip(window: MainWindow) -> None:
    missing = []
    for menu in window.menuBar().findChildren(type(window.menuBar().actions()[0].menu())):
        for action in menu.actions():
            if (
                action.isSeparator()
                or action.menu() is not None
                or (not action.isEnabled() and action.text().startswith("("))
            ):
                continue
            if action.text() in ("About &Qt",):
                continue
            if action.parent() is window.recent_menu or menu is window.recent_menu:
                continue
            if action.shortcut().isEmpty() or not action.toolTip():
                missing.append(action.text())
    assert not missing, missing


def test_settings_remember_geometry_and_splitters(qtbot: Any, settings: Any, reports: Any) -> None:
    win = MainWindow(settings)
    qtbot.addWidget(win)
    win.resize(790, 570)  # the offscreen screen is 800x600; restoreGeometry clamps to it
    win.show()
    win.main_split.setSizes([100, 690])
    size, sizes = win.size(), win.main_split.sizes()
    win.close()
    again = MainWindow(settings)
    qtbot.addWidget(again)
    assert again.size() == size
    again.show()
    assert again.main_split.sizes() == sizes
    again.close()


@pytest.mark.parametrize("tab", ["overview", "blockmap"])
def test_screenshot_writes_a_png_of_the_asked_size(tmp_path: Path, tab: str) -> None:
    vm = make_vm(tmp_path / "vm")
    out = tmp_path / f"{tab}.png"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vdigui",
            str(vm.folder),
            "--screenshot",
            str(out),
            "--tab",
            tab,
            "--size",
            "900x600",
            "--select",
            "First",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**__import__("os").environ, "QT_QPA_PLATFORM": "offscreen"},
    )
    assert result.returncode == 0, result.stderr
    image = QImage(str(out))
    assert (image.width(), image.height()) == (900, 600)
    colours = {image.pixel(x, y) for x in range(0, 900, 7) for y in range(0, 600, 7)}
    assert len(colours) > 20, "the screenshot looks blank"


def test_demo_builds_once_and_opens(
    qtbot: Any, window: MainWindow, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vdigui.engine.demo import DEMO_VERSION, build_demo_vm

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = build_demo_vm()
    assert folder == tmp_path / "cache" / "vdigui" / "demo" / f"v{DEMO_VERSION}" / "Demo VM"
    state = folder_state(folder)
    assert build_demo_vm() == folder and folder_state(folder) == state  # reused, not rebuilt
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".building")]
    with qtbot.waitSignal(window.session_loaded, timeout=20000):
        window.open_demo()
    qtbot.waitUntil(lambda: not window.workers.running, timeout=20000)
    kinds = {p.kind for p in window.session.problems}
    assert {"orphan-image", "missing-parent"} <= kinds
    names = [r.name for r in window.session.iter_snapshots()]
    assert names[:4] == ["Fresh install", "Updates", "Before experiment", "Alternative"]
    data = window.chain_data
    assert len(data.paths) == 4 and data.analysis.layer_frag[0].discontinuities > 10
    assert data.analysis.entries[0][0] != FREE  # the partition table block
    shutil.rmtree(tmp_path / "cache")


def test_uncaught_exceptions_reach_the_error_dialog(
    qtbot: Any, reports: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from vdigui.gui import messages

    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    monkeypatch.setattr(messages, "_bridge", None)
    messages.install_hooks()
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    thread = threading.Thread(target=lambda: 1 / 0)
    thread.start()
    thread.join()
    qtbot.waitUntil(lambda: len(reports) == 2, timeout=5000)
    assert reports[0] == (
        "Unexpected error",
        "vdigui hit an unexpected error (RuntimeError: boom). This is a bug.",
    )
    assert "ZeroDivisionError" in reports[1][1]


def test_switching_palettes_redraws_the_views(
    qtbot: Any, window: MainWindow, tmp_path: Path
) -> None:
    from PySide6.QtGui import QPalette
    from PySide6.QtWidgets import QApplication

    from vdigui.gui import theme

    vm = make_vm(tmp_path / "vm")
    open_and_wait(qtbot, window, vm.folder)
    window.tabs.setCurrentWidget(window.blockmap)
    try:
        window.set_theme("dark")
        assert theme.is_dark()
        assert list(window.blockmap.cells[0, 2, :3]) == list(
            theme.rgba(theme.free_colour())[:3].astype(int)
        )  # the dark "free" colour
        window.set_theme("light")
        assert not theme.is_dark()
    finally:
        window.set_theme("system")
    assert QApplication.palette().color(QPalette.ColorRole.Window).isValid()
    assert window.settings.value("theme") == "system"
