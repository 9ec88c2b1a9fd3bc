"""The Operations menu, toolbar and context-menu actions, and the busy lock between them.

Why the wizards install their own actions: the main window owns selection and reloading, the
wizards own what can run and why not. ``install_operation_actions`` connects the two through
three callables, so the window needs no knowledge of plans and the wizards none of the trees.
It also guards the window's close: while an operation runs, closing asks, cancels and waits.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QEvent, QObject, QSize, Qt, Signal
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QMainWindow, QMenu, QStyle, QToolBar

from vdigui.engine import VdiError, VmFolder
from vdigui.gui import messages
from vdigui.gui.views.disk_settings import DiskSettingsController
from vdigui.gui.wizards import base
from vdigui.gui.wizards.base import OperationWizard
from vdigui.gui.wizards.checks import AvailabilityChecks
from vdigui.gui.wizards.registry import OPERATIONS, REGISTRY, Availability, Operation, spec
from vdigui.gui.wizards.targets import Target, TargetKind, resolve_target
from vdigui.gui.wizards.undo import UndoController
from vdigui.gui.workers import WorkerPool


class OperationActions(QObject):
    """The operations' actions for one main window.

    Attributes:
        actions: operation key -> the menu/toolbar QAction (acting on the selection).
        menu: the "Operations" menu.
        toolbar: the "Operations" toolbar.
        wizards: the open wizards.
        pool: the worker pool operations run on (separate from the window's analysis pool).

    Signals:
        show_chain_requested: a wizard's "Show the changed chain" (a Path); connected by
            default to selecting that image in the window once the reload has finished.
        operation_finished: an operation ended (the wizard's Outcome).
    """

    show_chain_requested = Signal(object)
    operation_finished = Signal(object)

    def __init__(
        self,
        window: QMainWindow,
        get_vm: Callable[[], VmFolder | None],
        get_selection: Callable[[], object],
        reload: Callable[[], None],
    ) -> None:
        super().__init__(window)
        self.window = window
        self.get_vm = get_vm
        self.get_selection = get_selection
        self.reload = reload
        self.pool = WorkerPool(self)
        # The checks run on the window's analysis pool when it has one, so the window's
        # "idle" (which tests and the screenshot mode wait for) covers them too.
        window_pool = getattr(window, "workers", None)
        self.checks = AvailabilityChecks(
            window_pool if isinstance(window_pool, WorkerPool) else self.pool, self
        )
        self.checks.answered.connect(self.refresh)
        self.undo = UndoController(
            window,
            self.checks.pool,
            self.pool,
            lambda folder: self.busy_reason(
                Target(TargetKind.IMAGE, "the folder", folder=folder), include_undo=False
            ),
        )
        self.undo.running_changed.connect(self.refresh)
        self.disk_settings = DiskSettingsController(
            window,
            self.checks.pool,
            self.pool,
            lambda folder: self.busy_reason(Target(TargetKind.IMAGE, "the folder", folder=folder)),
        )
        self.disk_settings.changed.connect(self.reload)
        self.wizards: list[OperationWizard] = []
        self.actions: dict[Operation, QAction] = {}
        self._context: list[QAction] = []
        self._context_target: object = None
        self._pending_select: Any = None
        style = window.style()
        for key, op in REGISTRY.items():
            action = QAction(op.menu_text, window)
            action.setIcon(style.standardIcon(getattr(QStyle.StandardPixmap, op.icon)))
            action.setShortcut(QKeySequence(op.shortcut))
            action.triggered.connect(lambda _checked=False, k=key: self.open_wizard(k))
            window.addAction(action)
            self.actions[key] = action
        self.menu = QMenu("&Operations", window)
        self.menu.setToolTipsVisible(True)
        for key in OPERATIONS:
            self.menu.addAction(self.actions[key])
        self.menu.aboutToShow.connect(self.refresh)
        bar = window.menuBar()
        help_action = next((a for a in bar.actions() if a.text().replace("&", "") == "Help"), None)
        if help_action is not None:
            bar.insertMenu(help_action, self.menu)
        else:
            bar.addMenu(self.menu)
        self.toolbar = QToolBar("Operations", window)
        self.toolbar.setObjectName("operations")
        # Words beside small icons: the standard icons alone do not say "compact" or "repair".
        self.toolbar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.toolbar.setIconSize(QSize(16, 16))
        self.toolbar.setToolTip("Operations that change disks (disabled ones say why)")
        for key in OPERATIONS:
            self.toolbar.addAction(self.actions[key])
        window.addToolBar(self.toolbar)
        self.show_chain_requested.connect(self._select_later)
        session_loaded = getattr(window, "session_loaded", None)
        if session_loaded is not None:
            # A new folder object: every remembered answer is about the old one.
            session_loaded.connect(lambda *_args: self.invalidate())
            session_loaded.connect(self._select_pending)
        chain_loaded = getattr(window, "chain_loaded", None)
        if chain_loaded is not None:
            chain_loaded.connect(lambda *_args: self.refresh())
        for view_name in ("snapshot_view", "media_view"):
            view = getattr(window, view_name, None)
            if view is not None and view.selectionModel() is not None:
                view.selectionModel().currentChanged.connect(lambda *_args: self.refresh())
        window.installEventFilter(self)
        self.refresh()

    # -- state -----------------------------------------------------------------------------------
    def _target(self, selection: object) -> Target:
        try:
            return resolve_target(self.get_vm(), selection)
        except VdiError:
            return resolve_target(None, None)

    def busy_reason(self, target: Target, *, include_undo: bool = True) -> str | None:
        """Why a writing operation must wait: another one runs on the same chain or VM."""
        keys = target.lock_keys
        folder = self.undo.folder
        if (
            include_undo
            and self.undo.running
            and folder is not None
            and (
                not keys
                or keys & {folder.resolve()}
                or any(folder.resolve() in k.parents for k in keys)
            )
        ):
            return "An undo is running on this folder; wait for it to finish."
        for wizard in self.wizards:
            if wizard.running and (not keys or keys & wizard.target.lock_keys):
                return f"{wizard.title} is running on {wizard.target.label}; wait for it to finish."
        return None

    @property
    def checking(self) -> bool:
        """Whether some operation's availability is still being worked out on a worker."""
        return self.checks.checking

    def invalidate(self) -> None:
        """Forget every availability answer (after a reload or an operation) and re-ask."""
        self.checks.clear()
        self.refresh()

    def availability(self, selection: object, purpose: str = "selection") -> Availability:
        """Each operation's (enabled, reason) for ``selection``, with the busy lock applied.

        Never plans on the GUI thread: an answer not known yet reads "Checking…" (disabled)
        and is worked out on a worker; :meth:`refresh` runs again when it arrives.
        """
        target = self._target(selection)
        result = self.checks.lookup(self.get_vm(), target, purpose)
        return self._locked(target, result)

    def availability_now(self, selection: object) -> Availability:
        """Like :meth:`availability`, but plans here when the answer is not known yet.

        Only for explicit requests made in code (a disabled action cannot be triggered, so
        the user's path never gets here with an unknown answer).
        """
        target = self._target(selection)
        return self._locked(target, self.checks.now(self.get_vm(), target))

    def _locked(self, target: Target, result: Availability) -> Availability:
        busy = self.busy_reason(target)
        if busy:
            return dict.fromkeys(result, (False, busy))
        return result

    def _apply(self, action: QAction, key: Operation, enabled: bool, reason: str) -> None:
        shortcut = action.shortcut().toString(QKeySequence.SequenceFormat.NativeText)
        action.setEnabled(enabled)
        tip = reason + (f" ({shortcut})" if shortcut and enabled else "")
        action.setToolTip(tip)
        action.setStatusTip(reason)
        action.setWhatsThis(reason)
        del key

    def refresh(self) -> None:
        """Recompute every action's enabled state and tooltip for the current selection."""
        try:
            state = self.availability(self.get_selection())
        except Exception as exc:  # never let a tooltip computation break the window
            state = dict.fromkeys(OPERATIONS, (False, messages.sentence(exc)))
        for key, (enabled, reason) in state.items():
            self._apply(self.actions[key], key, enabled, reason)
        self.undo.refresh()
        if self._context:
            try:
                context = self.availability(self._context_target, "context")
            except Exception as exc:  # as above
                context = dict.fromkeys(OPERATIONS, (False, messages.sentence(exc)))
            for key, action in zip(OPERATIONS, self._context, strict=True):
                self._apply(action, key, *context[key])

    def context_actions(self, target: object) -> list[QAction]:
        """Fresh actions for a tree's context menu, acting on ``target`` (not the selection)."""
        for old in self._context:
            old.deleteLater()
        self._context = []
        self._context_target = target
        state = self.availability(target, "context")
        for key in OPERATIONS:
            action = QAction(spec(key).menu_text, self)
            action.setIcon(self.actions[key].icon())
            # Shown in the menu; only the menu bar's action reacts to the key (no ambiguity).
            action.setShortcut(self.actions[key].shortcut())
            action.setShortcutContext(Qt.ShortcutContext.WidgetShortcut)
            enabled, reason = state[key]
            self._apply(action, key, enabled, reason)
            action.triggered.connect(lambda _checked=False, k=key, t=target: self.open_wizard(k, t))
            self._context.append(action)
        return list(self._context)

    # -- wizards ---------------------------------------------------------------------------------
    def open_wizard(
        self, kind: Operation | str, selection: object = None, **kwargs: Any
    ) -> OperationWizard | None:
        """Open the wizard ``kind`` on ``selection`` (default: the window's selection).

        ``kind`` is an :class:`Operation` or its string value ("compact", "clone",
        "delete-snapshot", "repair"); ``kwargs`` go to the wizard (a pre-filled wizard).
        Refuses with the reason (in the status bar) when the operation cannot run now.
        """
        op = spec(kind)
        selection = self.get_selection() if selection is None else selection
        enabled, reason = self.availability_now(selection)[op.key]
        if not enabled:
            bar = getattr(self.window, "statusBar", None)
            if bar is not None:
                self.window.statusBar().showMessage(f"{op.title}: {reason}", 8000)
            return None
        wizard = op.wizard_class()(
            self.get_vm(), self._target(selection), pool=self.pool, parent=self.window, **kwargs
        )
        # Not modal: inspection stays usable while an operation runs.
        wizard.setWindowModality(Qt.WindowModality.NonModal)
        wizard.running_changed.connect(lambda _running: self.refresh())
        wizard.changed.connect(lambda _target, w=wizard: self._changed(w))
        wizard.show_chain_requested.connect(self.show_chain_requested)
        wizard.finished.connect(lambda _code, w=wizard: self._closed(w))
        self.wizards.append(wizard)
        wizard.show()
        return wizard

    def _changed(self, wizard: OperationWizard) -> None:
        self.checks.clear()
        self.reload()
        self.operation_finished.emit(wizard.outcome)
        self.refresh()

    def _closed(self, wizard: OperationWizard) -> None:
        if wizard in self.wizards and not wizard.running:
            self.wizards.remove(wizard)
            wizard.deleteLater()
        self.refresh()

    def _select_later(self, path: object) -> None:
        """Select the changed image once the reload the operation started has finished."""
        self._pending_select = path
        self.window.raise_()
        self.window.activateWindow()
        session = getattr(self.window, "session", None)
        workers = getattr(self.window, "workers", None)
        if session is not None and (workers is None or not workers.running):
            self._select_pending()

    def _select_pending(self, *_args: object) -> None:
        path, self._pending_select = self._pending_select, None
        select = getattr(self.window, "select_by_name", None)
        if path is None or select is None:
            return
        name = path.name if isinstance(path, Path) else str(path)
        select(name)

    @property
    def running(self) -> list[OperationWizard]:
        """Wizards whose operation is running."""
        return [w for w in self.wizards if w.running]

    def shutdown(self, timeout_ms: int = 60000) -> bool:
        """Cancel every operation and wait for it; True when all stopped in time."""
        ok = all(w.stop_and_wait(timeout_ms) for w in list(self.wizards))
        return self.pool.shutdown(timeout_ms) and ok

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # Qt override
        """Closing the window while an operation runs: ask, cancel, wait."""
        if watched is self.window and event.type() == QEvent.Type.Close and self.running:
            names = ", ".join(w.title for w in self.running)
            if not base.confirm(
                self.window,
                f"{names} is still running. Cancel it (it stops at the next block) and quit?",
            ):
                event.ignore()
                return True
            if not self.shutdown():
                messages.reporter(
                    self.window,
                    "Still running",
                    "The operation did not stop within a minute; its files may "
                    "be in use until it ends.",
                    "",
                )
                event.ignore()
                return True
        if watched is self.window and event.type() == QEvent.Type.Close:
            if self.undo.running:
                # An undo (or a discard) cannot be cancelled half-way and is short: let it end.
                self.pool.pool.waitForDone(60000)
            for wizard in list(self.wizards):
                wizard.close()
        return super().eventFilter(watched, event)


def selection_of(window: QMainWindow) -> object:
    """What the main window has selected: the current snapshot row, else the media node.

    A ready-made ``get_selection`` for :func:`install_operation_actions` (it reads the trees'
    current indexes through their models' ``node``), so the window needs no code of its own.
    """
    for view_name, model_name in (
        ("snapshot_view", "snapshot_model"),
        ("media_view", "media_model"),
    ):
        view = getattr(window, view_name, None)
        model = getattr(window, model_name, None)
        if view is None or model is None or not hasattr(model, "node"):
            continue
        index = view.currentIndex()
        if index.isValid() and view.selectionModel().isSelected(index):
            node = model.node(index)
            if node is not None:
                return node
    return getattr(window, "selected_disk", None)


def install_operation_actions(
    window: QMainWindow,
    get_vm: Callable[[], VmFolder | None],
    get_selection: Callable[[], object],
    reload: Callable[[], None],
) -> OperationActions:
    """Add the Operations menu, toolbar and shortcuts to ``window``.

    Args:
        window: the main window (its menu bar gets "Operations" before "Help").
        get_vm: the opened VM folder, or None (a bare image or nothing is open).
        get_selection: the selected snapshot row / media node (or None).
        reload: reads the folder again from disk; called after every operation.

    Returns:
        The :class:`OperationActions`; use ``context_actions(target)`` for the trees' context
        menus and connect ``show_chain_requested`` if the default selection is not wanted.
    """
    return OperationActions(window, get_vm, get_selection, reload)


__all__ = ["OperationActions", "install_operation_actions", "selection_of"]
