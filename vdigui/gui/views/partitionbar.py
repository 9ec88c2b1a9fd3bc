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

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QMouseEvent, QPainter, QPaintEvent, QPen
from PySide6.QtWidgets import QToolTip, QWidget

from vdigui.engine import UsageMap, Volume
from vdigui.gui import theme
from vdigui.gui.format import human_size

#: Outline colours by filesystem kind (after GParted's), for the bar and the volume legend.
KIND_COLOURS = {
    "ext2": "#9DB8D2", "ext3": "#7590AE", "ext4": "#4B6983", "ntfs": "#42E5AC",
    "fat12": "#18D918", "fat16": "#18D918", "fat32": "#18D918", "swap": "#C1665A",
    "lvm-pv": "#CC9966", "partition-table": "#6B6B6B", "free": "#A9A9A9",
}
UNKNOWN_COLOUR = "#000000"
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
    lines = [f"{v.partition}: {name}",
             f"bytes {human_size(v.start)} – {human_size(v.start + v.size)} "
             f"({human_size(v.size)})"]
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

    def __init__(self, to_x: Callable[[float], float] | None = None,
                 parent: QWidget | None = None) -> None:
        """``to_x`` maps a guest block number to an x coordinate in this widget."""
        super().__init__(parent)
        self.usage: UsageMap | None = None
        self.volumes: list[Volume] = []
        self.message = ""
        self.to_x = to_x or (lambda block: block)
        self.setMinimumHeight(38)
        self.setMaximumHeight(38)
        self.setMouseTracking(True)

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

    def paintEvent(self, event: QPaintEvent) -> None:
        """Qt override."""
        del event
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, False)
        fg = theme.foreground()
        if self.usage is None:
            painter.setPen(fg)
            painter.drawText(QRectF(self.rect()), Qt.AlignmentFlag.AlignVCenter
                             | Qt.AlignmentFlag.AlignLeft, self.message)
            painter.end()
            return
        painter.setClipRect(self.rect())
        metrics = painter.fontMetrics()
        dark = theme.is_dark()
        free_fill = QColor("#2B2B2B" if dark else "#FFFFFF")
        for v, rect in self.boxes():
            if rect.right() < 0 or rect.left() > self.width():
                continue
            outline = kind_colour(v.kind)
            inner = rect.adjusted(2, 2, -2, -2)
            painter.fillRect(rect, outline)
            if inner.width() > 0:
                painter.fillRect(inner, free_fill)
                if v.kind not in ("free",) and v.size:
                    share = 1.0 if v.kept_whole or v.used is None else v.used / v.size
                    used = QRectF(inner.left(), inner.top(), inner.width() * share,
                                  inner.height())
                    painter.fillRect(used, QColor(USED_FILL if not dark else "#6E6A3A"))
                if v.kept_whole:
                    painter.fillRect(inner, QBrush(outline, Qt.BrushStyle.BDiagPattern))
            title = v.kind if v.kind != "partition-table" else "table"
            if v.label:
                title += f" '{v.label}'"
            detail = human_size(v.size) if v.used is None or v.kind == "free" else (
                f"{human_size(v.used)} / {human_size(v.size)}")
            painter.setPen(QPen(QColor("#EEEEEE") if dark else QColor("#111111")))
            # Label the visible part, so a zoomed-in volume still says what it is.
            box = inner.intersected(QRectF(self.rect())).adjusted(3, 0, -3, 0)
            for text, flag in ((title, Qt.AlignmentFlag.AlignTop),
                               (detail, Qt.AlignmentFlag.AlignBottom)):
                if metrics.horizontalAdvance(text) <= box.width():
                    painter.drawText(box, flag | Qt.AlignmentFlag.AlignHCenter, text)
                elif text is title and metrics.horizontalAdvance("…") < box.width():
                    painter.drawText(box, flag | Qt.AlignmentFlag.AlignHCenter,
                                     metrics.elidedText(text, Qt.TextElideMode.ElideRight,
                                                        int(box.width())))
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
