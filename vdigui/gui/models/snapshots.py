"""The snapshot tree as VirtualBox users know it, with the current state marked."""

from __future__ import annotations

import html
from typing import Any

from PySide6.QtCore import QObject, Qt
from PySide6.QtGui import QFont, QIcon

from vdigui.engine import Problem
from vdigui.gui.models.tree import NodeTreeModel
from vdigui.gui.session import SnapNode
from vdigui.gui.theme import badge_icon

#: Role that returns the SnapNode itself (for views and tests).
NodeRole = Qt.ItemDataRole.UserRole + 1


def problems_html(problems: list[Problem]) -> str:
    """Badge tooltip lines, one sentence each."""
    return "".join(f"<p>&#9888; {html.escape(p.message)}</p>" for p in problems)


def worst_icon(problems: list[Problem]) -> QIcon | None:
    """The badge for a node: error beats warning; None without problems."""
    if not problems:
        return None
    return badge_icon("error" if any(p.severity == "error" for p in problems) else "warning")


class SnapshotTreeModel(NodeTreeModel):
    """Snapshots nested as in the .vbox, "Current State" under the current snapshot."""

    headers = ("Snapshot", "Taken")

    def __init__(self, roots: list[SnapNode] | None = None, parent: QObject | None = None) -> None:
        super().__init__(roots, parent)

    def node_data(self, node: SnapNode, column: int, role: int) -> Any:
        """Name, date, badges, tooltips."""
        if role == NodeRole:
            return node
        if role == Qt.ItemDataRole.DisplayRole:
            if column == 0:
                if node.is_current_state and node.modified and node.parent is not None:
                    return f"{node.name} (changed)"
                return node.name
            if node.timestamp is not None:
                return node.timestamp.strftime("%Y-%m-%d %H:%M")
            return ""
        if role == Qt.ItemDataRole.DecorationRole and column == 0:
            return worst_icon(node.problems)
        if role == Qt.ItemDataRole.FontRole and (node.is_current_state or
                                                 node.is_current_snapshot):
            font = QFont()
            font.setBold(True)
            if node.is_current_state:
                font.setItalic(True)
            return font
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._tooltip(node)
        if role == Qt.ItemDataRole.AccessibleDescriptionRole:
            return node.description
        return None

    def _tooltip(self, node: SnapNode) -> str:
        parts = [f"<b>{html.escape(node.name)}</b>"]
        if node.timestamp is not None:
            parts.append(f"taken {node.timestamp.strftime('%Y-%m-%d %H:%M:%S %Z').strip()}")
        if node.is_current_snapshot:
            parts.append("the current state is based on this snapshot")
        if node.online:
            parts.append("includes a saved machine state")
        text = "<br>".join(parts)
        if node.description:
            text += f"<p>{html.escape(node.description)}</p>"
        return text + problems_html(node.problems)
