"""Turn exceptions into what the user reads: one sentence, plus details to copy.

Why one module: every error path (a worker's ``failed`` signal, an uncaught exception in the GUI
thread, one in a worker thread) ends in the same dialog, and tests replace :data:`reporter` with
a recorder instead of clicking dialogs away.
"""

from __future__ import annotations

import sys
import threading
import traceback
from collections.abc import Callable
from types import TracebackType

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import QApplication, QMessageBox, QWidget

from vdigui.engine import VdiError


def sentence(exc: BaseException) -> str:
    """The one sentence a user sees for ``exc``.

    Engine errors already are complete sentences naming the file; OS errors get their file;
    anything else is a bug and says so.
    """
    if isinstance(exc, VdiError):
        return str(exc)
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return f"The file cannot be read: {exc.strerror or exc}{where}."
    return f"vdigui hit an unexpected error ({type(exc).__name__}: {exc}). This is a bug."


def details(exc: BaseException) -> str:
    """The traceback text behind "Copy details"."""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def show_error(parent: QWidget | None, title: str, text: str, detail: str = "") -> None:
    """A modal error box with the sentence and a "Copy details" button."""
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Warning)
    box.setWindowTitle(title)
    box.setText(text)
    box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    copy = None
    if detail:
        box.setDetailedText(detail)
        copy = box.addButton("Copy details", QMessageBox.ButtonRole.ActionRole)
        copy.setToolTip("Copy the message and the technical details to the clipboard")
    box.addButton(QMessageBox.StandardButton.Close)
    box.exec()
    if copy is not None and box.clickedButton() is copy:
        QApplication.clipboard().setText(f"{text}\n\n{detail}")


#: The function every error goes through: (parent, title, sentence, details). Tests swap it.
def ask(parent: QWidget | None, title: str, text: str) -> bool:
    """A Yes/No question whose default is No: asked before anything that frees or changes data.

    Callers keep a module-level alias of it (``confirm_...``) that tests replace.
    """
    answer = QMessageBox.question(
        parent,
        title,
        text,
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
        QMessageBox.StandardButton.No,
    )
    return answer == QMessageBox.StandardButton.Yes


Reporter = Callable[[QWidget | None, str, str, str], None]
reporter: Reporter = show_error


def report(parent: QWidget | None, title: str, exc: BaseException) -> None:
    """Report ``exc`` through :data:`reporter`."""
    reporter(parent, title, sentence(exc), details(exc))


class _HookBridge(QObject):
    """Carries exceptions from any thread to the GUI thread (signals queue across threads)."""

    raised = Signal(object)


_bridge: _HookBridge | None = None


def install_hooks() -> None:
    """Route uncaught exceptions (GUI thread and worker threads) to the error dialog.

    Without this, PySide6 prints a traceback to stderr and carries on, and the user sees
    nothing; with it, nothing dies silently.
    """
    global _bridge
    if _bridge is not None:
        return
    _bridge = _HookBridge()
    _bridge.raised.connect(lambda exc: report(None, "Unexpected error", exc))

    def excepthook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, exc, tb)
            return
        traceback.print_exception(kind, exc, tb)
        if _bridge is not None:
            _bridge.raised.emit(exc)

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None:
            excepthook(args.exc_type, args.exc_value, args.exc_traceback)

    sys.excepthook = excepthook
    threading.excepthook = thread_hook
