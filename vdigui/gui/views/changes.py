"""Changes since…: the guest files added, removed and changed between two states.

Why a dialog of its own: "what did I change since that snapshot?" compares two states the user
picks (any snapshot, or the current state), whichever one the window shows. The comparison is
:func:`vdigui.engine.guestfs.files.diff.diff_chains` on the window's worker pool (with progress
and Cancel), on chains this dialog opens itself; it reads file contents only where the two
states serve the file's blocks from different layers. Each row can be opened in the Files tab
of either state.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PySide6.QtCore import QSortFilterProxyModel, Qt, Signal
from PySide6.QtGui import QStandardItem, QStandardItemModel
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from vdigui.engine import (
    Change,
    ChangeKind,
    Progress,
    StateDiff,
    VdiError,
    diff_chains,
    human_size,
    open_paths,
    printable,
)
from vdigui.gui import messages
from vdigui.gui.session import Session, SnapNode, chain_paths
from vdigui.gui.workers import Runner, WorkerPool

_SORT = Qt.ItemDataRole.UserRole + 1
_CHANGE = Qt.ItemDataRole.UserRole + 2


def change_letter(c: Change) -> str:
    """A (added), D (deleted), M (content changed), m (times or permissions only)."""
    if c.change is ChangeKind.ADDED:
        return "Added"
    if c.change is ChangeKind.REMOVED:
        return "Deleted"
    return "Changed" if c.content_changed else "Touched"


def _signed(delta: int) -> str:
    return ("+" if delta > 0 else "−" if delta < 0 else "±") + human_size(abs(delta))


def state_disks(session: Session, row: SnapNode) -> list[Any]:
    """The readable disk nodes a snapshot row (or the current state) refers to."""
    found = (session.disk_by_uuid(u) for u in row.disks)
    return [d for d in found if d is not None and d.inspectable]


class ChangesDialog(QDialog):
    """Pick two states, compare their files on a worker, open a row in either state.

    Signals:
        open_requested(object): ``(SnapNode, volume, path)`` to show in the Files tab.
        finished_comparing(): a comparison ended (done, failed or cancelled; tests wait on it).
    """

    open_requested = Signal(object)
    finished_comparing = Signal()

    def __init__(
        self,
        session: Session,
        workers: WorkerPool,
        first: SnapNode | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Changes since…")
        self.session = session
        self.workers = workers
        self.rows = [r for r in session.iter_snapshots() if state_disks(session, r)]
        self.diff: StateDiff | None = None
        self._runner: Runner | None = None
        self._compared: tuple[SnapNode, SnapNode] | None = None

        self.from_box, self.to_box = QComboBox(), QComboBox()
        for box in (self.from_box, self.to_box):
            for row in self.rows:
                box.addItem("Current state" if row.is_current_state else row.name, row)
        current = next(
            (i for i, r in enumerate(self.rows) if r.is_current_state), len(self.rows) - 1
        )
        start = self.rows.index(first) if first in self.rows else max(0, current - 1)
        if first is not None and first.is_current_state:
            start = max(0, current - 1)
        self.from_box.setCurrentIndex(start)
        self.to_box.setCurrentIndex(max(0, current))
        self.compare_button = QPushButton("Compare")
        self.compare_button.setDefault(True)
        self.compare_button.clicked.connect(self.compare)
        pick = QHBoxLayout()
        pick.addWidget(QLabel("From:"))
        pick.addWidget(self.from_box, 1)
        pick.addWidget(QLabel("To:"))
        pick.addWidget(self.to_box, 1)
        pick.addWidget(self.compare_button)

        self.model = QStandardItemModel(0, 5, self)
        self.model.setHorizontalHeaderLabels(
            ["Change", "Path", "Size before", "Size after", "Difference"]
        )
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(_SORT)
        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 6)
        self.table.setWordWrap(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        for col in (0, 2, 3, 4):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        self.table.doubleClicked.connect(lambda _i: self.open_selected(after=True))

        self.status = QLabel("Pick two states and press Compare.")
        self.status.setWordWrap(True)
        self.progress = QProgressBar()
        self.progress.setRange(0, 0)
        self.progress.setVisible(False)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setVisible(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.open_before = QPushButton("Open in “From”")
        self.open_before.setToolTip("Show the file in the Files tab of the earlier state")
        self.open_before.clicked.connect(lambda: self.open_selected(after=False))
        self.open_after = QPushButton("Open in “To”")
        self.open_after.setToolTip(
            "Show the file in the Files tab of the later state (double-click)"
        )
        self.open_after.clicked.connect(lambda: self.open_selected(after=True))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        bottom = QHBoxLayout()
        bottom.addWidget(self.status, 1)
        bottom.addWidget(self.progress)
        bottom.addWidget(self.cancel_button)
        bottom.addWidget(self.open_before)
        bottom.addWidget(self.open_after)
        bottom.addWidget(buttons)

        layout = QVBoxLayout(self)
        layout.addLayout(pick)
        layout.addWidget(self.table, 1)
        layout.addLayout(bottom)
        self.resize(900, 520)
        self._update_buttons()

    # -- comparing ----------------------------------------------------------------------
    def _paths(self, row: SnapNode) -> Sequence[Path]:
        """The chain of a state's first readable disk (worker thread: reads headers)."""
        disk = state_disks(self.session, row)[0]
        paths, error = chain_paths(self.session, disk)
        if error:
            raise VdiError(
                f"The chain of {disk.title} is incomplete, so its files cannot be compared: {error}"
            )
        return paths

    def compare(self) -> None:
        """Compare the two chosen states on a worker."""
        if self._runner is not None:
            return
        a, b = self.from_box.currentData(), self.to_box.currentData()
        if a is None or b is None:
            return

        def job(progress: Any, token: Any) -> StateDiff:
            # Resolving a chain reads image headers: on the worker too.
            pa, pb = self._paths(a), self._paths(b)
            with open_paths(pa) as ca, open_paths(pb) as cb:
                return diff_chains(ca, cb, progress=progress, cancel=token)

        self.model.removeRows(0, self.model.rowCount())
        self.status.setText("Comparing…")
        self.progress.setVisible(True)
        self.cancel_button.setVisible(True)
        self._compared = (a, b)
        self._runner = self.workers.start(
            job,
            "files-diff",
            progress=self._progress,
            succeeded=self._done,
            failed=self._failed,
            cancelled=self._cancelled,
        )
        self._update_buttons()

    def _progress(self, event: Progress) -> None:
        self.status.setText(f"Comparing… {event.done:,} entries looked at")

    def _end(self) -> None:
        self._runner = None
        self.progress.setVisible(False)
        self.cancel_button.setVisible(False)
        self._update_buttons()
        self.finished_comparing.emit()

    def _done(self, diff: StateDiff) -> None:
        self.diff = diff
        for c in diff.changes:
            self.model.appendRow(self._items(c))
        added = len(diff.by_kind(ChangeKind.ADDED))
        removed = len(diff.by_kind(ChangeKind.REMOVED))
        changed = len(diff.by_kind(ChangeKind.CHANGED))
        net = sum(c.delta for c in diff.changes)
        notes = (" " + " ".join(diff.notes)) if diff.notes else ""
        self.status.setText(
            f"{added} added, {removed} deleted, {changed} changed; net {_signed(net)}. "
            f"Contents of {diff.stats.compared} file(s) were read, the rest decided from the "
            f"block maps and metadata.{notes}"
            if diff.changes
            else f"No guest files differ.{notes}"
        )
        self._end()

    def _failed(self, exc: BaseException) -> None:
        self.status.setText(f"The comparison stopped: {messages.sentence(exc)}")
        self._end()

    def _cancelled(self) -> None:
        self.status.setText("Comparison cancelled.")
        self._end()

    def cancel(self) -> None:
        """Stop the running comparison."""
        if self._runner is not None:
            self._runner.token.cancel()

    def _items(self, c: Change) -> list[QStandardItem]:
        def item(text: str, key: Any, right: bool = False) -> QStandardItem:
            it = QStandardItem(text)
            it.setData(key, _SORT)
            it.setData(c, _CHANGE)
            if right:
                it.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            return it

        path = f"{c.volume}:{printable(c.path)}" + ("/" if c.kind.value == "directory" else "")

        def size(v: int | None) -> str:
            return "" if v is None or c.kind.value == "directory" else human_size(v)

        return [
            item(change_letter(c), change_letter(c)),
            item(path, path),
            item(size(c.size_a), c.size_a or 0, True),
            item(size(c.size_b), c.size_b or 0, True),
            item(_signed(c.delta) if c.kind.value != "directory" else "", c.delta, True),
        ]

    # -- opening ------------------------------------------------------------------------
    def selected_change(self) -> Change | None:
        """The change of the selected row."""
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            return None
        value = self.proxy.data(rows[0], _CHANGE)
        return value if isinstance(value, Change) else None

    def open_selected(self, *, after: bool) -> None:
        """Ask the window to show the selected file in the Files tab of one state."""
        c = self.selected_change()
        if c is None or self._compared is None:
            return
        if (after and c.change is ChangeKind.REMOVED) or (
            not after and c.change is ChangeKind.ADDED
        ):
            self.status.setText(f"{printable(c.path)} does not exist in that state.")
            return
        self.open_requested.emit((self._compared[1 if after else 0], c.volume, c.path))

    def _update_buttons(self) -> None:
        idle = self._runner is None
        self.compare_button.setEnabled(idle and bool(self.rows))
        has = self.diff is not None and idle
        self.open_before.setEnabled(has)
        self.open_after.setEnabled(has)

    def reject(self) -> None:
        """Close; a running comparison is cancelled."""
        self.cancel()
        super().reject()


__all__ = ["ChangesDialog", "change_letter", "state_disks"]
