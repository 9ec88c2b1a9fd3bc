"""The "Locate byte..." dialog: a guest byte offset to block, layer, slot and file position."""

from __future__ import annotations

import html

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from vdigui.engine import DiskChain, Location, human_size, locate
from vdigui.gui.format import parse_offset


def location_text(loc: Location, labels: list[str]) -> str:
    """The answer in words (rich text)."""
    name = labels[loc.layer] if 0 <= loc.layer < len(labels) else ""
    lines = [
        f"Guest byte {loc.offset:,} (0x{loc.offset:X}) is byte {loc.within:,} of guest "
        f"block {loc.block:,}."
    ]
    if loc.state == "free":
        lines.append("No layer of the chain holds this block: the guest reads zeros.")
    elif loc.state == "zero":
        lines.append(
            f"Layer {loc.layer} ({html.escape(name)}) marks the block ZERO: it reads "
            "as zeros and hides the layers below."
        )
    else:
        file = loc.path.name if loc.path is not None else ""
        lines.append(
            f"Served by layer {loc.layer} ({html.escape(name)}), physical slot {loc.slot:,}."
        )
        lines.append(
            f"File position: byte {loc.file_offset:,} (0x{loc.file_offset:X}, "
            f"{human_size(loc.file_offset or 0)}) of <i>{html.escape(file)}</i>."
        )
    return "<br>".join(lines)


class LocateDialog(QDialog):
    """Ask for an offset, answer with the engine's :func:`locate`.

    Signals:
        show_block: the user wants the block map to show this block.
    """

    show_block = Signal(int)

    def __init__(self, chain: DiskChain, labels: list[str], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Locate byte")
        self.chain = chain
        self.labels = labels
        self.location: Location | None = None
        self.edit = QLineEdit()
        self.edit.setPlaceholderText("e.g. 1048576, 0x100000, 1.5G or 2048s (sectors)")
        self.edit.setToolTip(
            "A byte offset on the guest disk: decimal, 0x-hex, with K/M/G/T "
            "units or s for 512-byte sectors"
        )
        self.edit.returnPressed.connect(self.run)
        self.result_label = QLabel(
            f"The disk is {chain.disk_size:,} bytes ({human_size(chain.disk_size)})."
        )
        self.result_label.setWordWrap(True)
        self.result_label.setTextFormat(Qt.TextFormat.RichText)
        self.result_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.result_label.setMinimumWidth(460)
        self.result_label.setMinimumHeight(self.result_label.fontMetrics().lineSpacing() * 4)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.locate_button = QPushButton("Locate")
        self.locate_button.setDefault(True)
        self.locate_button.clicked.connect(self.run)
        self.show_button = QPushButton("Show in block map")
        self.show_button.setEnabled(False)
        self.show_button.setToolTip("Zoom the block map to this block and mark it")
        self.show_button.clicked.connect(self._show)
        buttons.addButton(self.locate_button, QDialogButtonBox.ButtonRole.ActionRole)
        buttons.addButton(self.show_button, QDialogButtonBox.ButtonRole.ActionRole)
        buttons.rejected.connect(self.reject)
        form = QFormLayout()
        form.addRow("Guest byte offset:", self.edit)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.result_label)
        layout.addWidget(buttons)

    def run(self) -> None:
        """Locate the typed offset and show the answer (or why the input is wrong)."""
        try:
            offset = parse_offset(self.edit.text())
            if offset >= self.chain.disk_size:
                raise ValueError(
                    f"Offset {offset:,} is past the end of the {self.chain.disk_size:,}-byte disk."
                )
            self.location = locate(self.chain, offset)
        except ValueError as exc:
            self.location = None
            self.result_label.setText(f"&#9888; {html.escape(str(exc))}")
            self.show_button.setEnabled(False)
            return
        self.result_label.setText(location_text(self.location, self.labels))
        self.show_button.setEnabled(True)

    def _show(self) -> None:
        if self.location is not None:
            self.show_block.emit(self.location.block)
