"""The snapshot tree's cost columns: they appear, say "…" while a worker fills them, then sort.

The figures themselves are checked against real deletions in
tests/engine/test_snapshot_cost.py; here the window must show the engine's cost map for each
snapshot, never wait for it (selecting works while it is being worked out), and sort by it.
"""

from __future__ import annotations

import html
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import QModelIndex, Qt

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine" / "merge"))
from vmbuild import VmBuilder

from vdigui.engine import human_size, snapshot_costs
from vdigui.gui.main_window import MainWindow
from vdigui.gui.models import snapshots as snapshots_model
from vdigui.gui.models.snapshots import (
    COPIES,
    FREES,
    NEEDS,
    PENDING_TEXT,
    TIME,
    CostState,
    SnapshotTreeModel,
)
from vdigui.gui.session import load_session


def branched_vm(folder: Path) -> VmBuilder:
    """s1 -> s2 -> (current), and s1 -> side (restored s1, then a snapshot): s1 branches."""
    vm = VmBuilder(folder, seed=5)
    vm.scribble([0, 1, 2, 3])
    vm.take_snapshot("s1")
    vm.scribble([1, 4, 5, 6, 7, 8])
    vm.take_snapshot("s2")
    vm.scribble([2])
    vm.restore(vm.snap("s1"))
    vm.scribble([9])
    vm.take_snapshot("side")
    vm.scribble([3, 10])
    return vm


def cell(model: Any, node: Any, column: int, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
    return model.index_of(node, column).data(role)


def snapshot_nodes(model: Any) -> list[Any]:
    return [n for n in model.iter_nodes() if not n.is_current_state]


def wait_open(qtbot: Any, window: MainWindow, folder: Path) -> None:
    with qtbot.waitSignal(window.chain_loaded, timeout=15000):
        window.open_path(folder)


def test_columns_appear_with_tooltips(qapp: Any) -> None:
    model = SnapshotTreeModel([])
    titles = [model.headerData(c, Qt.Orientation.Horizontal) for c in range(model.columnCount())]
    assert titles == ["Snapshot", "Taken", "Frees", "Copies", "Needs", "Time"]
    for column in (FREES, COPIES, NEEDS, TIME):
        tip = model.headerData(column, Qt.Orientation.Horizontal, Qt.ItemDataRole.ToolTipRole)
        assert tip and len(tip) > 40
    assert "estimate" in model.headerData(
        TIME, Qt.Orientation.Horizontal, Qt.ItemDataRole.ToolTipRole
    )


def test_cells_say_pending_then_fill_without_blocking_selection(
    qtbot: Any, window: MainWindow, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vm = branched_vm(tmp_path / "vm")
    release = threading.Event()
    real = snapshot_costs

    def slow_costs(folder: Path, **kw: Any) -> Any:
        release.wait(20)
        return real(folder, **kw)

    monkeypatch.setattr(snapshots_model, "snapshot_costs", slow_costs)
    try:
        wait_open(qtbot, window, vm.folder)
        model = window.snapshot_model
        nodes = snapshot_nodes(model)
        assert [n.name for n in nodes] == ["s1", "s2", "side"]
        assert model.cost_state == CostState.PENDING
        for node in nodes:
            for column in (FREES, COPIES, NEEDS, TIME):
                assert cell(model, node, column) == PENDING_TEXT
        # Selecting works while the costs are still being worked out.
        s2 = window.session.find_snapshot("s2")
        with qtbot.waitSignal(window.chain_loaded, timeout=10000):
            window.select_snapshot(s2)
        assert model.cost_state == CostState.PENDING
    finally:
        release.set()
    qtbot.waitUntil(lambda: model.cost_state == CostState.READY, timeout=20000)
    qtbot.waitUntil(lambda: not window.workers.running, timeout=20000)
    expected = {c.name: c for c in real(vm.folder)}
    for node in snapshot_nodes(model):
        want = expected[node.name]
        if want.refused_reason is not None:
            assert cell(model, node, FREES) == "refused"
            tip = cell(model, node, FREES, Qt.ItemDataRole.ToolTipRole)
            assert html.escape(want.refused_reason) in tip
            continue
        assert cell(model, node, FREES) == human_size(want.frees_without_undo or 0)
        assert cell(model, node, COPIES) == human_size(want.copies or 0)
        assert cell(model, node, NEEDS) == human_size(want.needs or 0)
        assert cell(model, node, TIME)
        assert "estimate" in cell(model, node, TIME, Qt.ItemDataRole.ToolTipRole)
        assert f"{want.needs:,} bytes" in cell(model, node, NEEDS, Qt.ItemDataRole.ToolTipRole)
    refused = [n for n in snapshot_nodes(model) if expected[n.name].refused_reason]
    assert [n.name for n in refused] == ["s1"]  # two children
    current = next(n for n in model.iter_nodes() if n.is_current_state)
    assert cell(model, current, FREES) == ""


def test_sorting_by_a_cost_column_reorders_siblings(
    qapp: Any, qtmodeltester: Any, tmp_path: Path
) -> None:
    vm = branched_vm(tmp_path / "vm")
    session = load_session(vm.folder)
    model = SnapshotTreeModel(session.snapshot_roots)
    costs = snapshot_costs(vm.folder)
    model.set_cost_state(CostState.READY, costs)
    s1 = model.index(0, 0)

    def kids() -> list[str]:
        return [model.index(r, 0, s1).data() for r in range(model.rowCount(s1))]

    natural = kids()
    by_name = {c.name: c for c in costs}
    assert sorted(natural) == ["s2", "side"]
    assert by_name["s2"].copies != by_name["side"].copies
    model.sort(COPIES, Qt.SortOrder.AscendingOrder)
    ascending = kids()
    assert [by_name[n].copies for n in ascending] == sorted(
        by_name[n].copies or 0 for n in ascending
    )
    model.sort(COPIES, Qt.SortOrder.DescendingOrder)
    assert kids() == ascending[::-1]
    qtmodeltester.check(model, force_py=True)
    model.sort(-1)
    assert kids() == natural
    assert model.parent(model.index(0, 0, s1)) == s1
    assert model.parent(QModelIndex()) == QModelIndex()


def test_taken_starts_hidden_and_the_header_menu_shows_it(window: MainWindow) -> None:
    header = window.snapshot_view.header()
    assert header.isSectionHidden(1)
    assert all(not header.isSectionHidden(c) for c in (0, FREES, COPIES, NEEDS, TIME))
    titles = [a.text() for a in header.actions()]
    assert titles == ["Show Taken", "Show Frees", "Show Copies", "Show Needs", "Show Time"]
    header.actions()[0].setChecked(True)
    assert not header.isSectionHidden(1)
    header.actions()[0].setChecked(False)
    assert header.isSectionHidden(1)
