"""The operation wizards end to end on real small VM folders, plus cancel, failure and reasons.

Each wizard runs the real engine on a folder built with the engine (tests/gui/gui_vmkit.py)
and the result is checked on disk: the guest content of every remaining snapshot state, file
sizes and the .vbox. Cancels use both a slow fake engine function honouring the token and the
real engine cancelled part-way; failures are injected (tests run as root, so permissions
cannot make a file read-only).
"""

from __future__ import annotations

import errno
import time
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtWidgets import QWizard

from tests.gui.gui_vmkit import MIB, make_vm, open_and_wait
from tests.gui.wizard_kit import (  # noqa: F401  (the *_fixture names are fixtures)
    Factory,
    files_state,
    go_to,
    image_hash,
    make_wizard_fixture,
    run_to_end,
    state_hashes,
    vm_fixture,
)
from vdigui.engine import (
    CancelToken,
    Progress,
    VdiError,
    create_image,
    load_vm_folder,
    read_header,
)
from vdigui.gui.wizards import (
    CloneWizard,
    CompactWizard,
    DeleteSnapshotWizard,
    RepairWizard,
    base,
    install_operation_actions,
    operation_availability,
)
from vdigui.gui.wizards import _engine as eng
from vdigui.gui.wizards.base import OPTIONS, PREVIEW, RESULT, RUN, OutcomeKind


def slow_run(steps: int = 400) -> Callable[..., Any]:
    """A fake engine run that reports one progress event, then waits until it is cancelled.

    It never finishes by itself, so a test that cancels it does not depend on how fast the
    machine is (the wait has a ceiling only so a broken test cannot hang the suite).
    """

    def run(
        plan: Any, *, progress: Callable[[Progress], None], cancel: CancelToken, **_kwargs: Any
    ) -> Any:
        progress(Progress("moving blocks", 10, steps, 10 * MIB))
        deadline = time.monotonic() + 60
        while not cancel.cancelled:
            if time.monotonic() > deadline:
                raise AssertionError("the test should have cancelled the fake run")
            time.sleep(0.005)
        cancel.raise_if_cancelled()
        raise AssertionError("unreachable")

    return run


# -- end to end ----------------------------------------------------------------------------------


def test_compact_end_to_end(make_wizard: Factory, vm: Any, qtbot: Any) -> None:
    hashes = state_hashes(vm.folder)
    size_before = vm.base.stat().st_size
    vbox_before = vm.vbox.read_bytes()
    wizard = make_wizard(CompactWizard, vm.folder, "disk.vdi")
    assert wizard.target.image == vm.base
    go_to(qtbot, wizard, PREVIEW)
    qtbot.waitUntil(lambda: wizard.preview_runner is None, timeout=10000)
    assert wizard.plan.scanned and wizard.plan.zero_blocks.tolist() == [0]
    assert wizard.plan.bytes_reclaimed == MIB
    assert wizard.button(QWizard.WizardButton.CommitButton).text() == "Compact now"
    run_to_end(qtbot, wizard)
    assert wizard.outcome.kind is OutcomeKind.SUCCEEDED
    result = wizard.outcome.value
    assert result.verified and result.zero_blocks == 1 and result.moved_blocks == 1
    assert vm.base.stat().st_size == size_before - MIB
    assert state_hashes(vm.folder) == hashes
    assert vm.vbox.read_bytes() == vbox_before
    assert wizard.result_page.show_button.isVisible()
    with qtbot.waitSignal(wizard.show_chain_requested) as shown:
        wizard.result_page.show_button.click()
    assert shown.args == [vm.base]


def test_clone_snapshot_state(make_wizard: Factory, vm: Any, qtbot: Any) -> None:
    hashes = state_hashes(vm.folder)
    before = files_state(vm.folder)
    wizard = make_wizard(CloneWizard, vm.folder, "First")
    go_to(qtbot, wizard, OPTIONS)
    dest = vm.folder.parent / "copy.vdi"
    wizard.opts.dest.setText(str(dest))
    wizard.opts.keep_uuid.setChecked(True)
    run_to_end(qtbot, wizard)
    assert wizard.outcome.kind is OutcomeKind.SUCCEEDED, wizard.outcome
    header = read_header(dest)
    assert header.uuid == vm.base_uuid  # kept, as asked
    assert not header.is_differencing
    assert image_hash([dest]) == hashes["First#0"]
    assert files_state(vm.folder) == before  # the source is only read
    assert wizard.changed_path() == dest


def test_convert_in_place_to_fixed(make_wizard: Factory, tmp_path: Path, qtbot: Any) -> None:
    image = tmp_path / "plain.vdi"
    header = create_image(image, 4 * MIB)
    wizard = make_wizard(CloneWizard, None, image)
    go_to(qtbot, wizard, OPTIONS)
    assert wizard.opts.mode_convert.isEnabled()
    wizard.opts.mode_convert.setChecked(True)
    assert wizard.opts.fixed.isChecked()
    run_to_end(qtbot, wizard)
    assert wizard.outcome.kind is OutcomeKind.SUCCEEDED, wizard.outcome
    after = read_header(image)
    assert after.image_type.label == "fixed" and after.uuid == header.uuid
    assert image.stat().st_size >= 4 * MIB


def test_delete_snapshot_end_to_end(make_wizard: Factory, vm: Any, qtbot: Any) -> None:
    hashes = state_hashes(vm.folder)
    wizard = make_wizard(DeleteSnapshotWizard, vm.folder, "First")
    go_to(qtbot, wizard, OPTIONS)
    assert not wizard.opts.forward.isEnabled()  # a base is always merged backward
    assert "base disk" in wizard.opts.forward.toolTip()
    wizard.opts.verify.setChecked(True)
    run_to_end(qtbot, wizard)
    assert wizard.outcome.kind is OutcomeKind.SUCCEEDED, wizard.outcome
    assert wizard.outcome.value.verified is True and wizard.outcome.value.states == 1
    assert not vm.diff.exists()
    text = vm.vbox.read_text(encoding="utf-8")
    assert "<Snapshot" not in text and str(vm.diff_uuid) not in text
    after = state_hashes(vm.folder)
    assert after == {"Current State#0": hashes["Current State#0"]}
    assert wizard.changed_path() == vm.base


def test_repair_with_a_chosen_alternative(make_wizard: Factory, vm: Any, qtbot: Any) -> None:
    orphan = vm.folder / "Snapshots" / f"{{{uuidlib.uuid4()}}}.vdi"
    create_image(orphan, parent=vm.base, uuid=uuidlib.UUID(orphan.stem.strip("{}")))
    hashes = state_hashes(vm.folder)
    wizard = make_wizard(RepairWizard, vm.folder, None)
    go_to(qtbot, wizard, OPTIONS)
    choices = wizard.opts.choices
    kinds = {f.id: f.kind for f in wizard.proposal.fixes}
    register = next(i for i, k in kinds.items() if k == "register-orphan")
    quarantine = next(i for i, k in kinds.items() if k == "quarantine-orphan")
    assert choices[register].isChecked() and not choices[quarantine].isChecked()
    choices[quarantine].setChecked(True)  # the alternative, not the default
    go_to(qtbot, wizard, PREVIEW)
    assert [f.id for f in wizard.plan.fixes] == [quarantine]
    run_to_end(qtbot, wizard)
    assert wizard.outcome.kind is OutcomeKind.SUCCEEDED, wizard.outcome
    assert not orphan.exists()
    assert (vm.folder / "vdigui-quarantine" / orphan.name).exists()
    assert state_hashes(vm.folder) == hashes


# -- cancel --------------------------------------------------------------------------------------


def test_cancel_with_a_slow_fake(make_wizard: Factory, vm: Any, qtbot: Any) -> None:
    before = files_state(vm.folder)
    wizard = make_wizard(CompactWizard, vm.folder, "disk.vdi", run_fn=slow_run())
    go_to(qtbot, wizard, RUN)
    assert wizard.running
    assert not wizard.button(QWizard.WizardButton.BackButton).isEnabled()
    qtbot.waitUntil(lambda: wizard.run_page.bar.value() == 10, timeout=5000)
    assert wizard.run_page.bar.maximum() == 400
    assert wizard.run_page.phase.text() == "Moving blocks…"
    wizard.button(QWizard.WizardButton.CancelButton).click()
    qtbot.waitUntil(lambda: wizard.outcome is not None, timeout=5000)
    assert wizard.outcome.kind is OutcomeKind.CANCELLED
    assert wizard.outcome.message == "Cancelled: nothing was changed."
    assert wizard.currentId() == RESULT and wizard.isVisible()
    assert files_state(vm.folder) == before


def test_real_cancel_of_a_clone(make_wizard: Factory, vm: Any, qtbot: Any) -> None:
    def cancelling_clone(
        plan: Any, *, progress: Callable[[Progress], None], cancel: CancelToken
    ) -> Any:
        def report(event: Progress) -> None:
            progress(event)
            cancel.cancel()  # as if the user pressed Cancel during the first block

        return eng.run_clone(plan, progress=report, cancel=cancel)

    wizard = make_wizard(CloneWizard, vm.folder, "Current State", run_fn=cancelling_clone)
    dest = Path(wizard.opts.dest.text())
    listing = sorted(p.name for p in dest.parent.iterdir())
    run_to_end(qtbot, wizard)
    assert wizard.outcome.kind is OutcomeKind.CANCELLED
    assert "no clone was left behind" in wizard.outcome.message
    assert sorted(p.name for p in dest.parent.iterdir()) == listing


def test_real_cancel_of_a_compact_scan(make_wizard: Factory, vm: Any, qtbot: Any) -> None:
    before = files_state(vm.folder)

    def cancelling_compact(
        plan: Any, *, progress: Callable[[Progress], None], cancel: CancelToken, verify: bool
    ) -> Any:
        def report(event: Progress) -> None:
            progress(event)
            cancel.cancel()

        return eng.run_compact(plan, progress=report, cancel=cancel, verify=verify)

    wizard = make_wizard(CompactWizard, vm.folder, "disk.vdi", run_fn=cancelling_compact)
    run_to_end(qtbot, wizard)
    assert wizard.outcome.kind is OutcomeKind.CANCELLED
    assert wizard.outcome.message.startswith("Cancelled")
    assert files_state(vm.folder) == before


def test_cancel_too_late_reports_success(make_wizard: Factory, vm: Any, qtbot: Any) -> None:
    def finishes_anyway(
        plan: Any, *, progress: Callable[[Progress], None], cancel: CancelToken, **_kw: Any
    ) -> Any:
        cancel.cancel()  # the token is set, but the operation had passed its last check
        return eng.CompactResult(plan.path, False, False, 1, 1, 0, 0, 0, 0, 0, 0, None, None)

    wizard = make_wizard(CompactWizard, vm.folder, "disk.vdi", run_fn=finishes_anyway)
    run_to_end(qtbot, wizard)
    assert wizard.outcome.kind is OutcomeKind.SUCCEEDED


def test_closing_while_running_asks_cancels_and_waits(
    make_wizard: Factory, vm: Any, qtbot: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []
    answer = [False]
    monkeypatch.setattr(base, "confirm", lambda _p, q: (asked.append(q), answer[0])[1])
    wizard = make_wizard(DeleteSnapshotWizard, vm.folder, "First", run_fn=slow_run())
    go_to(qtbot, wizard, RUN)
    wizard.close()
    assert asked and wizard.isVisible() and wizard.running  # "No": keeps running
    answer[0] = True
    wizard.close()
    assert not wizard.running and wizard.outcome.kind is OutcomeKind.CANCELLED
    assert not wizard.isVisible()


# -- failure -------------------------------------------------------------------------------------


@pytest.mark.parametrize("error", ["oserror", "vdierror"])
def test_failure_reports_one_sentence_with_the_file(
    make_wizard: Factory, vm: Any, qtbot: Any, reports: list[tuple[str, str]], error: str
) -> None:
    before = files_state(vm.folder)

    def failing(plan: Any, **_kwargs: Any) -> Any:
        if error == "oserror":
            raise PermissionError(errno.EACCES, "Permission denied", str(plan.path))
        raise VdiError(f"'{plan.path.name}' is read-only on this host ({plan.path}).")

    wizard = make_wizard(CompactWizard, vm.folder, "disk.vdi", run_fn=failing)
    run_to_end(qtbot, wizard)
    assert wizard.outcome.kind is OutcomeKind.FAILED
    assert len(reports) == 1
    title, text = reports[0]
    assert title == "Compact failed" and str(vm.base) in text
    shown = wizard.result_page.content.findChildren(type(wizard.run_page.phase))[0].text()
    assert str(vm.base) in shown and "Failed" not in shown
    assert files_state(vm.folder) == before


def test_refused_plan_blocks_the_commit(make_wizard: Factory, vm: Any, qtbot: Any) -> None:
    fixed = vm.folder / "fixed.vdi"
    create_image(fixed, 2 * MIB, fixed=True)
    wizard = make_wizard(CompactWizard, vm.folder, fixed)
    go_to(qtbot, wizard, PREVIEW)
    assert not wizard.can_run()
    assert not wizard.button(QWizard.WizardButton.CommitButton).isEnabled()


def test_already_compact_has_nothing_to_run(
    make_wizard: Factory, tmp_path: Path, qtbot: Any
) -> None:
    tidy = make_vm(tmp_path / "Tidy")
    wizard = make_wizard(CompactWizard, tidy.folder, "disk.vdi")
    go_to(qtbot, wizard, PREVIEW)
    qtbot.waitUntil(lambda: wizard.preview_runner is None, timeout=10000)
    assert wizard.plan.nothing_to_do and not wizard.can_run()


# -- availability and the window's actions ----------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo VM (branches, a broken parent link, an orphan), built once for this module."""
    from vdigui.engine.demo import build_demo_vm

    return build_demo_vm(tmp_path_factory.mktemp("demo"))


def test_disabled_action_reasons(demo: Path, tmp_path: Path) -> None:
    vm = load_vm_folder(demo)
    updates = operation_availability(vm, "Updates")
    assert updates["delete-snapshot"][0] is False
    assert "has 2 child snapshots" in updates["delete-snapshot"][1]
    current = operation_availability(vm, "Current State")
    assert current["delete-snapshot"] == (
        False,
        "The current state is not a snapshot; select a snapshot to delete.",
    )
    assert current["clone"][0] and current["compact"][0] and current["repair"][0]
    assert operation_availability(vm, "Alternative")["delete-snapshot"][0]
    broken = next(p for p in vm.images if p.name.startswith("{07686b32"))
    compact = operation_availability(vm, broken)["compact"]
    assert compact[0] is False and "was not found" in compact[1]
    fixed = tmp_path / "fixed.vdi"
    create_image(fixed, 2 * MIB, fixed=True)
    alone = operation_availability(None, fixed)
    assert alone["compact"][0] is False and "fixed-size" in alone["compact"][1]
    assert alone["delete-snapshot"][1].startswith("Snapshots belong to a VM")
    assert alone["repair"] == (
        False,
        "Nothing to repair: vdigui found no problem it knows how to fix.",
    )


def test_window_actions_lock_and_close(
    window: Any, qtbot: Any, vm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    open_and_wait(qtbot, window, vm.folder)
    selection: list[object] = [None]
    reloads: list[int] = []

    def reload() -> None:
        reloads.append(1)
        window.reload()

    actions = install_operation_actions(
        window, lambda: window.session.vm if window.session else None, lambda: selection[0], reload
    )
    menus = [a.text().replace("&", "") for a in window.menuBar().actions()]
    assert "Operations" in menus and menus.index("Operations") < menus.index("Help")
    selection[0] = window.session.find_snapshot("First")
    actions.refresh()
    delete = actions.actions["delete-snapshot"]
    qtbot.waitUntil(lambda: not actions.checking, timeout=10000)
    assert delete.isEnabled() and "Ctrl+Shift+Del" in delete.toolTip()
    selection[0] = window.session.find_snapshot("Current State")
    actions.refresh()
    qtbot.waitUntil(lambda: not actions.checking, timeout=10000)
    assert not delete.isEnabled()
    assert delete.toolTip().startswith("The current state is not a snapshot")
    context = actions.context_actions(window.session.find_snapshot("First"))
    # Known from the first selection above: no second check.
    # Nothing to repair; a snapshot is not resized on its own.
    assert [a.isEnabled() for a in context] == [True, True, True, False, False]
    wizard = actions.open_wizard(
        "compact", window.session.find_disk("disk.vdi"), run_fn=slow_run(steps=2000)
    )
    assert wizard is not None
    go_to(qtbot, wizard, RUN)
    qtbot.waitUntil(lambda: not actions.actions["clone"].isEnabled(), timeout=3000)
    assert "is running on" in actions.actions["clone"].toolTip()
    assert actions.open_wizard("clone") is None  # refused while the chain is busy
    monkeypatch.setattr(base, "confirm", lambda _parent, _question: True)
    window.close()
    assert wizard.outcome is not None and wizard.outcome.kind is OutcomeKind.CANCELLED
    assert not wizard.isVisible() and reloads
    assert actions.pool.pool.activeThreadCount() == 0


def test_reasons_for_tree_nodes(vm: Any) -> None:
    from tests.gui.gui_vmkit import break_vm
    from vdigui.gui.session import load_session

    break_vm(vm, "missing-file")
    session = load_session(vm.folder)
    missing = session.disk_by_uuid(vm.diff_uuid)
    assert missing is not None and missing.path is not None
    state = operation_availability(session.vm, missing)
    assert state["compact"][0] is False
    assert state["compact"][1].startswith(f"'{missing.title}' cannot be read: ")
    first = operation_availability(session.vm, session.find_snapshot("First"))
    assert first["compact"][0] and first["clone"][0]
    assert first["repair"][0]  # the missing registered diff is something to repair


def test_real_cancel_of_a_deletion_rolls_back(make_wizard: Factory, vm: Any, qtbot: Any) -> None:
    before = files_state(vm.folder)

    def cancelling_merge(
        plan: Any, *, progress: Callable[[Progress], None], cancel: CancelToken, **kwargs: Any
    ) -> Any:
        def report(event: Progress) -> None:
            progress(event)
            cancel.cancel()

        return eng.run_merge(plan, progress=report, cancel=cancel, **kwargs)

    wizard = make_wizard(DeleteSnapshotWizard, vm.folder, "First", run_fn=cancelling_merge)
    run_to_end(qtbot, wizard)
    assert wizard.outcome.kind is OutcomeKind.CANCELLED
    assert "rolled back" in wizard.outcome.message
    assert files_state(vm.folder) == before


def test_interrupted_operation_is_recovered_first(
    make_wizard: Factory, vm: Any, qtbot: Any
) -> None:
    class Recovered:
        def message(self) -> str:
            return "An interrupted vdigui operation (a test) was found and rolled back."

    calls: list[Path] = []
    wizard = make_wizard(DeleteSnapshotWizard, vm.folder, "First")
    wizard.recover_fn = lambda folder: (calls.append(folder), Recovered())[1]
    before = files_state(vm.folder)
    run_to_end(qtbot, wizard)
    assert calls == [vm.folder.resolve()]
    assert wizard.outcome.kind is OutcomeKind.FAILED
    assert (
        "rolled back" in wizard.outcome.message
        and "open the wizard again" in wizard.outcome.message
    )
    assert files_state(vm.folder) == before


def test_context_action_opens_the_wizard_on_its_target(window: Any, qtbot: Any, vm: Any) -> None:
    open_and_wait(qtbot, window, vm.folder)
    actions = install_operation_actions(
        window, lambda: window.session.vm, lambda: None, window.reload
    )
    row = window.session.find_snapshot("First")
    clone = actions.context_actions(row)[1]
    # Not known yet: disabled and saying so, then the answer from the worker arrives.
    assert not clone.isEnabled() and clone.toolTip().startswith("Checking")
    qtbot.waitUntil(clone.isEnabled, timeout=10000)
    assert clone.toolTip().startswith("Copy snapshot 'First'")
    clone.trigger()
    wizard = actions.wizards[-1]
    assert wizard.target.kind == "snapshot" and wizard.target.snapshot_name == "First"
    assert wizard.isVisible() and not wizard.isModal()
    wizard.reject()
    assert not wizard.isVisible()


def test_compact_filesystem_aware(make_wizard: Factory, tmp_path: Path, qtbot: Any) -> None:
    """A real ext4 + NTFS + FAT16 guest whose free space holds stale data (Debian's tools)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine" / "operations"))
    from fsaware_disk import build_guest_disk  # skips when the mkfs tools are missing

    guest = build_guest_disk(tmp_path / "guest")
    size_before = guest.vdi.stat().st_size
    wizard = make_wizard(CompactWizard, None, guest.vdi)
    go_to(qtbot, wizard, OPTIONS)
    assert wizard.opts.fs_aware is not None
    wizard.opts.fs_aware.setChecked(True)
    go_to(qtbot, wizard, PREVIEW)
    qtbot.waitUntil(lambda: wizard.preview_runner is None, timeout=20000)
    planned = wizard.plan.fs_blocks.size
    assert wizard.plan.fs_aware and planned > 0
    run_to_end(qtbot, wizard, timeout=30000)
    assert wizard.outcome.kind is OutcomeKind.SUCCEEDED, wizard.outcome
    result = wizard.outcome.value
    assert result.verified and result.fs_blocks == planned
    assert guest.vdi.stat().st_size <= size_before - planned * MIB
