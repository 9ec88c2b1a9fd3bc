"""First-hour polish: no display, --select typos, --demo --clean, and nothing clipped at 1400x900.

The clipping tests open a VM folder made to provoke it (snapshot names of 80+ characters,
long descriptions, long problem messages, unregistered images) in a 1400x900 window, as the
README's screenshots are taken, and check the geometry: no horizontal scroll bar, and every
cell whose text does not fit carries the full text as its tooltip.
"""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
import uuid as uuidlib
from pathlib import Path
from typing import Any

import pytest
from gui_vmkit import MIB, block, open_and_wait, write_blocks
from PySide6.QtCore import QModelIndex, Qt
from PySide6.QtGui import QFontMetrics, QImage
from PySide6.QtWidgets import QAbstractItemView, QApplication

from vdigui.engine import create_image
from vdigui.gui.main_window import MainWindow

LONG_A = (
    "Before the big distribution upgrade with the experimental kernel, the proprietary "
    "graphics driver and the new desktop"
)
LONG_B = (
    "After installing the complete development toolchain, databases, browsers and every "
    "language server anyone ever asked for"
)
LONG_C = (
    "A third snapshot whose name is also far longer than any column could show at once "
    "without eliding it somewhere"
)


def _env_without_display(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")
    }
    env.update(extra)
    return env


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vdigui", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env or dict(os.environ),
        check=False,
    )


# -- no display -----------------------------------------------------------------------------
def test_no_display_says_so_in_one_sentence_and_exits_1(tmp_path: Path) -> None:
    done = _run(str(tmp_path), env=_env_without_display())
    assert done.returncode == 1, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "No display found" in lines[0] and "--screenshot" in lines[0]
    assert "xcb" not in done.stderr and "reinstall" not in done.stderr


def test_display_check_trusts_an_explicit_platform() -> None:
    from vdigui.gui.app import display_missing

    assert display_missing({})
    assert not display_missing({"QT_QPA_PLATFORM": "offscreen"})
    assert not display_missing({"DISPLAY": ":0"})
    assert not display_missing({"WAYLAND_DISPLAY": "wayland-0"})


def test_screenshot_needs_no_display(tmp_path: Path) -> None:
    from gui_vmkit import make_vm

    vm = make_vm(tmp_path / "vm")
    out = tmp_path / "shot.png"
    done = _run(str(vm.folder), "--screenshot", str(out), env=_env_without_display())
    assert done.returncode == 0, done.stderr
    assert QImage(str(out)).width() == 1400


# -- --select -------------------------------------------------------------------------------
def test_select_that_matches_nothing_writes_no_png(tmp_path: Path) -> None:
    from gui_vmkit import make_vm

    vm = make_vm(tmp_path / "vm")
    out = tmp_path / "shots" / "x.png"
    done = _run(
        str(vm.folder),
        "--screenshot",
        str(out),
        "--select",
        "Frist",
        env=_env_without_display(QT_QPA_PLATFORM="offscreen"),
    )
    assert done.returncode == 1
    assert not out.exists() and not out.parent.exists()
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "'Frist'" in lines[0], done.stderr
    assert done.stdout == ""


# -- --demo --clean -------------------------------------------------------------------------
def test_demo_clean_removes_the_demo_and_says_how_much(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    demo = cache / "vdigui" / "demo"
    (demo / "v1" / "Demo VM").mkdir(parents=True)
    (demo / "v2" / "Demo VM" / "Snapshots").mkdir(parents=True)
    create_image(demo / "v2" / "Demo VM" / "Demo VM.vdi", 8 * MIB)
    write_blocks([demo / "v2" / "Demo VM" / "Demo VM.vdi"], [(i, block(i)) for i in range(5)])
    (demo / "v1" / "Demo VM" / "old.vdi").write_bytes(b"\1" * (3 * MIB))
    keep = cache / "vdigui" / "settings-or-anything-else"
    keep.write_text("not the demo", encoding="utf-8")
    # find's %b: the 512-byte blocks each file occupies (what the space freed is made of).
    listed = subprocess.run(
        ["find", str(demo), "-type", "f", "-printf", "%b\n"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    files = sum(int(n) * 512 for n in listed.split())
    assert files > 4 * MIB
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    done = _run("--demo", "--clean", env=env)
    assert done.returncode == 0, done.stderr
    assert not demo.exists() and keep.read_text(encoding="utf-8") == "not the demo"
    mib = files / MIB
    assert f"freeing {mib:.1f} MiB" in done.stdout, (done.stdout, mib)
    again = _run("--demo", "--clean", env=env)
    assert again.returncode == 0 and "No demo to remove" in again.stdout


def test_clean_needs_demo() -> None:
    done = _run("--clean")
    assert done.returncode == 2 and "--clean only applies with --demo" in done.stderr


# -- a VM folder made to provoke clipping ---------------------------------------------------
def _snapshot(
    uuid: uuidlib.UUID, name: str, when: str, description: str, disks: list[Any], inner: str = ""
) -> str:
    attach = "".join(
        f'<AttachedDevice type="HardDisk" port="{port}" device="0">'
        f'<Image uuid="{{{u}}}"/></AttachedDevice>'
        for port, u in enumerate(disks)
    )
    children = f"<Snapshots>{inner}</Snapshots>" if inner else ""
    return (
        f'<Snapshot uuid="{{{uuid}}}" name="{html.escape(name)}" timeStamp="{when}">'
        f"<Description>{html.escape(description)}</Description><Hardware>"
        f'<StorageControllers><StorageController name="SATA" type="AHCI" PortCount="2">'
        f"{attach}</StorageController></StorageControllers></Hardware>{children}</Snapshot>"
    )


def make_long_vm(folder: Path) -> dict[str, Any]:
    """A VM whose names, descriptions and problems are as long as real ones get.

    Base disk (a long file name) <- three snapshot layers <- the current state's layer (no
    blocks of its own); a second disk ``shared data.vdi`` that every snapshot attaches and
    that holds no blocks at all; an unregistered orphan diff; a registered diff whose header
    names a parent that does not exist (two long problem messages).
    """
    snaps = folder / "Snapshots"
    snaps.mkdir(parents=True)
    base = folder / "Workstation main system disk (Ubuntu 24.04 LTS).vdi"
    base_h = create_image(base, 8 * MIB)
    write_blocks([base], [(5, block(5)), (0, block(1)), (3, block(3)), (1, block(2))])
    data = folder / "shared data.vdi"
    data_h = create_image(data, 4 * MIB)
    chain, uuids = [base], [base_h.uuid]
    for i in range(3):
        u = uuidlib.uuid4()
        diff = snaps / f"{{{u}}}.vdi"
        create_image(diff, parent=chain[-1], uuid=u)
        chain.append(diff)
        uuids.append(u)
        if i < 2:
            write_blocks(chain, [(6 - i, block(20 + i)), (2 + i, block(30 + i))])
    orphan_u = uuidlib.uuid4()
    create_image(snaps / f"{{{orphan_u}}}.vdi", parent=base, uuid=orphan_u)
    lost_u = uuidlib.uuid4()
    lost = snaps / f"{{{lost_u}}}.vdi"
    create_image(lost, parent=base, uuid=lost_u)
    from vdigui.engine import open_image

    with open_image(lost, writable=True) as image:
        image.write_header(image.header.replace(parent_uuid=uuidlib.uuid4()))
    s = [uuidlib.uuid4() for _ in range(3)]
    desc = (
        "A long description that goes on and on, as people write them when they want to "
        "remember exactly why a snapshot was taken and what state the machine was in. "
    ) * 3
    tree = _snapshot(
        s[0],
        LONG_A,
        "2026-01-02T03:04:05Z",
        desc,
        [uuids[0], data_h.uuid],
        _snapshot(
            s[1],
            LONG_B,
            "2026-02-03T04:05:06Z",
            desc,
            [uuids[1], data_h.uuid],
            _snapshot(s[2], LONG_C, "2026-03-04T05:06:07Z", desc, [uuids[2], data_h.uuid]),
        ),
    )
    inner = ""
    for u, path in reversed(list(zip(uuids[1:], chain[1:], strict=True))):
        inner = (
            f'<HardDisk uuid="{{{u}}}" location="Snapshots/{path.name}" format="VDI">'
            f"{inner}</HardDisk>"
        )
    inner += f'<HardDisk uuid="{{{lost_u}}}" location="Snapshots/{lost.name}" format="VDI"/>'
    registry = (
        f'<MediaRegistry><HardDisks><HardDisk uuid="{{{base_h.uuid}}}" '
        f'location="{html.escape(base.name)}" format="VDI" type="Normal">{inner}'
        f'</HardDisk><HardDisk uuid="{{{data_h.uuid}}}" location="{data.name}" '
        'format="VDI" type="Writethrough"/></HardDisks></MediaRegistry>'
    )
    current = (
        f'<Hardware><StorageControllers><StorageController name="SATA" type="AHCI" '
        f'PortCount="2"><AttachedDevice type="HardDisk" port="0" device="0">'
        f'<Image uuid="{{{uuids[3]}}}"/></AttachedDevice>'
        f'<AttachedDevice type="HardDisk" port="1" device="0">'
        f'<Image uuid="{{{data_h.uuid}}}"/></AttachedDevice>'
        "</StorageController></StorageControllers></Hardware>"
    )
    name = "Development workstation with a long machine name"
    (folder / f"{name}.vbox").write_text(
        f'<?xml version="1.0"?>\n<VirtualBox xmlns="http://www.virtualbox.org/" '
        f'version="1.19-linux"><Machine uuid="{{{uuidlib.uuid4()}}}" name="{name}" '
        f'OSType="Ubuntu_64" snapshotFolder="Snapshots" currentSnapshot="{{{s[2]}}}">'
        f"{registry}{tree}{current}</Machine></VirtualBox>\n",
        encoding="utf-8",
    )
    return {"folder": folder, "base": base, "data": data, "chain": chain}


@pytest.fixture(scope="module")
def long_vm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return make_long_vm(tmp_path_factory.mktemp("long") / "Long VM")


# -- nothing clipped at 1400x900 ----------------------------------------------------------
TAB_INDEX = {"overview": 0, "header": 1, "blockmap": 2, "fragmentation": 3}


def _settle(qtbot: Any, window: MainWindow) -> None:
    qtbot.waitUntil(lambda: not window.workers.running, timeout=20000)
    for _ in range(3):
        QApplication.processEvents()
        qtbot.wait(30)


def _show(qtbot: Any, window: MainWindow, name: str, tab: str) -> None:
    assert window.select_by_name(name), name
    _settle(qtbot, window)
    window.tabs.setCurrentIndex(TAB_INDEX[tab])
    _settle(qtbot, window)


def _plain(tooltip: Any) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", str(tooltip or ""))).replace("\xa0", " ")


def _shown_core(text: str) -> str:
    """The part of a cell's text its tooltip must contain ("A, B +2" lists A and B first)."""
    return re.sub(r" \+\d+$| \(changed\)$", "", text)


def _elided_without_tooltip(view: QAbstractItemView) -> list[str]:
    """Cells whose text does not fit their column and whose tooltip does not hold it."""
    model = view.model()
    bad: list[str] = []

    def walk(parent: QModelIndex) -> None:
        for row in range(model.rowCount(parent)):
            for column in range(model.columnCount(parent)):
                index = model.index(row, column, parent)
                text = index.data(Qt.ItemDataRole.DisplayRole)
                rect = view.visualRect(index)
                if not text or rect.isEmpty():
                    continue
                if view.sizeHintForIndex(index).width() <= rect.width() + 1:
                    continue
                tip = " ".join(_plain(index.data(Qt.ItemDataRole.ToolTipRole)).split())
                # A name the model already shortened ("{9bb9d102…}.vdi") is in the tooltip
                # whole: each piece around the "…" must be.
                pieces = " ".join(_shown_core(str(text)).split()).split("…")
                if not all(piece in tip for piece in pieces):
                    bad.append(
                        f"{view.accessibleName() or type(view).__name__} "
                        f"{text!r} (tooltip {tip[:80]!r})"
                    )
            walk(model.index(row, 0, parent))

    walk(QModelIndex())
    return bad


def _check_no_clipping(window: MainWindow) -> list[str]:
    from PySide6.QtWidgets import QAbstractScrollArea

    problems = []
    for area in window.findChildren(QAbstractScrollArea):
        if area.isVisible() and area.horizontalScrollBar().isVisible():
            problems.append(
                f"horizontal scroll bar on {type(area).__name__} "
                f"{area.accessibleName() or area.objectName()}"
            )
    views = [window.snapshot_view, window.media_view, window.problems_view]
    current = window.tabs.currentWidget()
    if current is window.overview:
        views.append(window.overview.chain_table)
    if current is window.header_view:
        views.append(window.header_view.table)
    for view in views:
        problems += _elided_without_tooltip(view)
    return problems


@pytest.fixture
def big_window(qtbot: Any, window: MainWindow) -> MainWindow:
    """The test window at the README's screenshot size."""
    window.resize(1400, 900)
    return window


@pytest.mark.parametrize(
    "name",
    [
        LONG_B,
        "Current State",
        "shared data.vdi",
        "Workstation main system disk (Ubuntu 24.04 LTS).vdi",
    ],
)
@pytest.mark.parametrize("tab", ["overview", "header"])
def test_long_names_fit_without_scrolling_or_silent_elision(
    qtbot: Any, big_window: MainWindow, long_vm: dict[str, Any], name: str, tab: str
) -> None:
    open_and_wait(qtbot, big_window, long_vm["folder"])
    _show(qtbot, big_window, name, tab)
    assert big_window.problems_model.rowCount() >= 2
    assert _check_no_clipping(big_window) == []


def test_demo_fits_at_1400x900(
    qtbot: Any, big_window: MainWindow, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from vdigui.engine.demo import build_demo_vm

    folder = build_demo_vm(tmp_path_factory.mktemp("demo-polish"))
    open_and_wait(qtbot, big_window, folder, timeout=30000)
    for name in ("Current State", "data.vdi", "Before experiment"):
        for tab in ("overview", "header", "blockmap", "fragmentation"):
            _show(qtbot, big_window, name, tab)
            assert _check_no_clipping(big_window) == [], (name, tab)
    # The chain table shows every column whole for the demo (shortened UUIDs fit).
    _show(qtbot, big_window, "Current State", "overview")
    table = big_window.overview.chain_table
    header = table.horizontalHeader()
    assert sum(header.sectionSize(c) for c in range(header.count())) <= (table.viewport().width())
    for column in range(1, table.columnCount()):
        for row in range(table.rowCount()):
            index = table.model().index(row, column)
            assert table.sizeHintForIndex(index).width() <= table.visualRect(index).width() + 1


def test_chain_table_shortens_uuids_and_keeps_them_whole_in_tooltips(
    qtbot: Any, big_window: MainWindow, long_vm: dict[str, Any]
) -> None:
    open_and_wait(qtbot, big_window, long_vm["folder"])
    _show(qtbot, big_window, "Current State", "overview")
    table = big_window.overview.chain_table
    assert table.rowCount() == 4
    headers = big_window.chain_data.headers
    for row in range(4):
        cell = table.item(row, 2)
        assert cell.text() == "{" + str(headers[row].uuid)[:8] + "…}"
        assert cell.toolTip() == "{" + str(headers[row].uuid) + "}"
        if row:
            # The link still reads across rows: parent UUID = the UUID of the row above.
            assert table.item(row, 6).text() == table.item(row - 1, 2).text()
            assert table.item(row, 6).toolTip() == table.item(row - 1, 2).toolTip()
    assert table.item(0, 6).text() == "null"


def test_partition_bar_labels_keep_off_the_outline(
    qtbot: Any, big_window: MainWindow, long_vm: dict[str, Any]
) -> None:
    from vdigui.gui.views.partitionbar import OUTLINE

    open_and_wait(qtbot, big_window, long_vm["folder"])
    _show(qtbot, big_window, "Workstation main system disk (Ubuntu 24.04 LTS).vdi", "blockmap")
    bar = big_window.blockmap.partition_bar
    assert bar.isVisible() and bar.usage is not None
    labels = bar.labels()
    assert [text for _v, text, _r in labels][:1] == ["unknown"]
    boxes = {id(v): rect for v, rect in bar.boxes()}
    metrics = QFontMetrics(bar.font())
    for volume, text, rect in labels:
        inner = boxes[id(volume)].adjusted(OUTLINE, OUTLINE, -OUTLINE, -OUTLINE)
        margin = inner.adjusted(2, 2, -2, -2)
        assert margin.contains(rect), (text, rect, inner)
        assert (
            rect.height() >= metrics.height()
            and rect.width() >= metrics.horizontalAdvance(text) - 1
        )
    # Two lines (name and size) fit one above the other without overlapping.
    first, second = labels[0][2], labels[1][2]
    assert first.bottom() <= second.top()


def test_empty_image_fragmentation_axes_show_whole_numbers(
    qtbot: Any, big_window: MainWindow, long_vm: dict[str, Any]
) -> None:
    open_and_wait(qtbot, big_window, long_vm["folder"])
    _show(qtbot, big_window, "shared data.vdi", "fragmentation")
    plot = big_window.fragmentation.plot.getPlotItem()
    assert big_window.fragmentation.points[0].size == 0
    for name in ("left", "bottom"):
        axis = plot.getAxis(name)
        low, high = axis.range
        size = axis.height() if name == "left" else axis.width()
        shown = []
        for spacing, values in axis.tickValues(low, high, size):
            shown += axis.tickStrings(values, axis.scale, spacing)
        assert shown and all(re.fullmatch(r"-?\d+", t) for t in shown), (name, shown)


def test_header_values_break_into_lines_that_fit() -> None:
    from vdigui.gui.views.header import wrap_text

    def advance(text: str) -> int:
        return 7 * len(text)

    for text in (
        "{9bb9d102-014a-4d01-b170-fcc8979edb2f}",
        "0x100000 (1.0 MiB into the file)",
        "0" * 60,
        "short",
    ):
        lines = wrap_text(text, 100, advance)
        assert all(advance(line) <= 100 for line in lines), lines
        assert "".join(lines).replace(" ", "") == text.replace(" ", "")
    assert wrap_text("short", 100, advance) == ["short"]


def test_columns_shrink_the_widest_first() -> None:
    from vdigui.gui.views.columns import shrink_cap

    widths = {0: 300, 1: 100, 2: 50}
    floors = {0: 60, 1: 60, 2: 50}
    cap = shrink_cap(widths, floors, 200)
    after = {c: max(floors[c], min(w, cap)) for c, w in widths.items()}
    assert sum(after.values()) <= 250 and after[2] == 50 and after[0] == after[1] == cap
    assert shrink_cap(widths, floors, 10_000) == 0  # the floors win
