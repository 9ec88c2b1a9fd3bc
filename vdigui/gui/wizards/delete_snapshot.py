"""The Delete Snapshot wizard: a guided merge that explains itself before it runs.

Why guided: deleting a snapshot is the operation users fear most (users.md pains 8 and 9). The
wizard says which data moves where, what survives (every other snapshot and the current state,
unchanged), what it costs in both directions, and every file it will write or remove, all from
the engine's plan; the run is journaled, so a cancel rolls everything back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QGroupBox,
    QLabel,
    QRadioButton,
    QVBoxLayout,
    QWizardPage,
)

from vdigui.engine import (
    BLOCK_FREE,
    BLOCK_ZERO,
    CancelToken,
    Progress,
    VdiError,
    human_size,
    open_image,
)
from vdigui.gui import theme
from vdigui.gui.wizards import _engine as eng
from vdigui.gui.wizards.base import OperationWizard, PreviewPage, ResultPage, duration_text
from vdigui.gui.wizards.registry import Operation
from vdigui.gui.wizards.targets import layer_names, short_name
from vdigui.gui.wizards.widgets import (
    Level,
    StripRow,
    before_after,
    figures,
    heading,
    legend,
    notice,
    rule,
    state_palette,
)

INTRO = """
<p><b>What a snapshot is.</b> When VirtualBox takes a snapshot it freezes the disk image in use
and sends every later write to a new, initially empty <i>differencing</i> image on top of it.
Each snapshot is one layer of such a stack; reading the disk goes down the stack until a layer
holds the block.</p>

<p><b>What deleting it does.</b> The snapshot's frozen layer and the layer above it are
<i>merged</i> into one image, and the other file is removed. Nothing the guest can see changes:
<b>every other snapshot and the current state read exactly as before</b>. The only thing lost
is the ability to go back to this snapshot (and its saved machine state, if it has one).</p>

<p><b>Which way the data moves.</b> Either the newer layer is copied into the older one
(<i>backward</i>, always used when the older one is the base disk), or the older into the newer
(<i>forward</i>). vdigui picks the direction that copies less, and shows both costs.</p>

<p><b>Safety.</b> The headers, block maps and the .vbox file are backed up first and a journal
records progress, so a cancel, crash or power cut is rolled back (or completed) the next time;
the removed file goes into the undo data rather than being deleted (unless you switch
"Keep undo data" off). Shut the VM down first
(a saved state is fine).</p>
"""


@dataclass(frozen=True, slots=True)
class VerifiedDeletion:
    """A deletion's result and whether the engine verified it.

    Attributes:
        result: the engine's MergeResult.
        verified: True when the engine hashed the state built on each merged disk before and
            after (a difference would have rolled everything back and failed), None when
            verification was off.
        states: how many states were verified (one per merged disk).
    """

    result: Any
    verified: bool | None
    states: int = 0


class DeleteOptionsPage(QWizardPage):
    """The merge direction: automatic, forward or backward."""

    def __init__(self, wizard: DeleteSnapshotWizard) -> None:
        super().__init__()
        self._wizard = wizard
        self.setTitle("Options")
        self.setSubTitle(f"How to merge the disks of {wizard.target.label}.")
        self.auto = QRadioButton("Automatic: copy the smaller layer into the larger (recommended)")
        self.backward = QRadioButton(
            "Backward: the newer layer's changes go into the snapshot's image"
        )
        self.forward = QRadioButton("Forward: the snapshot's image goes into the newer layer")
        self.group = QButtonGroup(self)
        for button in (self.auto, self.backward, self.forward):
            self.group.addButton(button)
        self.auto.setChecked(True)
        box = QGroupBox("Merge direction")
        inner = QVBoxLayout(box)
        for button in (self.auto, self.backward, self.forward):
            inner.addWidget(button)
        self.explain = QLabel()
        self.explain.setWordWrap(True)
        self.verify = QCheckBox(
            "Verify: read every write back and check each merged disk "
            "before anything is built on it"
        )
        self.verify.setToolTip(
            "Proves that the next snapshot (or the current state) reads "
            "exactly as before; slow for large disks."
        )
        self.verify.setChecked(True)
        self.keep_undo = QCheckBox("Keep undo data (recommended)")
        self.keep_undo.setChecked(True)
        self.keep_undo.setToolTip(
            "Edit > Undo (or 'vdictl undo') can bring the snapshot back "
            "only while this data is kept."
        )
        self.undo_explain = QLabel()
        self.undo_explain.setWordWrap(True)
        self.undo_explain.setIndent(24)
        self.keep_undo.toggled.connect(lambda _on: self._explain_undo())
        self._undo_bytes: int | None = None
        self._undo_dir: object = None
        layout = QVBoxLayout(self)
        layout.addWidget(box)
        layout.addWidget(self.explain)
        layout.addSpacing(8)
        layout.addWidget(self.verify)
        layout.addSpacing(8)
        layout.addWidget(self.keep_undo)
        layout.addWidget(self.undo_explain)
        layout.addStretch(1)

    def _explain_undo(self) -> None:
        """What keeping undo data costs (from the plan), and what switching it off means."""
        size = (
            f"about {human_size(self._undo_bytes)}"
            if self._undo_bytes is not None
            else "some space"
        )
        where = (
            f" in {self._undo_dir}"
            if self._undo_dir is not None
            else " in the VM folder's .vdigui/backups"
        )
        if self.keep_undo.isChecked():
            self.undo_explain.setText(
                f"The merged-away image and the backups of what changes stay{where}: "
                f"{size} of host space, until you discard them (VM Overview, or Edit > "
                "Discard Undo Data). Until then Edit > Undo brings the snapshot back."
            )
        else:
            self.undo_explain.setText(
                f"Frees {size} more at once, but the deletion can never be undone; once it "
                "starts writing into the snapshot's image it can no longer be cancelled, and "
                "an interruption (even a power cut) is finished rather than rolled back."
            )

    def initializePage(self) -> None:  # Qt override
        """Disable directions the plan does not allow, saying why."""
        plan = self._wizard.probe_plan()
        space = getattr(plan, "space", None)
        if space is not None and space.keep_undo:
            self._undo_bytes, self._undo_dir = space.undo_bytes, space.undo_dir
        self._explain_undo()
        steps = plan.steps if plan is not None else ()
        merges = [s for s in steps if s.action is eng.StepAction.MERGE]
        if plan is None:
            self.explain.setText("The snapshot cannot be deleted; the next page says why.")
        elif not merges:
            for button in (self.backward, self.forward):
                button.setEnabled(False)
                button.setToolTip("No disk needs merging for this snapshot.")
            self.explain.setText(
                "No data has to be merged: "
                + "; ".join(f"{s.medium.path.name}: {s.reason}" for s in plan.steps)
                + "."
                if plan.steps
                else "No data has to be merged: the snapshot has no disks."
            )
        else:
            forward_ok = all(
                any(c.direction is eng.MergeDirection.FORWARD and c.allowed for c in s.costs)
                for s in merges
            )
            self.forward.setEnabled(forward_ok)
            self.forward.setToolTip(
                ""
                if forward_ok
                else "A base disk is always merged backward: the snapshot "
                "froze the base, and a differencing image never becomes "
                "the base."
            )
            if not forward_ok and self.forward.isChecked():
                self.auto.setChecked(True)
            picks = "; ".join(
                f"{short_name(s.medium.path.name)}: {s.direction}, because {s.reason}"
                for s in merges
            )
            self.explain.setText(
                "Either way the result reads the same; the directions differ "
                "in how much is copied and which file is kept. The preview "
                f"shows both costs.\n\nAutomatic picks — {picks}."
            )

    @property
    def direction(self) -> eng.MergeDirection:
        """The direction chosen (automatic unless the user picked one)."""
        if self.forward.isChecked():
            return eng.MergeDirection.FORWARD
        if self.backward.isChecked():
            return eng.MergeDirection.BACKWARD
        return eng.MergeDirection.AUTO


class DeleteSnapshotWizard(OperationWizard[eng.MergePlan, VerifiedDeletion]):
    """Delete one snapshot by merging its disks, with the .vbox updated."""

    operation = Operation.DELETE_SNAPSHOT
    plan_function = staticmethod(eng.plan_snapshot_delete)
    run_function = staticmethod(eng.run_merge)
    intro = INTRO
    options_page_class = DeleteOptionsPage
    subtitle = "Delete {target} and keep every other state as it is."
    action_text = "Delete snapshot"
    opts: DeleteOptionsPage

    def _key(self) -> tuple[Any, str]:
        if self.vm is None or self.target.snapshot_uuid is None:
            raise VdiError("Select a snapshot of a VM folder to delete it.")
        return self.vm.folder, str(self.target.snapshot_uuid)

    def probe_plan(self) -> Any:
        """The automatic plan, or None when the deletion is refused (for the options page)."""
        try:
            folder, key = self._key()
            return self.plan_fn(folder, key)
        except (VdiError, OSError):
            return None

    def compute_plan(self) -> eng.MergePlan:
        """plan_snapshot_delete with the chosen direction and undo choice (refusals raise)."""
        folder, key = self._key()
        return self.plan_fn(
            folder, key, direction=self.opts.direction, keep_undo=self.opts.keep_undo.isChecked()
        )

    def run_call(
        self, plan: eng.MergePlan, progress: Callable[[Progress], None], token: CancelToken
    ) -> VerifiedDeletion:
        """run_merge with the chosen verification and undo data."""
        verify = self.opts.verify.isChecked()
        self.recover_first(plan.folder, self.recover_fn)
        result = self.run_fn(
            plan,
            progress=progress,
            cancel=token,
            verify=verify,
            keep_undo=self.opts.keep_undo.isChecked(),
        )
        merges = sum(1 for s in plan.steps if s.action is eng.StepAction.MERGE)
        return VerifiedDeletion(result, True if verify else None, merges)

    def refusals(self, plan: eng.MergePlan) -> tuple[str, ...]:
        """Refusals are raised by the planner; files outside the folder refuse here."""
        outside = plan.outside_files
        if outside and not plan.allow_outside:
            return (
                f"The plan would write or remove files outside the VM folder "
                f"({', '.join(str(p) for p in outside)}); vdigui does not do that from "
                "the wizard.",
            )
        return ()

    # -- preview -------------------------------------------------------------------------------
    def fill_preview(self, page: PreviewPage, plan: eng.MergePlan) -> None:
        """Per disk: before/after maps and both directions' costs; then files and notes."""
        merges = [s for s in plan.steps if s.action is eng.StepAction.MERGE]
        moved = sum(s.costs[0].bytes for s in merges if s.costs)
        page.add(
            heading(
                f"Deleting snapshot '{plan.snapshot_name}' "
                + (
                    f"merges {human_size(moved)} of disk data. "
                    if merges
                    else "needs no data to be merged. "
                )
                + "Every other snapshot and the current state stay exactly as they are."
            )
        )
        for text in self.refusals(plan):
            page.add(notice(text, Level.ERROR))
        if plan.was_current:
            page.add(
                notice(
                    "This is the current snapshot: afterwards the current state is "
                    "based on its parent snapshot.",
                    Level.INFO,
                )
            )
        for step in plan.steps:
            page.add(rule())
            name = step.medium.path.name
            if step.action is not eng.StepAction.MERGE:
                verb = {"remove": "removed", "keep": "kept as it is", "skip": "left alone"}.get(
                    step.action, step.action
                )
                page.add(notice(f"Disk {short_name(name)}: {verb} ({step.reason}).", Level.INFO))
                continue
            page.add(self._merge_section(step))
        page.add(rule())
        written = [
            f"{p}{'  (outside the VM folder!)' if out else ''}" for p, out in plan.files_written
        ]
        removed = [
            f"{p}{'  (outside the VM folder!)' if out else ''}" for p, out in plan.files_removed
        ]
        page.add(
            figures(
                [
                    ("Files written", "\n".join(written) or "none"),
                    (
                        "Files removed",
                        ("\n".join(removed) or "none")
                        + (
                            "\n(moved into the undo data in .vdigui/backups, not deleted)"
                            if getattr(plan, "keep_undo", True) and removed
                            else "\n(deleted: no undo data is kept)"
                            if removed
                            else ""
                        ),
                    ),
                ]
            )
        )
        for text in plan.notes:
            page.add(
                notice(
                    text[:1].upper() + text[1:] + ("" if text.endswith(".") else "."), Level.INFO
                )
            )

    def _merge_section(self, step: Any) -> Any:
        from PySide6.QtWidgets import QVBoxLayout, QWidget

        box = QWidget()
        layout = QVBoxLayout(box)
        layout.setContentsMargins(0, 0, 0, 0)
        # Lower (older) and upper (newer) layer of the pair, whichever direction is used.
        lower, upper = (
            (step.target, step.source)
            if step.direction is eng.MergeDirection.BACKWARD
            else (step.source, step.target)
        )
        with open_image(lower.path) as low, open_image(upper.path) as up:
            n = min(low.guest_blocks, up.guest_blocks)
            low_map = low.block_map[:n].copy()
            up_map = up.block_map[:n].copy()
            low_size, up_size = low.file_size, up.file_size

        def codes(entries: np.ndarray) -> np.ndarray:
            return np.where(entries == BLOCK_FREE, 0, np.where(entries == BLOCK_ZERO, 1, 2)).astype(
                np.uint8
            )

        low_name, up_name = layer_names(self.vm, [lower.path, upper.path])
        merged = np.where(
            up_map != BLOCK_FREE, np.where(up_map == BLOCK_ZERO, 1, 3), codes(low_map)
        ).astype(np.uint8)
        depth = len(step.ancestors)  # the layers below the older image of the pair
        palette_low, palette_up = state_palette(depth), state_palette(depth + 1)
        merged_palette = (palette_low[0], palette_low[1], palette_low[2], palette_up[2])
        chosen = step.costs[0] if step.costs else None
        names = dict(zip((lower.path, upper.path), (low_name, up_name), strict=True))

        def called(ref: Any) -> str:
            short = short_name(ref.path.name)
            name = names.get(ref.path, short)
            return name if name == short else f"{name} ({short})"

        layout.addWidget(
            heading(
                f"Disk {short_name(step.medium.path.name)}: merge "
                f"{step.direction} — the data of {called(step.source)} goes "
                f"into {called(step.target)}; {step.reason}."
            )
        )
        after_size = step.target.path.stat().st_size + (chosen.bytes if chosen else 0)
        layout.addWidget(
            before_after(
                [
                    StripRow(up_name, codes(up_map), palette_up, 1.0, human_size(up_size)),
                    StripRow(low_name, codes(low_map), palette_low, 1.0, human_size(low_size)),
                ],
                [StripRow("merged", merged, merged_palette, 1.0, f"≤ {human_size(after_size)}")],
                ("Now: two layers", f"After: one image ({short_name(step.target.path.name)})"),
            )
        )
        layout.addWidget(
            legend(
                [
                    (palette_low[2], f"data of {low_name}"),
                    (palette_up[2], f"data of {up_name}"),
                    (theme.ZERO_COLOUR, "zero entry"),
                    (theme.free_colour(), "read from below"),
                ]
            )
        )
        rows = []
        for cost in step.costs:
            tag = (
                "chosen"
                if cost.direction == step.direction
                else "other"
                if cost.allowed
                else "not allowed"
            )
            rows.append(
                (
                    f"{cost.direction.capitalize()} ({tag})",
                    f"{cost.blocks:,} blocks, {human_size(cost.bytes)} to copy, "
                    f"{human_size(cost.temp_space)} extra space of "
                    f"{human_size(cost.free_space)} free, {duration_text(cost.seconds)}",
                )
            )
        relinked = ", ".join(short_name(r.path.name) for r in step.relink)
        if relinked:
            rows.append(("Re-linked", relinked))
        layout.addWidget(figures(rows))
        if chosen is not None and chosen.temp_space > chosen.free_space:
            layout.addWidget(
                notice(
                    "There is not enough free space for this direction; "
                    "choose the other one or free some space.",
                    Level.ERROR,
                )
            )
        return box

    def undo_sentence(self, plan: eng.MergePlan, space: Any) -> tuple[str, Level]:
        """With "Keep undo data" off the merged-away image is deleted: say so plainly."""
        if space is not None and space.undoable and not space.keep_undo:
            return (
                'Undo will be impossible: "Keep undo data" is off, so the merged-away '
                "image and the backups are deleted once the deletion is done.",
                Level.WARNING,
            )
        return super().undo_sentence(plan, space)

    def run_summary(self, plan: eng.MergePlan) -> str:
        """What runs."""
        return (
            f"Deleting snapshot '{plan.snapshot_name}': backing up, merging the disk data, "
            "re-linking, saving the .vbox, then "
            + (
                "moving the merged-away file into the undo data."
                if getattr(plan, "keep_undo", True)
                else "deleting the merged-away file."
            )
        )

    def cancel_meaning(self) -> str:
        """The journal rolls back."""
        return (
            "Cancel stops at the next block and rolls everything back from the backups: "
            "the snapshot and every file stay as they were. Once the .vbox is saved the "
            "deletion is complete"
            + (" and can only be undone (Edit > Undo)." if self.opts.keep_undo.isChecked() else ".")
        )

    def describe_result(self, page: ResultPage, wrapped: VerifiedDeletion) -> None:
        """The verification, what was merged and removed, where the undo backup is."""
        result = wrapped.result if isinstance(wrapped, VerifiedDeletion) else wrapped
        verified = wrapped.verified if isinstance(wrapped, VerifiedDeletion) else None
        plan = result.plan
        keep = getattr(plan, "keep_undo", True)
        page.add(heading(f"Snapshot '{plan.snapshot_name}' was deleted."))
        if verified:
            page.add(
                notice(
                    "Verified: the state built on the merged disk reads exactly as "
                    "before (sha256 of the guest disk, checked before the change was "
                    "committed).",
                    Level.OK,
                )
            )
        else:
            page.add(
                notice(
                    'The remaining states were not re-read (switch on "Verify" in '
                    "the options to do so); every file's identity was checked before "
                    "it was written.",
                    Level.INFO,
                )
            )
        page.add(
            figures(
                [
                    ("Blocks written", f"{result.blocks_written:,}"),
                    ("Data copied", human_size(result.bytes_written)),
                    ("Time", duration_text(result.seconds)),
                    ("Removed", "\n".join(result.removed) or "nothing"),
                    *([("Undo data", str(result.backup_dir))] if keep else []),
                ]
            )
        )
        for text in result.notes:
            page.add(notice(text, Level.INFO))
        if keep:
            page.add(
                notice(
                    f"Edit > Undo (or 'vdictl undo \"{plan.folder}\"') restores the "
                    "previous state; discarding the undo data (VM Overview) frees its "
                    "space.",
                    Level.INFO,
                )
            )
        else:
            page.add(notice("No undo data was kept: this deletion cannot be undone.", Level.INFO))

    def changed_path(self) -> Any:
        """The image that received the data (or the VM folder)."""
        plan = self.plan
        if plan is not None:
            for step in plan.steps:
                if step.action is eng.StepAction.MERGE and step.target is not None:
                    return step.target.path
        return self.target.folder
