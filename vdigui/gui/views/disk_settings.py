"""The Overview's "Disk attachments" box: each disk's controller and discard state, and the
one action that turns discard on.

Why it is in the Overview: "why does my VDI only grow?" is answered by these two flags, which
VirtualBox's own GUI never shows (docs/vdi-format.md §2.4). The settings are read on a
worker after every load (the .vbox and the running-VM probe are I/O), and the change runs on
the operations' pool through the engine's journal, so Edit > Undo puts the old settings back.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import (
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from vdigui.engine import (
    DISCARD_GUEST_STEPS,
    DiscardPlan,
    DiskAttachment,
    VdiError,
    attachment_settings,
    load_vm_folder,
    plan_discard,
    run_discard,
)
from vdigui.gui import messages
from vdigui.gui.format import short_file_name
from vdigui.gui.workers import WorkerPool


@dataclass(frozen=True, slots=True)
class DiskSettings:
    """What the box shows for one VM folder (read on a worker)."""

    folder: Path
    attachments: tuple[DiskAttachment, ...]
    saved_state: bool
    error: str = ""
    plan: DiscardPlan | None = None
    refusal: str = ""

    @property
    def can_turn_on(self) -> bool:
        """Some eligible disk does not have discard and the solid-state flag yet."""
        return any(a.eligible and not (a.discard and a.nonrotational) for a in self.attachments)


def read_disk_settings(folder: Path) -> DiskSettings:
    """The current state's disk attachments of the VM in ``folder`` (read-only)."""
    try:
        vm = load_vm_folder(folder)
        atts = tuple(attachment_settings(vm))
    except (VdiError, OSError) as exc:
        return DiskSettings(folder, (), False, messages.sentence(exc))
    plan, refusal = None, ""
    if any(a.eligible and not (a.discard and a.nonrotational) for a in atts):
        try:  # planned here, on the worker: it scans for a running VM
            plan = plan_discard(vm.folder, True)
        except (VdiError, OSError) as exc:
            refusal = messages.sentence(exc)
    return DiskSettings(vm.folder, atts, vm.state_file is not None, plan=plan, refusal=refusal)


def settings_html(settings: DiskSettings) -> str:
    """The attachments as a small table with the advice under it (HTML-escaped)."""
    if settings.error:
        return html.escape(settings.error)
    if not settings.attachments:
        return "No hard disks are attached in the current state."
    rows = []
    for a in settings.attachments:
        name = short_file_name(a.path.name) if a.path else (a.medium or "?")
        state = ("on" if a.discard else "off") + (", solid-state" if a.nonrotational else "")
        rows.append(
            f"<tr><td>{html.escape(a.where)}</td><td>{html.escape(a.bus)}</td>"
            f"<td>{html.escape(name)}</td><td>discard {html.escape(state)}</td></tr>"
            f"<tr><td></td><td colspan='3'><i>{html.escape(a.advice)}</i></td></tr>"
        )
    text = "<table cellspacing='4'>" + "".join(rows) + "</table>"
    if settings.saved_state:
        text += (
            "<p>The VM holds a saved state: its disk settings can change only after it "
            "is shut down or the saved state is discarded.</p>"
        )
    return text


#: Asked before the .vbox is changed: (parent, title, text) -> True to go on. Tests swap it.
confirm_turn_on: Callable[[QWidget, str, str], bool] = messages.ask


class DiskSettingsBox(QGroupBox):
    """The Overview's group box: the table and "Turn on discard…"."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Disk attachments and discard (TRIM)", parent)
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextFormat(Qt.TextFormat.RichText)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.turn_on = QPushButton("Turn on discard…")
        layout = QHBoxLayout(self)
        layout.addWidget(self.label, 1)
        column = QVBoxLayout()
        column.addWidget(self.turn_on)
        column.addStretch(1)
        layout.addLayout(column)
        self.setVisible(False)


class DiskSettingsController(QObject):
    """Reads the settings after every load and runs the change.

    Signals:
        changed: the .vbox was changed (the window reloads).
    """

    changed = Signal()

    def __init__(
        self,
        window: QMainWindow,
        pool: WorkerPool,
        run_pool: WorkerPool,
        busy_reason: Callable[[Path], str | None],
    ) -> None:
        super().__init__(window)
        self.window = window
        self.pool = pool
        self.run_pool = run_pool
        self.busy_reason = busy_reason
        self.settings: DiskSettings | None = None
        self.running = False
        self._epoch = 0
        self.box = DiskSettingsBox()
        self.box.turn_on.clicked.connect(lambda _checked=False: self.turn_on())
        overview = getattr(window, "overview", None)
        if overview is not None:
            overview.add_section(self.box)
        session_loaded = getattr(window, "session_loaded", None)
        if session_loaded is not None:
            session_loaded.connect(self._loaded)

    def _loaded(self, session: Any) -> None:
        vm = getattr(session, "vm", None)
        self.reload(Path(vm.folder) if vm is not None else None)

    def reload(self, folder: Path | None) -> None:
        """Read the settings of the VM in ``folder`` on a worker (None: hide the box)."""
        self._epoch += 1
        epoch = self._epoch
        self.settings = None
        if folder is None:
            self.box.setVisible(False)
            return
        self.box.label.setText("Reading the disk attachments…")
        self.box.turn_on.setEnabled(False)
        self.box.setVisible(True)

        def done(settings: DiskSettings) -> None:
            if epoch == self._epoch:
                self.settings = settings
                self.refresh()

        self.pool.start(
            lambda _p, _t: read_disk_settings(folder),
            "disk settings",
            succeeded=done,
            failed=lambda exc: done(DiskSettings(folder, (), False, messages.sentence(exc))),
        )

    def refresh(self) -> None:
        """Show the table; enable the action only when it has something to do."""
        s = self.settings
        if s is None:
            return
        self.box.label.setText(settings_html(s))
        busy = self.busy_reason(s.folder)
        if self.running:
            why = "The change is being saved."
        elif s.saved_state:
            why = "The VM holds a saved state; shut it down first."
        elif busy or s.refusal:
            why = busy or s.refusal
        elif not s.can_turn_on or s.plan is None:
            why = (
                "Discard is already on for every disk that can use it."
                if any(a.eligible for a in s.attachments)
                else "No attached disk can use discard (see the notes beside each)."
            )
        else:
            why = ""
        self.box.turn_on.setEnabled(not why)
        self.box.turn_on.setToolTip(
            why
            or "Turn on discard and the solid-state flag for the "
            "eligible disks (saved with a backup; Edit > Undo "
            "restores the old settings)"
        )

    def turn_on(self) -> bool:
        """Plan, confirm, then save on the operations' pool; True when the change started."""
        s = self.settings
        if s is None or s.plan is None or self.running or not self.box.turn_on.isEnabled():
            return False
        plan = s.plan  # the run checks again that the .vbox is unchanged and the VM is off
        text = (
            "\n".join(plan.lines())
            + "\n\nAfterwards, inside the guest:\n"
            + "\n".join(f"• {step}" for step in DISCARD_GUEST_STEPS)
        )
        if not confirm_turn_on(self.window, "Turn on discard", text):
            return False
        self.running = True
        self.refresh()

        def ended(message: str, error: bool) -> None:
            self.running = False
            bar = getattr(self.window, "statusBar", None)
            if bar is not None:
                self.window.statusBar().showMessage(message, 10000)
            if error:
                messages.reporter(self.window, "Cannot turn on discard", message, "")
            self.refresh()
            self.changed.emit()

        self.run_pool.start(
            lambda progress, _t: run_discard(plan, progress=progress),
            "turn on discard",
            succeeded=lambda result: ended(
                f"Discard is on for {result.changed} disk(s); the old settings are backed up "
                "(Edit > Undo restores them). Now trim inside the guest.",
                False,
            ),
            failed=lambda exc: ended(messages.sentence(exc), True),
            cancelled=lambda: ended("Stopped; nothing was changed.", False),
        )
        return True


__all__ = [
    "DiskSettings",
    "DiskSettingsBox",
    "DiskSettingsController",
    "confirm_turn_on",
    "read_disk_settings",
    "settings_html",
]
