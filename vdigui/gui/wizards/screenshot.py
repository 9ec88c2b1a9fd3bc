"""``vdigui PATH --screenshot OUT.png --wizard KIND --page PAGE``: one wizard page as a PNG.

Why a mode of its own: the README's pictures and the review of every page come from real plans
on real folders, rendered offscreen. The run and result pages show a state derived from the
plan (a progress event part-way, the plan's figures as the result) because nothing is run:
this mode never writes to a disk image or a settings file.

Why the simulation lives here and not in the wizards: the production wizards only ever run
operations. This module wraps a wizard class in :func:`simulated`, whose run page shows a
plan-derived progress event and whose result page shows the plan's figures as a result; the
per-operation pictures of "part-way" and "done" are the ``_PROGRESS`` and ``_RESULT`` tables.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QEventLoop, Qt
from PySide6.QtWidgets import QApplication

from vdigui.engine import CancelToken, Progress, VdiError, VmFolder
from vdigui.gui.wizards import _engine as eng
from vdigui.gui.wizards.base import (
    PAGE_NAMES,
    PREVIEW,
    RUN,
    OperationWizard,
    Outcome,
    OutcomeKind,
    ResultPage,
)
from vdigui.gui.wizards.delete_snapshot import VerifiedDeletion
from vdigui.gui.wizards.registry import Operation, first_suitable, spec
from vdigui.gui.wizards.targets import load_vm_or_image, target_by_name


def wizard_class(kind: Operation | str) -> type[OperationWizard[Any, Any]]:
    """The wizard for ``kind`` ("compact", "clone", "delete-snapshot", "repair").

    Raises:
        ValueError: no such operation (the message lists them).
    """
    return spec(kind).wizard_class()


# -- the simulated run: part-way and done, from the plan -------------------------------------
def _compact_progress(plan: Any) -> Progress:
    """Part-way through moving blocks (or scanning, when nothing moves)."""
    if plan.moves:
        done = max(1, plan.moves * 2 // 5)
        return Progress("moving blocks", done, plan.moves, done * plan.block_size)
    total = max(1, plan.allocated)
    done = max(1, total * 2 // 5)
    return Progress("scanning blocks", done, total, done * plan.block_size)


def _compact_result(plan: Any) -> Any:
    """The plan's figures as if the run had done exactly that."""
    zero = 0 if plan.zero_blocks is None else int(plan.zero_blocks.size)
    parent = 0 if plan.parent_blocks is None else int(plan.parent_blocks.size)
    fs_array = getattr(plan, "fs_blocks", None)
    unused = 0 if fs_array is None else int(fs_array.size)
    kept = plan.allocated - zero - parent - unused
    return eng.CompactResult(
        path=plan.path,
        defragmented=plan.defrag,
        changed=not plan.nothing_to_do,
        size_before=plan.file_size,
        size_after=plan.size_after,
        blocks_allocated_before=plan.blocks_allocated,
        blocks_allocated_after=kept,
        sanitised_blocks=int(plan.out_of_range.size + plan.cross_linked.size),
        zero_blocks=zero,
        parent_blocks=parent,
        moved_blocks=plan.moves,
        hash=None,
        verified=True,
        **({"fs_blocks": unused} if unused else {}),
    )


def _clone_progress(plan: Any) -> Progress:
    """Part-way through copying (or converting)."""
    total = max(1, getattr(plan, "guest_blocks", 0) or plan.data_blocks)
    done = max(1, total * 3 // 5)
    phase = "converting blocks" if isinstance(plan, eng.ConvertPlan) else "copying blocks"
    return Progress(phase, done, total, done * plan.block_size)


def _clone_result(plan: Any) -> Any:
    """The plan's figures as a result."""
    if isinstance(plan, eng.ConvertPlan):
        return eng.ConvertResult(
            path=plan.path,
            to=plan.to,
            size_before=plan.size_before,
            size_after=plan.size_after,
            stored_blocks=plan.data_blocks,
            zero_blocks=0,
            hash=None,
            verified=True,
        )
    return eng.CloneResult(
        dest=plan.dest,
        uuid=plan.uuid,
        modify_uuid=plan.uuid,
        stored_blocks=plan.data_blocks,
        zero_blocks=plan.guest_blocks - plan.data_blocks,
        file_size=plan.output_size,
        source_size=sum(s.size for s in plan.stamps),
        hash=None,
        verified=True,
    )


def _merges(plan: Any) -> list[Any]:
    return [s for s in plan.steps if s.action is eng.StepAction.MERGE]


def _delete_progress(plan: Any) -> Progress:
    """Part-way through the first merge."""
    merges = _merges(plan)
    if not merges or not merges[0].costs:
        return Progress("removing merged-away files", 0, 1)
    cost = merges[0].costs[0]
    total = max(1, cost.blocks)
    done = max(1, total // 2)
    per_block = cost.bytes // max(1, cost.blocks)
    return Progress(
        f"merging disk 1 of {len(merges)} ({merges[0].direction})", done, total, done * per_block
    )


def _delete_result(plan: Any) -> Any:
    """The plan's costs as a (verified) result."""
    merges = _merges(plan)
    blocks = sum(s.costs[0].blocks for s in merges if s.costs)
    nbytes = sum(s.costs[0].bytes for s in merges if s.costs)
    removed = tuple(f"moved '{p.name}' into the undo backup" for p, _ in plan.files_removed)
    result = eng.MergeResult(
        plan,
        blocks,
        nbytes,
        nbytes / eng.ESTIMATED_RATE,
        removed,
        plan.folder / ".vdigui" / "backups",
        (),
    )
    return VerifiedDeletion(result, True, len(merges))


def _repair_progress(plan: Any) -> Progress:
    """Half-way through the fixes."""
    total = max(1, len(plan.fixes))
    return Progress("repairing", total // 2, total)


def _repair_result(plan: Any) -> Any:
    """The ticked fixes as applied."""
    return eng.RepairResult(
        tuple(f.id for f in plan.fixes),
        tuple(f"{f.id}: {f.action}" for f in plan.fixes),
        plan.folder / ".vdigui" / "backups",
    )


def _resize_progress(plan: Any) -> Progress:
    """Part-way through moving blocks, or saving the undo data when nothing moves."""
    moved = sum(c.moved_slots for c in plan.images)
    if moved:
        done = max(1, moved * 2 // 5)
        return Progress("moving data", done, moved, done << 20)
    return Progress("saving before-images", 1, 2)


def _resize_result(plan: Any) -> Any:
    """The plan as done (verified, undoable)."""
    notes = tuple(plan.table.summary) if plan.table is not None else ()
    return eng.ResizeResult(plan, plan.folder / ".vdigui" / "backups", True, True, notes)


def _resize_choice(wizard: Any) -> None:
    """The size the picture shows: twice the disk (in whole GiB, within the limits), with the
    last partition grown when the engine allows it."""
    opts = wizard.opts
    limits = opts.limits
    if limits is None:
        return
    opts.set_size(min(limits.max_size, -(-2 * limits.current_size // (1 << 30)) << 30))
    if opts.grow.isEnabled():
        opts.grow.setChecked(True)


#: After a wizard's read-only options job: the choice the picture shows.
_CHOICE: dict[Operation, Callable[[Any], None]] = {Operation.RESIZE: _resize_choice}


_PROGRESS: dict[Operation, Callable[[Any], Progress]] = {
    Operation.COMPACT: _compact_progress,
    Operation.CLONE: _clone_progress,
    Operation.DELETE_SNAPSHOT: _delete_progress,
    Operation.REPAIR: _repair_progress,
    Operation.RESIZE: _resize_progress,
}
_RESULT: dict[Operation, Callable[[Any], Any]] = {
    Operation.COMPACT: _compact_result,
    Operation.CLONE: _clone_result,
    Operation.DELETE_SNAPSHOT: _delete_result,
    Operation.REPAIR: _repair_result,
    Operation.RESIZE: _resize_result,
}


def simulated(cls: type[OperationWizard[Any, Any]]) -> type[OperationWizard[Any, Any]]:
    """``cls`` as the screenshot mode shows it: nothing runs, nothing is written.

    The preview's background read runs at once (read-only), the run page shows the plan part
    done at the estimated rate, and the result page the plan's figures as the result.
    """

    class Simulated(cls):  # type: ignore[valid-type,misc]
        outcome: Outcome | None

        def _start_preview_job(self, job: Callable[..., Any]) -> None:
            try:
                plan = job(lambda _event: None, CancelToken())
            except (VdiError, OSError):
                return
            self.show_refined(plan)

        def start_read(
            self,
            job: Callable[..., Any],
            name: str,
            succeeded: Callable[[Any], None],
            failed: Callable[[BaseException], None],
        ) -> None:
            """A wizard's read-only options job (resize's limits): run at once."""
            del name
            try:
                value = job(lambda _event: None, CancelToken())
            except (VdiError, OSError) as exc:
                failed(exc)
                return
            succeeded(value)
            choose = _CHOICE.get(self.operation)
            if choose is not None:
                choose(self)

        def start_operation(self) -> None:
            event = _PROGRESS[self.operation](self.plan)
            # As if the disk ran at the estimated rate: what a user would typically see.
            elapsed = max(0.25, (event.bytes_done or event.done << 20) / eng.ESTIMATED_RATE)
            self.run_page.show_progress(event, elapsed=elapsed)

        def fill_result(self, page: ResultPage) -> None:
            if self.outcome is None:
                self.outcome = Outcome(
                    OutcomeKind.SUCCEEDED, _RESULT[self.operation](self.plan), ""
                )
            super().fill_result(page)

        def describe_check(self, page: ResultPage) -> None:
            del page  # nothing ran: the folder is as it was

    Simulated.__name__ = Simulated.__qualname__ = f"Simulated{cls.__name__}"
    return Simulated


def _settle(rounds: int = 4) -> None:
    for _ in range(rounds):
        QApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 30)
        time.sleep(0.01)


def render_wizard_screenshot(
    kind: str,
    vm_or_path: VmFolder | Path | str,
    target_name: str | None,
    page: str,
    out: Path,
    size: tuple[int, int],
) -> None:
    """Render one page of one wizard to ``out`` (a PNG of exactly ``size`` pixels).

    Args:
        kind: "compact", "clone", "delete-snapshot" or "repair".
        vm_or_path: a loaded VmFolder, or a VM folder / .vbox / .vdi path.
        target_name: a snapshot (name or UUID), "Current State", or an image (file name or
            UUID); None picks the first target the operation can run on.
        page: "intro", "options", "preview", "run" or "result".
        out: the PNG to write (its folder is created).
        size: (width, height) in pixels.

    Raises:
        ValueError: unknown kind or page.
        VdiError: the folder or the target cannot be read.
        OSError: the PNG cannot be written.
    """
    if page not in PAGE_NAMES:
        raise ValueError(f"unknown page '{page}' (choose {', '.join(PAGE_NAMES)})")
    cls = simulated(wizard_class(kind))
    app = QApplication.instance()
    if app is None:  # pragma: no cover - app.py creates it; kept for direct calls
        app = QApplication([])
    vm: VmFolder | None
    image: Path | None
    if isinstance(vm_or_path, VmFolder):
        vm, image = vm_or_path, None
    else:
        vm, source = load_vm_or_image(vm_or_path)
        image = source if vm is None else None
    target = target_by_name(vm, target_name) if target_name else first_suitable(vm, image, kind)
    wizard = cls(vm, target)
    try:
        wizard.setAttribute(Qt.WidgetAttribute.WA_DontShowOnScreen, True)
        # The asked size wins over the dialog's minimum, so the PNG is not a scaled copy.
        wizard.setMinimumSize(
            min(size[0], wizard.minimumWidth()), min(size[1], wizard.minimumHeight())
        )
        wizard.resize(*size)
        wizard.show()
        _settle()
        wanted = PAGE_NAMES[page]
        while wizard.currentId() < wanted:
            before = wizard.currentId()
            if before == PREVIEW and not wizard.can_run():
                break  # a refused plan: show the preview that says why
            wizard.next()
            _settle(2)
            if wizard.currentId() == before:
                break
        if wizard.currentId() == RUN:
            wizard.button(wizard.WizardButton.CancelButton).setEnabled(True)
        wizard.resize(*size)
        _settle()
        picture = wizard.grab().toImage()
        if picture.width() != size[0] or picture.height() != size[1]:
            picture = picture.scaled(
                size[0],
                size[1],
                Qt.AspectRatioMode.IgnoreAspectRatio,
                Qt.TransformationMode.SmoothTransformation,
            )
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        if not picture.save(str(out), "PNG"):  # type: ignore[call-overload]
            raise OSError(f"Cannot write the screenshot '{out}'.")
    finally:
        wizard.stop_and_wait()
        wizard.hide()
        wizard.deleteLater()
        _settle(1)
