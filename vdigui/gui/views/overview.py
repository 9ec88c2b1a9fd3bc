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

from vdigui.gui.format import UUID_ROLES, human_size, medium_type_meaning, uuid_text
from vdigui.gui.session import ChainData, DiskNode, file_mtime


def _value_label() -> QLabel:
    label = QLabel()
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    label.setWordWrap(True)
    return label


class OverviewView(QScrollArea):
    """The Overview tab."""

    CHAIN_COLUMNS = ("Layer", "File", "UUID", "Modified", "Size on disk", "Last-modify UUID",
                     "Parent UUID (link)", "Parent-modify UUID")

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
            ("blocks", "Blocks", "This file's own block map: allocated blocks have a slot in "
                                 "the file; zero blocks read as zeros; free blocks read "
                                 "through to the parent (or as zeros in a base)"),
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
        self.chain_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.chain_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.chain_table.verticalHeader().setVisible(False)
        self.chain_table.horizontalHeader().setSectionResizeMode(
            QHeaderView.ResizeMode.ResizeToContents)
        self.chain_table.setToolTip("Each layer's own UUIDs: a layer's parent UUID must equal "
                                    "the UUID of the row above it")
        chain_layout.addWidget(self.chain_table)
        layout.addWidget(chain_box, 1)

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
            f"({human_size(stats.data_bytes)}), {stats.zero:,} zero, {stats.free:,} free")
        served = int((analysis.serving >= 0).sum())
        self.values["chain"].setText(
            f"{len(data.paths)} layer{'s' if len(data.paths) != 1 else ''}; "
            f"{served:,} blocks hold data or zero entries, {stats.guest_blocks - served:,} "
            "read as never written")
        if data.error:
            self._set_notice(f"The chain is incomplete: {data.error} Blocks the missing "
                             "layers hold are shown as not served.")
        self.chain_table.setRowCount(len(data.paths))
        for row, (path, header) in enumerate(zip(data.paths, data.headers, strict=True)):
            mtime = file_mtime(path)
            role = "base" if row == 0 and not header.is_differencing else f"diff {row}"
            if labels and labels[row] != path.name:
                role += f" · {labels[row]}"
            if row == top:
                role += " (this)"
            name = path.name
            if name.startswith("{") and len(name) > 30:
                name = name[:9] + "…}" + name[name.index("}") + 1:]
            cells = (role, name, uuid_text(header.uuid),
                     mtime.strftime("%Y-%m-%d %H:%M") if mtime else "",
                     human_size(analysis.layer_stats[row].file_size),
                     uuid_text(header.modify_uuid), uuid_text(header.parent_uuid),
                     uuid_text(header.parent_modify_uuid))
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(str(path) if column == 1 else text)
                self.chain_table.setItem(row, column, item)
