"""The main window: trees on the left, tabs on the right, problems below, work on threads.

Why it is arranged around two jobs: opening a path (settings and headers) and analysing the
selected chain (block maps, extents) both run on the worker pool, so the window stays
responsive with disks of millions of blocks. Each result is tagged with a generation number;
a result for a selection the user already left is closed and dropped, never shown.

The window never writes to a disk image or settings file: every file is opened read-only, and
the only state it saves is its own (QSettings: geometry, splitters, recent files, theme).
"""

from __future__ import annotations

import html
import uuid as uuidlib
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import (
    QByteArray,
    QItemSelectionModel,
    QModelIndex,
    QSettings,
    Qt,
    QTimer,
    Signal,
)
from PySide6.QtGui import (
    QAction,
    QCloseEvent,
    QDragEnterEvent,
    QDropEvent,
    QKeySequence,
    QPalette,
)
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QDockWidget,
    QFileDialog,
    QLabel,
    QMainWindow,
    QMenu,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTableView,
    QTabWidget,
    QTreeView,
    QVBoxLayout,
    QWidget,
)

from vdigui import __version__
from vdigui.engine import BLOCK_FREE, BLOCK_ZERO, Progress, open_paths, scan_zero_blocks
from vdigui.gui import messages, theme
from vdigui.gui.models.media import MediaTreeModel
from vdigui.gui.models.problems import ProblemRole, ProblemsModel
from vdigui.gui.models.snapshots import SnapshotCostLoader, SnapshotTreeModel
from vdigui.gui.models.tree import install_column_chooser
from vdigui.gui.session import ChainData, DiskNode, Session, SnapNode, load_chain, load_session
from vdigui.gui.views.blockmap import BlockMapView
from vdigui.gui.views.columns import fit_columns
from vdigui.gui.views.files import install_files_tab
from vdigui.gui.views.fragmentation import FragmentationView
from vdigui.gui.views.header import MAP_PREVIEW_ENTRIES, HeaderView
from vdigui.gui.views.locate import LocateDialog
from vdigui.gui.views.overview import OverviewView
from vdigui.gui.views.space import SpaceView
from vdigui.gui.wizards import install_operation_actions, selection_of
from vdigui.gui.workers import Runner, WorkerPool

TABS = ("overview", "header", "blockmap", "fragmentation", "space", "files")
#: The pause between the drawing steps of one selection: the repaint of the previous step
#: (and any input) is handled in between (bench/bench_gui.py measures the stalls).
DEFER_MS = 16
MAX_RECENT = 10


class MainWindow(QMainWindow):
    """The vdigui window.

    Signals:
        idle: emitted whenever the last running job has delivered its result (tests and the
            screenshot mode wait on it).
        session_loaded: a path was opened (the Session).
        chain_loaded: the selected chain was analysed (the ChainData).
    """

    idle = Signal()
    session_loaded = Signal(object)
    chain_loaded = Signal(object)

    def __init__(self, settings: QSettings | None = None) -> None:
        super().__init__()
        self.settings = settings if settings is not None else QSettings()
        self.workers = WorkerPool(self)
        self.workers.idle.connect(self._workers_idle)
        self.session: Session | None = None
        self.chain_data: ChainData | None = None
        self.selected_disk: DiskNode | None = None
        self.pending_path: Path | None = None
        self._generation = 0
        self._scan_runner: Runner | None = None
        self._selecting = False
        self._deferred = 0
        self._shut_down = False
        self._selections = 0  # select_* calls, so a deferred default never overrides one
        self.setWindowTitle("vdigui")
        self.setAcceptDrops(True)
        self._build_widgets()
        self._build_actions()
        self.operations = install_operation_actions(
            self,
            lambda: self.session.vm if self.session is not None else None,
            lambda: selection_of(self),
            self.reload,
        )
        self.space.attach(self.operations, self.snapshot_model)
        self.files = install_files_tab(self)
        for view in (self.snapshot_view, self.media_view):
            view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
            view.customContextMenuRequested.connect(
                lambda pos, v=view: self._tree_context_menu(v, pos)
            )
        self._restore_state()
        self.show_welcome()

    def _tree_context_menu(self, view: QTreeView, pos: Any) -> None:
        """The operations that apply to the row under the mouse (disabled ones say why)."""
        index = view.indexAt(pos)
        if not index.isValid():
            return
        view.setCurrentIndex(index)
        actions = self.operations.context_actions(selection_of(self))
        if view is self.snapshot_view and self.files.changes_action is not None:
            actions = [*actions, self.files.changes_action]
        if actions:
            menu = QMenu(view)
            menu.addActions(actions)
            menu.setToolTipsVisible(True)
            menu.exec(view.viewport().mapToGlobal(pos))

    # -- construction ----------------------------------------------------------------------
    def _build_widgets(self) -> None:
        self.snapshot_model = SnapshotTreeModel(parent=self)
        self.snapshot_view = QTreeView()
        self.snapshot_view.setModel(self.snapshot_model)
        self.snapshot_view.setUniformRowHeights(True)
        self.snapshot_view.setAllColumnsShowFocus(True)
        # Content widths; the name elides if it must (its tooltip says all, "taken" date
        # included, so "Taken" starts hidden: the header's menu shows it). The cost columns
        # (filled on a worker, "…" meanwhile) sort by value; no sort at first.
        self.snapshot_view.setIndentation(14)
        self.snapshot_fitter = fit_columns(self.snapshot_view, elastic=((1,), (0,)), fill=0)
        self.snapshot_columns = install_column_chooser(self.snapshot_view, hidden=(1,))
        self.snapshot_view.header().setSortIndicator(-1, Qt.SortOrder.AscendingOrder)
        self.snapshot_view.header().setSortIndicatorClearable(True)
        self.snapshot_view.setSortingEnabled(True)
        self.snapshot_costs = SnapshotCostLoader(self.workers, self.snapshot_model, self)
        self.snapshot_view.setToolTip("")
        self.snapshot_view.selectionModel().currentChanged.connect(self._snapshot_chosen)
        self.snapshot_view.setAccessibleName("Snapshots")

        self.media_model = MediaTreeModel(parent=self)
        self.media_view = QTreeView()
        self.media_view.setModel(self.media_model)
        self.media_view.setUniformRowHeights(True)
        self.media_view.setAllColumnsShowFocus(True)
        # Content widths; "Used by", then a long type, then the image name elide (tooltips
        # say all).
        self.media_fitter = fit_columns(
            self.media_view, elastic=((1,), (2,), (0,)), keep={2: "differencing"}
        )
        self.media_view.selectionModel().currentChanged.connect(self._disk_chosen)
        self.media_view.setAccessibleName("Disk images")

        def boxed(title: str, view: QWidget) -> QWidget:
            box = QWidget()
            layout = QVBoxLayout(box)
            layout.setContentsMargins(4, 4, 4, 4)
            label = QLabel(f"<b>{title}</b>")
            layout.addWidget(label)
            layout.addWidget(view)
            return box

        self.left = QSplitter(Qt.Orientation.Vertical)
        self.left.setObjectName("left")
        self.left.addWidget(boxed("Snapshots", self.snapshot_view))
        self.left.addWidget(boxed("Disk images", self.media_view))
        self.left.setSizes([260, 420])

        self.overview = OverviewView()
        self.header_view = HeaderView()
        self.header_view.map_requested.connect(self.show_map_region)
        self.blockmap = BlockMapView()
        self.blockmap.locate_requested.connect(self.locate_byte)
        self.blockmap.scan_requested.connect(self.scan_zero_blocks)
        self.blockmap.reveal_requested.connect(self._reveal_file)
        self.fragmentation = FragmentationView()
        # A pool of its own: the Space tab's count must not queue behind the availability
        # checks and the cost map on the analysis pool (bench/bench_gui.py measures it).
        self.space_workers = WorkerPool(self)
        self.space_workers.idle.connect(self._workers_idle)
        self.space = SpaceView(self.space_workers)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.overview, "Overview")
        self.tabs.addTab(self.header_view, "Header")
        self.tabs.addTab(self.blockmap, "Block map")
        self.tabs.addTab(self.fragmentation, "Fragmentation")
        self.tabs.addTab(self.space, "Space")
        self._stale: set[QWidget] = set()
        self.tabs.currentChanged.connect(lambda _index: self._fill_current_tab())
        for i, tip in enumerate(
            (
                "Figures, UUIDs and the chain of the selected image (Ctrl+1)",
                "The first 512 bytes, annotated (Ctrl+2)",
                "Which layer holds each guest block (Ctrl+3)",
                "How the blocks are ordered in the files (Ctrl+4)",
                "Where the space of the folder goes, and what frees it (Ctrl+5)",
            )
        ):
            self.tabs.setTabToolTip(i, tip)

        self.main_split = QSplitter(Qt.Orientation.Horizontal)
        self.main_split.setObjectName("main")
        self.main_split.addWidget(self.left)
        self.main_split.addWidget(self.tabs)
        self.main_split.setStretchFactor(0, 0)
        self.main_split.setStretchFactor(1, 1)
        self.main_split.setSizes([500, 900])
        self.setCentralWidget(self.main_split)

        self.problems_model = ProblemsModel(self)
        self.problems_view = QTableView()
        self.problems_view.setModel(self.problems_model)
        self.problems_view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.problems_view.verticalHeader().setVisible(False)
        self.problems_fitter = fit_columns(self.problems_view, elastic=(2, 3), fill=2)
        self.problems_view.setWordWrap(False)
        self.problems_view.doubleClicked.connect(self._problem_chosen)
        self.problems_view.setToolTip("Double-click a problem to select the image it is about")
        self.problems_dock = QDockWidget("Problems", self)
        self.problems_dock.setObjectName("problems")
        self.problems_dock.setWidget(self.problems_view)
        self.problems_dock.setFeatures(
            QDockWidget.DockWidgetFeature.DockWidgetClosable
            | QDockWidget.DockWidgetFeature.DockWidgetMovable
        )
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.problems_dock)
        self.resizeDocks([self.problems_dock], [130], Qt.Orientation.Vertical)

        self.status_label = QLabel()
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(220)
        self.progress.setVisible(False)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the running scan (Esc)")
        self.cancel_button.setVisible(False)
        self.cancel_button.clicked.connect(self.cancel_jobs)
        bar = self.statusBar()
        bar.addWidget(self.status_label, 1)
        bar.addPermanentWidget(self.progress)
        bar.addPermanentWidget(self.cancel_button)

    def _action(
        self, menu: Any, text: str, slot: Callable[[], Any], shortcut: Any, tip: str
    ) -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        shortcut_text = action.shortcut().toString(QKeySequence.SequenceFormat.NativeText)
        action.setToolTip(f"{tip} ({shortcut_text})" if shortcut_text else tip)
        action.setStatusTip(tip)
        action.triggered.connect(slot)
        menu.addAction(action)
        self.addAction(action)
        return action

    def _build_actions(self) -> None:
        bar = self.menuBar()
        file_menu = bar.addMenu("&File")
        self._action(
            file_menu,
            "Open VM &Folder…",
            self.choose_folder,
            QKeySequence.StandardKey.Open,
            "Open a VirtualBox VM folder (the folder holding a .vbox file)",
        )
        self._action(
            file_menu,
            "Open Disk &Image…",
            self.choose_image,
            "Ctrl+Shift+O",
            "Open a .vdi image or a .vbox file",
        )
        self._action(
            file_menu,
            "Open &Demo VM",
            self.open_demo,
            "Ctrl+Shift+D",
            "Build (once) and open a demo VM with snapshots and typical problems",
        )
        self.recent_menu = file_menu.addMenu("Open &Recent")
        self.recent_menu.setToolTipsVisible(True)
        file_menu.addSeparator()
        self.reload_action = self._action(
            file_menu,
            "&Reload",
            self.reload,
            QKeySequence.StandardKey.Refresh,
            "Read the opened folder again from disk",
        )
        self.reload_action.setShortcut(QKeySequence("F5"))
        self.report_action = self._action(
            file_menu,
            "Export &Report…",
            self.export_report,
            "Ctrl+Shift+E",
            "Write one self-contained HTML page about the opened folder or image, to attach "
            "to a help request",
        )
        file_menu.addSeparator()
        self._action(file_menu, "&Quit", self.close, "Ctrl+Q", "Close vdigui")

        view = bar.addMenu("&View")
        for i, name in enumerate(
            ("&Overview", "&Header", "&Block map", "F&ragmentation", "&Space")
        ):
            self._action(
                view,
                name,
                partial(self.tabs.setCurrentIndex, i),
                f"Ctrl+{i + 1}",
                f"Show the {name.replace('&', '')} tab",
            )
        view.addSeparator()
        self._action(
            view,
            "Zoom &In",
            lambda: self._zoom(0.5),
            QKeySequence.StandardKey.ZoomIn,
            "Zoom the block map in",
        )
        self._action(
            view,
            "Zoom &Out",
            lambda: self._zoom(2.0),
            QKeySequence.StandardKey.ZoomOut,
            "Zoom the block map out",
        )
        self._action(
            view, "&Whole Disk", self._fit, "Ctrl+0", "Show the whole disk in the block map"
        )
        view.addSeparator()
        view.addAction(self.problems_dock.toggleViewAction())
        self.problems_dock.toggleViewAction().setShortcut(QKeySequence("Ctrl+Shift+P"))
        theme_menu = view.addMenu("&Theme")
        for key, label, shortcut in (
            ("system", "&System", "Ctrl+Alt+1"),
            ("light", "&Light", "Ctrl+Alt+2"),
            ("dark", "&Dark", "Ctrl+Alt+3"),
        ):
            self._action(
                theme_menu, label, partial(self.set_theme, key), shortcut, f"Use the {key} colours"
            )

        tools = bar.addMenu("&Inspect")
        self.locate_action = self._action(
            tools,
            "&Locate Byte…",
            self.locate_byte,
            "Ctrl+L",
            "Find where a guest byte offset is stored",
        )
        self.map_action = self._action(
            tools,
            "Show Block &Map Region",
            self.show_map_region,
            "Ctrl+M",
            "Show the raw block map in the Header tab",
        )
        self.scan_action = self._action(
            tools,
            "Find &All-Zero Blocks",
            self.scan_zero_blocks,
            "Ctrl+Shift+Z",
            "Read the allocated blocks to find the ones holding only zeros",
        )
        self._action(
            tools,
            "&Cancel",
            self.cancel_jobs,
            QKeySequence.StandardKey.Cancel,
            "Stop the running scan",
        )

        help_menu = bar.addMenu("&Help")
        self._action(
            help_menu,
            "&About vdigui",
            self.about,
            QKeySequence.StandardKey.HelpContents,
            "Version and licence",
        )
        self._action(help_menu, "About &Qt", QApplication.aboutQt, None, "The Qt version")
        self._update_actions()
        self._rebuild_recent()

    # -- settings ----------------------------------------------------------------------------
    def _restore_state(self) -> None:
        geometry = self.settings.value("window/geometry")
        if isinstance(geometry, QByteArray):
            self.restoreGeometry(geometry)
        else:
            self.resize(1280, 800)
        state = self.settings.value("window/state")
        if isinstance(state, QByteArray):
            self.restoreState(state)
        for splitter in (self.main_split, self.left):
            saved = self.settings.value(f"splitter/{splitter.objectName()}")
            if isinstance(saved, QByteArray):
                splitter.restoreState(saved)

    def _save_state(self) -> None:
        self.settings.setValue("window/geometry", self.saveGeometry())
        self.settings.setValue("window/state", self.saveState())
        for splitter in (self.main_split, self.left):
            self.settings.setValue(f"splitter/{splitter.objectName()}", splitter.saveState())
        self.settings.sync()

    def recent(self) -> list[str]:
        """Recently opened paths, newest first."""
        value = self.settings.value("recent", [])
        if isinstance(value, str):
            return [value]
        return [str(v) for v in value] if isinstance(value, list) else []

    def _remember(self, path: Path) -> None:
        items = [str(path)] + [p for p in self.recent() if p != str(path)]
        self.settings.setValue("recent", items[:MAX_RECENT])
        self._rebuild_recent()

    def _rebuild_recent(self) -> None:
        self.recent_menu.clear()
        items = self.recent()
        for n, item in enumerate(items, start=1):
            action = self.recent_menu.addAction(f"&{n % 10} {Path(item).name}")
            action.setToolTip(item)
            action.setStatusTip(item)
            if n <= 9:
                action.setShortcut(QKeySequence(f"Alt+Shift+{n}"))
            action.triggered.connect(lambda _=False, p=item: self.open_path(p))
        if not items:
            empty = self.recent_menu.addAction("(nothing yet)")
            empty.setEnabled(False)
        self.recent_menu.addSeparator()
        clear = self.recent_menu.addAction("&Clear List")
        clear.setEnabled(bool(items))
        clear.triggered.connect(self._clear_recent)

    def _clear_recent(self) -> None:
        self.settings.setValue("recent", [])
        self._rebuild_recent()

    def set_theme(self, key: str) -> None:
        """Switch palettes (system, light, dark) and remember the choice."""
        self.settings.setValue("theme", key)
        apply_theme(key)
        self._redraw()

    def _redraw(self) -> None:
        if self.chain_data is not None:
            self._show_chain(self.chain_data)
        self.header_view.hex.update()
        self.fragmentation.strip.update()
        self.space.update()

    # -- opening ---------------------------------------------------------------------------
    def show_welcome(self) -> None:
        """The empty state: say what to do."""
        self.status_label.setText(
            "Open a VM folder (Ctrl+O), a disk image (Ctrl+Shift+O), or "
            "drop one here. Try the demo VM: Ctrl+Shift+D."
        )
        self.overview.clear("Open a VM folder or a disk image to begin")

    def choose_folder(self) -> None:
        """File > Open VM Folder."""
        start = self.recent()[0] if self.recent() else str(Path.home())
        folder = QFileDialog.getExistingDirectory(self, "Open VM folder", start)
        if folder:
            self.open_path(folder)

    def choose_image(self) -> None:
        """File > Open Disk Image."""
        start = str(Path(self.recent()[0]).parent) if self.recent() else str(Path.home())
        path, _ = QFileDialog.getOpenFileName(
            self,
            "Open disk image or VM settings",
            start,
            "VirtualBox files (*.vdi *.vbox);;Disk images (*.vdi);;VM settings (*.vbox);;"
            "All files (*)",
        )
        if path:
            self.open_path(path)

    def open_demo(self) -> None:
        """Build the demo VM in the cache folder (once, on a worker) and open it."""
        from vdigui.engine import build_demo_vm

        self._busy("Building the demo VM (once)…")
        self.workers.start(
            lambda progress, token: build_demo_vm(),
            "demo",
            succeeded=self.open_path,
            failed=lambda exc: self._failed("Cannot build the demo", exc),
        )

    def open_path(self, path: str | Path) -> None:
        """Open a VM folder, a .vbox or a .vdi (on a worker)."""
        source = Path(path).expanduser()
        self.pending_path = source
        self._generation += 1
        generation = self._generation
        self._busy(f"Opening {source}…")
        self.workers.start(
            lambda progress, token: load_session(source, progress),
            "open",
            progress=self._progress,
            succeeded=lambda session: self._session_ready(session, generation),
            failed=lambda exc: self._failed(f"Cannot open {source.name}", exc),
        )

    def reload(self) -> None:
        """File > Reload: read the current source again."""
        if self.session is not None:
            self.open_path(self.session.source)

    #: Save-dialog filters of File > Export Report (the redacted one hides home and user).
    REPORT_FILTERS = (
        "HTML report (*.html)",
        "HTML report, home folder and user name hidden (*.html)",
        "JSON, for machines (*.json)",
    )

    def export_report(self, target: str | Path | None = None, chosen_filter: str = "") -> None:
        """File > Export Report: the shareable report of the opened source, on a worker.

        ``target`` (and ``chosen_filter``) skip the save dialog (tests, scripting); the dialog
        itself asks before replacing a file, so the report then overwrites.
        """
        if self.session is None:
            return
        source = Path(self.session.source)
        if target is None:
            start = str(Path.home() / f"{source.stem or source.name}-report.html")
            target, chosen_filter = QFileDialog.getSaveFileName(
                self, "Export report", start, ";;".join(self.REPORT_FILTERS)
            )
            if not target:
                return
        output = Path(target)
        as_json = output.suffix.lower() == ".json" or chosen_filter == self.REPORT_FILTERS[2]
        redacted = chosen_filter == self.REPORT_FILTERS[1]
        from vdigui.engine import write_report

        self._busy(f"Writing the report of {source.name}…")
        self.workers.start(
            lambda progress, token: write_report(
                source,
                output,
                as_json=as_json,
                redacted=redacted,
                overwrite=True,
                progress=progress,
                cancel=token,
            ),
            "report",
            progress=self._progress,
            succeeded=self._report_written,
            failed=lambda exc: self._failed("Cannot write the report", exc),
        )

    def _report_written(self, path: Path) -> None:
        self.status_label.setText(f"Wrote the report to {path}.")
        box = QMessageBox(
            QMessageBox.Icon.Information,
            "Report written",
            f"The report was written to {path}.",
            parent=self,
        )
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.report_box = box
        box.open()

    def _session_ready(self, session: Session, generation: int) -> None:
        if generation != self._generation:
            return
        keep = (
            self.selected_disk.uuid
            if self.selected_disk is not None
            and (self.session is not None and self.session.source == session.source)
            else None
        )
        self.session = session
        self.space.set_session(session)
        self._close_chain()
        self.selected_disk = None
        self._remember(session.source)
        self.setWindowTitle(f"{session.title} — vdigui")
        self.snapshot_model.set_roots(session.snapshot_roots)
        self.snapshot_costs.load(session)
        self.snapshot_view.expandAll()
        self.media_model.set_roots(session.media_roots)
        self.media_view.expandAll()
        self.problems_model.set_problems(session.problems)
        errors = sum(1 for p in session.problems if p.severity == "error")
        self.problems_dock.setWindowTitle(f"Problems ({len(session.problems)})")
        if session.problems:
            self.problems_dock.setVisible(True)
        summary = (
            f"{len(session.problems)} problem{'s' if len(session.problems) != 1 else ''}"
            f" ({errors} error{'s' if errors != 1 else ''})"
            if session.problems
            else "no problems found"
        )
        self.status_label.setText(f"Opened {session.source} — {summary}.")
        self.session_loaded.emit(session)
        self._update_actions()
        # Selecting (which clears and redraws every tab) waits for the next event-loop turn,
        # so the trees are painted first and the window never does both in one stall.
        asked = self._selections
        self._later(lambda: self._select_initial(session, keep, asked))

    def _select_initial(self, session: Session, keep: uuidlib.UUID | None, asked: int) -> None:
        """Select what was selected before a reload, else the current state."""
        if session is not self.session:
            return  # another path was opened meanwhile
        if self._selections != asked:
            return  # something selected a node meanwhile (an operation's "show the chain")
        target = session.disk_by_uuid(keep) if keep else None
        current = next((r for r in session.iter_snapshots() if r.is_current_state), None)
        if target is None and current is not None:
            self.select_snapshot(current)
        else:
            self.select_disk(target or session.default_disk)

    # -- selection ---------------------------------------------------------------------------
    def select_snapshot(self, row: SnapNode) -> None:
        """Select a snapshot row (and, through it, the disk it froze)."""
        self._selections += 1
        index = self.snapshot_model.index_of(row)
        self.snapshot_view.selectionModel().setCurrentIndex(
            index,
            QItemSelectionModel.SelectionFlag.ClearAndSelect
            | QItemSelectionModel.SelectionFlag.Rows,
        )
        self.snapshot_view.scrollTo(index)

    def select_disk(self, node: DiskNode | None) -> None:
        """Select a media-tree node (and analyse its chain)."""
        self._selections += 1
        if node is None:
            self._close_chain()
            self.overview.clear("Nothing to show: no readable disk image")
            self._maybe_idle()
            return
        index = self.media_model.index_of(node)
        self.media_view.selectionModel().setCurrentIndex(
            index,
            QItemSelectionModel.SelectionFlag.ClearAndSelect
            | QItemSelectionModel.SelectionFlag.Rows,
        )
        self.media_view.scrollTo(index)

    def select_by_name(self, text: str) -> bool:
        """Select a snapshot (by name/UUID) or a disk (by file name/UUID); True if found."""
        if self.session is None:
            return False
        row = self.session.find_snapshot(text)
        if row is not None:
            self.select_snapshot(row)
            return True
        disk = self.session.find_disk(text)
        if disk is not None:
            self.select_disk(disk)
            return True
        return False

    def _snapshot_chosen(self, current: QModelIndex, _previous: QModelIndex) -> None:
        row = self.snapshot_model.node(current)
        if row is None or self.session is None:
            return
        found = (self.session.disk_by_uuid(u) for u in row.disks)
        disks = [d for d in found if d is not None]
        self.media_model.set_highlighted({d.uuid for d in disks})
        # The disk to show: the first attached hard disk (normally the boot disk on port 0),
        # preferring one that can be read.
        choice = next((d for d in disks if d.inspectable), disks[0] if disks else None)
        if choice is not None:
            self._selecting = True
            try:
                self.select_disk(choice)
            finally:
                self._selecting = False

    def _disk_chosen(self, current: QModelIndex, _previous: QModelIndex) -> None:
        node = self.media_model.node(current)
        if node is None or self.session is None:
            return
        if not self._selecting:
            self.snapshot_view.selectionModel().clearCurrentIndex()
            self.snapshot_view.clearSelection()
            self.media_model.set_highlighted(set())
        self.selected_disk = node
        self._close_chain()
        self.overview.show_node(node)
        self.space.show_selection(node)
        self.header_view.clear()
        self.blockmap.clear()
        self.fragmentation.clear()
        if not node.inspectable:
            if node.path is not None and node.path.exists():
                from vdigui.gui.session import read_first_bytes

                self.header_view.set_header(read_first_bytes(node.path))
            self.status_label.setText(f"{node.title} cannot be inspected: {node.error}.")
            self._update_actions()
            self._maybe_idle()
            return
        self._generation += 1
        generation = self._generation
        session = self.session
        self._busy(f"Analysing {node.title}…")
        self.workers.start(
            lambda progress, token: load_chain(session, node, progress),
            "chain",
            progress=self._progress,
            succeeded=lambda data: self._chain_ready(data, generation),
            failed=lambda exc: self._failed(f"Cannot analyse {node.title}", exc),
        )

    def _problem_chosen(self, index: QModelIndex) -> None:
        problem = self.problems_model.data(index, ProblemRole)
        if problem is None or self.session is None:
            return
        node = self.session.disk_by_uuid(problem.uuid) if problem.uuid else None
        if node is None and problem.path is not None:
            node = next((d for d in self.session.iter_disks() if d.path == problem.path), None)
        if node is not None:
            self.select_disk(node)

    # -- chain -----------------------------------------------------------------------------
    def layer_labels(self, data: ChainData) -> list[str]:
        """A short name per layer: the snapshot that froze it, else the file name."""
        names: dict[uuidlib.UUID, str] = {}
        if self.session is not None:
            for row in self.session.iter_snapshots():
                for uuid in row.disks[:1]:
                    names.setdefault(uuid, row.name)
        labels = []
        for header, path in zip(data.headers, data.paths, strict=True):
            labels.append(names.get(header.uuid, path.name))
        return labels

    def _chain_ready(self, data: ChainData, generation: int) -> None:
        if generation != self._generation:
            data.close()
            return
        self._close_chain()
        self.chain_data = data
        self._show_chain(data, spread=True)
        name = data.target.title
        self.status_label.setText(
            f"{name}: {len(data.paths)} layer{'s' if len(data.paths) != 1 else ''}, "
            f"{data.chain.guest_blocks:,} guest blocks."
            + (f" Incomplete chain: {data.error}" if data.error else "")
        )
        self.chain_loaded.emit(data)
        self._update_actions()

    def _show_chain(self, data: ChainData, *, spread: bool = False) -> None:
        """Fill the cheap tabs now and the heavy ones (block map, fragmentation) when shown.

        Drawing a two-million-block map and its scatter takes ~15-50 ms each; doing only the
        visible one, in its own event-loop turns when ``spread`` (bench/bench_gui.py), keeps
        every GUI-thread stall under 50 ms.
        """
        labels = self.layer_labels(data)
        self.overview.show_chain(data, labels)
        self.header_view.set_header(data.raw_header)
        self._stale = {self.blockmap, self.fragmentation}
        if not spread:
            self._fill_current_tab()
            return
        # The visible heavy tab is drawn in a later event-loop turn, so this turn (and the
        # repaint after it) stays short.
        generation = self._generation
        self._later(
            lambda: (
                self._fill_current_tab(spread=True)
                if data is self.chain_data and generation == self._generation
                else None
            )
        )

    def _fill_current_tab(self, *, spread: bool = False) -> None:
        """Draw the visible heavy tab if it shows an older chain.

        With ``spread`` (a new selection) the block map's guest-use row follows in a later
        event-loop turn; a tab the user switches to is drawn at once.
        """
        data = self.chain_data
        current = self.tabs.currentWidget()
        if data is None or current not in self._stale:
            return
        self._stale.discard(current)
        labels = self.layer_labels(data)
        if current is self.blockmap:
            notice = (
                f"⚠ Incomplete chain: {data.error} Blocks held by the missing layers "
                "are shown as not served."
                if data.error
                else ""
            )
            self.blockmap.set_data(
                labels,
                data.analysis.entries,
                data.analysis.serving,
                data.headers,
                data.zero_masks,
                notice,
                data.codes,
                data.pyramids,
            )
            # Which files each block holds, for the hover text (a worker; an incomplete
            # chain's filesystems would read as nonsense, so none for it).
            self.blockmap.index_files(self.workers, None if data.error else data.paths)
            if not spread:
                self.blockmap.set_usage(data.usage, data.usage_error)
                return
            # Each of these draws the whole map once (~15 ms for two million blocks): in one
            # event-loop turn they would stall the window twice as long.
            generation = self._generation
            self._later(lambda: self._show_usage(data, generation))
        elif current is self.fragmentation:
            self.fragmentation.set_data(
                data.analysis, labels, data.host, data.chain.block_size, data.usage
            )

    def _later(self, step: Callable[[], None]) -> None:
        """Run ``step`` in a later event-loop turn; :attr:`idle` waits for it."""
        self._deferred += 1

        def run() -> None:
            self._deferred -= 1
            if self._shut_down:
                return
            try:
                step()
            finally:
                self._maybe_idle()

        # One frame later, not 0 ms: a zero timer runs in the same pass as the repaint the
        # previous step caused, so input would wait for both. The window is the timer's
        # context: a step never runs after the window is gone.
        QTimer.singleShot(DEFER_MS, self, run)

    def _show_usage(self, data: ChainData, generation: int) -> None:
        if data is self.chain_data and generation == self._generation:
            self.blockmap.set_usage(data.usage, data.usage_error)

    def _close_chain(self) -> None:
        if self.chain_data is not None:
            self.chain_data.close()
            self.chain_data = None
        self._update_actions()

    def _update_actions(self) -> None:
        has_chain = self.chain_data is not None
        for action in (self.locate_action, self.map_action, self.scan_action):
            action.setEnabled(has_chain)
        self.reload_action.setEnabled(self.session is not None)
        self.report_action.setEnabled(self.session is not None)

    def _zoom(self, factor: float) -> None:
        self.tabs.setCurrentWidget(self.blockmap)
        self.blockmap.zoom(factor)

    def _fit(self) -> None:
        self.tabs.setCurrentWidget(self.blockmap)
        self.blockmap.fit()

    def locate_byte(self) -> None:
        """Inspect > Locate Byte."""
        data = self.chain_data
        if data is None:
            return
        dialog = LocateDialog(data.chain, self.layer_labels(data), self)
        dialog.show_block.connect(self._show_block)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.show()
        self.locate_dialog = dialog

    def _reveal_file(self, volume: str, path: str) -> None:
        """The block map's "Show FILE in the Files tab": the Files tab shows the same state."""
        self.tabs.setCurrentWidget(self.files)
        self.files.reveal(volume, path)

    def _show_block(self, block: int) -> None:
        self.tabs.setCurrentWidget(self.blockmap)
        self.blockmap.show_block(block)

    def show_map_region(self) -> None:
        """Inspect > Show Block Map Region: the first map entries of the selected image."""
        data = self.chain_data
        if data is None:
            return
        top = data.chain.top
        header = top.header
        count = min(header.blocks, MAP_PREVIEW_ENTRIES)
        raw = top.read_raw(header.offset_blocks, count * 4)

        def describe(block: int, entry: int) -> str:
            if entry == BLOCK_FREE:
                return "FREE: not stored here (reads through to the parent, or zeros)."
            if entry == BLOCK_ZERO:
                return "ZERO: reads as zeros (and hides the parent)."
            return f"slot {entry:,}, data at file offset 0x{header.slot_offset(entry):X}."

        self.header_view.show_map_region(raw, header.offset_blocks, header.blocks, describe)
        self.tabs.setCurrentWidget(self.header_view)

    def scan_zero_blocks(self) -> None:
        """Inspect > Find All-Zero Blocks: read each layer's allocated blocks on a worker."""
        data = self.chain_data
        if data is None or self._scan_runner is not None:
            return
        paths = data.paths
        generation = self._generation

        def job(progress: Callable[[Progress], None], token: Any) -> list[np.ndarray]:
            # A private read-only chain: the window may close its own while this runs.
            chain = open_paths(paths)
            try:
                return [scan_zero_blocks(layer, progress, token) for layer in chain.layers]
            finally:
                chain.close()

        self._busy("Looking for all-zero blocks…", cancellable=True)
        self._scan_runner = self.workers.start(
            job,
            "scan",
            progress=self._progress,
            succeeded=lambda masks: self._scan_done(masks, generation),
            failed=self._scan_failed,
            cancelled=self._scan_cancelled,
        )

    def _scan_done(self, masks: list[np.ndarray], generation: int) -> None:
        self._scan_runner = None
        data = self.chain_data
        if data is not None and generation == self._generation:
            data.zero_masks = list(masks)
            if self.blockmap not in self._stale:
                self.blockmap.set_zero_masks(data.zero_masks)
            found = sum(int(m.sum()) for m in masks)
            self.status_label.setText(
                f"Found {found:,} allocated block{'s' if found != 1 else ''} holding only zeros "
                "(marked in the block map); compaction would drop them."
            )

    def _scan_failed(self, exc: BaseException) -> None:
        self._scan_runner = None
        self._failed("The scan stopped", exc)

    def _scan_cancelled(self) -> None:
        self._scan_runner = None
        self.status_label.setText("Scan cancelled; nothing was changed.")

    def cancel_jobs(self) -> None:
        """Cancel the running scan (loading is quick and not cancellable)."""
        if self._scan_runner is not None:
            self._scan_runner.token.cancel()

    # -- status ----------------------------------------------------------------------------
    def _busy(self, text: str, *, cancellable: bool = False) -> None:
        self.status_label.setText(text)
        self.progress.setRange(0, 0)
        self.progress.setVisible(True)
        self.cancel_button.setVisible(cancellable)

    def _progress(self, event: Progress) -> None:
        if event.total:
            self.progress.setRange(0, event.total)
            self.progress.setValue(event.done)
            self.progress.setFormat(f"{event.phase}: %p%")
        else:
            self.progress.setRange(0, 0)

    def _failed(self, title: str, exc: BaseException) -> None:
        self.status_label.setText(f"{title}: {messages.sentence(exc)}")
        messages.report(self, title, exc)

    def _maybe_idle(self) -> None:
        """Emit :attr:`idle` now if no job runs (paths that finish without a job)."""
        if not self.workers.running and not self.space_workers.running:
            self._workers_idle()

    @property
    def busy(self) -> bool:
        """Whether a job runs or a deferred drawing step is still queued."""
        return bool(self.workers.running) or bool(self.space_workers.running) or self._deferred > 0

    def _workers_idle(self) -> None:
        if self._deferred:
            return  # the last deferred step calls _maybe_idle again
        if self.workers.running or self.space_workers.running:
            return  # the other pool's idle comes later
        self.progress.setVisible(False)
        self.cancel_button.setVisible(False)
        self.idle.emit()

    # -- events ----------------------------------------------------------------------------
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        """Accept a dropped local folder or file."""
        if any(url.isLocalFile() for url in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        """Open the first dropped local path."""
        for url in event.mimeData().urls():
            if url.isLocalFile():
                self.open_path(url.toLocalFile())
                event.acceptProposedAction()
                return

    def about(self) -> None:
        """Help > About."""
        QMessageBox.about(
            self,
            "About vdigui",
            f"<h3>vdigui {html.escape(__version__)}</h3>"
            "<p>A desktop disk manager for VirtualBox VDI images: inspect snapshot chains, "
            "block maps and fragmentation without VirtualBox, and never change a byte while "
            "inspecting.</p>"
            "<p>Licence: GNU General Public License, version 3 or later "
            "(GPL-3.0-or-later).</p>",
        )

    def closeEvent(self, event: QCloseEvent) -> None:
        """Save the window state, stop the workers, close the files."""
        self._save_state()
        self.shutdown()
        event.accept()

    def shutdown(self) -> None:
        """Cancel and wait for every job, then close the open chain (idempotent)."""
        self._shut_down = True
        self.workers.shutdown()
        self.space_workers.shutdown()
        self._close_chain()
        self.files.shutdown()


_system_palette: QPalette | None = None


def apply_theme(key: str) -> None:
    """Apply the system, light or dark palette to the whole application.

    "system" restores the palette the platform gave at start-up (a dark desktop stays dark).
    """
    global _system_palette
    app = QApplication.instance()
    if not isinstance(app, QApplication):
        return
    if _system_palette is None:
        _system_palette = QPalette(app.palette())
    app.setStyle("Fusion")
    if key == "dark":
        app.setPalette(theme.dark_palette())
    elif key == "light":
        app.setPalette(theme.light_palette())
    else:
        app.setPalette(_system_palette)
