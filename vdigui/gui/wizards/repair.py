"""The Repair Chain wizard: each problem, the proposed fix, its evidence, and the user's choice.

Why a list of choices rather than one button: repairs rest on evidence of varying strength
(a matching uuidModify is strong, a matching size alone is weak), and some problems have two
honest answers (change the registry, or change the header). Like GParted's pending operations,
the user sees every change before anything is written, ticks what to apply, and can undo it.
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractButton,
    QButtonGroup,
    QCheckBox,
    QGroupBox,
    QLabel,
    QRadioButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
    QWizardPage,
)

from vdigui.engine import CancelToken, Progress, VdiError
from vdigui.gui.wizards import _engine as eng
from vdigui.gui.wizards.base import OperationWizard, PreviewPage, ResultPage
from vdigui.gui.wizards.registry import Operation
from vdigui.gui.wizards.widgets import Level, figures, heading, notice, rule

INTRO = """
<p><b>What a repair is for.</b> A VM's disks are linked twice: the .vbox file's media registry
says which image belongs where, and every snapshot image's header names its parent by UUID.
Copying, moving or restoring files by hand, a crash, or an old tool can make the two disagree;
VirtualBox then refuses to start the VM ("UUID does not match", "Parent UUID does not match",
"already exists", "inaccessible").</p>

<p><b>What a repair changes.</b> Only small, precise things: a UUID or parent link in an image's
512-byte header, an entry of the .vbox registry, a damaged block-map entry, or an unregistered
image moved to a quarantine folder. It never rewrites the guest's data; the few fixes that give
some up (clearing block-map entries that point past the end of the file, dropping the registry
entry of a missing disk) say so, and which data.</p>

<p><b>You decide.</b> The next page lists each problem with the proposed fix and the evidence
for it, and how strong that evidence is. Fixes with weak evidence are not ticked; where two
fixes answer the same problem you pick one.</p>

<p><b>Safety.</b> Every header, block map and the .vbox are backed up before the first write,
a journal makes the repair all-or-nothing, and <code>vdictl undo</code> reverts it.</p>
"""

STRENGTH_WORDS = {
    eng.Strength.CERTAIN: "certain",
    eng.Strength.STRONG: "strong evidence",
    eng.Strength.WEAK: "weak evidence",
    eng.Strength.NONE: "no evidence",
}


class RepairOptionsPage(QWizardPage):
    """One box per problem: a checkbox for a single fix, radio buttons for alternatives."""

    def __init__(self, wizard: RepairWizard) -> None:
        super().__init__()
        self._wizard = wizard
        self.setTitle("Proposed fixes")
        self.setSubTitle(
            "Tick the fixes to apply. Nothing is written until you confirm on the next page."
        )
        self.scroller = QScrollArea()
        self.scroller.setWidgetResizable(True)
        self.scroller.setFrameShape(QScrollArea.Shape.NoFrame)
        self.verify = QCheckBox(
            "Verify: check that every snapshot and the current state "
            "read exactly as before the change, and roll back on any "
            "difference (recommended)"
        )
        self.verify.setChecked(True)
        self.verify.setToolTip("Reads the block maps of every state before committing the repair.")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.scroller, 1)
        layout.addWidget(self.verify)
        self.choices: dict[str, QAbstractButton] = {}
        self._groups: list[QButtonGroup] = []
        self._built_for: Any = None

    def initializePage(self) -> None:  # Qt override
        """Plan the repair (read-only, fast) and list its fixes."""
        proposal = self._wizard.propose()
        if proposal is self._built_for and self.choices:
            return
        self._built_for = proposal
        self.choices = {}
        self._groups = []
        content = QWidget()
        inner = QVBoxLayout(content)
        if isinstance(proposal, BaseException):
            inner.addWidget(notice(str(proposal), Level.ERROR))
        elif not proposal.fixes:
            inner.addWidget(
                notice("Nothing to repair: vdigui found no problem it knows how to fix.", Level.OK)
            )
        else:
            groups: dict[str, list[Any]] = {}
            for fix in proposal.fixes:
                groups.setdefault(fix.group, []).append(fix)
            for members in groups.values():
                inner.addWidget(self._group_box(members))
        for note in getattr(proposal, "notes", ()):
            inner.addWidget(
                notice(
                    note[:1].upper() + note[1:] + ("" if note.endswith(".") else "."), Level.WARNING
                )
            )
        inner.addStretch(1)
        self.scroller.setWidget(content)
        self.completeChanged.emit()

    def _group_box(self, members: list[Any]) -> QGroupBox:
        first = members[0]
        box = QGroupBox()
        layout = QVBoxLayout(box)
        problem = QLabel(f"<b>{html.escape(first.problem)}</b>")
        problem.setTextFormat(Qt.TextFormat.RichText)
        problem.setWordWrap(True)
        layout.addWidget(problem)
        group = QButtonGroup(box) if len(members) > 1 else None
        if group is not None:
            self._groups.append(group)
        for fix in members:
            text = f"{fix.id}: {fix.action}"
            button: QAbstractButton = QRadioButton(text) if group is not None else QCheckBox(text)
            button.setChecked(fix.default and not fix.needs_force)
            button.setToolTip(
                f"Evidence ({STRENGTH_WORDS.get(fix.strength, fix.strength)}): {fix.evidence}"
            )
            button.toggled.connect(self.completeChanged)
            if group is not None:
                group.addButton(button)
            self.choices[fix.id] = button
            layout.addWidget(_wrapped(button))
            evidence = QLabel(
                f"Evidence ({STRENGTH_WORDS.get(fix.strength, fix.strength)}): {fix.evidence}"
            )
            evidence.setWordWrap(True)
            evidence.setIndent(24)
            evidence.setEnabled(fix.strength in (eng.Strength.CERTAIN, eng.Strength.STRONG))
            layout.addWidget(evidence)
        if group is not None:
            skip = QRadioButton("Leave this problem as it is")
            group.addButton(skip)
            layout.addWidget(skip)
            if group.checkedButton() is None:
                skip.setChecked(True)
        return box

    def chosen(self) -> list[str]:
        """The ids of the ticked fixes, in plan order."""
        return [fid for fid, button in self.choices.items() if button.isChecked()]

    def isComplete(self) -> bool:  # Qt override
        """At least one fix must be ticked."""
        return bool(self.chosen())


def _wrapped(button: QAbstractButton) -> QWidget:
    """Check boxes do not wrap their text; a long action gets a wrapping label beside."""
    text = button.text()
    if len(text) < 110:
        return button
    holder = QWidget()
    layout = QVBoxLayout(holder)
    layout.setContentsMargins(0, 0, 0, 0)
    button.setText(text[: text.index(":") + 1] if ":" in text else "")
    label = QLabel(text[text.index(":") + 1 :].strip() if ":" in text else text)
    label.setWordWrap(True)
    label.setIndent(24)
    layout.addWidget(button)
    layout.addWidget(label)
    return holder


class RepairWizard(OperationWizard[eng.RepairPlan, eng.RepairResult]):
    """Repair a VM folder (or a bare image) with the fixes the user ticks."""

    operation = Operation.REPAIR
    plan_function = staticmethod(eng.plan_repair)
    run_function = staticmethod(eng.run_repair)
    intro = INTRO
    options_page_class = RepairOptionsPage
    subtitle = "Find and fix broken links between the disks of {where}."
    action_text = "Apply the fixes"
    opts: RepairOptionsPage

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.proposal: Any = None
        super().__init__(*args, **kwargs)

    def where(self) -> Path | None:
        """The VM folder, or the selected image outside any VM."""
        return self.vm.folder if self.vm is not None else self.target.image

    def propose(self) -> Any:
        """plan_repair (cached): the plan, or the exception that stopped it."""
        if self.proposal is None:
            where = self.where()
            try:
                if where is None:
                    raise VdiError("Open a VM folder or a disk image to repair it.")
                self.proposal = self.plan_fn(where)
            except (VdiError, OSError) as exc:
                self.proposal = exc
        return self.proposal

    def compute_plan(self) -> eng.RepairPlan:
        """The proposal narrowed to the ticked fixes."""
        proposal = self.propose()
        if isinstance(proposal, BaseException):
            raise proposal
        chosen = set(self.opts.chosen())
        return dataclasses.replace(
            proposal, fixes=tuple(f for f in proposal.fixes if f.id in chosen)
        )

    def plan_space(self, plan: eng.RepairPlan) -> Any:
        """The engine states the space of its default choice of fixes; shown only for it."""
        proposal = self.propose()
        if isinstance(proposal, BaseException) or not hasattr(proposal, "selected"):
            return None
        default = {f.id for f in proposal.selected()}
        return getattr(plan, "space", None) if default == {f.id for f in plan.fixes} else None

    def refusals(self, plan: eng.RepairPlan) -> tuple[str, ...]:
        """Nothing ticked: nothing to run."""
        return () if plan.fixes else ("No fix is ticked; go back and tick at least one.",)

    def run_call(
        self, plan: eng.RepairPlan, progress: Callable[[Progress], None], token: CancelToken
    ) -> eng.RepairResult:
        """run_repair with the ticked fixes chosen explicitly (weak ones included)."""
        if plan.vbox is not None:
            self.recover_first(plan.folder, self.recover_fn)
        return self.run_fn(
            plan,
            choose={f.id for f in plan.fixes},
            force=False,
            progress=progress,
            cancel=token,
            verify=self.opts.verify.isChecked(),
        )

    # -- preview -------------------------------------------------------------------------------
    def fill_preview(self, page: PreviewPage, plan: eng.RepairPlan) -> None:
        """The exact list of changes with their evidence and the files each writes."""
        count = len(plan.fixes)
        page.add(heading(f"{count} change{'s' if count != 1 else ''} will be made:"))
        for fix in plan.fixes:
            page.add(rule())
            where = f"{fix.files[0].name}: " if fix.files else ""
            page.add(heading(f"{fix.id}. {where}{fix.action}"))
            files = "\n".join(str(p) for p in fix.files) or "none"
            page.add(
                figures(
                    [
                        ("Problem", fix.problem),
                        (
                            "Evidence",
                            f"{fix.evidence} ({STRENGTH_WORDS.get(fix.strength, fix.strength)})",
                        ),
                        ("Files written", files),
                    ]
                )
            )
            if fix.strength in (eng.Strength.WEAK, eng.Strength.NONE):
                page.add(
                    notice(
                        "The evidence for this fix is weak: apply it only if you know "
                        "the files belong together.",
                        Level.WARNING,
                    )
                )
        page.add(rule())
        for text in plan.notes:
            page.add(
                notice(
                    text[:1].upper() + text[1:] + ("" if text.endswith(".") else "."), Level.WARNING
                )
            )
        folder = plan.folder
        # With the space figures shown, the section below says how undo works; said once.
        undo = (
            "."
            if self.plan_space(plan) is not None
            else f"; Edit > Undo (or 'vdictl undo \"{folder}\"') reverts this repair."
        )
        page.add(
            notice(
                f"Backups of every header, block map and the .vbox go to "
                f"'{folder / '.vdigui'}' first{undo}",
                Level.INFO,
            )
        )

    def run_summary(self, plan: eng.RepairPlan) -> str:
        """What runs."""
        return (
            f"Applying {', '.join(f.id for f in plan.fixes)} after backing up every file "
            "they change."
        )

    def cancel_meaning(self) -> str:
        """All or nothing."""
        return (
            "Cancel stops before the next fix and restores the backups: a repair is "
            "applied completely or not at all."
        )

    def describe_result(self, page: ResultPage, result: eng.RepairResult) -> None:
        """What was applied and where the backup is."""
        count = len(result.applied)
        page.add(
            notice(
                f"Applied {count} fix{'es' if count != 1 else ''}: "
                f"{', '.join(result.applied)}. The main window has read the folder "
                "again; its Problems panel shows what remains.",
                Level.OK,
            )
        )
        page.add(
            figures(
                [("Changes", "\n".join(result.notes) or "none"), ("Backup", str(result.backup_dir))]
            )
        )
        page.add(
            notice(
                f"Edit > Undo (or 'vdictl undo \"{self.where()}\"') reverts this repair.",
                Level.INFO,
            )
        )

    def changed_path(self) -> Any:
        """The repaired folder or image."""
        return self.where()
