"""Edit > Undo and the undo data: the app's side of ``vdictl undo`` and ``undo --discard``.

Why here and not in a wizard: undo has no options to choose; it needs a preview (what comes
back, from the journal's last-operation record), a confirmation and a progress bar, which one
dialog gives. It runs the engine's ``undo_last`` on the same journal as ``vdictl undo``, so the
two can never disagree about what the last operation was.

The undo data (the removed images and backups of the last operations, under
``.vdigui/backups``) can be large: a deleted snapshot's whole image. The VM Overview says how
much there is and offers to discard it, with a confirmation that states the bytes freed and
that undo then becomes impossible.

Reading the status plans the undo (hashing the headers and maps the last operation left
behind) and walks the backup folder, so it runs on a worker after every (re)load.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from vdigui.engine import (
    Progress,
    VdiError,
    discard_undo_data,
    human_size,
    plan_undo,
    recover_pending,
    undo_data_usage,
    undo_last,
)
from vdigui.gui import messages
from vdigui.gui.wizards.widgets import Level, figures, heading, notice
from vdigui.gui.workers import Runner, WorkerPool


@dataclass(frozen=True, slots=True)
class UndoStatus:
    """What can be undone in a folder, and how much undo data it keeps.

    Attributes:
        folder: the VM folder (or a bare image's folder) the journal belongs to.
        record: the last operation's record when it can be undone, else None.
        reason: why nothing can be undone (the engine's refusal sentence), else "".
        usage: bytes of undo data kept under ``.vdigui/backups``.
        error: why the status could not be read at all ("" normally).
    """

    folder: Path
    record: dict[str, Any] | None
    reason: str
    usage: int
    error: str = ""

    @property
    def summary(self) -> str:
        """The last operation in a few words, without its UUID ("deletion of snapshot 'X'")."""
        if self.record is None:
            return ""
        return short_summary(str(self.record.get("summary", "the last operation")))

    @property
    def backups(self) -> Path:
        """Where the undo data is kept."""
        return self.folder / ".vdigui" / "backups"


def short_summary(text: str, limit: int = 60) -> str:
    """An operation's summary for a menu: the trailing "{uuid}" dropped, long text cut."""
    text = re.sub(r"\s*\{[0-9a-fA-F-]{36}\}", "", text).strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def undo_folder(session: Any) -> Path | None:
    """The folder whose journal the opened session's operations use (None: nothing open)."""
    if session is None:
        return None
    vm = getattr(session, "vm", None)
    if vm is not None:
        return Path(vm.folder)
    source = Path(session.source)
    return source.parent if source.is_file() else source


def read_undo_status(folder: Path) -> UndoStatus:
    """Plan the undo and measure the undo data (read-only; runs on a worker)."""
    try:
        usage = int(undo_data_usage(folder))
    except (VdiError, OSError) as exc:
        return UndoStatus(folder, None, "", 0, messages.sentence(exc))
    try:
        record = plan_undo(folder)
    except VdiError as exc:
        return UndoStatus(folder, None, str(exc), usage)
    except OSError as exc:
        return UndoStatus(folder, None, messages.sentence(exc), usage)
    return UndoStatus(folder, dict(record), "", usage)


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def undo_preview(record: dict[str, Any]) -> list[tuple[str, str]]:
    """What undoing ``record`` restores, file by file, with sizes now and afterwards."""
    rows: list[tuple[str, str]] = []
    plan = record.get("plan") or {}
    snapshot = plan.get("snapshot") if isinstance(plan, dict) else None
    if isinstance(snapshot, dict) and snapshot.get("name"):
        rows.append(
            (
                "Snapshot",
                f"'{snapshot['name']}' comes back, with every state as it was before the deletion",
            )
        )
    for item in record.get("removals", []):
        path = Path(item["path"])
        size = _size(Path(item.get("stash", "")))
        rows.append(
            (
                path.name,
                "brought back from the undo data"
                + (f" ({human_size(size)})" if size is not None else ""),
            )
        )
    for entry in record.get("images", []):
        path = Path(entry["path"])
        now, then = _size(path), int(entry.get("size", 0))
        sizes = (
            f"{human_size(now)} → {human_size(then)}"
            if now is not None and now != then
            else human_size(then)
        )
        rows.append((path.name, f"header and block map restored; {sizes}"))
    for entry in record.get("files", []):
        path = Path(entry["path"])
        what = (
            "the snapshot tree and media registry as before"
            if path.suffix == ".vbox"
            else "restored from the backup"
        )
        rows.append((path.name, what))
    return rows


#: Asked before discarding undo data: (parent, title, text) -> True to go on. Tests swap it.
confirm_discard: Callable[[QWidget, str, str], bool] = messages.ask


class UndoDialog(QDialog):
    """Edit > Undo: the preview, then the run with progress, then how it ended.

    Signals:
        changed: the undo ended (any way): the folder must be read again.
    """

    changed = Signal()
    started = Signal()

    def __init__(
        self,
        status: UndoStatus,
        pool: WorkerPool,
        parent: QWidget | None = None,
        undo_fn: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__(parent)
        self.status = status
        self.pool = pool
        self.undo_fn = undo_fn
        self.runner: Runner | None = None
        self.outcome: tuple[Level, str] | None = None
        self.setWindowTitle(f"Undo {status.summary}")
        self.setMinimumSize(640, 420)
        layout = QVBoxLayout(self)
        record = status.record or {}
        layout.addWidget(heading(f"Undo “{status.summary}”"))
        finished = str(record.get("finished", "")).replace("T", " ").removesuffix("+00:00")
        layout.addWidget(
            notice(
                "This puts back exactly what the operation changed, from the undo data in "
                f"{status.backups}"
                + (f" (it finished {finished} UTC)." if finished else ".")
                + f" It is the same as 'vdictl undo \"{status.folder}\"'.",
                Level.INFO,
            )
        )
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        body = QWidget()
        inner = QVBoxLayout(body)
        inner.setContentsMargins(0, 0, 0, 0)
        self.preview = figures(undo_preview(record) or [("Files", "none")])
        inner.addWidget(self.preview)
        inner.addStretch(1)
        scroll.setWidget(body)
        layout.addWidget(scroll, 1)
        layout.addWidget(
            notice(
                "Shut the VM down first. Nothing the guest wrote since the "
                "operation is lost: undo refuses if any of these files "
                "changed.",
                Level.WARNING,
            )
        )
        self.bar = QProgressBar()
        self.bar.setVisible(False)
        self.state = QLabel()
        self.state.setWordWrap(True)
        self.state.setTextFormat(Qt.TextFormat.RichText)
        self.state.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.bar)
        layout.addWidget(self.state)
        self.buttons = QDialogButtonBox()
        self.undo_button = self.buttons.addButton("Undo", QDialogButtonBox.ButtonRole.AcceptRole)
        self.close_button = self.buttons.addButton(QDialogButtonBox.StandardButton.Cancel)
        self.undo_button.clicked.connect(self.start)
        self.close_button.clicked.connect(self.reject)
        layout.addWidget(self.buttons)

    @property
    def running(self) -> bool:
        """Whether the undo runs."""
        return self.runner is not None and self.outcome is None

    def start(self) -> None:
        """Run the undo on the pool (recovering an interrupted operation first, as vdictl)."""
        if self.runner is not None:
            return
        folder = self.status.folder
        undo = self.undo_fn or undo_last

        def job(progress: Callable[[Progress], None], _token: object) -> str:
            recovered = recover_pending(folder)
            if recovered is not None:
                return (
                    f"{recovered.message()} Nothing was undone: look at the folder again "
                    "before undoing anything else."
                )
            result = undo(folder, progress=progress)
            return f"Undone: {result.summary}."

        self.undo_button.setEnabled(False)
        self.close_button.setEnabled(False)
        self.bar.setRange(0, 0)
        self.bar.setVisible(True)
        self.state.setText("Undoing…")
        self.runner = self.pool.start(
            job,
            "undo",
            progress=self._progress,
            succeeded=lambda text: self._ended(Level.OK, text),
            failed=lambda exc: self._ended(Level.ERROR, messages.sentence(exc)),
            cancelled=lambda: self._ended(Level.WARNING, "Cancelled."),
        )
        self.started.emit()

    def _progress(self, event: Progress) -> None:
        if event.total:
            self.bar.setRange(0, event.total)
            self.bar.setValue(event.done)

    def _ended(self, level: Level, text: str) -> None:
        self.outcome = (level, text)
        colour = level.colour or ""
        self.state.setText(f'<span style="color:{colour}"><b>{html.escape(text)}</b></span>')
        self.bar.setRange(0, 1)
        self.bar.setValue(1 if level is Level.OK else 0)
        self.undo_button.setVisible(False)
        self.close_button.setText("Close")
        self.close_button.setEnabled(True)
        self.changed.emit()

    def reject(self) -> None:  # Qt override
        """Never close while the undo runs (it is short and must not be left half done)."""
        if self.running:
            return
        super().reject()

    def closeEvent(self, event: QCloseEvent) -> None:  # Qt override
        """As :meth:`reject`."""
        if self.running:
            event.ignore()
            return
        super().closeEvent(event)


class UndoDataBox(QGroupBox):
    """The Overview's line about undo data: how much, where, and "Discard undo data…"."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Undo data", parent)
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.discard = QPushButton("Discard undo data…")
        layout = QHBoxLayout(self)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.discard, 0, Qt.AlignmentFlag.AlignTop)
        self.setVisible(False)

    def show_status(self, status: UndoStatus | None, checking: bool = False) -> None:
        """Say how much undo data the folder keeps (hidden when nothing is open)."""
        if checking:
            self.label.setText("Checking the undo data…")
            self.discard.setEnabled(False)
            self.discard.setToolTip("Checking the undo data…")
            self.setVisible(True)
            return
        if status is None:
            self.setVisible(False)
            return
        self.setVisible(True)
        if status.error:
            self.label.setText(status.error)
        elif status.usage:
            self.label.setText(
                f"vdigui keeps {human_size(status.usage)} of undo data (the removed files and "
                f"backups of earlier operations) in {status.backups}."
                + (f" Edit > Undo can undo “{status.summary}”." if status.record else "")
            )
        else:
            self.label.setText("vdigui keeps no undo data in this folder.")
        self.discard.setEnabled(status.usage > 0 and not status.error)
        self.discard.setToolTip(
            f"Delete the undo data and free {human_size(status.usage)}; nothing can be undone "
            "afterwards"
            if status.usage
            else "There is no undo data to discard."
        )


class UndoController(QObject):
    """Edit > Undo, Edit > Discard Undo Data and the Overview's undo-data box for a window.

    The status is read on ``pool`` (the window's analysis pool, so its "idle" covers it) after
    every load; the undo and the discard run on ``run_pool`` (the operations' pool).

    Signals:
        running_changed: an undo or a discard started or ended (the busy lock changed).
    """

    running_changed = Signal()

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
        self.status: UndoStatus | None = None
        self.folder: Path | None = None
        self.dialog: UndoDialog | None = None
        self.discarding: Runner | None = None
        self._epoch = 0
        self._checking = False
        self.undo_action = QAction("&Undo", window)
        self.undo_action.setShortcut(QKeySequence(QKeySequence.StandardKey.Undo))
        self.undo_action.triggered.connect(lambda _checked=False: self.open_undo())
        self.discard_action = QAction("&Discard Undo Data…", window)
        self.discard_action.setShortcut(QKeySequence("Ctrl+Alt+Z"))
        self.discard_action.triggered.connect(lambda _checked=False: self.discard())
        for action in (self.undo_action, self.discard_action):
            window.addAction(action)
        self.menu = self._install_menu(window)
        self.menu.addAction(self.undo_action)
        self.menu.addAction(self.discard_action)
        self.box = UndoDataBox()
        self.box.discard.clicked.connect(self.discard)
        overview = getattr(window, "overview", None)
        if overview is not None:
            overview.add_section(self.box)
        session_loaded = getattr(window, "session_loaded", None)
        if session_loaded is not None:
            session_loaded.connect(lambda session: self.reload_status(undo_folder(session)))
        self.refresh()

    @staticmethod
    def _install_menu(window: QMainWindow) -> Any:
        bar = window.menuBar()
        after_file = next(
            (a for a in bar.actions() if a.text().replace("&", "") not in ("File",)), None
        )
        from PySide6.QtWidgets import QMenu

        menu = QMenu("&Edit", window)
        menu.setToolTipsVisible(True)
        if after_file is not None:
            bar.insertMenu(after_file, menu)
        else:
            bar.addMenu(menu)
        return menu

    @property
    def checking(self) -> bool:
        """Whether the status is being read."""
        return self._checking

    @property
    def running(self) -> bool:
        """Whether an undo or a discard runs."""
        return (self.dialog is not None and self.dialog.running) or self.discarding is not None

    # -- status ----------------------------------------------------------------------------
    def reload_status(self, folder: Path | None) -> None:
        """Read what can be undone in ``folder`` on a worker (None: nothing is open)."""
        self._epoch += 1
        epoch = self._epoch
        self.folder = folder
        self.status = None
        if folder is None:
            self._checking = False
            self.refresh()
            return
        self._checking = True
        self.refresh()

        def done(status: UndoStatus) -> None:
            if epoch != self._epoch:
                return
            self._checking = False
            self.status = status
            self.refresh()

        def failed(exc: BaseException) -> None:
            done(UndoStatus(folder, None, "", 0, messages.sentence(exc)))

        self.pool.start(
            lambda _p, _t: read_undo_status(folder),
            "undo status",
            succeeded=done,
            failed=failed,
            cancelled=lambda: done(UndoStatus(folder, None, "", 0, "")),
        )

    def refresh(self) -> None:
        """Enable, name and explain the actions; update the Overview's box."""
        status = self.status
        busy = self.busy_reason(self.folder) if self.folder is not None else None
        if self.folder is None:
            undo = (False, "Undo", "Open a VM folder to undo vdigui's last operation in it.")
        elif self._checking:
            undo = (False, "Undo", "Checking what can be undone…")
        elif status is None or status.record is None:
            reason = (status.error or status.reason) if status is not None else ""
            undo = (False, "Undo", reason or "There is nothing to undo.")
        else:
            undo = (
                busy is None,
                f"Undo “{status.summary}”…",
                busy or f"Put back what “{status.summary}” changed (the same as 'vdictl undo')",
            )
        if self.running:
            undo = (False, undo[1], "The undo is running.")
        enabled, text, tip = undo
        self.undo_action.setEnabled(enabled)
        self.undo_action.setText("&" + text)
        self._tip(self.undo_action, tip, enabled)
        if status is not None and status.usage and not status.error:
            discard = (
                busy is None and not self.running,
                busy
                or f"Delete {human_size(status.usage)} of undo data in "
                f"{status.backups}; nothing can be undone afterwards",
            )
        elif self._checking:
            discard = (False, "Checking the undo data…")
        else:
            discard = (
                False,
                (
                    status.error
                    if status is not None and status.error
                    else "There is no undo data to discard."
                ),
            )
        self.discard_action.setEnabled(discard[0])
        self._tip(self.discard_action, discard[1], discard[0])
        self.box.show_status(status, self._checking)
        if status is not None and busy:
            self.box.discard.setEnabled(False)
            self.box.discard.setToolTip(busy)

    @staticmethod
    def _tip(action: QAction, reason: str, enabled: bool) -> None:
        shortcut = action.shortcut().toString(QKeySequence.SequenceFormat.NativeText)
        action.setToolTip(reason + (f" ({shortcut})" if shortcut and enabled else ""))
        action.setStatusTip(reason)

    # -- undo ------------------------------------------------------------------------------
    def open_undo(self, undo_fn: Callable[..., Any] | None = None) -> UndoDialog | None:
        """Edit > Undo: the preview dialog (None when nothing can be undone now)."""
        status = self.status
        if status is None or status.record is None or not self.undo_action.isEnabled():
            self._say(self.undo_action.statusTip())
            return None
        if self.dialog is not None:
            self.dialog.raise_()
            return self.dialog
        dialog = UndoDialog(status, self.run_pool, self.window, undo_fn)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.changed.connect(self._changed)
        dialog.started.connect(self._running_changed)
        dialog.finished.connect(lambda _code: self._dialog_closed(dialog))
        self.dialog = dialog
        dialog.show()
        self.refresh()
        return dialog

    def _dialog_closed(self, dialog: UndoDialog) -> None:
        if self.dialog is dialog:
            self.dialog = None
        self.refresh()

    def _running_changed(self) -> None:
        self.refresh()
        self.running_changed.emit()

    def _changed(self) -> None:
        self._running_changed()
        reload = getattr(self.window, "reload", None)
        if reload is not None:
            reload()

    # -- discard ---------------------------------------------------------------------------
    def discard(self) -> bool:
        """Edit > Discard Undo Data (and the Overview's button): confirm, then delete it."""
        status = self.status
        if status is None or not status.usage or self.running or self.discarding:
            return False
        busy = self.busy_reason(status.folder)
        if busy:
            self._say(busy)
            return False
        text = (
            f"Delete the {human_size(status.usage)} ({status.usage:,} bytes) of undo data in "
            f"{status.backups}?\n\nThis frees {human_size(status.usage)}. Afterwards undo "
            "is impossible: "
            + (
                f"“{status.summary}” can no longer be undone."
                if status.record is not None
                else "no earlier operation can be undone."
            )
        )
        if not confirm_discard(self.window, "Discard undo data", text):
            return False
        folder = status.folder

        def ended(message: str, level: Level) -> None:
            self.discarding = None
            self._say(message)
            if level is Level.ERROR:
                messages.reporter(self.window, "Cannot discard the undo data", message, "")
            self._changed()

        self.discarding = self.run_pool.start(
            lambda _p, _t: int(discard_undo_data(folder)),
            "discard undo data",
            succeeded=lambda freed: ended(
                f"Discarded the undo data: {human_size(freed)} ({freed:,} bytes) freed; the "
                "last operation can no longer be undone.",
                Level.OK,
            ),
            failed=lambda exc: ended(messages.sentence(exc), Level.ERROR),
            cancelled=lambda: ended("Stopped.", Level.WARNING),
        )
        self._running_changed()
        return True

    def _say(self, text: str) -> None:
        bar = getattr(self.window, "statusBar", None)
        if bar is not None and text:
            self.window.statusBar().showMessage(text, 8000)


__all__ = [
    "UndoController",
    "UndoDataBox",
    "UndoDialog",
    "UndoStatus",
    "confirm_discard",
    "read_undo_status",
    "short_summary",
    "undo_folder",
    "undo_preview",
]
