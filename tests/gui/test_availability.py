"""The operations' availability is worked out on a worker, per selection, never on the GUI thread.

Behaviour only (how long anything takes is measured by bench/bench_gui.py): right after a
selection the actions say "Checking…" and are disabled; then they are enabled or disabled with
the engine's own reason; a selection seen before answers at once; a reload forgets the answers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.gui.gui_vmkit import make_vm, open_and_wait
from vdigui.gui.main_window import MainWindow
from vdigui.gui.wizards import _engine as eng


@pytest.fixture
def planned(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """Every plan the availability checks make: (function, ran on the GUI thread)."""
    calls: list[tuple[str, bool]] = []

    def spy(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls.append((name, threading.current_thread() is threading.main_thread()))
            return real(*args, **kwargs)

        return call

    for name in ("plan_compact", "plan_snapshot_delete", "plan_repair"):
        monkeypatch.setattr(eng, name, spy(name, getattr(eng, name)))
    return calls


def test_actions_check_on_a_worker_then_answer(
    qtbot: Any, window: MainWindow, tmp_path: Path, planned: list[tuple[str, bool]]
) -> None:
    vm = make_vm(tmp_path / "vm")
    open_and_wait(qtbot, window, vm.folder)
    actions = window.operations
    delete = actions.actions["delete-snapshot"]
    compact = actions.actions["compact"]
    assert window.session is not None
    # Opening selects the current state, and its answer is known once the window is idle.
    assert not delete.isEnabled()
    assert delete.toolTip() == ("The current state is not a snapshot; select a snapshot to delete.")

    # (Forget what opening may have checked already, so "First" is surely new.)
    actions.checks.clear()
    window.select_snapshot(window.session.find_snapshot("First"))
    assert not delete.isEnabled() and delete.toolTip().startswith("Checking")
    assert not compact.isEnabled() and compact.toolTip().startswith("Checking")
    qtbot.waitUntil(lambda: not actions.checking and not window.busy, timeout=15000)
    assert delete.isEnabled()
    assert delete.toolTip().startswith("Delete snapshot 'First', merging its disk changes")
    assert compact.isEnabled() and compact.toolTip().startswith("Compact disk.vdi")

    window.select_snapshot(window.session.find_snapshot("Current State"))
    qtbot.waitUntil(lambda: not actions.checking and not window.busy, timeout=15000)
    assert not delete.isEnabled() and delete.toolTip().startswith("The current state is not")

    # Seen before: answered at once, without planning again.
    before = len(planned)
    window.select_snapshot(window.session.find_snapshot("First"))
    assert delete.isEnabled() and not actions.checking
    window.select_snapshot(window.session.find_snapshot("Current State"))
    assert not delete.isEnabled() and delete.toolTip().startswith("The current state is not")
    assert len(planned) == before

    # A reload is a new folder object: everything is asked again.
    with qtbot.waitSignal(window.session_loaded, timeout=15000):
        window.reload()
    qtbot.waitUntil(lambda: not actions.checking and not window.busy, timeout=15000)
    window.select_snapshot(window.session.find_snapshot("First"))
    assert delete.toolTip().startswith("Checking")
    qtbot.waitUntil(lambda: not actions.checking and not window.busy, timeout=15000)
    assert delete.isEnabled() and len(planned) > before

    assert planned and not any(on_gui for _name, on_gui in planned), planned
    assert {name for name, _ in planned} >= {"plan_compact", "plan_snapshot_delete", "plan_repair"}


def test_a_failing_check_says_why(
    qtbot: Any, window: MainWindow, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vm = make_vm(tmp_path / "vm")

    def unreadable(path: Any, **_kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(eng, "plan_compact", unreadable)
    open_and_wait(qtbot, window, vm.folder)
    qtbot.waitUntil(lambda: not window.operations.checking and not window.busy, timeout=15000)
    compact = window.operations.actions["compact"]
    assert not compact.isEnabled()
    assert compact.toolTip().startswith("The file cannot be read: Permission denied")
    assert str(vm.diff) in compact.toolTip()
