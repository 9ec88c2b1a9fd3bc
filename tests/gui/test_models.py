"""Item models pass Qt's model tester and show what the engine found (trees, badges)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from gui_vmkit import break_vm, make_vm
from PySide6.QtCore import QModelIndex, Qt

from vdigui.gui.models.media import MediaTreeModel
from vdigui.gui.models.problems import ProblemsModel
from vdigui.gui.models.snapshots import SnapshotTreeModel
from vdigui.gui.session import load_session


def _all_indexes(model: Any, parent: QModelIndex | None = None) -> list[QModelIndex]:
    parent = parent or QModelIndex()
    out = []
    for row in range(model.rowCount(parent)):
        index = model.index(row, 0, parent)
        out.append(index)
        out.extend(_all_indexes(model, index))
    return out


def test_models_pass_the_model_tester(qtmodeltester: Any, tmp_path: Path) -> None:
    vm = make_vm(tmp_path / "vm")
    break_vm(vm, "orphan-image")
    session = load_session(vm.folder)
    snapshots = SnapshotTreeModel(session.snapshot_roots)
    media = MediaTreeModel(session.media_roots)
    problems = ProblemsModel()
    problems.set_problems(session.problems)
    for model in (snapshots, media, problems):
        qtmodeltester.check(model, force_py=True)
    # An empty model and a reset are fine too.
    empty = SnapshotTreeModel([])
    qtmodeltester.check(empty, force_py=True)
    empty.set_roots(session.snapshot_roots)
    qtmodeltester.check(empty, force_py=True)


def test_snapshot_tree_marks_the_current_state(qapp: Any, tmp_path: Path) -> None:
    vm = make_vm(tmp_path / "vm")
    session = load_session(vm.folder)
    model = SnapshotTreeModel(session.snapshot_roots)
    names = [model.data(i) for i in _all_indexes(model)]
    assert names == ["First", "Current State (changed)"]  # currentStateModified defaults to true
    first = model.index(0, 0)
    assert model.data(model.index(0, 1)) == "2026-01-02 03:04"
    assert "The first one" in model.data(first, Qt.ItemDataRole.ToolTipRole)
    assert model.data(first, Qt.ItemDataRole.FontRole).bold()  # the current snapshot
    current = model.index(0, 0, first)
    font = model.data(current, Qt.ItemDataRole.FontRole)
    assert font.bold() and font.italic()


def test_media_tree_links_diffs_under_their_base(qapp: Any, tmp_path: Path) -> None:
    vm = make_vm(tmp_path / "vm")
    session = load_session(vm.folder)
    model = MediaTreeModel(session.media_roots)
    roots = [model.data(model.index(r, 0)) for r in range(model.rowCount())]
    assert roots == ["disk.vdi"]
    base = model.index(0, 0)
    assert model.rowCount(base) == 1
    assert model.data(model.index(0, 2)) == "Normal"
    assert model.data(model.index(0, 2, base)) == "differencing"
    assert model.data(model.index(0, 1, base)) == "Current State"
    assert model.data(model.index(0, 1)) == "First"
    assert model.data(model.index(0, 3)) == "4.0 MiB"


KINDS = (
    "missing-file",
    "orphan-image",
    "missing-parent",
    "uuid-mismatch",
    "unreadable-image",
    "parent-modify-mismatch",
)


@pytest.mark.parametrize("kind", KINDS)
def test_every_problem_gets_a_badge_and_a_panel_row(qapp: Any, tmp_path: Path, kind: str) -> None:
    vm = make_vm(tmp_path / "vm")
    break_vm(vm, kind)
    session = load_session(vm.folder)
    assert kind in {p.kind for p in session.problems}, [p.kind for p in session.problems]
    panel = ProblemsModel()
    panel.set_problems(session.problems)
    panel_text = [panel.data(panel.index(r, 2)) for r in range(panel.rowCount())]
    media = MediaTreeModel(session.media_roots)
    snapshots = SnapshotTreeModel(session.snapshot_roots)
    for problem in session.problems:
        assert problem.message in panel_text
        badged = []
        for model in (media, snapshots):
            for index in _all_indexes(model):
                tooltip = model.data(index, Qt.ItemDataRole.ToolTipRole) or ""
                if problem.message.replace("'", "&#x27;") in tooltip or problem.message in tooltip:
                    assert model.data(index, Qt.ItemDataRole.DecorationRole) is not None
                    badged.append(model.data(index))
        assert badged, f"no node shows the {problem.kind} badge: {problem.message}"


def test_void_qt_calls_keep_none_balanced(qapp: Any) -> None:
    """A PySide6 that leaks references to None (shiboken6 6.12 on 3.11) would abort the app."""
    import sys

    from PySide6.QtWidgets import QLabel

    label = QLabel()
    before = sys.getrefcount(None)
    for i in range(2000):
        label.setText(str(i))
    assert abs(sys.getrefcount(None) - before) < 100


def test_every_named_asset_exists() -> None:
    from vdigui.gui.resources import ASSETS, asset_path

    for name in ASSETS:
        assert asset_path(name).is_file(), name
    desktop = asset_path("vdigui.desktop").read_text(encoding="utf-8")
    assert "Exec=vdigui %f" in desktop and "Icon=vdigui" in desktop
    with pytest.raises(FileNotFoundError):
        asset_path("no-such-asset.svg")


def test_command_line_help_needs_no_display() -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "QT_QPA_PLATFORM"}
    result = subprocess.run(
        [sys.executable, "-m", "vdigui", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0
    assert "--screenshot OUT.png" in result.stdout
