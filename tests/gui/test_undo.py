"""Edit > Undo and the undo data in the app, on a real VM folder and the real journal.

The deletion that is undone runs through the engine (the same journal ``vdictl undo`` reads);
what undo brings back is checked with the independent readers (tests/gui/wizard_kit.py), and
the undo data's size by walking the backup folder here.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtWidgets import QLabel

from tests.gui.gui_vmkit import make_vm, open_and_wait
from tests.gui.wizard_kit import state_hashes
from vdigui.engine import human_size
from vdigui.gui.main_window import MainWindow
from vdigui.gui.wizards import _engine as eng
from vdigui.gui.wizards import undo


def backup_bytes(folder: Path) -> int:
    """Bytes under .vdigui/backups, measured here."""
    root = folder / ".vdigui" / "backups"
    return sum(p.lstat().st_size for p in root.rglob("*") if p.is_file()) if root.exists() else 0


def settle(qtbot: Any, window: MainWindow) -> None:
    """Wait until nothing loads, checks or runs."""
    qtbot.waitUntil(
        lambda: (
            not window.busy
            and not window.operations.checking
            and not window.operations.undo.checking
            and not window.operations.pool.running
        ),
        timeout=20000,
    )


def test_nothing_to_undo_says_why(qtbot: Any, window: MainWindow, tmp_path: Path) -> None:
    vm = make_vm(tmp_path / "vm")
    open_and_wait(qtbot, window, vm.folder)
    settle(qtbot, window)
    action = window.operations.undo.undo_action
    assert not action.isEnabled()
    assert action.toolTip().startswith("There is no vdigui operation")
    box = window.operations.undo.box
    assert box.isVisible() and "keeps no undo data" in box.label.text()
    assert not box.discard.isEnabled()
    assert window.operations.undo.open_undo() is None


def test_undo_a_snapshot_deletion(qtbot: Any, window: MainWindow, tmp_path: Path) -> None:
    vm = make_vm(tmp_path / "vm")
    before = state_hashes(vm.folder)
    vbox_before = vm.vbox.read_bytes()
    eng.run_merge(eng.plan_snapshot_delete(vm.folder, "First"))
    assert not vm.diff.exists()
    open_and_wait(qtbot, window, vm.folder)
    settle(qtbot, window)
    controller = window.operations.undo
    action = controller.undo_action
    assert action.isEnabled(), action.toolTip()
    assert action.text() == "&Undo “deletion of snapshot 'First'”…"
    kept = backup_bytes(vm.folder)
    assert kept > 0 and human_size(kept) in controller.box.label.text()

    dialog = controller.open_undo()
    assert dialog is not None
    preview = html.unescape("\n".join(label.text() for label in dialog.findChildren(QLabel)))
    assert "'First' comes back" in preview
    assert vm.diff.name in preview and vm.vbox.name in preview
    assert f'vdictl undo "{vm.folder}"' in preview
    with qtbot.waitSignal(window.session_loaded, timeout=20000):
        dialog.undo_button.click()
    settle(qtbot, window)
    assert dialog.outcome is not None and dialog.outcome[0] == "ok", dialog.outcome
    assert dialog.outcome[1] == "Undone: " + controller_summary(dialog) + "."
    # Everything is back, read without the engine; the window shows the folder as it is now.
    assert vm.diff.exists()
    assert vm.vbox.read_bytes() == vbox_before
    assert state_hashes(vm.folder) == before
    assert window.session is not None and window.session.find_snapshot("First") is not None
    assert not action.isEnabled() and action.toolTip().startswith("There is no vdigui operation")
    dialog.close()


def controller_summary(dialog: undo.UndoDialog) -> str:
    """The engine's own summary of the undone operation."""
    assert dialog.status.record is not None
    return str(dialog.status.record["summary"])


def test_discard_undo_data(
    qtbot: Any, window: MainWindow, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vm = make_vm(tmp_path / "vm")
    eng.run_merge(eng.plan_snapshot_delete(vm.folder, "First"))
    kept = backup_bytes(vm.folder)
    assert kept > 0
    open_and_wait(qtbot, window, vm.folder)
    settle(qtbot, window)
    controller = window.operations.undo
    asked: list[str] = []
    answer = [False]
    monkeypatch.setattr(
        undo, "confirm_discard", lambda _parent, _title, text: (asked.append(text), answer[0])[1]
    )
    assert controller.box.discard.isEnabled()
    controller.box.discard.click()  # "No": nothing happens
    assert asked and backup_bytes(vm.folder) == kept
    assert f"{kept:,} bytes" in asked[0] and f"frees {human_size(kept)}" in asked[0]
    assert "undo is impossible" in asked[0]
    answer[0] = True
    with qtbot.waitSignal(window.session_loaded, timeout=20000):
        assert controller.discard()
    settle(qtbot, window)
    assert backup_bytes(vm.folder) == 0
    assert not controller.undo_action.isEnabled()
    assert "discarded" in controller.undo_action.toolTip()
    assert "keeps no undo data" in controller.box.label.text()
