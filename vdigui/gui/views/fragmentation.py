"""Fragmentation: guest block against physical slot, the engine's figures, the host extents.

Why a scatter of guest block (x) against slot (y): data written in guest order lies on one
diagonal, and shuffled data shows at a glance as scattered dashes. Each point is coloured by the
jump a sequential read makes to reach it, so the costly seeks stand out. Below, the host file's
extents show the other layer of fragmentation (the host filesystem's), and one paragraph says
in words what it all means for a sequential read.

The third level is the guest's own: when its filesystems could be read, the points can be
coloured by the volume (partition, filesystem) their guest block belongs to, and a table says
for each volume where its data lies in the file: how many blocks, in how many separate runs,
between which slots. A volume whose blocks are spread over the whole file is what makes a
sequential read of that filesystem seek, whatever the guest-order picture suggests.

The Files tab's "Show Blocks" marks one guest file here too (amber outlines over the points of
the layer shown, :meth:`FragmentationView.set_highlight`), with a line saying how fragmented
the file is twice over: its extents inside the guest, its runs of slots inside each image file.
A file's blocks may be served by several layers; the line names the layers not shown, so the
user knows which to pick. Markers are capped (:data:`MAX_MARKERS`) so a file of any size draws
in a few milliseconds.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QColor, QMouseEvent, QPainter, QPaintEvent
from PySide6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from vdigui.engine import (
    Analysis,
    FileBlocks,
    HostExtents,
    UsageMap,
    Volume,
    fragmentation,
    human_size,
    is_allocated,
)
from vdigui.gui import theme
from vdigui.gui.views.partitionbar import bar_volumes

#: Upper bounds (inclusive) of the jump classes, in slots; beyond the last is class 4.
JUMP_BOUNDS = (0, 15, 255, 4095)
#: Above this many points the plot is drawn as an image of pixels (pyqtgraph's scatter
#: needs about a second for 200,000 points); each pixel shows the worst jump it holds.
MAX_SCATTER = 20_000
IMAGE_SIZE = (1200, 800)
#: Screen pixels (each way) one pixel of the density image covers at least. The image is sized
#: from the plot, never larger than it: a bigger image is shrunk on screen by dropping rows
#: and columns, and a block alone in a dropped pixel would vanish (a 2 TiB disk with a few
#: thousand scattered blocks looked nearly empty). Two pixels make a lone block a clear dot.
DENSITY_PIXEL = 2
#: Most markers drawn for a file marked by "Show Blocks". Up to this many blocks each gets an
#: outline; beyond, runs of consecutive (block, slot) pairs become one line each with a marker
#: at its start; beyond that again, one marker per occupied cell of a MARK_GRID grid.
MAX_MARKERS = 2_000
MARK_GRID = (64, 31)
#: The highlight colour (the block map's, amber: no layer, jump class or volume uses it).
MARK_COLOUR = "#FFB000"


def jump_classes(slots: np.ndarray) -> np.ndarray:
    """Class 0-4 per point: how far a sequential read jumps to reach it (0 = in order)."""
    if slots.size == 0:
        return np.zeros(0, dtype=np.uint8)
    jump = np.zeros(slots.size, dtype=np.int64)
    jump[1:] = np.abs(np.diff(slots.astype(np.int64)) - 1)
    return np.searchsorted(np.array(JUMP_BOUNDS), jump, side="left").astype(np.uint8)


def density_image(
    blocks: np.ndarray,
    slots: np.ndarray,
    classes: np.ndarray,
    guest: int,
    top_slot: int,
    size: tuple[int, int] = IMAGE_SIZE,
    colours: tuple[str, ...] = theme.JUMP_COLOURS,
) -> np.ndarray:
    """RGBA (height x width) of the scatter: each pixel coloured by the worst jump in it.

    The worst, not the most common, jump: a pixel holding one long seek among in-order blocks
    should show the seek (it is what costs time), and empty pixels stay transparent.
    """
    width, height = size
    xi = np.clip(blocks * width // max(guest, 1), 0, width - 1)
    yi = np.clip(slots * height // max(top_slot + 1, 1), 0, height - 1)
    grid = np.full(width * height, -1, dtype=np.int8)
    np.maximum.at(grid, yi * width + xi, classes.astype(np.int8))
    palette = np.array(
        [[QColor(c).red(), QColor(c).green(), QColor(c).blue(), 255] for c in colours],
        dtype=np.uint8,
    )
    rgba = np.zeros((width * height, 4), dtype=np.uint8)
    filled = grid >= 0
    rgba[filled] = palette[grid[filled]]
    return rgba.reshape(height, width, 4)


def layer_points(entries_row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(guest blocks, slots) of the allocated entries of one layer, in guest order."""
    blocks = np.flatnonzero(is_allocated(entries_row))
    return blocks, entries_row[blocks].astype(np.int64)


@dataclass(frozen=True, slots=True)
class VolumePlacement:
    """Where one guest volume's data lies in one layer's file.

    Attributes:
        volume: the volume.
        blocks: guest blocks of the volume this file stores.
        runs: separate runs of consecutive slots they occupy (1 = one contiguous piece).
        first_slot: the lowest slot holding one of them (-1 when none).
        last_slot: the highest (-1 when none).
    """

    volume: Volume
    blocks: int
    runs: int
    first_slot: int
    last_slot: int


def volume_index(usage: UsageMap | None, guest_blocks: int) -> np.ndarray:
    """int16 per guest block: index into :func:`bar_volumes` of its volume, -1 for none.

    A block shared by two volumes (an unaligned boundary) goes to the later one.
    """
    out = np.full(guest_blocks, -1, dtype=np.int16)
    if usage is None:
        return out
    bs = usage.block_size
    for i, v in enumerate(bar_volumes(usage)):
        if v.kind == "free":
            continue
        out[v.start // bs : -(-(v.start + v.size) // bs)] = i
    return out


def volume_placements(
    usage: UsageMap | None, blocks: np.ndarray, slots: np.ndarray
) -> list[VolumePlacement]:
    """For every volume with data in a layer: how its stored blocks lie in the file."""
    if usage is None:
        return []
    owner = volume_index(usage, int(blocks.max()) + 1 if blocks.size else 0)
    mine = owner[blocks] if blocks.size else np.zeros(0, dtype=np.int16)
    out = []
    for i, v in enumerate(bar_volumes(usage)):
        if v.kind == "free":
            continue
        s = np.sort(slots[mine == i])
        if s.size == 0:
            out.append(VolumePlacement(v, 0, 0, -1, -1))
            continue
        runs = 1 + int(np.count_nonzero(np.diff(s) != 1))
        out.append(VolumePlacement(v, int(s.size), runs, int(s[0]), int(s[-1])))
    return out


def volume_colours(count: int) -> tuple[str, ...]:
    """Distinct colours for ``count`` volumes (the layer hues, cycled)."""
    hues = theme.LAYER_HUES
    return tuple(hues[i % len(hues)] for i in range(max(count, 1)))


def file_points(fb: FileBlocks, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """(guest blocks, slots) of ``fb``'s blocks that ``layer`` stores and serves, file order."""
    if not fb.blocks.size:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    mine = (fb.layers == layer) & is_allocated(fb.slots)
    return fb.blocks[mine].astype(np.int64), fb.slots[mine].astype(np.int64)


def layer_runs(fb: FileBlocks) -> dict[int, tuple[int, int]]:
    """Per layer storing some of the file: (blocks, runs of consecutive slots in file order)."""
    out: dict[int, tuple[int, int]] = {}
    if not fb.blocks.size:
        return out
    alloc = is_allocated(fb.slots)
    for layer in np.unique(fb.layers[alloc]).tolist():
        slots = fb.slots[alloc & (fb.layers == layer)].astype(np.int64)
        runs = 1 + int(np.count_nonzero(np.diff(slots) != 1))
        out[int(layer)] = (int(slots.size), runs)
    return out


def preferred_layer(fb: FileBlocks) -> int:
    """The layer storing most of the file's blocks (the newest on a tie); -1 when none does."""
    runs = layer_runs(fb)
    if not runs:
        return -1
    return max(runs, key=lambda layer: (runs[layer][0], layer))


def mark_layout(
    blocks: np.ndarray, slots: np.ndarray, guest: int, top_slot: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Where to draw a file's marks: (marker x, marker y, line x, line y), in plot units.

    At most :data:`MAX_MARKERS` markers (and as many line segments, drawn as pairs of points):
    every block when there are few; else one line per run of consecutive (block, slot) pairs
    (a file written in order is one line) with a marker at its start; else one marker per
    occupied cell of a :data:`MARK_GRID` grid.
    """
    empty = np.zeros(0, dtype=np.float64)
    if blocks.size <= MAX_MARKERS:
        return blocks + 0.5, slots + 0.5, empty, empty
    cut = np.flatnonzero((np.diff(blocks) != 1) | (np.diff(slots) != 1)) + 1
    first = np.r_[0, cut]
    last = np.r_[cut - 1, blocks.size - 1]
    if first.size <= MAX_MARKERS:
        lx = np.empty(first.size * 2)
        ly = np.empty(first.size * 2)
        lx[0::2], lx[1::2] = blocks[first] + 0.5, blocks[last] + 0.5
        ly[0::2], ly[1::2] = slots[first] + 0.5, slots[last] + 0.5
        return blocks[first] + 0.5, slots[first] + 0.5, lx, ly
    gx, gy = MARK_GRID
    cw = max(guest, 1) / gx
    ch = (top_slot + 1) / gy
    cx = np.clip((blocks / cw).astype(np.int64), 0, gx - 1)
    cy = np.clip((slots / ch).astype(np.int64), 0, gy - 1)
    cells = np.flatnonzero(np.bincount(cy * gx + cx, minlength=gx * gy))  # O(n), no sort
    return (cells % gx + 0.5) * cw, (cells // gx + 0.5) * ch, empty, empty


class WholeNumberAxis(pg.AxisItem):
    """An axis whose ticks fall on whole numbers only: blocks and slots have no fractions.

    Without it, a layer of zero or one block gets a range of about one unit and pyqtgraph
    labels it 0.0, 0.2, 0.4... (fifth of a slot that cannot exist).
    """

    def tickSpacing(self, minVal: float, maxVal: float, size: float) -> list[tuple[float, float]]:
        """pyqtgraph override: the usual levels, minus those finer than one unit."""
        levels = [
            (spacing, offset)
            for spacing, offset in super().tickSpacing(minVal, maxVal, size)
            if spacing >= 1
        ]
        return levels or [(1.0, 0.0)]


class HostStrip(QWidget):
    """The host file drawn along its length, one coloured band per host extent."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.extents: HostExtents | None = None
        self.file_size = 0
        self.setMinimumHeight(28)
        self.setMouseTracking(True)
        self.setToolTip(
            "The host file from its first byte (left) to its last (right); each "
            "band is one extent on the host disk. Gaps are holes (sparse areas)."
        )

    def set_extents(self, extents: HostExtents | None, file_size: int) -> None:
        """Show ``extents`` of a file of ``file_size`` bytes."""
        self.extents = extents
        self.file_size = file_size
        self.update()

    def paintEvent(self, event: QPaintEvent) -> None:
        """Qt override."""
        del event
        painter = QPainter(self)
        rect = QRectF(self.rect()).adjusted(0.5, 0.5, -0.5, -0.5)
        painter.fillRect(rect, theme.free_colour())
        ext = self.extents
        if ext is not None and ext.available and self.file_size > 0:
            scale = rect.width() / max(self.file_size, 1)
            colours = (QColor("#3b7dd8"), QColor("#f28e2b"))
            for i, e in enumerate(ext.extents):
                x = rect.left() + e.logical * scale
                w = max(e.length * scale, 1.0)
                painter.fillRect(QRectF(x, rect.top(), w, rect.height()), colours[i % 2])
        painter.setPen(theme.foreground())
        painter.drawRect(rect)
        painter.end()

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        """Qt override: name the extent under the pointer."""
        ext = self.extents
        if ext is None or not ext.available or self.file_size <= 0:
            return
        at = event.position().x() / max(self.width(), 1) * self.file_size
        for i, e in enumerate(ext.extents):
            if e.logical <= at < e.logical + e.length:
                QToolTip.showText(
                    event.globalPosition().toPoint(),
                    f"Extent {i + 1} of {ext.count}: file bytes "
                    f"{human_size(e.logical)}–{human_size(e.logical + e.length)} "
                    f"({human_size(e.length)}) at host byte 0x{e.physical:X}",
                    self,
                )
                return


class FragmentationView(QWidget):
    """The fragmentation tab: a layer picker, the scatter, figures, host strip, a paragraph."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.analysis: Analysis | None = None
        self.labels: list[str] = []
        self.block_size = 1 << 20
        self.points: tuple[np.ndarray, np.ndarray, np.ndarray] = (
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
            np.zeros(0, np.uint8),
        )
        self.sampled = False

        self.usage: UsageMap | None = None
        self.placements: list[VolumePlacement] = []
        self.layer_box = QComboBox()
        self.layer_box.setToolTip("Which layer's file to plot (each file has its own slots)")
        # A snapshot name of 80+ characters must not widen the tab (the list shows it whole).
        self.layer_box.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.layer_box.setMinimumContentsLength(24)
        self.layer_box.currentIndexChanged.connect(self._show_layer)
        self.colour_box = QComboBox()
        self.colour_box.addItems(["jump a read makes", "guest volume"])
        self.colour_box.setToolTip(
            "Colour the points by the seek a sequential read makes to "
            "reach them, or by the guest volume (partition) they "
            "belong to"
        )
        self.colour_box.currentIndexChanged.connect(lambda _i: self._show_layer(self.layer))
        self.volume_scatters: list[pg.ScatterPlotItem] = []
        self.volumes_label = QLabel()
        self.volumes_label.setTextFormat(Qt.TextFormat.RichText)
        self.volumes_label.setWordWrap(True)
        self.volumes_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.plot = pg.PlotWidget(
            enableMenu=False,
            axisItems={"left": WholeNumberAxis("left"), "bottom": WholeNumberAxis("bottom")},
        )
        self.plot.hideButtons()
        self.plot.setLabel("bottom", "guest block (position on the virtual disk)")
        self.plot.setLabel("left", "physical slot in the file")
        self.plot.setMinimumHeight(200)
        # One scatter item per jump class, each with a single brush: per-point brush lists
        # make pyqtgraph ~20x slower, and 200,000 points must draw in well under 100 ms.
        self.scatters = [
            pg.ScatterPlotItem(size=4, pen=None, pxMode=True, brush=pg.mkBrush(QColor(colour)))
            for colour in theme.JUMP_COLOURS
        ]
        for item in self.scatters:
            self.plot.addItem(item)
        self.density = pg.ImageItem()
        self.density.setVisible(False)
        self.plot.addItem(self.density)
        #: (blocks, slots, classes, guest, top slot, colours) the density image shows.
        self._density_input: tuple | None = None
        self._density_size = (0, 0)
        self.plot.getViewBox().sigResized.connect(self._redraw_density)
        # The "Show Blocks" overlay: outlines (no fill, so the point's own colour shows) and,
        # for big files, one line per in-order run. Above every point and the density image.
        amber = QColor(MARK_COLOUR)
        self.mark_lines = pg.PlotCurveItem(pen=pg.mkPen(amber, width=3), connect="pairs")
        self.mark_lines.setZValue(19)
        self.mark_scatter = pg.ScatterPlotItem(
            size=10, symbol="s", pen=pg.mkPen(amber, width=2), brush=pg.mkBrush(None), pxMode=True
        )
        self.mark_scatter.setZValue(20)
        self.plot.addItem(self.mark_lines)
        self.plot.addItem(self.mark_scatter)
        #: What "Show Blocks" marked: (the file's blocks, its name for the line), or None.
        self.marked: tuple[FileBlocks, str] | None = None
        #: The marked file's (guest block, slot) pairs in the layer shown.
        self.marked_points: tuple[np.ndarray, np.ndarray] = (
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
        )
        self.mark_label = QLabel()
        self.mark_label.setTextFormat(Qt.TextFormat.RichText)
        self.mark_label.setWordWrap(True)
        self.mark_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.mark_label.setVisible(False)

        self.legend = QLabel()
        self.legend.setTextFormat(Qt.TextFormat.RichText)
        self.legend.setWordWrap(True)
        self.figures = QFormLayout()
        self.figure_labels: dict[str, QLabel] = {}
        for key, title, tip in (
            ("allocated", "Blocks in this file", "Allocated blocks of the selected layer"),
            (
                "discontinuities",
                "Jumps (seeks)",
                "Times the next guest block is not in the next slot of the file",
            ),
            ("longest", "Longest in-order run", "The most blocks read without a jump"),
            ("share", "In order", "Share of block-to-block steps that need no jump"),
            ("mean", "Mean jump", "Average distance of the jumps, in slots"),
            ("chain", "Whole chain", "A sequential read of the whole disk through all layers"),
            ("host", "Host extents", "Pieces the host filesystem keeps the file in"),
        ):
            label = QLabel("—")
            label.setToolTip(tip)
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            name = QLabel(title + ":")
            name.setToolTip(tip)
            self.figures.addRow(name, label)
            self.figure_labels[key] = label
        self.strip = HostStrip()
        self.paragraph = QLabel()
        self.paragraph.setWordWrap(True)
        self.paragraph.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        head = QHBoxLayout()
        head.addWidget(QLabel("Layer:"))
        head.addWidget(self.layer_box, 1)
        head.addWidget(QLabel("Colour by:"))
        head.addWidget(self.colour_box)
        side = QVBoxLayout()
        side.addLayout(self.figures)
        side.addStretch(1)
        middle = QHBoxLayout()
        middle.addWidget(self.plot, 3)
        middle.addLayout(side, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(head)
        layout.addWidget(self.legend)
        layout.addWidget(self.mark_label)
        layout.addLayout(middle, 1)
        layout.addWidget(QLabel("Host file extents of the selected layer:"))
        layout.addWidget(self.strip)
        layout.addWidget(self.volumes_label)
        layout.addWidget(self.paragraph)
        self._update_legend()

    def _update_legend(self) -> None:
        if self.by_volume:
            vols = bar_volumes(self.usage)
            parts = [
                f'<span style="color:{c}">&#9679;</span>&nbsp;'
                f"{html.escape(v.partition)} {html.escape(v.kind)}&nbsp;&nbsp; "
                for v, c in zip(vols, volume_colours(len(vols)), strict=True)
                if v.kind != "free"
            ]
            self.legend.setText("Colour = the guest volume the block belongs to: " + "".join(parts))
            return
        parts = []
        for colour, text in zip(theme.JUMP_COLOURS, theme.JUMP_LABELS, strict=True):
            parts.append(f'<span style="color:{colour}">&#9679;</span>&nbsp;{text}&nbsp;&nbsp; ')
        self.legend.setText(
            "Colour = jump a sequential read makes to reach the block: " + "".join(parts)
        )

    def clear(self) -> None:
        """Show nothing."""
        self.analysis = None
        self.layer_box.blockSignals(True)
        self.layer_box.clear()
        self.layer_box.blockSignals(False)
        for item in self.scatters + self.volume_scatters:
            item.clear()
        self._density_input = None
        self.density.setVisible(False)
        self.usage = None
        self.volumes_label.setText("")
        self.strip.set_extents(None, 0)
        for label in self.figure_labels.values():
            label.setText("—")
        self.paragraph.setText("")
        self.set_highlight(None)

    @property
    def by_volume(self) -> bool:
        """Whether points are coloured by guest volume (and the guest was readable)."""
        return self.colour_box.currentIndex() == 1 and self.usage is not None

    def set_data(
        self,
        analysis: Analysis,
        labels: list[str],
        host: tuple[HostExtents, ...],
        block_size: int,
        usage: UsageMap | None = None,
    ) -> None:
        """Show a chain's analysis; picks the layer with the most data first.

        ``usage`` (the guest's filesystems, when readable) enables the volume level.
        """
        self.analysis = analysis
        self.usage = usage
        self.colour_box.setEnabled(usage is not None)
        self.labels = list(labels)
        self.host = host
        self.block_size = block_size
        self.plot.setBackground(theme.background())
        for name in ("left", "bottom"):
            axis = self.plot.getPlotItem().getAxis(name)
            axis.setTextPen(pg.mkPen(theme.foreground()))
            axis.setPen(pg.mkPen(theme.foreground()))
        self.layer_box.blockSignals(True)
        self.layer_box.clear()
        for i, label in enumerate(labels):
            stats = analysis.layer_stats[i]
            self.layer_box.addItem(f"{i}: {label} ({stats.allocated:,} blocks)")
        biggest = int(np.argmax([s.allocated for s in analysis.layer_stats])) if labels else 0
        wanted = preferred_layer(self.marked[0]) if self.marked is not None else -1
        if 0 <= wanted < len(labels):
            biggest = wanted  # a file marked before the tab was drawn: show its layer
        self.layer_box.setCurrentIndex(biggest)
        self.layer_box.blockSignals(False)
        self._show_layer(biggest)

    @property
    def layer(self) -> int:
        """The layer shown."""
        return self.layer_box.currentIndex()

    def _show_layer(self, index: int) -> None:
        analysis = self.analysis
        if analysis is None or not 0 <= index < len(self.labels):
            return
        blocks, slots = layer_points(analysis.entries[index])
        classes = jump_classes(slots)
        self.points = (blocks, slots, classes)
        guest = analysis.serving.size
        top_slot = int(slots.max()) if slots.size else 0
        self.sampled = blocks.size > MAX_SCATTER
        self._update_legend()
        colours: tuple[str, ...] = theme.JUMP_COLOURS
        for item in self.volume_scatters:
            item.clear()
        if self.by_volume:
            owner = volume_index(self.usage, guest)
            classes = (owner[blocks] if blocks.size else np.zeros(0, np.int16)).astype(np.int16)
            count = len(bar_volumes(self.usage))
            colours = (*volume_colours(count), "#808080")
            classes = np.where(classes < 0, len(colours) - 1, classes).astype(np.uint8)
        if self.sampled:
            for item in self.scatters:
                item.clear()
            self._density_input = (blocks, slots, classes, guest, top_slot, colours)
            self._density_size = (0, 0)
            self._redraw_density()
            self.density.setVisible(True)
        else:
            self._density_input = None
            self.density.setVisible(False)
            xs, ys = blocks + 0.5, slots + 0.5
            if self.by_volume:
                for item in self.scatters:
                    item.clear()
                while len(self.volume_scatters) < len(colours):
                    extra = pg.ScatterPlotItem(size=4, pen=None, pxMode=True)
                    self.plot.addItem(extra)
                    self.volume_scatters.append(extra)
                for cls, colour in enumerate(colours):
                    mask = classes == cls
                    item = self.volume_scatters[cls]
                    item.setBrush(pg.mkBrush(QColor(colour)))
                    item.setData(x=xs[mask], y=ys[mask])
            else:
                for cls, item in enumerate(self.scatters):
                    mask = classes == cls
                    item.setData(x=xs[mask], y=ys[mask])
        self.plot.setXRange(0, max(guest, 1), padding=0.02)
        self.plot.setYRange(0, top_slot + 1, padding=0.02)
        frag = analysis.layer_frag[index]
        f = self.figure_labels
        size = human_size(frag.allocated * self.block_size)
        f["allocated"].setText(
            f"{frag.allocated:,} ({size})" + (" — drawn as pixels" if self.sampled else "")
        )
        f["discontinuities"].setText(f"{frag.discontinuities:,}")
        f["longest"].setText(
            f"{frag.longest_run:,} blocks ({human_size(frag.longest_run * self.block_size)})"
        )
        f["share"].setText(f"{frag.in_order_share:.0%}")
        f["mean"].setText(f"{frag.mean_jump:,.1f} slots" if frag.discontinuities else "no jumps")
        chain = analysis.chain_frag
        f["chain"].setText(
            f"{chain.discontinuities:,} jumps over {chain.allocated:,} blocks "
            f"({chain.in_order_share:.0%} in order)"
        )
        host = self.host[index] if index < len(self.host) else None
        file_size = analysis.layer_stats[index].file_size
        self.strip.set_extents(host, file_size)
        if host is None:
            f["host"].setText("—")
        elif host.available:
            f["host"].setText(f"{host.count:,}" + (" or more" if host.truncated else ""))
        else:
            f["host"].setText(f"not available: {host.reason}")
        self.placements = volume_placements(self.usage, blocks, slots)
        self.volumes_label.setText(self.volume_table(index))
        self.paragraph.setText(self.explain(index))
        self._draw_marks(index, guest, top_slot)

    def density_size(self) -> tuple[int, int]:
        """(width, height) of the density image: one pixel per DENSITY_PIXEL screen pixels."""
        vb = self.plot.getViewBox()
        width, height = int(vb.width()), int(vb.height())
        if width < 32 or height < 32:  # not laid out yet: the default, redrawn on resize
            return (min(IMAGE_SIZE[0], 400), min(IMAGE_SIZE[1], 300))
        return (
            max(16, min(IMAGE_SIZE[0], width // DENSITY_PIXEL)),
            max(16, min(IMAGE_SIZE[1], height // DENSITY_PIXEL)),
        )

    def _redraw_density(self) -> None:
        """Draw the density image at the plot's current size (a resize may change it)."""
        if self._density_input is None:
            return
        size = self.density_size()
        if size == self._density_size:
            return
        blocks, slots, classes, guest, top_slot, colours = self._density_input
        image = density_image(blocks, slots, classes, guest, top_slot, size=size, colours=colours)
        self.density.setImage(image, autoLevels=False, levels=(0, 255))
        self.density.setRect(QRectF(0, 0, max(guest, 1), top_slot + 1))
        self._density_size = size

    def volume_table(self, index: int) -> str:
        """Rich text: where each guest volume's data lies in layer ``index``'s file."""
        if self.usage is None:
            return ""
        rows = []
        name = html.escape(self.labels[index]) if index < len(self.labels) else ""
        for p in self.placements:
            v = p.volume
            what = html.escape(
                f"{v.partition} {v.kind}" + (f" '{v.label}'" if v.label else ""), quote=False
            )
            if p.blocks == 0:
                where = "no blocks in this file"
            else:
                piece = "one piece" if p.runs == 1 else f"{p.runs:,} separate runs"
                where = f"{p.blocks:,} block(s) in {piece}, slots {p.first_slot:,}–{p.last_slot:,}"
            rows.append(f"<tr><td>{what}</td><td>&nbsp;{where}</td></tr>")
        return (
            f"<b>Where each guest volume's data lies in {name}:</b><table>{''.join(rows)}</table>"
        )

    def explain(self, index: int) -> str:
        """The plain-words paragraph for layer ``index`` and the chain."""
        analysis = self.analysis
        if analysis is None:
            return ""
        frag = analysis.layer_frag[index]
        chain = analysis.chain_frag
        name = self.labels[index]
        bs = self.block_size
        if frag.allocated == 0:
            text = f"{name} holds no data blocks of its own, so it adds no jumps."
        elif frag.discontinuities == 0:
            text = (
                f"{name} stores its {frag.allocated:,} blocks exactly in guest order: a "
                "sequential read of them never jumps inside the file."
            )
        else:
            text = (
                f"A sequential read of the blocks stored in {name} jumps "
                f"{frag.discontinuities:,} times inside the file; "
                f"{frag.in_order_share:.0%} of the steps go straight to the next slot, "
                f"and the longest stretch read without a jump is {frag.longest_run:,} "
                f"blocks ({human_size(frag.longest_run * bs)})."
            )
        layers = len(self.labels)
        if layers > 1:
            text += (
                f" Reading the whole disk through all {layers} layers jumps "
                f"{chain.discontinuities:,} times (between slots and between files)."
            )
        host = self.host[index] if index < len(self.host) else None
        if host is not None and host.available:
            text += (
                f" On the host, the file lies in {host.count:,} "
                f"extent{'s' if host.count != 1 else ''}"
                + (
                    ", so the host disk adds little seeking of its own."
                    if host.count <= 4
                    else "; defragmenting the host file would reduce seeks further."
                )
            )
        if frag.discontinuities and frag.in_order_share < 0.8:
            text += " A clone, which copies the blocks in guest order, would remove these jumps."
        return text

    # -- the Files tab's "Show Blocks" -----------------------------------------------------
    def set_highlight(self, fb: FileBlocks | None, title: str = "") -> None:
        """Mark the file whose blocks are ``fb`` (None clears); ``title`` names it.

        Shows the layer storing most of the file; the marks follow when the user picks
        another layer, and a later :meth:`set_data` of the same chain keeps them.
        """
        self.marked = None if fb is None else (fb, title)
        if fb is None:
            self.marked_points = (np.zeros(0, np.int64), np.zeros(0, np.int64))
            self.mark_scatter.clear()
            self.mark_lines.setData(x=[], y=[])
            self.mark_label.setText("")
            self.mark_label.setVisible(False)
            return
        if self.analysis is None:
            return  # drawn by set_data
        wanted = preferred_layer(fb)
        if 0 <= wanted < self.layer_box.count() and wanted != self.layer:
            self.layer_box.setCurrentIndex(wanted)  # draws, marks included
        else:
            self._show_layer(self.layer)

    def _draw_marks(self, index: int, guest: int, top_slot: int) -> None:
        if self.marked is None:
            return
        fb = self.marked[0]
        blocks, slots = file_points(fb, index)
        self.marked_points = (blocks, slots)
        mx, my, lx, ly = mark_layout(blocks, slots, guest, top_slot)
        self.mark_scatter.setData(x=mx, y=my)
        self.mark_lines.setData(x=lx, y=ly)
        self.mark_label.setText(
            f'<span style="color:{MARK_COLOUR}">&#9634;</span>&nbsp;'
            + html.escape(self.describe_marks(index), quote=False)
        )
        self.mark_label.setVisible(True)

    def describe_marks(self, index: int) -> str:
        """The line about the marked file: its fragmentation in the guest and in each layer."""
        if self.marked is None:
            return ""
        fb, title = self.marked

        def name(layer: int) -> str:
            return f"'{self.labels[layer]}'" if 0 <= layer < len(self.labels) else f"layer {layer}"

        if not fb.blocks.size:
            return (
                f"{title} stores no data in VDI blocks (empty, sparse or kept inside its "
                "metadata): nothing to mark."
            )
        runs = layer_runs(fb)
        where = ", ".join(
            f"{n:,} in {name(layer)} ({r:,} run{'' if r == 1 else 's'}"
            + (" of consecutive slots)" if i == 0 else ")")
            for i, (layer, (n, r)) in enumerate(sorted(runs.items()))
        )
        extents = f"{fb.extents:,} extent{'' if fb.extents == 1 else 's'}"
        count = f"{fb.blocks.size:,} VDI block{'' if fb.blocks.size == 1 else 's'}"
        text = (
            f"{title}, marked in amber: {extents} inside the guest"
            f"{' (contiguous)' if fb.extents == 1 else ''}; {count}"
            + (f": {where}." if where else ".")
        )
        others = [(layer, n) for layer, (n, _r) in sorted(runs.items()) if layer != index]
        if others:
            first_layer, first_n = others[0]
            verb = "is" if first_n == 1 else "are"
            parts = [f"{first_n:,} of its blocks {verb} served by {name(first_layer)}"]
            parts += [f"{n:,} by {name(layer)}" for layer, n in others[1:]]
            which = "that layer" if len(others) == 1 else "one of those layers"
            text += f" {', '.join(parts)}; choose {which} to see them."
        zeros = int(fb.blocks.size - sum(n for n, _r in runs.values()))
        if zeros:
            text += f" {zeros:,} of its blocks are stored in no layer and read as zeros."
        return text


def chain_fragmentation(analysis: Analysis) -> str:
    """One line for the Overview: the chain's sequential-read figure."""
    f = analysis.chain_frag if analysis is not None else fragmentation(np.zeros(0, np.uint32))
    return f"{f.discontinuities:,} jumps, {f.in_order_share:.0%} in order"
