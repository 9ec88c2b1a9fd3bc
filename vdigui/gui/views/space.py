"""The Space tab: where every byte of a VM folder (or one image) goes, and what frees it.

Why a view of its own: the question people bring is "why is this folder so big, and what can I
safely free?" The answer is the engine's space account (:mod:`vdigui.engine.space_account`):
every byte of every file in exactly one category. This tab draws it three ways, all with the
same colour per category:

- a legend with the folder's total per category, and beside each category that an operation
  frees a button that opens that operation's wizard, pre-filled (compaction, filesystem-aware
  compaction, deleting the snapshot that still sees hidden blocks, discarding undo data);
- a squarified treemap of the folder: one rectangle per file, its area the file's size,
  subdivided by category, so the big files and what fills them stand out at a glance;
- one stacked bar per file (each bar is the whole file, split by category; the exact sizes are
  written beside it), so a small file's make-up is as readable as a big one's.

Hovering any part says the file, the category, its exact bytes and what the category means.

The account is worked out on the window's worker pool (it reads headers, block maps and the
guest filesystems' metadata: a fraction of a second, but never on the GUI thread) and kept per
counted path until the next load of the folder, so moving between the images of one VM shows
the account again at once. Nothing here writes: the buttons only open wizards.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QEvent, QPointF, QRectF, QSize, Qt, QTimer, Signal
from PySide6.QtGui import (
    QColor,
    QFont,
    QFontMetrics,
    QHelpEvent,
    QMouseEvent,
    QPainter,
    QPaintEvent,
    QPen,
)
from PySide6.QtWidgets import (
    QFrame,
    QGridLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from vdigui.engine import (
    CATEGORIES,
    CATEGORY_COLOURS,
    CATEGORY_LABELS,
    CATEGORY_MEANINGS,
    Category,
    FileSpace,
    SpaceAccount,
    account_space,
    human_size,
)
from vdigui.gui import messages, theme
from vdigui.gui.format import short_file_name, tooltip_html
from vdigui.gui.session import DiskNode, Session, SnapNode
from vdigui.gui.workers import WorkerPool


class Action:
    """The operations the Space tab opens (the keys of :data:`CATEGORY_ACTIONS`)."""

    COMPACT = "compact"
    FS_AWARE_COMPACT = "fs-aware-compact"
    DELETE_SNAPSHOT = "delete-snapshot"
    DISCARD_UNDO = "discard-undo"


#: The action that frees each category (categories without one have no button).
CATEGORY_ACTIONS: dict[Category, str] = {
    Category.ZERO_BLOCKS: Action.COMPACT,
    Category.SLACK: Action.COMPACT,
    Category.GUEST_UNUSED: Action.FS_AWARE_COMPACT,
    Category.HIDDEN: Action.DELETE_SNAPSHOT,
    Category.UNDO_DATA: Action.DISCARD_UNDO,
}

ACTION_TEXT = {
    Action.COMPACT: "Compact…",
    Action.FS_AWARE_COMPACT: "Compact (FS-aware)…",
    Action.DELETE_SNAPSHOT: "Delete snapshot…",
    Action.DISCARD_UNDO: "Discard undo data…",
}


def category_colour(category: Category) -> QColor:
    """The colour of ``category`` in the bars, the treemap and the legend."""
    return QColor(CATEGORY_COLOURS[category])


def exact(value: int) -> str:
    """'12.0 MiB (12,582,912 bytes)': the rounded size and the exact count."""
    return f"{human_size(value)} ({value:,} bytes)"


def segments(f: FileSpace) -> list[tuple[Category, int]]:
    """The file's non-empty categories in the legend's order; they sum to its size."""
    return [(c, f.categories[c]) for c in CATEGORIES if f.categories[c]]


def hover_text(name: str, f: FileSpace, category: Category) -> str:
    """What hovering ``category`` of file ``f`` says: exact bytes and what it means."""
    value = f.categories[category]
    share = value / f.size if f.size else 0.0
    return (
        f"{name} — {CATEGORY_LABELS[category]}: {exact(value)}, {share:.1%} of the file's "
        f"{human_size(f.size)}. {CATEGORY_MEANINGS[category]}"
    )


# -- treemap layout -------------------------------------------------------------------------------
def _worst(row: Sequence[float], side: float) -> float:
    total = sum(row)
    if total <= 0 or side <= 0:
        return math.inf
    return max(side * side * max(row) / (total * total), total * total / (side * side * min(row)))


def squarify(values: Sequence[float], rect: QRectF) -> list[QRectF]:
    """Rectangles tiling ``rect`` with areas proportional to ``values`` (squarified treemap).

    Bruls, Huizing and van Wijk's algorithm: rows are filled along the shorter side while that
    keeps the worst aspect ratio from growing, so the rectangles stay close to squares and a
    file's size reads from its area. ``values`` should be sorted largest first; zeros get
    empty rectangles. The result is in the order of ``values``.
    """
    total = float(sum(values))
    out = [QRectF() for _ in values]
    if total <= 0 or rect.width() <= 0 or rect.height() <= 0:
        return out
    scale = rect.width() * rect.height() / total
    order = [i for i, v in enumerate(values) if v > 0]
    areas = [values[i] * scale for i in order]
    x, y, w, h = rect.x(), rect.y(), rect.width(), rect.height()
    i = 0
    while i < len(areas):
        side = min(w, h)
        row = [areas[i]]
        i += 1
        while i < len(areas) and _worst([*row, areas[i]], side) <= _worst(row, side):
            row.append(areas[i])
            i += 1
        start = i - len(row)
        total_row = sum(row)
        if w >= h:  # a column on the left
            width = total_row / h if h else 0.0
            yy = y
            for k, area in enumerate(row):
                height = area / width if width else 0.0
                out[order[start + k]] = QRectF(x, yy, width, height)
                yy += height
            x += width
            w -= width
        else:  # a row along the top
            height = total_row / w if w else 0.0
            xx = x
            for k, area in enumerate(row):
                width = area / height if height else 0.0
                out[order[start + k]] = QRectF(xx, y, width, height)
                xx += width
            y += height
            h -= height
    return out


def split_rect(
    rect: QRectF, parts: Sequence[tuple[Category, int]]
) -> list[tuple[Category, QRectF]]:
    """``rect`` cut along its longer side into one slice per category, by bytes."""
    total = sum(v for _, v in parts)
    out: list[tuple[Category, QRectF]] = []
    if total <= 0:
        return out
    done = 0
    horizontal = rect.width() >= rect.height()
    length = rect.width() if horizontal else rect.height()
    for category, value in parts:
        a = length * done / total
        done += value
        b = length * done / total
        if horizontal:
            out.append((category, QRectF(rect.x() + a, rect.y(), b - a, rect.height())))
        else:
            out.append((category, QRectF(rect.x(), rect.y() + a, rect.width(), b - a)))
    return out


# -- what the view shows ----------------------------------------------------------------------
@dataclass(frozen=True)
class FileRow:
    """One file of the account as the view shows it.

    Attributes:
        space: the engine's figures for the file.
        name: its path relative to the counted folder (a UUID name shortened), for the hover.
        short: its file name alone (a UUID name shortened), for the labels.
        role: what the file is to the VM ("snapshot 'Installed'", "current state"), or "".
        selected: whether it is the image selected in the trees.
    """

    space: FileSpace
    name: str
    short: str
    role: str
    selected: bool


def bar_pixels(
    parts: Sequence[tuple[Category, int]], width: float
) -> list[tuple[Category, float, float]]:
    """(category, x, width) per part of a bar ``width`` pixels long.

    Each non-empty part gets at least 2 pixels when the bar has room, so a small category is
    still visible (and can be hovered); the exact bytes are in the hover text.
    """
    total = sum(v for _, v in parts)
    if total <= 0 or width <= 0:
        return []
    minimum = 2.0 if width >= 2.0 * len(parts) else 0.0
    raw = [max(minimum, width * v / total) for _, v in parts]
    excess = sum(raw) - width
    if excess > 0:
        # Take the extra pixels of the small parts from the ones above the minimum.
        big = sum(r - minimum for r in raw if r > minimum)
        raw = [r - excess * (r - minimum) / big if r > minimum and big > 0 else r for r in raw]
    out = []
    x = 0.0
    for (category, _), w in zip(parts, raw, strict=True):
        out.append((category, x, w))
        x += w
    return out


def fit_label(metrics: QFontMetrics, row: FileRow, width: int) -> str:
    """The row's name and role in ``width`` pixels: the role is shortened first, since the
    name is what tells the files apart (the hover text has both in full)."""
    full = row.short + (f" — {row.role}" if row.role else "")
    if metrics.horizontalAdvance(full) <= width:
        return full
    rest = width - metrics.horizontalAdvance(row.short + " — ")
    if row.role and rest >= metrics.horizontalAdvance("snapshot…"):
        return f"{row.short} — " + metrics.elidedText(row.role, Qt.TextElideMode.ElideRight, rest)
    return metrics.elidedText(row.short, Qt.TextElideMode.ElideMiddle, width)


class _Picture(QWidget):
    """What the bars and the treemap share: hover text, tooltips and clicks on a part.

    Subclasses say what is where: :meth:`at` (the file and category under a point) and
    :meth:`text_at` (the hover text there).

    Signals:
        hovered(str): the text for what is under the mouse ("" when nothing is).
        clicked(FileRow, Category): a part that an operation frees was clicked.
    """

    hovered = Signal(str)
    clicked = Signal(object, object)  # (FileRow, Category)

    def at(self, pos: QPointF) -> tuple[FileRow, Category | None] | None:
        """The file and category under ``pos`` (None: nothing)."""
        raise NotImplementedError

    def text_at(self, pos: QPointF) -> str:
        """The hover text at ``pos``."""
        raise NotImplementedError

    def mouseMoveEvent(self, event: QMouseEvent) -> None:  # Qt override
        """Say what is under the mouse."""
        self.hovered.emit(self.text_at(event.position()))

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:  # Qt override
        """A click on a part that an operation frees asks for that operation on that file."""
        hit = self.at(event.position())
        if hit is not None and hit[1] is not None:
            self.clicked.emit(hit[0], hit[1])

    def leaveEvent(self, event: QEvent) -> None:  # Qt override
        """Nothing hovered any more."""
        del event
        self.hovered.emit("")

    def event(self, event: QEvent) -> bool:  # Qt override
        """Tooltips: the same text as the hover line."""
        if event.type() == QEvent.Type.ToolTip and isinstance(event, QHelpEvent):
            text = self.text_at(QPointF(event.pos()))
            if text:
                QToolTip.showText(event.globalPos(), tooltip_html(text), self)
            else:
                QToolTip.hideText()
            return True
        return super().event(event)


class SpaceBars(_Picture):
    """One stacked horizontal bar per file: the name, the bar (the whole file), the sizes."""

    ROW = 24

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.rows: list[FileRow] = []
        self.setMouseTracking(True)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self._name_width = 200
        self._size_width = 220

    def set_rows(self, rows: list[FileRow]) -> None:
        """Show ``rows`` (largest first is the caller's choice)."""
        self.rows = rows
        metrics = QFontMetrics(self.font())
        bold = QFont(self.font())
        bold.setBold(True)
        names = [QFontMetrics(bold).horizontalAdvance(self._label(r)) for r in rows] or [0]
        sizes = [metrics.horizontalAdvance(self._sizes(r)) for r in rows] or [0]
        # Generous but bounded: the bars keep at least half of the width.
        self._name_width = min(max(names) + 12, 300)
        self._size_width = min(max(sizes) + 12, 260)
        self.setFixedHeight(max(1, len(rows)) * self.ROW + 4)
        self.updateGeometry()
        self.update()

    @staticmethod
    def _label(row: FileRow) -> str:
        return row.short + (f" — {row.role}" if row.role else "")

    @staticmethod
    def _sizes(row: FileRow) -> str:
        return f"{human_size(row.space.size)}, {human_size(row.space.allocated)} on the host"

    def sizeHint(self) -> QSize:  # Qt override
        """Narrow enough never to force horizontal scrolling."""
        return QSize(400, max(1, len(self.rows)) * self.ROW + 4)

    def _columns(self) -> tuple[float, float, float]:
        """x of the bar, its width, x of the sizes."""
        width = float(self.width())
        name_w = min(float(self._name_width), width * 0.3)
        size_w = min(float(self._size_width), width * 0.3)
        bar_w = max(10.0, width - name_w - size_w - 8)
        return name_w, bar_w, name_w + bar_w + 8

    def segment_rect(self, index: int, category: Category) -> QRectF:
        """Where ``category`` of row ``index`` is drawn (empty when it is not)."""
        bar_x, bar_w, _ = self._columns()
        y = index * self.ROW + 4
        for c, x, w in bar_pixels(segments(self.rows[index].space), bar_w):
            if c == category:
                return QRectF(bar_x + x, y, w, self.ROW - 8)
        return QRectF()

    def at(self, pos: QPointF) -> tuple[FileRow, Category | None] | None:
        """The row (and the category, on the bar) under ``pos``."""
        index = int(pos.y() // self.ROW)
        if not 0 <= index < len(self.rows):
            return None
        bar_x, bar_w, _ = self._columns()
        row = self.rows[index]
        for c, x, w in bar_pixels(segments(row.space), bar_w):
            if bar_x + x <= pos.x() < bar_x + x + w:
                return row, c
        return row, None

    def text_at(self, pos: QPointF) -> str:
        """The hover text for ``pos`` ("" over nothing)."""
        hit = self.at(pos)
        if hit is None:
            return ""
        row, category = hit
        if category is None:
            f = row.space
            return (
                f"{row.name}: {exact(f.size)}; {exact(f.allocated)} on the host"
                + (f" ({row.role})" if row.role else "")
                + ". "
                + " ".join(f.notes)
            )
        return hover_text(row.name, row.space, category)

    def paintEvent(self, event: QPaintEvent) -> None:  # Qt override
        """Names, bars and sizes of the rows in the exposed area (a folder of thousands of
        files scrolls without drawing them all)."""
        painter = QPainter(self)
        try:
            fg = theme.foreground()
            bar_x, bar_w, size_x = self._columns()
            metrics = QFontMetrics(self.font())
            exposed = event.rect()
            first = max(0, exposed.top() // self.ROW)
            last = min(len(self.rows), exposed.bottom() // self.ROW + 1)
            for i in range(first, last):
                row = self.rows[i]
                y = i * self.ROW
                text_rect = QRectF(0, y, bar_x - 6, self.ROW)
                font = QFont(self.font())
                font.setBold(row.selected)
                painter.setFont(font)
                painter.setPen(fg)
                label = fit_label(QFontMetrics(font), row, int(text_rect.width()))
                painter.drawText(
                    text_rect,
                    int(Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignRight),
                    label,
                )
                for c, x, w in bar_pixels(segments(row.space), bar_w):
                    painter.fillRect(QRectF(bar_x + x, y + 4, w, self.ROW - 8), category_colour(c))
                if row.selected:
                    painter.setPen(QPen(fg, 1.5))
                    painter.drawRect(QRectF(bar_x - 1, y + 3, bar_w + 2, self.ROW - 6))
                painter.setPen(fg)
                painter.setFont(self.font())
                sizes = metrics.elidedText(
                    self._sizes(row), Qt.TextElideMode.ElideRight, int(self.width() - size_x)
                )
                painter.drawText(
                    QRectF(size_x, y, self.width() - size_x, self.ROW),
                    int(Qt.AlignmentFlag.AlignVCenter),
                    sizes,
                )
        finally:
            painter.end()


class SpaceTreemap(_Picture):
    """The folder as a squarified treemap: a rectangle per file, split by category."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.rows: list[FileRow] = []
        self.message = ""
        self._cells: list[tuple[FileRow, QRectF, list[tuple[Category, QRectF]]]] = []
        self._laid_for = QSize()
        self.setMouseTracking(True)
        self.setMinimumSize(200, 160)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def set_rows(self, rows: list[FileRow], message: str = "") -> None:
        """Show ``rows`` (or, with none, ``message``, e.g. "Counting…")."""
        self.rows = sorted(rows, key=lambda r: r.space.size, reverse=True)
        self.message = message
        self._laid_for = QSize()
        self.update()

    def cells(self) -> list[tuple[FileRow, QRectF, list[tuple[Category, QRectF]]]]:
        """(file, its rectangle, its category slices), laid out for the current size."""
        if self._laid_for != self.size():
            area = QRectF(1, 1, self.width() - 2, self.height() - 2)
            rects = squarify([float(r.space.size) for r in self.rows], area)
            self._cells = [
                (row, rect, split_rect(rect, segments(row.space)))
                for row, rect in zip(self.rows, rects, strict=True)
                if not rect.isEmpty()
            ]
            self._laid_for = self.size()
        return self._cells

    def at(self, pos: QPointF) -> tuple[FileRow, Category | None] | None:
        """The file (and category) under ``pos``."""
        for row, rect, parts in self.cells():
            if rect.contains(pos):
                for category, part in parts:
                    if part.contains(pos):
                        return row, category
                return row, None
        return None

    def text_at(self, pos: QPointF) -> str:
        """The hover text for ``pos``."""
        hit = self.at(pos)
        if hit is None:
            return ""
        row, category = hit
        if category is None:
            return f"{row.name}: {exact(row.space.size)}"
        return hover_text(row.name, row.space, category)

    def paintEvent(self, event: QPaintEvent) -> None:  # Qt override
        """Slices, file outlines, and the names that fit."""
        del event
        painter = QPainter(self)
        try:
            painter.fillRect(self.rect(), theme.background())
            fg = theme.foreground()
            if not self.rows:
                painter.setPen(fg)
                painter.drawText(
                    QRectF(self.rect()), int(Qt.AlignmentFlag.AlignCenter), self.message
                )
                return
            outline = QPen(theme.background(), 2.0)
            metrics = QFontMetrics(self.font())
            for row, rect, parts in self.cells():
                for category, part in parts:
                    painter.fillRect(part, category_colour(category))
                painter.setPen(QPen(fg, 2.5) if row.selected else outline)
                painter.drawRect(rect)
                if rect.width() > 40 and rect.height() > metrics.height() + 4:
                    label = metrics.elidedText(
                        row.short, Qt.TextElideMode.ElideMiddle, int(rect.width() - 8)
                    )
                    box = QRectF(
                        rect.x() + 4,
                        rect.y() + 2,
                        metrics.horizontalAdvance(label) + 6,
                        metrics.height() + 2,
                    )
                    painter.fillRect(box, QColor(255, 255, 255, 200))
                    painter.setPen(QColor("#1f2328"))
                    painter.drawText(
                        box.adjusted(3, 0, 0, 0), int(Qt.AlignmentFlag.AlignVCenter), label
                    )
        finally:
            painter.end()


class Swatch(QWidget):
    """A small square of a category's colour."""

    def __init__(self, colour: QColor, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.colour = colour
        self.setFixedSize(14, 14)

    def paintEvent(self, event: QPaintEvent) -> None:  # Qt override
        """The square, outlined so a pale colour shows on a pale background."""
        del event
        painter = QPainter(self)
        try:
            painter.fillRect(self.rect(), self.colour)
            painter.setPen(theme.foreground())
            painter.drawRect(self.rect().adjusted(0, 0, -1, -1))
        finally:
            painter.end()


@dataclass(frozen=True)
class Offer:
    """What a category's button would do now.

    Attributes:
        action: one of :class:`Action`.
        selection: what to open the wizard on (a DiskNode or a SnapNode), None for the discard.
        enabled: whether the button can be pressed.
        tip: the button's tooltip: what it opens on what, and how much that frees.
    """

    action: str
    selection: object
    enabled: bool
    tip: str


class SpaceView(QWidget):
    """The Space tab.

    Signals:
        shown: an account was drawn (its root Path); tests and the benchmark wait for it.
    """

    shown = Signal(object)

    def __init__(self, pool: WorkerPool, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.pool = pool
        self.operations: Any = None
        self.session: Session | None = None
        self.node: DiskNode | None = None
        self.root: Path | None = None
        self.account: SpaceAccount | None = None
        self.cache: dict[Path, SpaceAccount] = {}
        self.errors: dict[Path, str] = {}
        self._running: set[Path] = set()
        self._epoch = 0
        self.offers: dict[Category, Offer] = {}
        self._disks: dict[Path, DiskNode] = {}
        self._role_of: dict[Path, str] = {}
        self._selected: Path | None = None
        self._folder: Path | None = None
        self._cost_of: Callable[[SnapNode], Any] | None = None
        self._refresh_queued = False

        outer = QVBoxLayout(self)
        outer.setContentsMargins(6, 6, 6, 6)
        self.summary = QLabel("Open a VM folder or a disk image to see where its space goes.")
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        outer.addWidget(self.summary)

        top = QWidget()
        top_layout = QGridLayout(top)
        top_layout.setContentsMargins(0, 0, 0, 0)
        self.legend = QWidget()
        self.legend_grid = QGridLayout(self.legend)
        self.legend_grid.setContentsMargins(0, 0, 0, 0)
        self.legend_grid.setHorizontalSpacing(6)
        self.legend_grid.setVerticalSpacing(2)
        self.legend_rows: dict[Category, tuple[Swatch, QLabel, QLabel]] = {}
        self.buttons: dict[Category, QPushButton] = {}
        for row, category in enumerate(CATEGORIES):
            swatch = Swatch(category_colour(category))
            name = QLabel(CATEGORY_LABELS[category])
            name.setToolTip(tooltip_html(CATEGORY_MEANINGS[category]))
            total = QLabel()
            total.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self.legend_grid.addWidget(swatch, row, 0)
            self.legend_grid.addWidget(name, row, 1)
            self.legend_grid.addWidget(total, row, 2)
            self.legend_rows[category] = (swatch, name, total)
            if category in CATEGORY_ACTIONS:
                button = QPushButton(ACTION_TEXT[CATEGORY_ACTIONS[category]])
                button.clicked.connect(lambda _checked=False, c=category: self.act(c))
                self.legend_grid.addWidget(button, row, 3)
                self.buttons[category] = button
        self.legend_grid.setRowStretch(len(CATEGORIES), 1)
        self.legend.setSizePolicy(QSizePolicy.Policy.Maximum, QSizePolicy.Policy.Preferred)
        self.treemap = SpaceTreemap()
        top_layout.addWidget(self.legend, 0, 0, Qt.AlignmentFlag.AlignTop)
        top_layout.addWidget(self.treemap, 0, 1)
        top_layout.setColumnStretch(1, 1)
        outer.addWidget(top, 3)

        files_title = QLabel(
            "<b>Per file</b> (each bar is the whole file; click a part an "
            "operation frees to open it for that file)"
        )
        files_title.setWordWrap(True)
        outer.addWidget(files_title)
        self.bars = SpaceBars()
        self.scroller = QScrollArea()
        self.scroller.setWidget(self.bars)
        self.scroller.setWidgetResizable(True)
        self.scroller.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.scroller.setFrameShape(QFrame.Shape.NoFrame)
        outer.addWidget(self.scroller, 2)

        self.hover = QLabel(" ")
        self.hover.setWordWrap(True)
        self.hover.setMinimumHeight(QFontMetrics(self.hover.font()).height() * 2 + 4)
        self.hover.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.hover.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        outer.addWidget(self.hover)
        for widget in (self.bars, self.treemap):
            widget.hovered.connect(self._hovered)
            widget.clicked.connect(self._part_clicked)
        self._show_account(None, "")

    # -- wiring ----------------------------------------------------------------------------------
    def attach(self, operations: Any, snapshots: Any = None) -> None:
        """The window's :class:`OperationActions` (the buttons open its wizards) and, when
        given, its snapshot model: its cost map (``cost_of``) says which snapshot deletion
        frees most and which ones would be refused."""
        self.operations = operations
        self._cost_of = getattr(snapshots, "cost_of", None)
        if snapshots is not None:
            # The cost map arrives later than the account (one signal per row): refresh the
            # buttons once, in the next event-loop turn.
            snapshots.dataChanged.connect(lambda *_args: self._costs_changed())
            snapshots.modelReset.connect(self._costs_changed)

    def set_session(self, session: Session | None) -> None:
        """A (re)loaded folder: every account counted before is out of date."""
        self._epoch += 1
        self.session = session
        self.node = None
        self.root = None
        self.cache.clear()
        self.errors.clear()
        self._running.clear()
        # Resolved once per load (a few stat calls), so drawing never touches the disk.
        self._disks = (
            {d.path.resolve(): d for d in session.iter_disks() if d.path is not None}
            if session is not None
            else {}
        )
        self._role_of = self._roles()
        self._folder = (
            session.vm.folder.resolve() if session is not None and session.vm is not None else None
        )
        self._show_account(
            None,
            "Select an image to see where the space goes."
            if session
            else "Open a VM folder or a disk image to see where its space goes.",
        )
        # A VM folder is counted whole, whatever gets selected: while the tab is shown, start
        # now rather than after the window's initial selection.
        if session is not None and session.kind == "vm" and self.isVisible():
            self._count(session.source)

    def account_root(self, node: DiskNode | None) -> Path | None:
        """What to count for a selection: the whole VM folder, or the selected image alone."""
        session = self.session
        if session is None:
            return None
        if session.kind == "vm":
            return session.source
        return node.path if node is not None else None

    def show_selection(self, node: DiskNode | None) -> None:
        """The trees' selection changed: show its account (counting it first if needed).

        Never counts here: a known account is drawn at once, an unknown one is counted on the
        worker pool while the view says "Counting…" (only while the tab is visible).
        """
        self.node = node
        self._selected = next((p for p, d in self._disks.items() if d is node), None)
        root = self.account_root(node)
        self.root = root
        if root is None:
            self._show_account(
                None, "Nothing to count: the image file is missing." if node is not None else ""
            )
            return
        if root in self.cache:
            self._show_account(self.cache[root])
        elif root in self.errors:
            self._show_account(None, self.errors[root])
        else:
            self._show_account(None, f"Counting the space of {root.name}…")
            if self.isVisible():
                self._count(root)

    def showEvent(self, event: Any) -> None:  # Qt override
        """Count the selection's account when the tab is first shown for it."""
        super().showEvent(event)
        root = self.root
        if root is not None and root not in self.cache and root not in self.errors:
            self._count(root)

    def _count(self, root: Path) -> None:
        if root in self._running:
            return
        self._running.add(root)
        epoch = self._epoch

        def done(account: SpaceAccount) -> None:
            if epoch != self._epoch:
                return
            self._running.discard(root)
            self.cache[root] = account
            if root == self.root:
                self._show_account(account)

        def failed(exc: BaseException) -> None:
            if epoch != self._epoch:
                return
            self._running.discard(root)
            self.errors[root] = f"Cannot count the space of {root.name}: {messages.sentence(exc)}"
            if root == self.root:
                self._show_account(None, self.errors[root])

        def cancelled() -> None:
            self._running.discard(root)

        self.pool.start(
            lambda progress, token: account_space(root, progress=progress, cancel=token),
            "space",
            succeeded=done,
            failed=failed,
            cancelled=cancelled,
        )

    # -- drawing ---------------------------------------------------------------------------------
    def rows(self, account: SpaceAccount) -> list[FileRow]:
        """The account's files as the view shows them, largest first."""
        # The engine gives the files under the folder it resolved (images outside it, and a
        # single image, by their resolved paths), so no path is resolved again here.
        base = self._folder
        out = []
        for f in account.files:
            name = short_file_name(f.path.name)
            if base is not None and f.path.is_relative_to(base):
                rel = f.path.relative_to(base)
                name = "/".join([*rel.parts[:-1], short_file_name(rel.name)])
            out.append(
                FileRow(
                    f,
                    name,
                    short_file_name(f.path.name),
                    self._role_of.get(f.path, ""),
                    f.path == self._selected,
                )
            )
        out.sort(key=lambda r: r.space.size, reverse=True)
        return out

    def _roles(self) -> dict[Path, str]:
        """Image path -> what it is to the VM: the snapshot that froze it, or the current state."""
        session = self.session
        if session is None:
            return {}
        by_uuid = {d.uuid: p for p, d in self._disks.items() if d.uuid is not None}
        out: dict[Path, str] = {}
        for row in session.iter_snapshots():
            for uuid in row.disks:
                path = by_uuid.get(uuid)
                if path is not None and path not in out:
                    out[path] = (
                        "current state" if row.is_current_state else f"snapshot '{row.name}'"
                    )
        return out

    def _show_account(self, account: SpaceAccount | None, message: str = "") -> None:
        self.account = account
        if account is None:
            self.summary.setText(html.escape(message) if message else " ")
            self.treemap.set_rows([], message)
            self.bars.set_rows([])
            for category in CATEGORIES:
                for widget in self.legend_rows[category]:
                    widget.setVisible(True)
                self.legend_rows[category][2].setText("")
                if category in self.buttons:
                    self.buttons[category].setEnabled(False)
                    self.buttons[category].setToolTip("")
            self.offers = {}
            return
        rows = self.rows(account)
        total = account.total
        what = "VM folder" if account.root.is_dir() or account.root.suffix == ".vbox" else "image"
        self.summary.setText(
            f"<b>{html.escape(account.root.name)}</b> ({what}): {len(account.files)} "
            f"file{'s' if len(account.files) != 1 else ''}, {html.escape(exact(account.size))}"
            f", {html.escape(human_size(account.allocated))} on the host."
            + (
                ""
                if account.zeros_scanned
                else " All-zero blocks are counted where the host file has holes only."
            )
        )
        self.summary.setToolTip(tooltip_html("\n".join(account.notes)) if account.notes else "")
        self.offers = self._offers(account)
        for category in CATEGORIES:
            value = total[category]
            swatch, name, label = self.legend_rows[category]
            for widget in (swatch, name, label):
                widget.setVisible(bool(value))
            label.setText(human_size(value))
            label.setToolTip(tooltip_html(f"{exact(value)}. {CATEGORY_MEANINGS[category]}"))
        self._show_buttons(account)
        self.treemap.set_rows(rows)
        self.bars.set_rows(rows)
        self.shown.emit(account.root)

    def _show_buttons(self, account: SpaceAccount) -> None:
        total = account.total
        for category, button in self.buttons.items():
            offer = self.offers.get(category)
            button.setVisible(bool(total[category]))
            button.setEnabled(offer is not None and offer.enabled)
            button.setToolTip(tooltip_html(offer.tip) if offer is not None else "")

    def _hovered(self, text: str) -> None:
        self.hover.setText(text or " ")

    # -- actions ---------------------------------------------------------------------------------
    def _disk_of(self, path: Path) -> DiskNode | None:
        return self._disks.get(path)

    def _snapshot_of(self, node: DiskNode) -> SnapNode | None:
        """The snapshot that froze ``node`` (the one whose deletion frees its hidden blocks)."""
        session = self.session
        if session is None or node.uuid is None:
            return None
        return next(
            (
                r
                for r in session.iter_snapshots()
                if not r.is_current_state and node.uuid in r.disks
            ),
            None,
        )

    def offer_for(self, category: Category, f: FileSpace) -> Offer | None:
        """What the button of ``category`` does for file ``f`` (None: no action applies)."""
        action = CATEGORY_ACTIONS.get(category)
        value = f.categories[category]
        if action is None:
            return None
        name = f.path.name
        freed = f"{exact(value)} of {CATEGORY_LABELS[category].lower()}"
        if action == Action.DISCARD_UNDO:
            total = self.account.total[category] if self.account is not None else value
            return Offer(
                action,
                None,
                total > 0,
                f"Discard vdigui's undo data ({exact(total)}); the last operation "
                "can then no longer be undone (the same as Edit > Discard Undo Data).",
            )
        node = self._disk_of(f.path)
        if node is None:
            return Offer(action, None, False, f"{name} is not an image of the opened folder.")
        if action == Action.DELETE_SNAPSHOT:
            snap = self._snapshot_of(node)
            if snap is None:
                return Offer(
                    action,
                    None,
                    False,
                    f"{name} holds {freed}, but no snapshot of the opened folder froze "
                    "it (open its VM folder to delete the snapshot).",
                )
            cost = self._cost_of(snap) if self._cost_of is not None else None
            refused = getattr(cost, "refused_reason", None)
            if refused:
                return Offer(
                    action,
                    snap,
                    False,
                    f"Deleting snapshot '{snap.name}' would free {freed} in {name}, "
                    f"but it cannot be deleted now: {refused}",
                )
            frees = getattr(cost, "frees_without_undo", None)
            return Offer(
                action,
                snap,
                True,
                f"Open Delete Snapshot for '{snap.name}': it still sees {freed} in "
                f"{name}"
                + (
                    f"; the cost map says deleting it frees {exact(frees)} "
                    "(without keeping undo data)."
                    if frees is not None
                    else "; deleting it frees them."
                ),
            )
        fs = action == Action.FS_AWARE_COMPACT
        return Offer(
            action,
            node,
            True,
            f"Open Compact{' (filesystem-aware)' if fs else ''} for {name}: frees up to {freed}.",
        )

    def _offers(self, account: SpaceAccount) -> dict[Category, Offer]:
        """Per actionable category: the file holding most of it (the selected image first when
        it holds some), and what the button would open for it."""
        out: dict[Category, Offer] = {}
        selected = self._selected
        for category in CATEGORY_ACTIONS:
            holders = [f for f in account.files if f.categories[category] > 0]
            if CATEGORY_ACTIONS[category] != Action.DISCARD_UNDO:
                holders = [f for f in holders if self._disk_of(f.path) is not None]
            if not holders:
                continue
            if CATEGORY_ACTIONS[category] == Action.DELETE_SNAPSHOT:
                offer = self._best_deletion(category, holders)
            else:
                mine = [f for f in holders if f.path == selected]
                best = mine[0] if mine else max(holders, key=lambda f: f.categories[category])
                offer = self.offer_for(category, best)
            if offer is not None:
                out[category] = offer
        return out

    def _best_deletion(self, category: Category, holders: list[FileSpace]) -> Offer | None:
        """The snapshot deletion to offer for hidden blocks: of the snapshots that froze an
        image holding some, the one the cost map says frees most (refused ones last); without
        a cost map yet, the one whose image holds the most hidden bytes."""
        offers = [(f, o) for f in holders if (o := self.offer_for(category, f)) is not None]
        if not offers:
            return None

        def rank(item: tuple[FileSpace, Offer]) -> tuple[bool, int, int]:
            f, offer = item
            cost = (
                self._cost_of(offer.selection)
                if self._cost_of is not None and isinstance(offer.selection, SnapNode)
                else None
            )
            frees = getattr(cost, "frees_without_undo", None)
            return offer.enabled, frees if frees is not None else -1, f.categories[category]

        return max(offers, key=rank)[1]

    def _costs_changed(self) -> None:
        if self._refresh_queued:
            return
        self._refresh_queued = True
        QTimer.singleShot(0, self, self._refresh_offers)

    def _refresh_offers(self) -> None:
        """The cost map changed: recompute what the buttons offer (no recount)."""
        self._refresh_queued = False
        if self.account is not None:
            self.offers = self._offers(self.account)
            self._show_buttons(self.account)

    def act(self, category: Category) -> object:
        """The legend's button for ``category``: open the wizard that frees it, pre-filled."""
        offer = self.offers.get(category)
        if offer is None or not offer.enabled:
            return None
        return self.open_offer(offer)

    def _part_clicked(self, row: FileRow, category: Category) -> None:
        offer = self.offer_for(category, row.space)
        if offer is not None and offer.enabled:
            self.open_offer(offer)

    def open_offer(self, offer: Offer) -> object:
        """Open what ``offer`` says: a wizard (returned) or the undo data's discard."""
        ops = self.operations
        if ops is None:
            return None
        if offer.action == Action.DISCARD_UNDO:
            undo = ops.undo
            if not undo.discard_action.isEnabled():
                self._say(undo.discard_action.statusTip())
                return None
            return undo.discard()
        kind = "delete-snapshot" if offer.action == Action.DELETE_SNAPSHOT else "compact"
        wizard = ops.open_wizard(kind, offer.selection)
        if wizard is not None and kind == "compact":
            preset_compact(wizard, fs_aware=offer.action == Action.FS_AWARE_COMPACT)
        return wizard

    def _say(self, text: str) -> None:
        window = self.window()
        bar: Callable[[], Any] | None = getattr(window, "statusBar", None)
        if bar is not None and text:
            bar().showMessage(text, 8000)


def preset_compact(wizard: Any, *, fs_aware: bool) -> None:
    """Pre-fill the compact wizard's options page: filesystem-aware or plain compaction."""
    box = getattr(getattr(wizard, "opts", None), "fs_aware", None)
    if box is not None:
        box.setChecked(fs_aware)


__all__ = [
    "ACTION_TEXT",
    "CATEGORY_ACTIONS",
    "Action",
    "FileRow",
    "Offer",
    "SpaceBars",
    "SpaceTreemap",
    "SpaceView",
    "bar_pixels",
    "category_colour",
    "exact",
    "hover_text",
    "preset_compact",
    "segments",
    "split_rect",
    "squarify",
]
