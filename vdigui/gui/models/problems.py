"""The Problems panel: every disagreement the engine found, one row each."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QObject, QPersistentModelIndex, Qt

from vdigui.engine import Problem, Severity
from vdigui.gui.format import short_file_name, tooltip_html
from vdigui.gui.theme import badge_icon

Index = QModelIndex | QPersistentModelIndex
ProblemRole = Qt.ItemDataRole.UserRole + 1


class ProblemsModel(QAbstractTableModel):
    """Severity, kind, message and file of each problem."""

    headers = ("Severity", "Kind", "Problem", "File")

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._rows: list[Problem] = []

    def set_problems(self, rows: list[Problem]) -> None:
        """Replace the list (errors first)."""
        self.beginResetModel()
        self._rows = sorted(rows, key=lambda p: p.severity != Severity.ERROR)
        self.endResetModel()

    @property
    def problems(self) -> list[Problem]:
        """The rows, in display order."""
        return list(self._rows)

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        """Qt override."""
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        """Qt override."""
        return 0 if parent.isValid() else len(self.headers)

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
        """Qt override: read-only rows."""
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        return Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        """Qt override."""
        if not index.isValid() or not 0 <= index.row() < len(self._rows):
            return None
        row = self._rows[index.row()]
        column = index.column()
        if role == ProblemRole:
            return row
        if role == Qt.ItemDataRole.DisplayRole:
            return (
                row.severity,
                row.kind,
                row.message,
                short_file_name(row.path.name) if row.path is not None else "",
            )[column]
        if role == Qt.ItemDataRole.DecorationRole and column == 0:
            return badge_icon(row.severity)
        if role == Qt.ItemDataRole.ToolTipRole:
            # Rich text, so Qt wraps a long message instead of one line wider than the screen.
            return tooltip_html(row.message if column != 3 or row.path is None else str(row.path))
        return None
