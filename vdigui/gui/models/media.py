"""The media tree: base disks with their differencing images, linked by header UUIDs."""

from __future__ import annotations

import html
from typing import Any

from PySide6.QtCore import QObject, Qt
from PySide6.QtGui import QBrush, QFont

from vdigui.engine import human_size
from vdigui.gui.format import medium_type_meaning
from vdigui.gui.models.snapshots import problems_html, worst_icon
from vdigui.gui.models.tree import NodeTreeModel
from vdigui.gui.session import DiskNode

NodeRole = Qt.ItemDataRole.UserRole + 1


def type_text(node: DiskNode) -> str:
    """What the Type column says."""
    if node.error and node.header is None:
        return "unreadable" if node.registered else "—"
    if node.parent is not None or (node.header is not None and node.header.is_differencing):
        kind = "differencing"
    else:
        kind = node.medium_type or "Normal"
    if not node.registered:
        kind += ", unregistered"
    return kind


def used_by_text(names: list[str]) -> str:
    """Short "used by" text: two names, then a count (the tooltip lists them all)."""
    if len(names) <= 2:
        return ", ".join(names)
    return f"{names[0]}, {names[1]} +{len(names) - 2}"


class MediaTreeModel(NodeTreeModel):
    """Images nested by uuidLinkage, with the registry's type and autoReset."""

    headers = ("Image", "Used by", "Type", "Size")

    def __init__(self, roots: list[DiskNode] | None = None, parent: QObject | None = None) -> None:
        super().__init__(roots, parent)
        #: Disks the selected snapshot uses (shown in bold); change with set_highlighted.
        self.highlighted: set[object] = set()

    def set_highlighted(self, uuids: set[object]) -> None:
        """Embolden the disks of the selected snapshot (fonts only: one dataChanged)."""
        if uuids == self.highlighted:
            return
        self.highlighted = uuids
        for node in self.iter_nodes():
            first = self.index_of(node, 0)
            last = self.index_of(node, len(self.headers) - 1)
            self.dataChanged.emit(first, last, [Qt.ItemDataRole.FontRole])

    def node_data(self, node: DiskNode, column: int, role: int) -> Any:
        """Names, types, badges and tooltips."""
        if role == NodeRole:
            return node
        if role == Qt.ItemDataRole.DisplayRole:
            if column == 0:
                return node.short_title
            if column == 1:
                return used_by_text(node.used_by)
            if column == 2:
                return type_text(node) + (", auto-reset" if node.auto_reset else "")
            if column == 3 and node.header is not None:
                return human_size(node.header.disk_size)
            return ""
        if role == Qt.ItemDataRole.DecorationRole and column == 0:
            return worst_icon(node.problems)
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._tooltip(node)
        if role == Qt.ItemDataRole.ForegroundRole and node.header is None:
            return QBrush(Qt.GlobalColor.gray)
        if role == Qt.ItemDataRole.FontRole and node.uuid in self.highlighted:
            font = QFont()
            font.setBold(True)
            return font
        return None

    def _tooltip(self, node: DiskNode) -> str:
        lines = [f"<b>{html.escape(node.title)}</b>"]
        if node.path is not None:
            lines.append(html.escape(str(node.path)))
        if node.uuid is not None:
            lines.append(f"UUID {{{node.uuid}}}")
        lines.append(
            html.escape("type: " + type_text(node) + (", auto-reset" if node.auto_reset else ""))
        )
        if node.used_by:
            lines.append(html.escape("used by: " + ", ".join(node.used_by)))
        if node.medium_type and node.parent is None:
            meaning = medium_type_meaning(node.medium_type)
            lines.append(html.escape(f"{node.medium_type}: {meaning}"))
        if node.auto_reset:
            lines.append("auto-reset: VirtualBox empties this image at every power-on")
        if not node.registered:
            lines.append("no media registry knows this image")
        if node.error:
            lines.append(html.escape(f"cannot be read: {node.error}"))
        return "<br>".join(lines) + problems_html(node.problems)
