"""Small widgets the wizard pages share: before/after map strips, figure tables, notices.

Why a strip and not the main window's block-map view: the preview puts *two* maps side by
side in a dialog a few hundred pixels wide, with no zooming or hovering needed; the strip reuses
the block map's state codes, blending and colours (``views.blockmap`` and ``theme``) so a block
looks the same here as in the Block map tab.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QColor, QImage, QPainter, QPaintEvent, QPen
from PySide6.QtWidgets import (
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from vdigui.gui import theme
from vdigui.gui.views.blockmap import bin_colours

#: Warning and error tints that stay readable on the light and dark palettes.
WARN_COLOUR = "#b26a00"
ERROR_COLOUR = "#c62828"
OK_COLOUR = "#2e7d32"


class Level(StrEnum):
    """How a notice (or the run page's last line) is shown: its symbol and colour."""

    INFO = "info"
    OK = "ok"
    WARNING = "warning"
    ERROR = "error"

    @property
    def symbol(self) -> str:
        """The leading symbol."""
        return {Level.ERROR: "✖", Level.WARNING: "⚠", Level.OK: "✔"}.get(self, "ℹ")

    @property
    def colour(self) -> str | None:
        """The tint (None: the text colour, for plain information)."""
        return {Level.ERROR: ERROR_COLOUR, Level.WARNING: WARN_COLOUR, Level.OK: OK_COLOUR}.get(
            self
        )


@dataclass(frozen=True, slots=True)
class StripRow:
    """One bar of a :class:`MapStrip`.

    Attributes:
        label: the row's name (left of the bar).
        codes: uint8 state per unit (guest block or file slot).
        palette: a colour per code value.
        fraction: how much of the full width the bar takes (a shorter file is a shorter bar).
        caption: text right of the bar (e.g. the file size).
    """

    label: str
    codes: np.ndarray
    palette: tuple[QColor, ...]
    fraction: float = 1.0
    caption: str = ""


class MapStrip(QWidget):
    """Horizontal bars of block states, binned to the pixels available (mixed bins blend)."""

    ROW_HEIGHT = 22
    LABEL_WIDTH = 112
    CAPTION_WIDTH = 74

    def __init__(self, rows: Sequence[StripRow] = (), parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.rows: list[StripRow] = list(rows)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setMinimumWidth(220)
        self._fit()

    def set_rows(self, rows: Sequence[StripRow]) -> None:
        """Replace the bars."""
        self.rows = list(rows)
        self._fit()
        self.update()

    def _fit(self) -> None:
        self.setFixedHeight(max(1, len(self.rows)) * (self.ROW_HEIGHT + 6) + 2)
        self.setAccessibleDescription("; ".join(f"{r.label}: {r.caption}" for r in self.rows))

    def sizeHint(self) -> QSize:  # Qt override
        """Wide enough for a readable bar."""
        return QSize(360, self.height())

    def bar_rect(self, index: int) -> QRectF:
        """Where row ``index``'s full-width bar is drawn (tests use it)."""
        top = index * (self.ROW_HEIGHT + 6) + 3
        width = max(10, self.width() - self.LABEL_WIDTH - self.CAPTION_WIDTH - 8)
        return QRectF(self.LABEL_WIDTH, top, width, self.ROW_HEIGHT)

    def paintEvent(self, _event: QPaintEvent) -> None:  # Qt override
        """Draw each bar as an image of binned colours, scaled without smoothing."""
        painter = QPainter(self)
        try:
            fg = theme.foreground()
            for i, row in enumerate(self.rows):
                full = self.bar_rect(i)
                painter.setPen(fg)
                label = painter.fontMetrics().elidedText(
                    row.label, Qt.TextElideMode.ElideMiddle, self.LABEL_WIDTH - 8
                )
                painter.drawText(
                    QRectF(0, full.top(), self.LABEL_WIDTH - 6, full.height()),
                    int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter),
                    label,
                )
                painter.drawText(
                    QRectF(full.right() + 6, full.top(), self.CAPTION_WIDTH, full.height()),
                    int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter),
                    row.caption,
                )
                fraction = min(1.0, max(0.0, row.fraction))
                bar = QRectF(
                    full.left(), full.top(), max(1.0, full.width() * fraction), full.height()
                )
                # The part of a full-width bar a smaller file no longer has: an outline only.
                if fraction < 1.0:
                    painter.setPen(QPen(theme.free_colour().darker(130), 1, Qt.PenStyle.DashLine))
                    painter.setBrush(Qt.BrushStyle.NoBrush)
                    painter.drawRect(
                        QRectF(
                            bar.right(), full.top(), full.width() - bar.width(), full.height() - 1
                        )
                    )
                if row.codes.size and fraction > 0:
                    painter.drawImage(bar, self._image(row, int(bar.width())))
                else:
                    painter.fillRect(bar, theme.free_colour())
        finally:
            painter.end()

    @staticmethod
    def _image(row: StripRow, pixels: int) -> QImage:
        rgba = np.ascontiguousarray(strip_colours(row.codes, pixels, row.palette).reshape(1, -1, 4))
        image = QImage(
            rgba.data, rgba.shape[1], 1, rgba.shape[1] * 4, QImage.Format.Format_RGBA8888
        )
        return image.copy()  # own the pixels: the numpy buffer goes away


def strip_colours(codes: np.ndarray, pixels: int, palette: Sequence[QColor]) -> np.ndarray:
    """RGBA (bins x 4) of ``codes`` binned to at most ``pixels`` cells.

    Like the Block map tab, a cell blends the colours of its blocks in proportion -- with one
    difference made for small previews: a cell holding *any* block that is not code 0
    (unallocated) shows that content at half strength or more, so a snapshot that changed a
    few scattered blocks does not vanish into the background. The figures beside the strips
    give the exact counts.
    """
    n = int(codes.size)
    table = np.stack([theme.rgba(c) for c in palette])
    states = table.shape[0]
    codes = np.minimum(codes, states - 1).astype(np.int64)
    k = max(1, -(-n // max(1, pixels)))
    if k == 1:
        return bin_colours(codes.astype(np.uint8), 1, table)
    bins = -(-n // k)
    index = (np.arange(n, dtype=np.int64) // k) * states + codes
    counts = np.bincount(index, minlength=bins * states).reshape(bins, states).astype(np.float32)
    totals = counts.sum(axis=1)
    content = counts[:, 1:].sum(axis=1)
    mixed = (counts[:, 1:] @ table[1:]) / np.maximum(content, 1)[:, None]
    share = np.where(content > 0, np.maximum(content / totals, 0.5), 0.0)[:, None]
    out = table[0][None, :] * (1 - share) + mixed * share
    return np.rint(out).astype(np.uint8)


def legend(items: Sequence[tuple[QColor | str, str]]) -> QLabel:
    """A wrapped line of colour swatches with their meaning."""
    parts = []
    for colour, text in items:
        c = QColor(colour).name()
        parts.append(
            f'<span style="background-color:{c}; color:{c}">&#9608;&#9608;</span>'
            f"&nbsp;{html.escape(text)}"
        )
    label = QLabel("&nbsp;&nbsp; ".join(parts))
    label.setTextFormat(Qt.TextFormat.RichText)
    label.setWordWrap(True)
    return label


def before_after(
    before: Sequence[StripRow],
    after: Sequence[StripRow],
    titles: tuple[str, str] = ("Before", "After"),
) -> QWidget:
    """Two group boxes side by side holding a strip each."""
    box = QWidget()
    layout = QHBoxLayout(box)
    layout.setContentsMargins(0, 0, 0, 0)
    for title, rows in zip(titles, (before, after), strict=True):
        group = QGroupBox(title)
        inner = QVBoxLayout(group)
        inner.setContentsMargins(6, 4, 6, 4)
        inner.addWidget(MapStrip(rows))
        layout.addWidget(group, 1)
    return box


def figures(rows: Sequence[tuple[str, str]], *, columns: int = 1) -> QWidget:
    """A two-column (or 2 x ``columns``) table of label: value pairs, values selectable."""
    box = QWidget()
    grid = QGridLayout(box)
    grid.setContentsMargins(0, 0, 0, 0)
    grid.setHorizontalSpacing(12)
    grid.setVerticalSpacing(3)
    per_column = -(-len(rows) // max(1, columns))
    for i, (name, value) in enumerate(rows):
        col = (i // per_column) * 2
        row = i % per_column
        key = QLabel(f"{name}:")
        key.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignTop)
        val = QLabel(value)
        val.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        val.setWordWrap(True)
        grid.addWidget(key, row, col)
        grid.addWidget(val, row, col + 1)
    for c in range(columns):
        grid.setColumnStretch(c * 2 + 1, 1)
    return box


def notice(text: str, level: Level = Level.INFO) -> QLabel:
    """A wrapped sentence, tinted for warnings, errors and good news, with a leading symbol."""
    level = Level(level)
    symbol, colour = level.symbol, level.colour
    body = html.escape(text)
    if colour:
        body = f'<span style="color:{colour}">{symbol}</span>&nbsp;{body}'
    else:
        body = f"{symbol}&nbsp;{body}"
    label = QLabel(body)
    label.setTextFormat(Qt.TextFormat.RichText)
    label.setWordWrap(True)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


def heading(text: str) -> QLabel:
    """A bold line that starts a section of a page."""
    label = QLabel(f"<b>{html.escape(text)}</b>")
    label.setTextFormat(Qt.TextFormat.RichText)
    label.setWordWrap(True)
    return label


def rule() -> QFrame:
    """A thin horizontal line between sections."""
    line = QFrame()
    line.setFrameShape(QFrame.Shape.HLine)
    line.setFrameShadow(QFrame.Shadow.Sunken)
    return line


def state_palette(layer: int = 0) -> tuple[QColor, ...]:
    """The block map's per-layer palette: free, zero entry, data (layer colour), all zero."""
    return (
        theme.free_colour(),
        QColor(theme.ZERO_COLOUR),
        theme.layer_colour(layer),
        QColor(theme.ALL_ZERO_COLOUR),
    )
