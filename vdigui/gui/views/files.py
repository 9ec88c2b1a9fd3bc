"""The Files tab: browse, search and extract the guest files of the selected state.

Why it looks like a file manager: the question people bring is "get my file back from that
snapshot", so the tab offers what they know -- a volume chooser, a folder tree, a sortable list
(name, size, modified, type), a search box and Extract... -- over any state of the chain
(a snapshot row, the current state, or one image read through its parents), without booting.

Everything that reads the disk runs on the window's worker pool (docs/guest-files.md): opening
the state (its own read-only chain, so the window may close its chain meanwhile), listing a
folder, searching, extracting. While a state opens the tab says "Reading…". Jobs that share the
opened namespaces take its lock (a namespace caches listings and is not thread-safe); long
jobs (search, extraction, the diff and "what this image holds") open a private chain and never
block browsing. Results are tagged with a generation: an answer about a state the user already
left is dropped. Extraction never replaces a file without asking, and a cancelled extraction
leaves no partial file (:mod:`vdigui.engine.guestfs.files.extract`).

"Show Blocks" marks a file's VDI blocks in both the Block map and the Fragmentation tab: one
question ("where is this file?") answered at two levels, so one command.

Files and folders can be dragged out to a file manager. A drop target wants real files the
moment the drag starts, so the selection is extracted right then, in the window's thread, into
a private temporary folder (removed when the window closes: the drop target may still be
copying after the drag ends). That is only acceptable while it is quick, so a drag is refused
above :data:`DRAG_MAX_BYTES` of content or :data:`DRAG_MAX_ENTRIES` entries, counted by a walk
that stops as soon as a bound is passed, with a message pointing to Extract... (which runs on a
worker with progress). A refused drag writes nothing.
"""

from __future__ import annotations

import os
import secrets
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QMimeData,
    QModelIndex,
    QPersistentModelIndex,
    Qt,
    QUrl,
    Signal,
)
from PySide6.QtGui import QAction, QDrag
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMenu,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTableView,
    QTableWidget,
    QTableWidgetItem,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from vdigui.engine import (
    BaseNamespace,
    DiskChain,
    Entry,
    EntryKind,
    ExtractPlan,
    FileBlocks,
    GuestReader,
    GuestVolume,
    LayerHoldings,
    Progress,
    VdiError,
    file_blocks,
    fileio,
    human_size,
    layer_holdings,
    list_volumes,
    open_namespace,
    open_paths,
    plan_extract,
    printable,
    run_extract,
)
from vdigui.gui import messages
from vdigui.gui.format import short_file_name
from vdigui.gui.workers import Runner, WorkerPool

#: Search results shown at most (the search stops there and says so).
MAX_FOUND = 5000
#: Most bytes of file content a drag extracts on the spot (in the window's thread); above it
#: the drag is refused and Extract... (on a worker, with progress) is suggested.
DRAG_MAX_BYTES = 64 << 20
#: Most entries (files, folders, links) a drag extracts: each costs a few file-system calls
#: even when small in bytes (300 small files took 32 ms, so the window stays responsive).
DRAG_MAX_ENTRIES = 1000
#: Seconds a drag waits for a listing job to release the opened state before giving up.
DRAG_WAIT = 2.0
_MODIFIED = "%Y-%m-%d %H:%M"


@dataclass
class OpenedState:
    """One state opened on a worker: its private chain, reader, volumes and namespaces."""

    paths: tuple[Path, ...]
    chain: DiskChain
    reader: GuestReader
    volumes: list[GuestVolume]
    namespaces: dict[str, BaseNamespace] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def differencing(self) -> bool:
        """Whether the state's newest image is a differencing image (it has a parent)."""
        return len(self.chain.layers) > 1

    def close(self) -> None:
        """Close the chain's files (waits for a job still using them)."""
        with self.lock:
            self.chain.close()


def open_state(paths: Sequence[Path]) -> OpenedState:
    """Open a state and every readable volume of it (worker thread)."""
    chain = open_paths(tuple(paths))
    try:
        reader = GuestReader(chain)
        volumes = list_volumes(reader)
        state = OpenedState(tuple(paths), chain, reader, volumes)
        for vol in volumes:
            if not vol.readable:
                continue
            try:
                state.namespaces[vol.name] = open_namespace(reader, vol)
            except VdiError as exc:
                state.errors[vol.name] = messages.sentence(exc)
        return state
    except BaseException:
        chain.close()
        raise


def open_private(paths: Sequence[Path], volume: str) -> tuple[DiskChain, BaseNamespace]:
    """A chain and one namespace of its own, for a long job (the caller closes the chain)."""
    chain = open_paths(tuple(paths))
    try:
        reader = GuestReader(chain)
        vol = next(v for v in list_volumes(reader) if v.name == volume)
        return chain, open_namespace(reader, vol)
    except BaseException:
        chain.close()
        raise


def kind_text(entry: Entry) -> str:
    """What the Type column says."""
    if entry.kind is EntryKind.DIRECTORY:
        return "Folder"
    if entry.kind is EntryKind.SYMLINK:
        # Cut: the column sizes to its contents, and a 4,000-character target would push
        # every other column out of sight (the tooltip shows it whole).
        target = printable(entry.target or "")
        return f"Link → {target if len(target) <= 24 else target[:23] + '…'}"
    if entry.kind is EntryKind.OTHER:
        return "Device or pipe"
    suffix = Path(entry.name).suffix.lstrip(".")
    return f"{suffix.upper()} file" if suffix and len(suffix) <= 8 else "File"


def when_text(value: float | None) -> str:
    """A modification time as UTC text ("" when unknown)."""
    if value is None:
        return ""
    try:
        return time.strftime(_MODIFIED, time.gmtime(value))
    except (OverflowError, OSError, ValueError):
        return "?"


class EntryModel(QAbstractTableModel):
    """Entries as rows: Name, Size, Modified, Type (sortable; folders first)."""

    HEADERS = ("Name", "Size", "Modified", "Type")

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.entries: list[Entry] = []
        self.show_paths = False
        self._sort = (0, Qt.SortOrder.AscendingOrder)

    def set_entries(self, entries: Sequence[Entry], *, show_paths: bool = False) -> None:
        """Replace the rows (kept in the current sort order)."""
        self.beginResetModel()
        self.entries = list(entries)
        self.show_paths = show_paths
        self._apply_sort()
        self.endResetModel()

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        """Rows."""
        return 0 if parent.isValid() else len(self.entries)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        """Columns."""
        return 0 if parent.isValid() else len(self.HEADERS)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        """Column titles."""
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return self.HEADERS[section]
        return None

    def data(
        self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        """Cell text, alignment and tooltips."""
        if not index.isValid():
            return None
        e = self.entries[index.row()]
        col = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            if col == 0:
                name = printable(e.path if self.show_paths else e.name)
                return name + ("/" if e.is_dir and not self.show_paths else "")
            if col == 1:
                return "" if e.is_dir else human_size(e.size)
            if col == 2:
                return when_text(e.mtime)
            return kind_text(e)
        if role == Qt.ItemDataRole.TextAlignmentRole and col == 1:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.ToolTipRole:
            note = f"\n{e.name_note}" if e.name_note else ""
            size = "" if e.is_dir else f"\n{e.size:,} bytes"
            link = f"\n→ {printable(e.target or '')}" if e.kind is EntryKind.SYMLINK else ""
            return f"{printable(e.path)}{size}{link}{note}"
        return None

    def flags(self, index: QModelIndex | QPersistentModelIndex) -> Qt.ItemFlag:
        """Rows can be selected and dragged out (never edited)."""
        base = super().flags(index)
        return base | Qt.ItemFlag.ItemIsDragEnabled if index.isValid() else base

    def supportedDragActions(self) -> Qt.DropAction:
        """A drag copies (the guest is never changed)."""
        return Qt.DropAction.CopyAction

    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        """Sort by a column; folders always come first."""
        self.layoutAboutToBeChanged.emit()
        self._sort = (column, order)
        self._apply_sort()
        self.layoutChanged.emit()

    def _apply_sort(self) -> None:
        column, order = self._sort
        keys: list[Callable[[Entry], Any]] = [
            lambda e: (e.path if self.show_paths else e.name).casefold(),
            lambda e: e.size,
            lambda e: e.mtime or 0.0,
            kind_text,
        ]
        self.entries.sort(key=keys[column], reverse=order == Qt.SortOrder.DescendingOrder)
        self.entries.sort(key=lambda e: not e.is_dir)  # stable: folders first, in order

    def entry(self, row: int) -> Entry:
        """The entry shown in ``row``."""
        return self.entries[row]


class DragTable(QTableView):
    """The file list; a drag asks :attr:`drag_out` (set by the view) to prepare and run it."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.drag_out: Callable[[QWidget, list[str] | None], None] | None = None

    def startDrag(self, supportedActions: Qt.DropAction) -> None:
        """Qt override: the view extracts the selection and starts the drag itself."""
        del supportedActions
        if self.drag_out is not None:
            self.drag_out(self, None)


class DragTree(QTreeWidget):
    """The folder tree; dragging a folder drags it out like a row of the list."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.drag_out: Callable[[QWidget, list[str] | None], None] | None = None

    def startDrag(self, supportedActions: Qt.DropAction) -> None:
        """Qt override: drag the folder under the pointer (the current item)."""
        del supportedActions
        item = self.currentItem()
        if self.drag_out is not None and item is not None:
            self.drag_out(self, [str(item.data(0, Qt.ItemDataRole.UserRole))])


def drag_size(
    ns: BaseNamespace, tops: Sequence[Entry], max_bytes: int, max_entries: int
) -> tuple[int, int, bool]:
    """(content bytes, entries, complete) under ``tops``; stops once a bound is passed.

    Why not the plan's figure alone: making the plan walks every folder, and a drag of a
    huge tree must be refused without that walk (it would freeze the window).
    """
    total = count = 0
    for top in tops:
        count += 1
        total += top.size if top.kind is EntryKind.FILE else 0
        if not top.is_dir:
            continue
        for _folder, entries in ns.walk(top.path, onerror=lambda _p, _e: None):
            count += len(entries)
            total += sum(e.size for e in entries if e.kind is EntryKind.FILE)
            if total > max_bytes or count > max_entries:
                return total, count, False
    return total, count, True


class FilesView(QWidget):
    """The Files tab (see the module docstring).

    Signals:
        blocks_ready(object): "Show Blocks" found ``(volume, Entry, FileBlocks)``.
        changes_requested(): the user asked for "Changes since…".
        loaded(): a state finished opening (tests wait on it).
    """

    blocks_ready = Signal(object)
    changes_requested = Signal()
    loaded = Signal()

    def __init__(self, workers: WorkerPool, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.workers = workers
        self.paths: tuple[Path, ...] = ()
        self.title = ""
        self.state: OpenedState | None = None
        self._wanted: tuple[Path, ...] | None = None
        self._generation = 0
        self._folder = "/"
        self._extract_runner: Runner | None = None
        self._search_runner: Runner | None = None
        self._started = 0.0
        self._reveal: tuple[str, str] | None = None
        self._holds_runner: Runner | None = None
        self.holdings: LayerHoldings | None = None
        #: "Changes Since…" for the snapshot tree's context menu, and what it opens (set by
        #: :func:`install_files_tab`).
        self.changes_action: QAction | None = None
        self.open_changes: Callable[[], None] = self.changes_requested.emit
        #: Asks whether to replace existing files (tests answer without a dialog).
        self.confirm_replace: Callable[[list[str]], bool] = self._ask_replace
        #: Chooses the destination folder (tests give one without a dialog).
        self.choose_folder: Callable[[], Path | None] = self._ask_folder
        #: Bounds of a drag-out (see the module docstring; tests lower them).
        self.drag_max_bytes = DRAG_MAX_BYTES
        self.drag_max_entries = DRAG_MAX_ENTRIES
        #: The private temporary folder of this window's drags (made at the first drag).
        self.drag_root: Path | None = None
        self._drags = 0
        self._build()
        self.clear("Select a snapshot, the current state or a disk image.")

    # -- construction ------------------------------------------------------------------
    def _build(self) -> None:
        self.state_label = QLabel()
        self.state_label.setTextFormat(Qt.TextFormat.PlainText)
        self.volume_box = QComboBox()
        self.volume_box.setToolTip("The guest volume (partition or logical volume) to browse")
        self.volume_box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.volume_box.currentIndexChanged.connect(self._volume_chosen)
        self.search = QLineEdit()
        self.search.setPlaceholderText("Find by name or glob (*.log), Enter")
        self.search.setClearButtonEnabled(True)
        self.search.setToolTip(
            "Shell glob matched against names, or whole paths when it holds "
            "a '/'; FAT names match regardless of case"
        )
        self.search.returnPressed.connect(self.find_files)
        self.changes_button = QPushButton("Changes since…")
        self.changes_button.setToolTip(
            "Compare the files of two states (snapshots or the current state)"
        )
        self.changes_button.clicked.connect(self.changes_requested.emit)
        self.holds_button = QPushButton("What This Image Holds")
        self.holds_button.setToolTip(
            "Which guest files the blocks stored in this differencing "
            "image belong to, largest first: why the snapshot is big, "
            "and what deleting it would cost"
        )
        self.holds_button.clicked.connect(self.show_holdings)
        self.holds_button.setVisible(False)
        heading = QHBoxLayout()
        heading.addWidget(self.state_label, 1)
        heading.addWidget(self.holds_button)
        heading.addWidget(self.changes_button)
        top = QHBoxLayout()
        top.addWidget(QLabel("Volume:"))
        top.addWidget(self.volume_box)
        top.addWidget(self.search, 1)

        self.tree = DragTree()
        self.tree.drag_out = self.drag_out
        self.tree.setDragEnabled(True)
        self.tree.setDragDropMode(QAbstractItemView.DragDropMode.DragOnly)
        self.tree.setHeaderHidden(True)
        self.tree.setAccessibleName("Folders")
        self.tree.itemExpanded.connect(self._expand)
        self.tree.currentItemChanged.connect(self._folder_chosen)
        self.model = EntryModel(self)
        self.table = DragTable()
        self.table.drag_out = self.drag_out
        self.table.setDragEnabled(True)
        self.table.setDragDropMode(QAbstractItemView.DragDropMode.DragOnly)
        self.table.setModel(self.model)
        self.table.setAccessibleName("Files")
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(0, Qt.SortOrder.AscendingOrder)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 6)
        self.table.setWordWrap(False)
        self.table.setShowGrid(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for col in (1, 2, 3):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        self.table.doubleClicked.connect(self._open_row)
        self.table.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.table.customContextMenuRequested.connect(self._row_menu)
        self.holds_label = QLabel()
        self.holds_label.setWordWrap(True)
        self.holds_label.setTextFormat(Qt.TextFormat.PlainText)
        self.holds_table = QTableWidget(0, 3)
        self.holds_table.setHorizontalHeaderLabels(["File", "Size", "Stored in this image"])
        self.holds_table.setAccessibleName("What this image holds")
        self.holds_table.verticalHeader().setVisible(False)
        self.holds_table.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 6)
        self.holds_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.holds_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.holds_table.setWordWrap(False)
        hh = self.holds_table.horizontalHeader()
        hh.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for col in (1, 2):
            hh.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        self.holds_table.itemDoubleClicked.connect(self._holding_chosen)
        self.holds_panel = QWidget()
        holds_layout = QVBoxLayout(self.holds_panel)
        holds_layout.setContentsMargins(0, 0, 0, 0)
        holds_layout.addWidget(self.holds_label)
        holds_layout.addWidget(self.holds_table, 1)
        self.holds_panel.setVisible(False)
        self.right = QSplitter(Qt.Orientation.Vertical)
        self.right.addWidget(self.table)
        self.right.addWidget(self.holds_panel)
        self.right.setStretchFactor(0, 3)
        self.right.setStretchFactor(1, 2)
        self.split = QSplitter(Qt.Orientation.Horizontal)
        self.split.addWidget(self.tree)
        self.split.addWidget(self.right)
        self.split.setStretchFactor(1, 1)
        self.split.setSizes([220, 600])

        self.status = QLabel()
        self.status.setTextFormat(Qt.TextFormat.PlainText)
        self.status.setWordWrap(True)
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(200)
        self.progress.setVisible(False)
        self.speed = QLabel()
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setVisible(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.blocks_button = QPushButton("Show Blocks")
        self.blocks_button.setToolTip(
            "Mark the selected file's VDI blocks in the Block map and Fragmentation tabs, "
            "and say how fragmented it is"
        )
        self.blocks_button.clicked.connect(self._show_blocks)
        self.extract_button = QPushButton("Extract…")
        self.extract_button.setToolTip(
            "Copy the selected files and folders (or, with nothing "
            "selected, the folder shown) to a folder on this computer; small selections "
            "can also be dragged out to a file manager"
        )
        self.extract_button.clicked.connect(lambda: self.extract())
        bottom = QHBoxLayout()
        bottom.addWidget(self.status, 1)
        bottom.addWidget(self.progress)
        bottom.addWidget(self.speed)
        bottom.addWidget(self.cancel_button)
        bottom.addWidget(self.blocks_button)
        bottom.addWidget(self.extract_button)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addLayout(heading)
        layout.addLayout(top)
        layout.addWidget(self.split, 1)
        layout.addLayout(bottom)

    # -- state -------------------------------------------------------------------------
    def clear(self, text: str) -> None:
        """Forget the state and say ``text``."""
        self._generation += 1
        self._close_state()
        self.paths = ()
        self._wanted = None
        self.state_label.setText("")
        self.volume_box.blockSignals(True)
        self.volume_box.clear()
        self.volume_box.blockSignals(False)
        self.tree.clear()
        self.model.set_entries([])
        self.holds_button.setVisible(False)
        self.holds_panel.setVisible(False)
        self.holdings = None
        self.status.setText(text)
        self._update_buttons()

    def _close_state(self) -> None:
        state, self.state = self.state, None
        if state is not None:
            # Closing waits for the state's lock: let a worker do it.
            self.workers.start(lambda _p, _t: state.close(), "files-close")

    def show_state(self, paths: Sequence[Path], title: str) -> None:
        """Show the state whose chain is ``paths`` (base first); opened when the tab shows."""
        # Always opened afresh, even for the same files: after an operation (or a reload) the
        # images' maps may have changed under a chain opened earlier.
        paths = tuple(Path(p) for p in paths)
        self.clear("Reading…")
        self.paths = paths
        self.title = title
        self.state_label.setText(title)
        self._wanted = paths
        if self.isVisible():
            self._open()

    def showEvent(self, event: Any) -> None:
        """Open the state lazily, the first time the tab is shown for it."""
        super().showEvent(event)
        if self._wanted is not None and self.state is None:
            self._open()

    def _open(self) -> None:
        paths = self._wanted
        if paths is None:
            return
        self._wanted = None
        self._generation += 1
        generation = self._generation
        self.status.setText("Reading…")

        def job(_progress: Any, _token: Any) -> tuple[OpenedState, list[Entry] | None, str]:
            state = open_state(paths)
            first = next(iter(state.namespaces), None)
            if first is None:
                return state, None, ""
            with state.lock:
                ns = state.namespaces[first]
                return state, ns.children(ns.root()), first

        self.workers.start(
            job,
            "files-open",
            succeeded=lambda r: self._opened(r, generation),
            failed=lambda exc: self._open_failed(exc, generation),
        )

    def _open_failed(self, exc: BaseException, generation: int) -> None:
        if generation == self._generation:
            self.status.setText(f"Cannot read the files of {self.title}: {messages.sentence(exc)}")
            self.loaded.emit()

    def _opened(self, result: tuple[OpenedState, list[Entry] | None, str], generation: int) -> None:
        state, root_entries, first = result
        if generation != self._generation:
            self.workers.start(lambda _p, _t: state.close(), "files-close")
            return
        self.state = state
        self.volume_box.blockSignals(True)
        self.volume_box.clear()
        for vol in state.volumes:
            ns = state.namespaces.get(vol.name)
            label = f" '{printable(ns.label)}'" if ns is not None and ns.label else ""
            kind = ns.kind if ns is not None else vol.kind
            self.volume_box.addItem(f"{vol.name}: {kind}{label}, {human_size(vol.size)}", vol.name)
            if ns is None:
                item = self.volume_box.model().item(self.volume_box.count() - 1)  # type: ignore[attr-defined]
                item.setEnabled(False)
                why = state.errors.get(vol.name, f"{vol.kind}: its files cannot be read")
                item.setToolTip(why)
        if first:
            self.volume_box.setCurrentIndex(
                next(i for i, v in enumerate(state.volumes) if v.name == first)
            )
        self.volume_box.blockSignals(False)
        if root_entries is None:
            found = ", ".join(f"{v.name} {v.kind}" for v in state.volumes) or "no partitions"
            self.status.setText(
                f"{self.title} holds no filesystem whose files can be read ({found})."
            )
        else:
            self._fill_root(root_entries)
        self.holds_button.setVisible(state.differencing and bool(state.namespaces))
        self._update_buttons()
        if self._reveal is not None:
            volume, path = self._reveal
            self._reveal = None
            self.reveal(volume, path)
        self.loaded.emit()

    @property
    def namespace(self) -> BaseNamespace | None:
        """The namespace of the chosen volume (None before the state is open)."""
        if self.state is None:
            return None
        return self.state.namespaces.get(self.volume_box.currentData() or "")

    @property
    def volume(self) -> str:
        """The chosen volume's name."""
        return str(self.volume_box.currentData() or "")

    def _volume_chosen(self, _index: int) -> None:
        ns = self.namespace
        state = self.state
        if ns is None or state is None:
            return
        self._run_listing(lambda: ns.children(ns.root()), self._fill_root)

    def _run_listing(self, work: Callable[[], Any], done: Callable[[Any], None]) -> None:
        """List on a worker under the state's lock; drop the answer if the state changed."""
        state = self.state
        if state is None:
            return
        generation = self._generation

        def job(_progress: Any, _token: Any) -> Any:
            with state.lock:
                return work()

        def finished(entries: Any) -> None:
            if generation == self._generation and self.state is state:
                done(entries)

        self.workers.start(
            job,
            "files-list",
            succeeded=finished,
            failed=lambda exc: self._listing_failed(exc, generation),
        )

    def _listing_failed(self, exc: BaseException, generation: int) -> None:
        if generation == self._generation:
            self.status.setText(messages.sentence(exc))

    # -- tree and list -----------------------------------------------------------------
    def _fill_root(self, entries: list[Entry], *, show: bool = True) -> None:
        # Built with the tree's signals off: choosing the root item must not start a listing
        # of its own (it would land after, and over, the folder about to be shown).
        self.tree.blockSignals(True)
        try:
            self.tree.clear()
            root = QTreeWidgetItem([f"{self.volume}:/"])
            root.setData(0, Qt.ItemDataRole.UserRole, "/")
            self.tree.addTopLevelItem(root)
            self._add_folders(root, entries)
            root.setExpanded(True)
            self.tree.setCurrentItem(root)
        finally:
            self.tree.blockSignals(False)
        if show:
            self._show_listing("/", entries)

    def _add_folders(self, item: QTreeWidgetItem, entries: list[Entry]) -> None:
        item.takeChildren()
        for e in sorted((e for e in entries if e.is_dir), key=lambda e: e.name.casefold()):
            child = QTreeWidgetItem([printable(e.name)])
            child.setData(0, Qt.ItemDataRole.UserRole, e.path)
            child.setChildIndicatorPolicy(QTreeWidgetItem.ChildIndicatorPolicy.ShowIndicator)
            item.addChild(child)
        item.setData(0, Qt.ItemDataRole.UserRole + 1, True)

    def _expand(self, item: QTreeWidgetItem) -> None:
        if item.data(0, Qt.ItemDataRole.UserRole + 1):
            return
        ns = self.namespace
        if ns is None:
            return
        path = str(item.data(0, Qt.ItemDataRole.UserRole))
        self._run_listing(lambda: ns.listdir(path), lambda e: self._add_folders(item, e))

    def _folder_chosen(self, item: QTreeWidgetItem | None, _prev: Any = None) -> None:
        ns = self.namespace
        if item is None or ns is None:
            return
        path = str(item.data(0, Qt.ItemDataRole.UserRole))
        if path == self._folder and not self.model.show_paths and self.model.entries:
            return
        self.status.setText("Reading…")
        self._run_listing(lambda: ns.listdir(path), lambda e: self._show_listing(path, e))

    def open_folder(self, path: str) -> None:
        """List the folder ``path`` of the chosen volume (on a worker)."""
        ns = self.namespace
        if ns is not None:
            self.status.setText("Reading…")
            self._run_listing(lambda: ns.listdir(path), lambda e: self._show_listing(path, e))

    def _show_listing(self, path: str, entries: list[Entry]) -> None:
        self._folder = path
        self.model.set_entries(entries)
        files = sum(1 for e in entries if not e.is_dir)
        total = sum(e.size for e in entries if e.kind is EntryKind.FILE)
        self.status.setText(
            f"{self.volume}:{printable(path)} — {len(entries) - files} "
            f"folder(s), {files} file(s), {human_size(total)}."
        )
        self._update_buttons()

    def _open_row(self, index: QModelIndex) -> None:
        entry = self.model.entry(index.row())
        if entry.is_dir:
            self.open_folder(entry.path)

    def selected_entries(self) -> list[Entry]:
        """The rows selected in the list."""
        rows = sorted({i.row() for i in self.table.selectionModel().selectedRows()})
        return [self.model.entry(r) for r in rows]

    def _row_menu(self, pos: Any) -> None:
        index = self.table.indexAt(pos)
        if not index.isValid():
            return
        menu = QMenu(self.table)
        menu.addAction("Extract…", lambda: self.extract())
        entry = self.model.entry(index.row())
        if entry.kind is EntryKind.FILE:
            menu.addAction("Show Blocks", self._show_blocks)
        if entry.is_dir:
            menu.addAction("Open", lambda: self.open_folder(entry.path))
        menu.exec(self.table.viewport().mapToGlobal(pos))

    def _show_blocks(self) -> None:
        files = [e for e in self.selected_entries() if e.kind is EntryKind.FILE]
        if not files:
            self.status.setText("Select a file to see its blocks.")
            return
        self.show_blocks(files[0])

    def show_blocks(self, entry: Entry) -> None:
        """Find the VDI blocks under ``entry`` on a worker; :attr:`blocks_ready` tells."""
        ns, state, volume = self.namespace, self.state, self.volume
        if ns is None or state is None:
            return

        def work() -> FileBlocks:
            return file_blocks(state.chain, ns.extents(entry))

        self._run_listing(work, lambda fb: self.blocks_ready.emit((volume, entry, fb)))

    def _update_buttons(self) -> None:
        has = self.namespace is not None
        idle = self._extract_runner is None
        self.extract_button.setEnabled(has and idle)
        self.blocks_button.setEnabled(has)
        self.search.setEnabled(has)

    # -- search ------------------------------------------------------------------------
    def find_files(self, pattern: str | None = None) -> None:
        """Search the chosen volume for a glob, on a worker with a private chain."""
        pattern = (pattern if pattern is not None else self.search.text()).strip()
        if not pattern or self.namespace is None:
            if not pattern:
                self.open_folder(self._folder)
            return
        if self._search_runner is not None:
            self._search_runner.token.cancel()
        paths, volume, generation = self.paths, self.volume, self._generation

        def job(_progress: Any, token: Any) -> tuple[list[Entry], bool]:
            chain, ns = open_private(paths, volume)
            try:
                found: list[Entry] = []
                for entry in ns.find(pattern):
                    token.raise_if_cancelled("Search cancelled.")
                    found.append(entry)
                    if len(found) >= MAX_FOUND:
                        return found, True
                return found, False
            finally:
                chain.close()

        self.status.setText(f"Searching {volume} for {pattern}…")

        def done(result: tuple[list[Entry], bool], runner_box: list[Runner]) -> None:
            if self._search_runner is runner_box[0]:
                self._search_runner = None
            if generation != self._generation:
                return
            found, more = result
            self.model.set_entries(found, show_paths=True)
            cut = f" (the first {MAX_FOUND}; narrow the pattern)" if more else ""
            self.status.setText(f"{len(found)} match(es) for {pattern} in {volume}{cut}.")

        box: list[Runner] = []
        runner = self.workers.start(
            job,
            "files-find",
            succeeded=lambda r: done(r, box),
            failed=lambda exc: self._listing_failed(exc, generation),
            cancelled=lambda: None,
        )
        box.append(runner)
        self._search_runner = runner

    # -- extraction --------------------------------------------------------------------
    def _ask_folder(self) -> Path | None:
        folder = QFileDialog.getExistingDirectory(self, "Extract to folder", str(Path.home()))
        return Path(folder) if folder else None

    def _ask_replace(self, existing: list[str]) -> bool:
        shown = "\n".join(existing[:10]) + (
            f"\n… and {len(existing) - 10} more" if len(existing) > 10 else ""
        )
        answer = QMessageBox.question(
            self,
            "Replace files?",
            f"{len(existing)} file(s) already exist in the destination:\n{shown}\n\nReplace them?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        return answer == QMessageBox.StandardButton.Yes

    def extract(self, entries: Sequence[Entry] | None = None, dest: Path | None = None) -> None:
        """Extract ``entries`` (default: the selection, else the folder shown) into ``dest``."""
        if self.namespace is None or self._extract_runner is not None:
            return
        chosen = list(entries) if entries is not None else self.selected_entries()
        folder = self._folder
        if dest is None:
            dest = self.choose_folder()
            if dest is None:
                return
        self._start_extract(chosen, folder, dest, force=False)

    def _start_extract(self, chosen: list[Entry], folder: str, dest: Path, *, force: bool) -> None:
        paths, volume, generation = self.paths, self.volume, self._generation
        names = [e.path for e in chosen]

        def job(progress: Callable[[Progress], None], token: Any) -> object:
            chain, ns = open_private(paths, volume)
            try:
                tops = (
                    [ns.resolve(p) for p in names] if names else [ns.resolve(folder, follow=True)]
                )
                plan = plan_extract([(ns, e) for e in tops], dest, force=force)
                if plan.problems:
                    return plan
                return run_extract(plan, progress=progress, cancel=token)
            finally:
                chain.close()

        self._started = time.monotonic()
        self.progress.setRange(0, 0)
        self.progress.setVisible(True)
        self.cancel_button.setVisible(True)
        self.speed.setText("")
        self.status.setText(f"Extracting to {dest}…")
        self._extract_runner = self.workers.start(
            job,
            "files-extract",
            progress=self._extract_progress,
            succeeded=lambda r: self._extract_done(r, chosen, folder, dest, force, generation),
            failed=self._extract_failed,
            cancelled=self._extract_cancelled,
        )
        self._update_buttons()

    def _extract_progress(self, event: Progress) -> None:
        if event.total:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(event.done * 1000 / event.total))
        elapsed = time.monotonic() - self._started
        if elapsed > 0.2 and event.bytes_done:
            self.speed.setText(f"{human_size(event.bytes_done / elapsed)}/s")

    def _extract_finished(self) -> None:
        self._extract_runner = None
        self.progress.setVisible(False)
        self.cancel_button.setVisible(False)
        self.speed.setText("")
        self._update_buttons()

    def _extract_done(
        self,
        result: object,
        chosen: list[Entry],
        folder: str,
        dest: Path,
        force: bool,
        generation: int,
    ) -> None:
        self._extract_finished()
        if isinstance(result, ExtractPlan):
            existing = [p for p in result.problems if "already exists" in p]
            if (
                existing
                and len(existing) == len(result.problems)
                and not force
                and generation == self._generation
                and self.confirm_replace(existing)
            ):
                self._start_extract(chosen, folder, dest, force=True)
                return
            self.status.setText(result.refusal())
            return
        self.status.setText(
            f"Extracted {result.files} file(s), {result.links} link(s) and "  # type: ignore[attr-defined]
            f"{result.folders} folder(s), {human_size(result.bytes)}, to "  # type: ignore[attr-defined]
            f"{dest}."
        )

    def _extract_failed(self, exc: BaseException) -> None:
        self._extract_finished()
        self.status.setText(f"Extraction stopped: {messages.sentence(exc)}")

    def _extract_cancelled(self) -> None:
        self._extract_finished()
        self.status.setText("Extraction cancelled; the file being written was removed.")

    def cancel(self) -> None:
        """Stop the running extraction or search."""
        for runner in (self._extract_runner, self._search_runner):
            if runner is not None:
                runner.token.cancel()

    @property
    def extracting(self) -> bool:
        """Whether an extraction runs."""
        return self._extract_runner is not None

    # -- drag-out ------------------------------------------------------------------------
    def drag_out(self, source: QWidget, paths: list[str] | None = None) -> None:
        """Extract ``paths`` (default: the selected rows) and drag them from ``source``."""
        mime = self.prepare_drag(paths)
        if mime is None:
            return
        drag = QDrag(source)
        drag.setMimeData(mime)
        drag.exec(Qt.DropAction.CopyAction)

    def prepare_drag(self, chosen: Sequence[Entry | str] | None = None) -> QMimeData | None:
        """Extract ``chosen`` (entries or paths of the chosen volume; default: the selection)
        into a new private temporary folder; file URLs of what was written, for a drag.

        Returns None when there is nothing to drag or the drag is refused; the status line
        says why, and nothing has been written.
        """
        ns, state = self.namespace, self.state
        if ns is None or state is None:
            return None
        picked = list(chosen) if chosen is not None else self.selected_entries()
        names = [c if isinstance(c, str) else c.path for c in picked]
        if not names:
            return None
        if not state.lock.acquire(timeout=DRAG_WAIT):
            self.status.setText("Still reading the disk; try the drag again in a moment.")
            return None
        folder: Path | None = None
        try:
            # Entries are looked up again in this namespace: search results came from
            # another one (a private chain), and a path is what both share.
            tops = [ns.resolve(n) for n in names]
            total, count, complete = drag_size(ns, tops, self.drag_max_bytes, self.drag_max_entries)
            refusal = self._drag_refusal(total, count, complete)
            if refusal:
                self.status.setText(refusal)
                return None
            folder = self._new_drag_folder()
            plan = plan_extract([(ns, e) for e in tops], folder)
            refusal = self._drag_refusal(plan.total_bytes, len(plan.items), True)
            if plan.problems or refusal:
                shown = "; ".join(printable(p) for p in plan.problems[:5])
                self.status.setText(refusal or f"Cannot drag these files out: {shown}.")
                return None
            result = run_extract(plan)
        except (VdiError, OSError) as exc:
            why = (
                messages.sentence(exc)
                if isinstance(exc, VdiError)
                else f"a temporary copy could not be written: {exc.strerror or exc}"
                + (f" ({exc.filename})" if exc.filename else "")
                + "."
            )
            self.status.setText(f"Cannot drag these files out: {why}")
            self._drop_folder(folder)
            return None
        finally:
            state.lock.release()
        assert folder is not None
        tops_written = [folder.joinpath(*i.rel) for i in plan.items if len(i.rel) == 1]
        if not tops_written:
            self._drop_folder(folder)
            self.status.setText("Nothing to drag: devices, FIFOs and sockets are not copied.")
            return None
        mime = QMimeData()
        mime.setUrls([QUrl.fromLocalFile(str(path)) for path in tops_written])
        self.status.setText(
            f"Dragging {len(tops_written)} item(s), {human_size(result.bytes)}; "
            "drop them on a folder to copy them."
        )
        return mime

    def _drag_refusal(self, total: int, count: int, complete: bool) -> str:
        """Why a drag of ``total`` bytes in ``count`` entries is refused ("" when it is not)."""
        more = "" if complete else " or more"
        if total > self.drag_max_bytes:
            return (
                f"{human_size(total)}{more} is too much to drag out (the limit is "
                f"{human_size(self.drag_max_bytes)}): use Extract… instead, which copies "
                "in the background with progress."
            )
        if count > self.drag_max_entries:
            return (
                f"{count:,}{more} files and folders are too many to drag out (the limit is "
                f"{self.drag_max_entries:,}): use Extract… instead, which copies in the "
                "background with progress."
            )
        return ""

    def _new_drag_folder(self) -> Path:
        """A new, not yet existing folder inside this window's private temporary folder."""
        root = self.drag_root
        if root is None:
            root = Path(tempfile.gettempdir()) / f"vdigui-drag-{secrets.token_hex(8)}"
            fileio.makedirs(root, mode=0o700)
            self.drag_root = root
        # Made by us, only for us: a link or someone else's folder is never written into.
        info = os.lstat(root)
        private = stat.S_ISDIR(info.st_mode)
        if hasattr(os, "getuid"):  # POSIX: owned by us and closed to everyone else
            private = private and info.st_uid == os.getuid() and not info.st_mode & 0o077
        if not private:
            raise OSError(0, "the temporary folder is not private", str(root))
        self._drags += 1
        return root / str(self._drags)

    def _drop_folder(self, folder: Path | None) -> None:
        """Remove one drag's folder after a failure (quietly: the next step says why)."""
        if folder is not None and folder.exists():
            try:
                fileio.remove_tree(folder)
            except OSError:
                pass  # removed with the whole temporary folder on exit

    def remove_drag_copies(self) -> None:
        """Delete the temporary copies made for drags (on exit: drops may copy until then)."""
        root, self.drag_root = self.drag_root, None
        if root is not None:
            try:
                fileio.remove_tree(root)
            except OSError:
                pass  # the system's temporary folder is cleaned by the system as well

    # -- reveal (from "Changes since…" and "What this image holds") ----------------------
    def reveal(self, volume: str, path: str, *, later: bool = False) -> None:
        """Show ``path`` of ``volume`` selected in its folder; ``later``: once the next state
        opens (the window is still loading it)."""
        if later or self.state is None:
            self._reveal = (volume, path)
            return
        index = self.volume_box.findData(volume)
        ns = self.state.namespaces.get(volume)
        if index < 0 or ns is None:
            self.status.setText(f"{volume} cannot be read in this state.")
            return
        if index != self.volume_box.currentIndex():
            self.volume_box.blockSignals(True)
            self.volume_box.setCurrentIndex(index)
            self.volume_box.blockSignals(False)
        parent = path.rsplit("/", 1)[0] or "/"
        name = path.rsplit("/", 1)[-1]

        def done(result: tuple[list[Entry], list[Entry]]) -> None:
            root, entries = result
            self._fill_root(root, show=False)
            self._show_listing(parent, entries)
            for row, entry in enumerate(self.model.entries):
                if entry.name == name:
                    self.table.selectRow(row)
                    self.table.scrollTo(self.model.index(row, 0))
                    break

        self._run_listing(lambda: (ns.children(ns.root()), ns.listdir(parent)), done)

    # -- what this image holds ------------------------------------------------------------
    def show_holdings(self) -> None:
        """Map the newest image's blocks to files, on a worker with a private chain."""
        if self.state is None or self._holds_runner is not None:
            return
        paths, generation = self.paths, self._generation

        def job(progress: Any, token: Any) -> LayerHoldings:
            state = open_state(paths)
            try:
                return layer_holdings(
                    state.chain,
                    len(state.chain.layers) - 1,
                    list(state.namespaces.values()),
                    progress=progress,
                    cancel=token,
                )
            finally:
                state.close()

        self.holds_label.setText("Reading which files this image's blocks belong to…")
        self.holds_panel.setVisible(True)
        self.holds_table.setRowCount(0)
        self.holds_button.setEnabled(False)

        def done(result: LayerHoldings) -> None:
            self._holds_runner = None
            self.holds_button.setEnabled(True)
            if generation == self._generation:
                self._show_holdings(result)

        def failed(exc: BaseException) -> None:
            self._holds_runner = None
            self.holds_button.setEnabled(True)
            if generation == self._generation:
                self.holds_label.setText(messages.sentence(exc))

        def cancelled() -> None:
            self._holds_runner = None
            self.holds_button.setEnabled(True)

        self._holds_runner = self.workers.start(
            job, "files-holds", succeeded=done, failed=failed, cancelled=cancelled
        )

    def _show_holdings(self, result: LayerHoldings) -> None:
        self.holdings = result
        files = result.files
        in_files = result.layer_bytes - result.unclaimed
        partial = (
            ""
            if result.complete
            else (f" The walk stopped after {result.examined:,} files: the list is partial.")
        )
        self.holds_label.setText(
            f"This image stores {human_size(result.layer_bytes)} of guest data: "
            f"{human_size(in_files)} belong to {len(files)} file(s) listed below (largest "
            f"first); {human_size(result.unclaimed)} are filesystem metadata, deleted files or "
            f"free space.{partial}"
        )
        self.holds_table.setSortingEnabled(False)
        self.holds_table.setRowCount(len(files))
        for row, h in enumerate(files):
            name = QTableWidgetItem(f"{h.volume}:{printable(h.path)}")
            name.setData(Qt.ItemDataRole.UserRole, (h.volume, h.path))
            size = QTableWidgetItem(human_size(h.size))
            held = QTableWidgetItem(human_size(h.layer_bytes))
            for item in (size, held):
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self.holds_table.setItem(row, 0, name)
            self.holds_table.setItem(row, 1, size)
            self.holds_table.setItem(row, 2, held)

    def _holding_chosen(self, item: QTableWidgetItem) -> None:
        first = self.holds_table.item(item.row(), 0)
        value = first.data(Qt.ItemDataRole.UserRole) if first is not None else None
        if value:
            self.reveal(*value)

    def shutdown(self) -> None:
        """Close the opened state now (the window's workers have already stopped)."""
        self._generation += 1
        state, self.state = self.state, None
        if state is not None:
            state.close()
        self.remove_drag_copies()


def state_title(window: Any, data: Any) -> str:
    """How the tab names the state: the snapshot row chosen, else the image and its chain."""
    index = window.snapshot_view.currentIndex()
    row = window.snapshot_model.node(index) if index.isValid() else None
    target = data.target
    if row is not None and target.uuid in row.disks:
        what = "Current state" if row.is_current_state else f"Snapshot '{row.name}'"
        return f"{what} ({short_file_name(target.title)})"
    layers = len(data.paths)
    chain = f", read through {layers - 1} parent(s)" if layers > 1 else ""
    return f"Image {short_file_name(target.title)}{chain}"


def describe_blocks(volume: str, entry: Entry, fb: FileBlocks, labels: Sequence[str]) -> str:
    """One paragraph: which layer serves each of the file's blocks, how fragmented it is."""

    def name(layer: int) -> str:
        return (
            "no layer (reads as zeros)"
            if layer < 0
            else (f"'{labels[layer]}'" if layer < len(labels) else f"layer {layer}")
        )

    per = fb.by_layer()
    served = ", ".join(f"{n:,} from {name(layer)}" for layer, n in sorted(per.items()))
    if not fb.blocks.size:
        return (
            f"{volume}:{printable(entry.path)} stores no data in VDI blocks (empty, sparse "
            "or kept inside its metadata)."
        )
    return (
        f"{volume}:{printable(entry.path)} ({human_size(entry.size)}): "
        f"{fb.extents:,} guest extent(s) over {fb.blocks.size:,} VDI block(s) — {served}; "
        f"{fb.slot_runs:,} run(s) of consecutive slots in the image files "
        f"({'contiguous' if fb.slot_runs <= 1 else 'fragmented'})."
    )


def install_files_tab(window: Any) -> FilesView:
    """Add the Files tab to the main window, follow its selection, and link it to the block
    map, the snapshot tree's context menu and the Changes since… dialog."""
    from vdigui.gui.views.changes import ChangesDialog

    view = FilesView(window.workers)
    index = window.tabs.addTab(view, "Files")
    window.tabs.setTabToolTip(
        index,
        "Browse, search and extract the guest files of the "
        "selected snapshot, current state or image",
    )

    def chain_loaded(data: Any) -> None:
        window.blockmap.set_highlight(None)
        window.fragmentation.set_highlight(None)
        view.show_state(data.paths, state_title(window, data))
        if data.error:
            view.state_label.setText(f"{view.title} — incomplete chain: files may read wrong")

    def blocks_ready(found: tuple[str, Entry, FileBlocks]) -> None:
        volume, entry, fb = found
        data = window.chain_data
        same = data is not None and tuple(data.paths) == view.paths
        labels = window.layer_labels(data) if same else [p.name for p in view.paths]
        text = describe_blocks(volume, entry, fb, labels)
        if same and fb.blocks.size:
            text += " They are marked in the Fragmentation tab too."
        window.fragmentation.set_highlight(
            fb if same else None, f"{volume}:{printable(entry.path)} ({human_size(entry.size)})"
        )
        window.tabs.setCurrentWidget(window.blockmap)
        window.blockmap.set_highlight(fb.blocks if same else None, text)

    def current_row() -> Any:
        index = window.snapshot_view.currentIndex()
        return window.snapshot_model.node(index) if index.isValid() else None

    def open_in_state(request: tuple[Any, str, str]) -> None:
        row, volume, path = request
        same = current_row() is row
        view.reveal(volume, path, later=not same)
        if not same:
            window.select_snapshot(row)
        window.tabs.setCurrentWidget(view)

    def open_changes() -> None:
        if window.session is None:
            return
        dialog = ChangesDialog(window.session, window.workers, current_row(), window)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.open_requested.connect(open_in_state)
        window.changes_dialog = dialog
        dialog.show()

    def disk_chosen(current: Any, _previous: Any) -> None:
        node = window.media_model.node(current)
        if node is not None and not node.inspectable:
            view.clear(f"{node.title} cannot be read: {node.error or 'no file'}.")
        else:
            view.clear("Reading…")

    window.chain_loaded.connect(chain_loaded)
    window.media_view.selectionModel().currentChanged.connect(disk_chosen)
    view.blocks_ready.connect(blocks_ready)
    view.changes_requested.connect(open_changes)
    action = QAction("Changes Since…", window)
    action.setToolTip("Compare the guest files of this state with another")
    action.triggered.connect(open_changes)
    view.changes_action = action
    view.open_changes = open_changes
    return view


__all__ = [
    "EntryModel",
    "FilesView",
    "OpenedState",
    "install_files_tab",
    "kind_text",
    "open_private",
    "open_state",
    "state_title",
]
