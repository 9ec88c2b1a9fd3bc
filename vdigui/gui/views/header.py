"""Header: the first 512 bytes as an annotated hex dump, and the block map region on demand.

Why a painted widget instead of a text edit: every byte belongs to a field, and hovering must
name the field, its decoded value and its meaning; a painted grid maps a mouse position to a
byte offset exactly and colours fields without rich-text tricks.
"""

from __future__ import annotations

import html
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

from PySide6.QtCore import QEvent, QObject, QPoint, QRect, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QFontDatabase, QMouseEvent, QPainter, QPaintEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QScrollArea,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from vdigui.engine import (
    SIGNATURE,
    FieldKind,
    HeaderField,
    ImageType,
    header_layout,
    human_size,
    is_allocated,
    uuid_from_disk,
)
from vdigui.gui import theme
from vdigui.gui.format import uuid_text

#: Soft field colours (alpha keeps the text readable on light and dark bases).
FIELD_TINTS = (
    "#4e79a7",
    "#f28e2b",
    "#59a14f",
    "#e15759",
    "#76b7b2",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
)
#: Pixels a table cell keeps free beside its text (Qt's text margins, with room to spare).
VALUE_MARGIN = 14
#: Map entries shown by "Show block map region" (4 bytes each).
MAP_PREVIEW_ENTRIES = 4096


@dataclass(frozen=True, slots=True)
class Span:
    """A highlighted byte range of the dump and what hovering it says."""

    start: int
    size: int
    title: str
    value: str
    meaning: str
    tint: int


class HexView(QWidget):
    """A hex dump with coloured spans; hovering a byte names its span.

    Signals:
        hovered: the span under the mouse (or None).
    """

    hovered = Signal(object)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.setMouseTracking(True)
        self.data = b""
        self.base = 0
        self.spans: list[Span] = []
        self.selected: Span | None = None
        self.span_for: Callable[[int], Span | None] = self._lookup

    def set_content(self, data: bytes, base: int, spans: list[Span]) -> None:
        """Show ``data`` (file bytes from offset ``base``) with ``spans`` highlighted."""
        self.data = data
        self.base = base
        self.spans = spans
        self.selected = None
        self.updateGeometry()
        self.adjustSize()
        self.update()

    def _lookup(self, offset: int) -> Span | None:
        return next((s for s in self.spans if s.start <= offset < s.start + s.size), None)

    def _metrics(self) -> tuple[int, int, int, int]:
        fm = self.fontMetrics()
        char = fm.horizontalAdvance("0")
        line = fm.lineSpacing() + 2
        hex_x = char * 10
        ascii_x = hex_x + char * 3 * 16 + char * 2
        return char, line, hex_x, ascii_x

    def sizeHint(self) -> QSize:
        """Qt override: room for every row."""
        char, line, _hex_x, ascii_x = self._metrics()
        rows = -(-len(self.data) // 16)
        return QSize(ascii_x + char * 17, line * max(rows, 1) + 4)

    def minimumSizeHint(self) -> QSize:
        """Qt override."""
        return self.sizeHint()

    def offset_at(self, pos: QPoint) -> int | None:
        """The file offset of the byte drawn at ``pos``, or None."""
        char, line, hex_x, ascii_x = self._metrics()
        row = (pos.y() - 2) // line
        col = (pos.x() - ascii_x) // char if pos.x() >= ascii_x else (pos.x() - hex_x) // (char * 3)
        if not 0 <= col < 16 or pos.x() < hex_x:
            return None
        index = row * 16 + col
        if not 0 <= index < len(self.data):
            return None
        return self.base + index

    def paintEvent(self, event: QPaintEvent) -> None:
        """Qt override."""
        del event
        painter = QPainter(self)
        char, line, hex_x, ascii_x = self._metrics()
        fg = theme.foreground()
        dim = QColor(fg)
        dim.setAlpha(130)
        ascent = self.fontMetrics().ascent()
        painter.fillRect(self.rect(), theme.background())
        for i in range(0, len(self.data), 16):
            y = 2 + (i // 16) * line
            painter.setPen(dim)
            painter.drawText(QPoint(0, y + ascent), f"{self.base + i:08X}")
            for j, byte in enumerate(self.data[i : i + 16]):
                offset = self.base + i + j
                span = self.span_for(offset)
                if span is not None:
                    tint = QColor(FIELD_TINTS[span.tint % len(FIELD_TINTS)])
                    tint.setAlpha(
                        200
                        if span is self.selected
                        or (self.selected is not None and span.start == self.selected.start)
                        else 70
                    )
                    painter.fillRect(QRect(hex_x + j * char * 3 - 2, y, char * 3, line), tint)
                    painter.fillRect(QRect(ascii_x + j * char, y, char, line), tint)
                painter.setPen(fg if byte else dim)
                painter.drawText(QPoint(hex_x + j * char * 3, y + ascent), f"{byte:02X}")
                shown = chr(byte) if 32 <= byte < 127 else "·"
                painter.drawText(QPoint(ascii_x + j * char, y + ascent), shown)
        painter.end()

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        """Qt override: tooltip with the field's name, value and meaning."""
        offset = self.offset_at(event.position().toPoint())
        span = self.span_for(offset) if offset is not None else None
        self.hovered.emit(span)
        if span is None:
            QToolTip.hideText()
            return
        QToolTip.showText(event.globalPosition().toPoint(), span_html(span), self)

    def select(self, span: Span | None) -> None:
        """Emphasise ``span``."""
        self.selected = span
        self.update()


def wrap_text(text: str, width: int, advance: Callable[[str], int]) -> list[str]:
    """``text`` in lines no wider than ``width`` (``advance`` measures a string).

    Breaks after a space or a hyphen when it can, anywhere when a piece is still too wide
    (a long hex number), so no line ever needs eliding.
    """
    pieces = re.findall(r"[^ -]*[ -]|[^ -]+$", text) or [text]
    lines: list[str] = []
    line = ""
    for piece in pieces:
        if not line or advance((line + piece).rstrip()) <= width:
            line += piece
            continue
        lines.append(line.rstrip())
        line = piece
    if line:
        lines.append(line.rstrip())
    out: list[str] = []
    for line in lines:
        while len(line) > 1 and advance(line) > width:
            cut = max(
                1, next((n for n in range(len(line), 0, -1) if advance(line[:n]) <= width), 1)
            )
            out.append(line[:cut])
            line = line[cut:]
        out.append(line)
    return out


def span_html(span: Span) -> str:
    """The hover text of a span."""
    return (
        f"<b>{html.escape(span.title)}</b> &nbsp;<small>(offset 0x{span.start:X}, "
        f"{span.size} bytes)</small><br>{html.escape(span.value)}"
        f"<p>{html.escape(span.meaning)}</p>"
    )


def field_value(field: HeaderField, raw: bytes) -> str:
    """The value of ``field`` in ``raw`` as people read it (the engine's layout says where)."""
    items = field.unpack(raw)
    kind = field.kind
    if kind is FieldKind.TEXT:
        text = items[0].split(b"\0", 1)[0].decode("latin-1").replace("\n", "\\n")
        return f'"{text}"' if text else "(empty)"
    if kind is FieldKind.UUID:
        return uuid_text(uuid_from_disk(items[0]))
    if kind is FieldKind.GEOMETRY:
        c, h, s, b = items
        return f"{c} cylinders, {h} heads, {s} sectors, {b}-byte sectors"
    value: int = items[0]
    if kind is FieldKind.SIGNATURE:
        verdict = "a VDI image" if value == SIGNATURE else "NOT a VDI signature"
        return f"0x{value:08X} ({verdict})"
    if kind is FieldKind.VERSION:
        return f"{value >> 16}.{value & 0xFFFF} (0x{value:08X})"
    if kind is FieldKind.SIZE:
        return f"{value} bytes ({human_size(value)})"
    if kind is FieldKind.IMAGE_TYPE:
        try:
            name = ImageType(value).label
        except ValueError:
            name = "unknown"
        return f"{value} ({name})"
    if kind is FieldKind.FLAGS:
        return f"0x{value:X}" + (" (none)" if value == 0 else "")
    if kind is FieldKind.OFFSET:
        return f"0x{value:X} ({human_size(value)} into the file)"
    return f"{value} (0x{value:X})"


def header_spans(raw: bytes) -> list[Span]:
    """The spans of the header fields found in ``raw``."""
    spans = []
    for i, f in enumerate(header_layout(raw)):
        try:
            value = field_value(f, raw)
        except (struct.error, ValueError):
            value = "(cannot decode)"
        spans.append(Span(f.offset, f.size, f.vbox_name, value, f.meaning, i))
    return spans


class HeaderView(QWidget):
    """The Header tab: the dump, a field table, and the block map region on demand.

    Signals:
        map_requested: the user wants the block map region (the window reads it).
    """

    map_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.raw = b""
        self.hex = HexView()
        self.hex.hovered.connect(self._hovered)
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["Offset", "Field", "Value"])
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.horizontalHeader().setSectionResizeMode(
            0, QHeaderView.ResizeMode.ResizeToContents
        )
        self.table.horizontalHeader().setSectionResizeMode(
            1, QHeaderView.ResizeMode.ResizeToContents
        )
        self.table.horizontalHeader().setStretchLastSection(True)
        # Values are broken into lines here (rows grow to fit) instead of eliding: a UUID or
        # "0x100000 (1.0 MiB into the file)" is only useful whole, and at 1400x900 the tab
        # is narrower than the values. Qt's own word wrap measures rows and paints lines
        # with slightly different widths and then elides a line of a long UUID.
        self.table.setWordWrap(False)
        self.table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self._wrapped_width = -1
        self.table.viewport().installEventFilter(self)
        self.table.horizontalHeader().sectionResized.connect(
            lambda column, _old, _new: self._wrap_values() if column == 2 else None
        )
        self.table.itemSelectionChanged.connect(self._row_selected)
        self.info = QLabel("Hover over a byte to see its field, value and meaning.")
        self.info.setWordWrap(True)
        self.info.setTextFormat(Qt.TextFormat.RichText)
        self.info.setMinimumHeight(self.info.fontMetrics().lineSpacing() * 3)

        self.map_button = QPushButton("Show block map region")
        self.map_button.setToolTip(
            "Read the first entries of the block map and show them here, decoded (Ctrl+M)"
        )
        self.map_button.clicked.connect(self.map_requested)
        self.map_hex = HexView()
        self.map_label = QLabel()
        self.map_label.setWordWrap(True)
        self.map_scroll = QScrollArea()
        self.map_scroll.setWidget(self.map_hex)
        self.map_scroll.setVisible(False)
        self._map_entry_describer: Callable[[int], Span | None] | None = None

        dump_scroll = QScrollArea()
        dump_scroll.setWidget(self.hex)
        dump_scroll.setWidgetResizable(False)
        dump_scroll.setMinimumWidth(self.hex.sizeHint().width() + 24)
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(dump_scroll, 1)
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.addWidget(self.table, 1)
        split = QSplitter()
        split.addWidget(left)
        split.addWidget(right)
        split.setStretchFactor(0, 0)
        split.setStretchFactor(1, 1)
        split.setChildrenCollapsible(False)
        self.splitter = split
        self.dump_scroll = dump_scroll

        buttons = QHBoxLayout()
        buttons.addWidget(self.map_button)
        buttons.addWidget(self.map_label, 1)
        layout = QVBoxLayout(self)
        layout.addWidget(split, 3)
        layout.addWidget(self.info)
        layout.addLayout(buttons)
        layout.addWidget(self.map_scroll, 2)

    def clear(self) -> None:
        """Show nothing."""
        self.set_header(b"")

    def set_header(self, raw: bytes) -> None:
        """Show the first bytes of the selected image."""
        self.raw = raw
        spans = header_spans(raw)
        self.hex.set_content(raw, 0, spans)
        self.dump_scroll.setMinimumWidth(self.hex.sizeHint().width() + 24)
        self.table.setRowCount(0)
        self.table.setRowCount(len(spans))
        for row, span in enumerate(spans):
            for column, text in enumerate((f"0x{span.start:03X}", span.title, span.value)):
                item = QTableWidgetItem(text)
                item.setToolTip(f"{span.value}\n\n{span.meaning}" if column == 2 else span.meaning)
                if column == 1:
                    tint = QColor(FIELD_TINTS[span.tint % len(FIELD_TINTS)])
                    tint.setAlpha(90)
                    item.setBackground(tint)
                self.table.setItem(row, column, item)
        self._wrap_values(force=True)
        self.map_scroll.setVisible(False)
        self.map_label.setText("")
        self.map_button.setEnabled(bool(raw))

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        """Qt override: re-break the values when the table changes width."""
        if event.type() == QEvent.Type.Resize and watched is self.table.viewport():
            QTimer.singleShot(0, self._wrap_values)
        return False

    def _wrap_values(self, force: bool = False) -> None:
        """Break each value into lines that fit the value column (the tooltip keeps it whole)."""
        room = self.table.columnWidth(2) - VALUE_MARGIN
        if room == self._wrapped_width and not force:
            return
        self._wrapped_width = room
        metrics = self.table.fontMetrics()
        for row, span in enumerate(self.hex.spans):
            item = self.table.item(row, 2)
            if item is not None:
                item.setText("\n".join(wrap_text(span.value, room, metrics.horizontalAdvance)))

    def _row_selected(self) -> None:
        rows = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        span = self.hex.spans[rows[0].row()] if rows else None
        self.hex.select(span)
        if span is not None:
            self.info.setText(span_html(span))

    def _hovered(self, span: Span | None) -> None:
        if span is not None:
            self.info.setText(span_html(span))

    def show_map_region(
        self, raw: bytes, offset: int, total_entries: int, describe: Callable[[int, int], str]
    ) -> None:
        """Show ``raw`` map bytes read at ``offset``; ``describe(block, entry)`` says each."""
        count = len(raw) // 4
        spans = []
        for block in range(count):
            entry = struct.unpack_from("<I", raw, block * 4)[0]
            spans.append(
                Span(
                    offset + block * 4,
                    4,
                    f"Map entry of guest block {block:,}",
                    describe(block, entry),
                    "One 32-bit entry per guest block.",
                    2 if is_allocated(entry) else 0,
                )
            )
        self.map_hex.set_content(raw, offset, spans)
        # Spans are regular (4 bytes each), so look them up arithmetically, not by search.
        self.map_hex.span_for = lambda o: (
            spans[(o - offset) // 4] if 0 <= o - offset < len(raw) else None
        )
        shown = "all" if count >= total_entries else f"the first {count:,} of {total_entries:,}"
        self.map_label.setText(
            f"Block map at file offset 0x{offset:X}: {shown} entries "
            "(bytes FF FF FF FF = free, FE FF FF FF = zero, else the slot "
            "number, little-endian)."
        )
        self.map_scroll.setVisible(True)
