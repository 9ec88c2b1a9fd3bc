"""The GParted-like partition bar drawn over the block map: the guest's volumes to scale.

Why over the block map and aligned with it: the question the block map raises ("what is this
allocated stretch?") is answered by the volume above it. The bar follows the map's zoom and
pan, so a volume's box sits exactly over its guest blocks. Each box is outlined in its
filesystem's colour (GParted's convention) and filled from the left in proportion to its used
share; a hatched box is kept whole (not understood, dirty, hibernated...), and its tooltip
says why.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QEvent, QPointF, QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QMouseEvent, QPainter, QPaintEvent, QPen
from PySide6.QtWidgets import QToolTip, QWidget

from vdigui.engine import UsageMap, Volume, human_size
from vdigui.gui import theme

#: Outline colours by filesystem kind (after GParted's), for the bar and the volume legend.
KIND_COLOURS = {
    "ext2": "#9DB8D2",
    "ext3": "#7590AE",
    "ext4": "#4B6983",
    "ntfs": "#42E5AC",
    "fat12": "#18D918",
    "fat16": "#18D918",
    "fat32": "#18D918",
    "swap": "#C1665A",
    "lvm-pv": "#CC9966",
    "partition-table": "#6B6B6B",
    "free": "#A9A9A9",
}
UNKNOWN_COLOUR = "#000000"
#: Width of a box's coloured outline, and the gap between it and the text inside.
OUTLINE = 2.0
TEXT_MARGIN = 3.0
USED_FILL = "#F8F8BA"


def kind_colour(kind: str) -> QColor:
    """The outline colour of a volume kind (black for anything not understood)."""
    return QColor(KIND_COLOURS.get(kind, UNKNOWN_COLOUR))


def bar_volumes(usage: UsageMap | None) -> list[Volume]:
    """The volumes the bar draws: the disk-level ones (LVs inside a PV are listed, not drawn)."""
    if usage is None:
        return []
    return [v for v in usage.volumes if not v.partition.startswith("LV") and v.size > 0]


def volume_text(v: Volume) -> str:
    """A volume in plain words (the tooltip)."""
    name = v.kind + (f" '{v.label}'" if v.label else "")
    lines = [
        f"{v.partition}: {name}",
        f"bytes {human_size(v.start)} – {human_size(v.start + v.size)} ({human_size(v.size)})",
    ]
    if v.kind == "free":
        lines.append("Unpartitioned: compaction may drop it.")
    elif v.kept_whole or v.used is None:
        lines.append("Kept whole: " + (" ".join(v.notes) or "its contents are not understood."))
    else:
        lines.append(f"{human_size(v.used)} used, {human_size(v.free or 0)} free")
        lines += list(v.notes)
    return "\n".join(lines)


class PartitionBar(QWidget):
    """The guest's volumes as boxes, aligned with a block map's x axis (guest blocks)."""

    def __init__(
        self, to_x: Callable[[float], float] | None = None, parent: QWidget | None = None
    ) -> None:
        """``to_x`` maps a guest block number to an x coordinate in this widget."""
        super().__init__(parent)
        self.usage: UsageMap | None = None
        self.volumes: list[Volume] = []
        self.message = ""
        self.to_x = to_x or (lambda block: block)
        self.setMouseTracking(True)
        self._fit_height()

    def _fit_height(self) -> None:
        """Two lines of text plus the outline and a margin above and below each: a fixed
        38 pixels let the label of a larger font touch (or cross) the outline."""
        line = self.fontMetrics().height()
        self.setFixedHeight(2 * line + 2 * (int(OUTLINE + TEXT_MARGIN) + 2))

    def changeEvent(self, event: QEvent) -> None:
        """Qt override: follow font changes."""
        if event.type() == QEvent.Type.FontChange:
            self._fit_height()
        super().changeEvent(event)

    def set_usage(self, usage: UsageMap | None, message: str = "") -> None:
        """Show ``usage`` (None: ``message`` says why there is nothing to show)."""
        self.usage = usage
        self.volumes = bar_volumes(usage)
        self.message = message
        self.update()

    def boxes(self) -> list[tuple[Volume, QRectF]]:
        """Each drawn volume with its rectangle (widget coordinates), in disk order."""
        if self.usage is None:
            return []
        bs = self.usage.block_size
        out = []
        for v in self.volumes:
            x0 = self.to_x(v.start / bs)
            x1 = self.to_x((v.start + v.size) / bs)
            out.append((v, QRectF(x0, 1.5, max(x1 - x0, 1.0), self.height() - 3.0)))
        return out

    def labels(self) -> list[tuple[Volume, str, QRectF]]:
        """Every text drawn on the bar with the rectangle it occupies (widget coordinates).

        Each box says its title, then its used / total size; a title too wide for its box
        falls back to the label alone, then the kind, the sizes to the total alone, and last
        to an elided form (the tooltip says all).
        """
        if self.usage is None:
            return []
        metrics = self.fontMetrics()
        line = metrics.height()
        out = []
        view = QRectF(self.rect())
        for v, rect in self.boxes():
            inner = rect.adjusted(OUTLINE, OUTLINE, -OUTLINE, -OUTLINE)
            # Label the visible part, so a zoomed-in volume still says what it is.
            box = inner.intersected(view).adjusted(
                TEXT_MARGIN, TEXT_MARGIN, -TEXT_MARGIN, -TEXT_MARGIN
            )
            if box.width() <= 0 or box.height() < line:
                continue
            kind = v.kind if v.kind != "partition-table" else "table"
            titles = [kind + (f" '{v.label}'" if v.label else "")]
            if v.label:
                titles += [v.label, kind]
            details = [human_size(v.size)]
            if v.used is not None and v.kind != "free":
                details.insert(0, f"{human_size(v.used)} / {human_size(v.size)}")
            for text, top in ((titles, box.top()), (details, box.bottom() - line)):
                if box.height() < 2 * line and top != box.top():
                    continue  # room for one line only: the title
                fits = next((t for t in text if metrics.horizontalAdvance(t) <= box.width()), None)
                if fits is None:
                    if metrics.horizontalAdvance("…") >= box.width():
                        continue
                    fits = metrics.elidedText(
                        text[0], Qt.TextElideMode.ElideRight, int(box.width())
                    )
                width = metrics.horizontalAdvance(fits)
                left = box.left() + (box.width() - width) / 2
                out.append((v, fits, QRectF(left, top, width, line)))
        return out

    def paintEvent(self, event: QPaintEvent) -> None:
        """Qt override."""
        del event
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, False)
        fg = theme.foreground()
        if self.usage is None:
            painter.setPen(fg)
            painter.drawText(
                QRectF(self.rect()),
                Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft,
                self.message,
            )
            painter.end()
            return
        painter.setClipRect(self.rect())
        dark = theme.is_dark()
        free_fill = QColor("#2B2B2B" if dark else "#FFFFFF")
        for v, rect in self.boxes():
            if rect.right() < 0 or rect.left() > self.width():
                continue
            outline = kind_colour(v.kind)
            inner = rect.adjusted(OUTLINE, OUTLINE, -OUTLINE, -OUTLINE)
            painter.fillRect(rect, outline)
            if inner.width() > 0:
                painter.fillRect(inner, free_fill)
                if v.kind not in ("free",) and v.size:
                    share = 1.0 if v.kept_whole or v.used is None else v.used / v.size
                    used = QRectF(inner.left(), inner.top(), inner.width() * share, inner.height())
                    painter.fillRect(used, QColor(USED_FILL if not dark else "#6E6A3A"))
                if v.kept_whole:
                    painter.fillRect(inner, QBrush(outline, Qt.BrushStyle.BDiagPattern))
        painter.setPen(QPen(QColor("#EEEEEE") if dark else QColor("#111111")))
        for v, text, where in self.labels():
            if v.kept_whole:
                # Hatching runs under the text; a backing keeps the letters readable.
                painter.fillRect(
                    where.adjusted(-1, 0, 1, 0),
                    QColor(43, 43, 43, 190) if dark else QColor(255, 255, 255, 190),
                )
            painter.drawText(where, Qt.AlignmentFlag.AlignCenter, text)
        painter.end()

    def volume_at(self, x: float) -> Volume | None:
        """The volume drawn at widget x coordinate ``x``."""
        for v, rect in self.boxes():
            if rect.left() <= x < rect.right():
                return v
        return None

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        """Qt override: describe the volume under the pointer."""
        v = self.volume_at(event.position().x())
        text = volume_text(v) if v is not None else self.message
        if text:
            QToolTip.showText(event.globalPosition().toPoint(), text, self)

    def to_point(self, block: float) -> QPointF:
        """Where guest block ``block`` lies on the bar (for tests)."""
        return QPointF(self.to_x(block), self.height() / 2)
