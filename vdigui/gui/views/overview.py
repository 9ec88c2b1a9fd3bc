"""Overview: the selected image's figures, its four UUIDs explained, and its chain as a table.

Why the UUIDs are spelled out with their meaning: most broken-chain reports (users.md pains 6,
7, 11) come down to which of the four UUIDs disagree, and VirtualBox only shows one of them.
"""

from __future__ import annotations

import html

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFormLayout,
    QGroupBox,
    QHeaderView,
    QLabel,
    QScrollArea,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from vdigui.engine import human_size
from vdigui.gui.format import (
    UUID_ROLES,
    medium_type_meaning,
    short_file_name,
    short_uuid,
    uuid_text,
)
from vdigui.gui.session import ChainData, DiskNode, file_mtime
from vdigui.gui.views.columns import ColumnFitter


def _value_label() -> QLabel:
    label = QLabel()
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    label.setWordWrap(True)
    return label


class OverviewView(QScrollArea):
    """The Overview tab."""

    #: Short titles (the table must fit the tab); the header tooltips say them in full.
    CHAIN_COLUMNS = (
        "Layer",
        "File",
        "UUID",
        "Modified",
        "On disk",
        "Modify UUID",
        "Parent UUID",
        "Parent modify",
    )
    CHAIN_TIPS = (
        "The layer's role, and the snapshot that froze it",
        "The image file (hover for its path)",
        "The layer's own UUID (uuidCreate)",
        "When the file was last changed on the host",
        "Bytes the file occupies on the host",
        "Last-modify UUID (uuidModify): changes when VirtualBox writes to the image",
        "Parent UUID (uuidLinkage): the link; it must equal the UUID of the row above",
        "Parent-modify UUID (uuidParentModify): the parent's last-modify UUID when "
        "this image was created",
    )

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWidgetResizable(True)
        body = QWidget()
        self.setWidget(body)
        layout = QVBoxLayout(body)

        self.title = QLabel()
        font = self.title.font()
        font.setPointSizeF(font.pointSizeF() * 1.35)
        font.setBold(True)
        self.title.setFont(font)
        self.title.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        # Wrapped: a snapshot name of 80+ characters must not widen the whole tab.
        self.title.setWordWrap(True)
        self.notice = QLabel()
        self.notice.setWordWrap(True)
        self.notice.setVisible(False)
        self.notice.setTextFormat(Qt.TextFormat.RichText)
        layout.addWidget(self.title)
        layout.addWidget(self.notice)

        self.values: dict[str, QLabel] = {}
        facts = QGroupBox("Image")
        form = QFormLayout(facts)
        for key, title, tip in (
            ("file", "File", "Where the image is on the host"),
            ("type", "Type", "How the image stores data"),
            ("medium", "Medium type", "How VirtualBox attaches it (from the media registry)"),
            ("virtual", "Virtual size", "The disk size the guest sees"),
            ("ondisk", "Size on disk", "Bytes the file occupies on the host"),
            (
                "blocks",
                "Blocks",
                "This file's own block map: allocated blocks have a slot in "
                "the file; zero blocks read as zeros; free blocks read "
                "through to the parent (or as zeros in a base)",
            ),
            ("chain", "Guest view", "What the whole chain serves to the guest"),
        ):
            name = QLabel(title + ":")
            name.setToolTip(tip)
            value = _value_label()
            value.setToolTip(tip)
            form.addRow(name, value)
            self.values[key] = value
        layout.addWidget(facts)

        ids = QGroupBox("Identity (the four UUIDs in the header)")
        id_form = QFormLayout(ids)
        for title, key, meaning in UUID_ROLES:
            name = QLabel(title + ":")
            name.setToolTip(meaning)
            value = _value_label()
            value.setTextFormat(Qt.TextFormat.RichText)
            value.setToolTip(meaning)
            id_form.addRow(name, value)
            self.values[key] = value
        layout.addWidget(ids)

        chain_box = QGroupBox("Chain from the base to this image")
        chain_layout = QVBoxLayout(chain_box)
        self.chain_table = QTableWidget(0, len(self.CHAIN_COLUMNS))
        self.chain_table.setHorizontalHeaderLabels(list(self.CHAIN_COLUMNS))
        for column, tip in enumerate(self.CHAIN_TIPS):
            header_item = self.chain_table.horizontalHeaderItem(column)
            if header_item is not None:
                header_item.setToolTip(tip)
        self.chain_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.chain_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.chain_table.verticalHeader().setVisible(False)
        self.chain_table.setWordWrap(False)
        self.chain_table.verticalHeader().setSectionResizeMode(
            QHeaderView.ResizeMode.ResizeToContents
        )
        # UUIDs are shortened to fit the tab; long layer names elide (tooltips say all).
        self.chain_fitter = ColumnFitter(self.chain_table, elastic=(0, 1))
        self.chain_table.setToolTip(
            "Each layer's own UUIDs: a layer's parent UUID must equal "
            "the UUID of the row above it (hover a cell for the "
            "whole UUID)"
        )
        chain_layout.addWidget(self.chain_table)
        layout.addWidget(chain_box)
        layout.addStretch(1)  # sections sit at the top; spare height stays below them
        self._layout = layout

    def add_section(self, box: QWidget) -> None:
        """Add a box below the chain (the undo data, the disk attachments), above the spare
        space."""
        self._layout.insertWidget(self._layout.count() - 1, box)

    def clear(self, message: str = "") -> None:
        """Nothing selected (or a message instead)."""
        self.title.setText(message or "Nothing selected")
        self.notice.setVisible(False)
        for value in self.values.values():
            value.setText("")
        self.chain_table.setRowCount(0)

    def show_node(self, node: DiskNode) -> None:
        """What is known before the chain is analysed (or when it cannot be)."""
        self.clear()
        used = f" — {', '.join(node.used_by)}" if node.used_by else ""
        self.title.setText(node.short_title + used)
        self.title.setToolTip(node.title)
        self.values["file"].setText(str(node.path) if node.path else "(no file)")
        self.values["medium"].setText(self._medium_text(node))
        if node.header is not None:
            self._header_values(node)
        else:
            for key in ("type", "virtual", "ondisk", "blocks", "chain"):
                self.values[key].setText("— (the image cannot be read)")
        if node.error:
            self._set_notice(f"This image cannot be read: {node.error}.")

    def _set_notice(self, text: str) -> None:
        self.notice.setText(f"&#9888; {html.escape(text)}")
        self.notice.setVisible(True)

    @staticmethod
    def _medium_text(node: DiskNode) -> str:
        if not node.registered:
            return "not registered (no media registry lists this image)"
        if node.parent is not None:
            text = "differencing image (takes its behaviour from the base's type)"
            if node.auto_reset:
                text += "; auto-reset: VirtualBox empties it at every power-on"
            return text
        kind = node.medium_type or "Normal"
        return f"{kind}: {medium_type_meaning(kind)}"

    def _header_values(self, node: DiskNode) -> None:
        h = node.header
        assert h is not None
        self.values["type"].setText(f"{h.image_type.label} (VDI {h.version_text})")
        self.values["virtual"].setText(f"{human_size(h.disk_size)} ({h.disk_size:,} bytes)")
        for _title, key, _meaning in UUID_ROLES:
            self.values[key].setText(html.escape(uuid_text(getattr(h, key))))

    def show_chain(self, data: ChainData, labels: list[str] | None = None) -> None:
        """The full overview once the chain is analysed (``labels``: a name per layer)."""
        node = data.target
        self.show_node(node)
        analysis = data.analysis
        top = len(data.paths) - 1
        stats = analysis.layer_stats[top]
        bs = data.chain.block_size
        self.values["ondisk"].setText(f"{human_size(stats.file_size)} ({stats.file_size:,} bytes)")
        self.values["blocks"].setText(
            f"{stats.guest_blocks:,} of {human_size(bs)}: {stats.allocated:,} allocated "
            f"({human_size(stats.data_bytes)}), {stats.zero:,} zero, {stats.free:,} free"
        )
        served = int((analysis.serving >= 0).sum())
        self.values["chain"].setText(
            f"{len(data.paths)} layer{'s' if len(data.paths) != 1 else ''}; "
            f"{served:,} blocks hold data or zero entries, {stats.guest_blocks - served:,} "
            "read as never written"
        )
        if data.error:
            self._set_notice(
                f"The chain is incomplete: {data.error} Blocks the missing "
                "layers hold are shown as not served."
            )
        self.chain_table.setRowCount(len(data.paths))
        for row, (path, header) in enumerate(zip(data.paths, data.headers, strict=True)):
            mtime = file_mtime(path)
            role = "base" if row == 0 and not header.is_differencing else f"diff {row}"
            if labels and labels[row] != path.name:
                role += f" · {labels[row]}"
            if row == top:
                role += " (this)"
            cells = (
                role,
                short_file_name(path.name),
                short_uuid(header.uuid),
                mtime.strftime("%Y-%m-%d %H:%M") if mtime else "",
                human_size(analysis.layer_stats[row].file_size),
                short_uuid(header.modify_uuid),
                short_uuid(header.parent_uuid),
                short_uuid(header.parent_modify_uuid),
            )
            tips = (
                role,
                str(path),
                uuid_text(header.uuid),
                cells[3],
                cells[4],
                uuid_text(header.modify_uuid),
                uuid_text(header.parent_uuid),
                uuid_text(header.parent_modify_uuid),
            )
            # Shortened UUIDs cannot hide a broken link: the chain was resolved by these very
            # UUIDs, so each parent UUID is the UUID of the row above (or the chain stops).
            for column, (text, tip) in enumerate(zip(cells, tips, strict=True)):
                item = QTableWidgetItem(text)
                item.setToolTip(tip)
                self.chain_table.setItem(row, column, item)
        self.chain_fitter.schedule()
        self._fit_chain_height()

    def _fit_chain_height(self) -> None:
        """As tall as its rows (at least three), so the boxes below stay in view at 900 px."""
        table = self.chain_table
        rows = max(3, table.rowCount())
        height = (
            table.horizontalHeader().sizeHint().height()
            + sum(table.sizeHintForRow(r) for r in range(table.rowCount()))
            + max(0, rows - table.rowCount()) * table.verticalHeader().defaultSectionSize()
            + 2 * table.frameWidth()
            + table.horizontalScrollBar().sizeHint().height()
        )
        table.setMaximumHeight(height)
        table.setMinimumHeight(min(height, 160))
