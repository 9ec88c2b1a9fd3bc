"""Verify on by default, "Keep undo data", the preview's space figures, and honest advice.

Each run is real (the engine on a small VM folder from tests/gui/gui_vmkit.py); what is left
on disk is read with the independent readers (tests/gui/wizard_kit.py), never the engine.
"""

from __future__ import annotations

import html
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtWidgets import QLabel

from tests.gui.wizard_kit import (  # noqa: F401  (the *_fixture names are fixtures)
    Factory,
    go_to,
    make_wizard_fixture,
    run_to_end,
    state_hashes,
    vm_fixture,
)
from vdigui.engine import human_size
from vdigui.gui.wizards import CloneWizard, CompactWizard, DeleteSnapshotWizard, RepairWizard
from vdigui.gui.wizards import _engine as eng
from vdigui.gui.wizards.base import OPTIONS, PREVIEW, OutcomeKind


def texts(widget: Any) -> str:
    """Every label's text under ``widget``, one per line, entities decoded (what one reads)."""
    return html.unescape("\n".join(label.text() for label in widget.findChildren(QLabel)))


def recording(real: Callable[..., Any], seen: dict[str, Any]) -> Callable[..., Any]:
    """The real engine function, remembering the keywords it was called with."""

    def run(plan: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        return real(plan, **kwargs)

    return run


def test_delete_keeps_undo_and_verifies_by_default(
    make_wizard: Factory, vm: Any, qtbot: Any
) -> None:
    hashes = state_hashes(vm.folder)
    seen: dict[str, Any] = {}
    wizard = make_wizard(
        DeleteSnapshotWizard, vm.folder, "First", run_fn=recording(eng.run_merge, seen)
    )
    go_to(qtbot, wizard, OPTIONS)
    assert wizard.opts.verify.isChecked() and wizard.opts.keep_undo.isChecked()
    go_to(qtbot, wizard, PREVIEW)
    space = wizard.plan.space
    assert space.keep_undo and space.undo_bytes > 0
    shown = texts(wizard.preview_page.content)
    assert "Disk space" in shown
    assert f"Keeps {human_size(space.undo_bytes)} of undo data" in shown
    assert f"Needs {human_size(space.peak_extra)} of free host space" in shown
    assert "Edit > Undo" in shown and "impossible" not in shown
    for outcome in space.files:
        assert outcome.path.name in shown
    run_to_end(qtbot, wizard)
    assert wizard.outcome.kind is OutcomeKind.SUCCEEDED, wizard.outcome
    assert seen["verify"] is True and seen["keep_undo"] is True
    assert state_hashes(vm.folder) == {"Current State#0": hashes["Current State#0"]}
    kept = list((vm.folder / ".vdigui").rglob(f"*{vm.diff.name}"))
    assert kept, "the merged-away image should be kept as undo data"


def test_delete_without_undo_data_says_undo_is_impossible(
    make_wizard: Factory, vm: Any, qtbot: Any
) -> None:
    hashes = state_hashes(vm.folder)
    seen: dict[str, Any] = {}
    wizard = make_wizard(
        DeleteSnapshotWizard, vm.folder, "First", run_fn=recording(eng.run_merge, seen)
    )
    go_to(qtbot, wizard, OPTIONS)
    wizard.opts.keep_undo.setChecked(False)
    assert "never be undone" in wizard.opts.undo_explain.text()
    go_to(qtbot, wizard, PREVIEW)
    assert not wizard.plan.space.keep_undo
    shown = texts(wizard.preview_page.content)
    assert "Undo will be impossible" in shown
    assert "Edit > Undo (or" not in shown
    run_to_end(qtbot, wizard)
    assert wizard.outcome.kind is OutcomeKind.SUCCEEDED, wizard.outcome
    assert seen["keep_undo"] is False and seen["verify"] is True
    assert state_hashes(vm.folder) == {"Current State#0": hashes["Current State#0"]}
    assert not any(p.name == vm.diff.name for p in vm.folder.rglob("*"))
    assert "cannot be undone" in texts(wizard.result_page)


def test_repair_verifies_by_default(make_wizard: Factory, vm: Any, qtbot: Any) -> None:
    import uuid as uuidlib

    from vdigui.engine import create_image

    orphan = vm.folder / "Snapshots" / f"{{{uuidlib.uuid4()}}}.vdi"
    create_image(orphan, parent=vm.base, uuid=uuidlib.UUID(orphan.stem.strip("{}")))
    hashes = state_hashes(vm.folder)
    seen: dict[str, Any] = {}
    wizard = make_wizard(RepairWizard, vm.folder, None, run_fn=recording(eng.run_repair, seen))
    go_to(qtbot, wizard, OPTIONS)
    assert wizard.opts.verify.isChecked()
    go_to(qtbot, wizard, PREVIEW)
    assert "Disk space" in texts(wizard.preview_page.content)
    run_to_end(qtbot, wizard)
    assert wizard.outcome.kind is OutcomeKind.SUCCEEDED, wizard.outcome
    assert seen["verify"] is True
    assert state_hashes(vm.folder) == hashes


def test_compact_advice_follows_the_forecast(
    make_wizard: Factory, tmp_path: Path, qtbot: Any
) -> None:
    """Once filesystem-aware compaction dropped the stale blocks, the guest's files fill every
    stored block: zero-filling inside the guest would give nothing back, so it is not advised."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine" / "operations"))
    from fsaware_disk import build_guest_disk  # skips when the mkfs tools are missing

    guest = build_guest_disk(tmp_path / "guest")
    first = eng.plan_compact(guest.vdi, fs_aware=True)
    eng.run_compact(first)
    wizard = make_wizard(CompactWizard, None, guest.vdi)
    go_to(qtbot, wizard, OPTIONS)
    wizard.opts.fs_aware.setChecked(True)
    go_to(qtbot, wizard, PREVIEW)
    qtbot.waitUntil(lambda: wizard.preview_runner is None, timeout=20000)
    plan = wizard.plan
    assert plan.nothing_to_do and plan.forecast is not None
    assert plan.forecast.fs_unused_blocks == 0
    shown = texts(wizard.preview_page.content)
    assert "already compact" in shown
    assert "zero the free space inside the guest first" not in shown
    assert "holds data the guest's files still use" in shown


def test_compact_and_clone_say_whether_they_can_be_undone(
    make_wizard: Factory, vm: Any, qtbot: Any
) -> None:
    compact = make_wizard(CompactWizard, vm.folder, "disk.vdi")
    go_to(qtbot, compact, PREVIEW)
    qtbot.waitUntil(lambda: compact.preview_runner is None, timeout=10000)
    assert compact.can_run()
    shown = texts(compact.preview_page.content)
    assert "Undo will be impossible: compaction changes the image in place" in shown
    clone = make_wizard(CloneWizard, vm.folder, "First")
    go_to(qtbot, clone, PREVIEW)
    shown = texts(clone.preview_page.content)
    assert "nothing to undo afterwards: the clone is a new file" in shown
    assert "Undo will be impossible" not in shown
