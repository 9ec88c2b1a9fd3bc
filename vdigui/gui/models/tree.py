"""A read-only tree model over plain node objects (``children`` list and ``parent``).

Why a hand-written QAbstractItemModel instead of QStandardItemModel: the engine owns the truth
and the GUI reloads rather than patches, so the model only needs to present an immutable tree;
keeping the nodes as our own dataclasses lets the views get the node back from an index
without a parallel item tree to keep in sync.

Sorting (``QTreeView.setSortingEnabled``) reorders siblings under each parent by the
subclass's :meth:`NodeTreeModel.sort_key`, in the model's own view of the tree: the nodes'
``children`` lists stay as the engine made them. Column -1 restores that natural order.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QAbstractItemModel, QModelIndex, QObject, QPersistentModelIndex, Qt
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QTreeView

Index = QModelIndex | QPersistentModelIndex


class NodeTreeModel(QAbstractItemModel):
    """Presents nodes that have ``children`` (list) and ``parent`` (node or None)."""

    headers: tuple[str, ...] = ("Name",)

    def __init__(self, roots: list[Any] | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._roots: list[Any] = list(roots or [])
        self._shown_roots: list[Any] = list(self._roots)
        self._shown: dict[int, list[Any]] = {}  # id(node) -> its children in sorted order
        self._sort_column = -1
        self._sort_order = Qt.SortOrder.AscendingOrder

    # -- content ---------------------------------------------------------------------------
    def set_roots(self, roots: list[Any]) -> None:
        """Replace the whole tree (after an open or a reload); the sort order is kept."""
        self.beginResetModel()
        self._roots = list(roots)
        self._arrange()
        self.endResetModel()

    def _kids(self, node: Any | None) -> list[Any]:
        """The children of ``node`` (None: the roots) in the order shown."""
        if node is None:
            return self._shown_roots
        return self._shown.get(id(node), node.children)

    def sort_key(self, node: Any, column: int) -> Any:
        """What ``column`` sorts ``node`` by (default: its display text)."""
        return str(self.node_data(node, column, Qt.ItemDataRole.DisplayRole) or "")

    def _arrange(self) -> None:
        """Recompute the shown order of every sibling list from the sort column."""
        column, descending = self._sort_column, self._sort_order == Qt.SortOrder.DescendingOrder

        def ordered(nodes: list[Any]) -> list[Any]:
            if column < 0 or len(nodes) < 2:
                return list(nodes)
            return sorted(nodes, key=lambda n: self.sort_key(n, column), reverse=descending)

        self._shown_roots = ordered(self._roots)
        self._shown = {}
        stack = list(self._roots)
        while stack:
            n = stack.pop()
            if n.children:
                self._shown[id(n)] = ordered(n.children)
                stack.extend(n.children)

    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        """Qt override: reorder siblings by ``column`` (-1: the natural order)."""
        self.layoutAboutToBeChanged.emit()
        old = self.persistentIndexList()
        nodes = [(i.internalPointer(), i.column()) for i in old]
        self._sort_column, self._sort_order = column, order
        self._arrange()
        self.changePersistentIndexList(
            old, [self.index_of(n, c) if n is not None else QModelIndex() for n, c in nodes]
        )
        self.layoutChanged.emit()

    def resort(self) -> None:
        """Apply the current sort column again (its values changed)."""
        if self._sort_column >= 0:
            self.sort(self._sort_column, self._sort_order)

    @property
    def roots(self) -> list[Any]:
        """The top-level nodes."""
        return self._roots

    def node(self, index: Index) -> Any | None:
        """The node behind ``index`` (None for the invisible root)."""
        if not index.isValid():
            return None
        return index.internalPointer()

    def _siblings(self, node: Any) -> list[Any]:
        return self._kids(getattr(node, "parent", None))

    def index_of(self, node: Any, column: int = 0) -> QModelIndex:
        """The index of ``node`` (invalid if it is not in the tree)."""
        try:
            row = next(i for i, n in enumerate(self._siblings(node)) if n is node)
        except StopIteration:
            return QModelIndex()
        return self.createIndex(row, column, node)

    def iter_nodes(self) -> list[Any]:
        """Every node, parents first."""
        out: list[Any] = []
        stack = list(reversed(self._kids(None)))
        while stack:
            n = stack.pop()
            out.append(n)
            stack.extend(reversed(self._kids(n)))
        return out

    # -- QAbstractItemModel ------------------------------------------------------------------
    def index(self, row: int, column: int, parent: Index = QModelIndex()) -> QModelIndex:  # noqa: B008
        """Qt override."""
        if row < 0 or column < 0 or column >= len(self.headers):
            return QModelIndex()
        if parent.isValid() and parent.column() != 0:
            return QModelIndex()
        children = self._kids(parent.internalPointer() if parent.isValid() else None)
        if row >= len(children):
            return QModelIndex()
        return self.createIndex(row, column, children[row])

    def parent(self, index: Index = QModelIndex()) -> QModelIndex:  # type: ignore[override]  # noqa: B008
        """Qt override."""
        if not index.isValid():
            return QModelIndex()
        node = index.internalPointer()
        up = getattr(node, "parent", None)
        if up is None:
            return QModelIndex()
        return self.index_of(up)

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        """Qt override."""
        if not parent.isValid():
            return len(self._shown_roots)
        if parent.column() != 0:
            return 0
        return len(self._kids(parent.internalPointer()))

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        """Qt override."""
        return len(self.headers)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        """Qt override."""
        if (
            orientation == Qt.Orientation.Horizontal
            and role == Qt.ItemDataRole.DisplayRole
            and 0 <= section < len(self.headers)
        ):
            return self.headers[section]
        return None

    def flags(self, index: Index) -> Qt.ItemFlag:
        """Qt override: selectable, never editable (the tool is read-only)."""
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        return Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        """Qt override; subclasses answer in :meth:`node_data`."""
        if not index.isValid():
            return None
        return self.node_data(index.internalPointer(), index.column(), role)

    def node_data(self, node: Any, column: int, role: int) -> Any:
        """What ``role`` of ``column`` is for ``node``."""
        if role == Qt.ItemDataRole.DisplayRole:
            return str(node)
        return None


def install_column_chooser(view: QTreeView, hidden: tuple[int, ...] = ()) -> list[QAction]:
    """A right-click menu on ``view``'s header that shows or hides each column but the first.

    Why: a narrow pane cannot show every column whole; the columns in ``hidden`` start
    hidden (their content must also be in a tooltip) and the user can bring them back.
    """
    header = view.header()
    model = view.model()
    header.setContextMenuPolicy(Qt.ContextMenuPolicy.ActionsContextMenu)
    actions = []
    for column in range(1, model.columnCount()):
        title = str(model.headerData(column, Qt.Orientation.Horizontal) or column)
        action = QAction(f"Show {title}", header)
        action.setCheckable(True)
        action.setChecked(column not in hidden)
        action.toggled.connect(lambda on, c=column: header.setSectionHidden(c, not on))
        header.setSectionHidden(column, column in hidden)
        header.addAction(action)
        actions.append(action)
    return actions
