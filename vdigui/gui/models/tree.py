"""A read-only tree model over plain node objects (``children`` list and ``parent``).

Why a hand-written QAbstractItemModel instead of QStandardItemModel: the engine owns the truth
and the GUI reloads rather than patches, so the model only needs to present an immutable tree;
keeping the nodes as our own dataclasses lets the views get the node back from an index
without a parallel item tree to keep in sync.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QAbstractItemModel, QModelIndex, QObject, QPersistentModelIndex, Qt

Index = QModelIndex | QPersistentModelIndex


class NodeTreeModel(QAbstractItemModel):
    """Presents nodes that have ``children`` (list) and ``parent`` (node or None)."""

    headers: tuple[str, ...] = ("Name",)

    def __init__(self, roots: list[Any] | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._roots: list[Any] = list(roots or [])

    # -- content ---------------------------------------------------------------------------
    def set_roots(self, roots: list[Any]) -> None:
        """Replace the whole tree (after an open or a reload)."""
        self.beginResetModel()
        self._roots = list(roots)
        self.endResetModel()

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
        parent = getattr(node, "parent", None)
        return parent.children if parent is not None else self._roots

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
        stack = list(reversed(self._roots))
        while stack:
            n = stack.pop()
            out.append(n)
            stack.extend(reversed(n.children))
        return out

    # -- QAbstractItemModel ------------------------------------------------------------------
    def index(self, row: int, column: int, parent: Index = QModelIndex()) -> QModelIndex:  # noqa: B008
        """Qt override."""
        if row < 0 or column < 0 or column >= len(self.headers):
            return QModelIndex()
        if parent.isValid() and parent.column() != 0:
            return QModelIndex()
        children = self._roots if not parent.isValid() else parent.internalPointer().children
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
            return len(self._roots)
        if parent.column() != 0:
            return 0
        return len(parent.internalPointer().children)

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        """Qt override."""
        return len(self.headers)

    def headerData(self, section: int, orientation: Qt.Orientation,
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        """Qt override."""
        if (orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole
                and 0 <= section < len(self.headers)):
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
