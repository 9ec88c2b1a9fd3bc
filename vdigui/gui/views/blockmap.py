"""The block map: one cell per guest block, one row per chain layer, plus what the guest sees.

Why it is drawn this way:

- Rows stack the chain like the classic snapshot picture: the base at the bottom, each
  differencing layer above it, and on top a "guest sees" row coloured by the layer that
  serves each block. Allocated cells take their layer's colour in both places, so the eye
  links a served block to the layer it comes from.
- Disks have millions of blocks but the screen has ~1000 pixels. The view bins blocks into
  cells of ``k`` blocks (a power of two, so bins stay aligned while panning). A cell that
  holds any block of a state is tinted at least ``MIN_TINT`` of the way to that state's
  colour and deeper the more blocks it holds (logarithmically), so 3,000 scattered blocks on
  a 2 TiB disk (0.1 % of each cell) stay visible instead of fading into "free"; a cell holding
  several states (data and zero entries, data of two layers) is split into stacked bands, one
  per state, so it reads as mixed instead of taking the colour of its majority (the
  dishonesty of classic defrag maps). Hovering a cell gives its counts per state. At full
  zoom a cell is one block.
- Per-state counts of the whole disk are kept in bins of 64 blocks (``CountPyramid``), so a
  redraw at full zoom-out merges 32,768 bins instead of counting two million codes per row.
- Only the visible window (plus one screen either side) is binned, and the result is kept
  while panning, so redraws at full zoom-out cost a slice, not a recomputation.
- When the guest's filesystems could be read, a partition bar (GParted-like) sits above the
  map, aligned with its blocks, and a "Guest uses" row on top shades every block by the share
  of its bytes the guest uses: pale = unused (FS-aware compaction drops it), dark = full, and
  in between for partly used blocks (which stay). Side by side with the layers it answers
  "why isn't my VDI shrinking?" at a glance.
- Hovering also names the guest files that have bytes in the block (or cell). The reverse
  index (``index_block_files``) is built once per chain on a worker, from metadata only, and
  kept per chain files; a hover is then two binary searches, never a read.
"""

from __future__ import annotations

import html
import math
import textwrap
from collections import OrderedDict
from collections.abc import Callable, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QMenu,
    QPushButton,
    QSizePolicy,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from vdigui.engine import (
    BLOCK_FREE,
    BLOCK_ZERO,
    BlockFiles,
    FileShare,
    UsageMap,
    VdiHeader,
    human_size,
    index_block_files,
    open_paths,
    printable,
)
from vdigui.gui import messages, theme
from vdigui.gui.blockstates import (
    ALL_ZERO,
    ALLOCATED,
    FREE,
    MIN_TINT,
    SERVED_NONE,
    SERVED_ZERO,
    STATE_NAMES,
    ZERO,
    CountPyramid,
    bin_colours,
    cell_bands,
    layer_codes,
    make_pyramids,
    served_codes,
)
from vdigui.gui.views.partitionbar import PartitionBar, volume_text
from vdigui.gui.workers import Runner, WorkerPool

#: The colour of a block the guest uses completely (the "Guest uses" row).
USE_COLOUR = theme.USE_COLOUR  # declared once, in vdigui/engine/palette.py

pg.setConfigOptions(imageAxisOrder="row-major", antialias=False)

#: Chains whose file index is kept (switching back and forth between states is common).
FILE_INDEX_CACHE = 4
#: Files named in a hover text before "and N more".
NAMED_FILES = 2
#: Longest path shown whole in a hover text; longer ones lose their middle.
SHOWN_PATH = 48
#: Characters per line of the hover tooltip.
TOOLTIP_COLUMNS = 90


class FilesState(Enum):
    """Where the block map's knowledge of the guest's files stands."""

    NONE = "none"  # no chain, an incomplete chain, or no readable filesystem: say nothing
    READING = "reading"  # the index is being built on a worker
    READY = "ready"
    FAILED = "failed"


__all__ = [
    "ALLOCATED",
    "ALL_ZERO",
    "FREE",
    "SERVED_NONE",
    "SERVED_ZERO",
    "ZERO",
    "BlockMapView",
    "FilesState",
    "bin_colours",
    "layer_codes",
    "served_codes",
]


class BlockMapView(QWidget):
    """The block-map tab.

    Signals:
        locate_requested: the user pressed "Locate byte...".
        scan_requested: the user asked for an all-zero scan.
        reveal_requested: (volume, path) of a guest file to show in the Files tab (from the
            right-click menu of a block).
    """

    locate_requested = Signal()
    scan_requested = Signal()
    reveal_requested = Signal(str, str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.labels: list[str] = []
        self.entries = np.zeros((0, 0), dtype=np.uint32)
        self.serving = np.zeros(0, dtype=np.int16)
        self.headers: tuple[VdiHeader, ...] = ()
        self.block_size = 1 << 20
        self.layer_codes = np.zeros((0, 0), dtype=np.uint8)
        self.served_codes = np.zeros(0, dtype=np.uint8)
        self.bin_size = 1
        self.cells = np.zeros((0, 0, 4), dtype=np.uint8)
        #: RGBA (rows x bands x bins x 4) as drawn: the bands of every cell (see cell_bands).
        self.bands = np.zeros((0, 1, 0, 4), dtype=np.uint8)
        self._pyramids: list[CountPyramid] = []
        self._window: tuple[int, int, int] | None = None
        self.describe_layer: Callable[[int], str] = lambda i: self.labels[i]
        self.usage: UsageMap | None = None
        #: float32 per guest block: share of its bytes the guest uses (empty: no usage row).
        self.use_share = np.zeros(0, dtype=np.float32)
        #: Which guest files each block holds (see :meth:`index_files`).
        self.block_files: BlockFiles | None = None
        self.files_state = FilesState.NONE
        self.files_error = ""
        self._files_key: tuple[tuple[str, int, int], ...] | None = None
        self._files_runner: Runner | None = None
        self._files_cache: OrderedDict[tuple[tuple[str, int, int], ...], BlockFiles] = OrderedDict()
        self._hovered: tuple[int, int] | None = None

        self.plot = pg.PlotWidget(enableMenu=False)
        self.plot.setToolTip("")
        self.plot.hideButtons()
        self.plot.setMinimumHeight(160)
        self.item = pg.ImageItem()
        self.plot.addItem(self.item)
        self.marker = pg.InfiniteLine(
            angle=90, movable=False, pen=pg.mkPen(QColor("#d7263d"), width=2)
        )
        self.marker.setVisible(False)
        self.plot.addItem(self.marker)
        # A rule between the layers and the "guest sees" row.
        self.separator = pg.InfiniteLine(angle=0, movable=False, pen=pg.mkPen(width=3))
        self.plot.addItem(self.separator)
        vb = self.plot.getViewBox()
        vb.setMouseEnabled(x=True, y=False)
        vb.sigXRangeChanged.connect(self._schedule)
        vb.sigResized.connect(self._schedule)
        self.plot.getPlotItem().setLabel("bottom", "guest block")
        self.plot.scene().sigMouseMoved.connect(self._hover)
        self.plot.scene().sigMouseClicked.connect(self._clicked)
        self.partition_bar = PartitionBar(self._block_to_bar_x)
        self.partition_bar.setVisible(False)
        vb.sigXRangeChanged.connect(self.partition_bar.update)
        vb.sigResized.connect(self.partition_bar.update)

        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(15)
        self._timer.timeout.connect(self.refresh)

        self.scale_label = QLabel()
        self.scale_label.setToolTip(
            "How many guest blocks one cell of the map covers at this "
            "zoom. A cell holding any data is tinted (deeper when "
            "more of its blocks hold it); a cell holding several "
            "kinds is split into bands. Hover for its counts."
        )
        self.info = QLabel(
            "Hover over the map to see a block's layer, slot, file offset and guest files; "
            "right-click a block to show its files in the Files tab."
        )
        self.info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.info.setWordWrap(True)
        # Three lines: a hover naming files should not make the map jump as the mouse moves.
        self.info.setMinimumHeight(self.info.fontMetrics().lineSpacing() * 3 + 4)
        self.notice = QLabel()
        self.notice.setWordWrap(True)
        self.notice.setVisible(False)

        self.locate_button = QPushButton("Locate byte…")
        self.locate_button.setToolTip(
            "Find which block, layer, slot and file position hold a guest byte offset (Ctrl+L)"
        )
        self.locate_button.clicked.connect(self.locate_requested)
        self.scan_button = QPushButton("Find all-zero blocks")
        self.scan_button.setToolTip(
            "Read every allocated block once to find the ones that "
            "hold only zeros (what compaction would drop)"
        )
        self.scan_button.clicked.connect(self.scan_requested)
        self.fit_button = QPushButton("Whole disk")
        self.fit_button.setToolTip("Zoom out to the whole disk (Ctrl+0)")
        self.fit_button.clicked.connect(self.fit)

        self.legend = QLabel()
        self.legend.setTextFormat(Qt.TextFormat.RichText)
        self.legend.setWordWrap(True)
        self.legend.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)

        top = QHBoxLayout()
        top.addWidget(self.legend, 1)
        top.addWidget(self.fit_button)
        top.addWidget(self.scan_button)
        top.addWidget(self.locate_button)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.notice)
        layout.addWidget(self.partition_bar)
        layout.addWidget(self.plot, 1)
        layout.addStretch(0)
        bottom = QHBoxLayout()
        bottom.addWidget(self.info, 1)
        bottom.addWidget(self.scale_label)
        layout.addLayout(bottom)
        self.set_enabled(False)

    # -- data ------------------------------------------------------------------------------
    def set_enabled(self, enabled: bool) -> None:
        """Enable the tools (disabled while nothing is loaded)."""
        for button in (self.locate_button, self.scan_button, self.fit_button):
            button.setEnabled(enabled)

    def clear(self) -> None:
        """Show nothing (no chain selected)."""
        self.set_data([], np.zeros((0, 0), dtype=np.uint32), np.zeros(0, dtype=np.int16), ())

    def set_data(
        self,
        labels: list[str],
        entries: np.ndarray,
        serving: np.ndarray,
        headers: tuple[VdiHeader, ...],
        zero_masks: list[np.ndarray | None] | None = None,
        notice: str = "",
        codes: tuple[np.ndarray, np.ndarray] | None = None,
        pyramids: list[CountPyramid] | None = None,
    ) -> None:
        """Show a chain: ``entries`` (layers x blocks, base first) and ``serving`` per block.

        ``codes`` are the (layer codes, served codes) when a worker already computed them, and
        ``pyramids`` their counts (:func:`make_pyramids`), so a disk of millions of blocks
        costs the GUI thread only the merging of one screen's bins.
        """
        self.labels = list(labels)
        self.entries = entries
        self.serving = serving
        self.headers = headers
        self.block_size = headers[0].block_size if headers else 1 << 20
        if codes is not None and not any(m is not None for m in zero_masks or []):
            self.layer_codes, self.served_codes = codes
            if pyramids is not None:
                self._pyramids = pyramids
            else:
                self._make_pyramids()
        else:
            self.layer_codes = layer_codes(entries, zero_masks)
            self.served_codes = (
                served_codes(entries, serving) if entries.size else np.zeros(0, dtype=np.uint8)
            )
            self._make_pyramids()
        self.notice.setText(notice)
        self.notice.setVisible(bool(notice))
        self.usage = None  # a new chain: set_usage follows when its usage is known
        self._forget_files()  # index_files follows when the chain's files are wanted
        self.use_share = np.zeros(0, dtype=np.float32)
        self.partition_bar.set_usage(None)
        self.partition_bar.setVisible(False)
        self.set_enabled(bool(entries.size))
        self._window = None
        # Keep rows a sensible height: a one-layer chain should not become two huge bars.
        self.plot.setMaximumHeight(max(200, self.rows * 90 + 60))
        self._update_axes()
        self._update_legend()
        self.fit()

    def set_usage(self, usage: UsageMap | None, message: str = "") -> None:
        """Show the guest's volumes and per-block use (None hides both; ``message`` says why).

        Call after :meth:`set_data` (it keeps the zoom).
        """
        self.usage = usage
        # The use row only says something when some filesystem was understood; a disk kept
        # whole would show one solid bar (the partition bar still says why).
        understood = usage is not None and any(
            not v.kept_whole and v.kind not in ("free", "partition-table") for v in usage.volumes
        )
        if usage is not None and understood and self.blocks:
            share = usage.used_bytes[: self.blocks].astype(np.float32) / usage.block_size
            self.use_share = np.zeros(self.blocks, dtype=np.float32)
            self.use_share[: share.size] = share
        else:
            self.use_share = np.zeros(0, dtype=np.float32)
        self.partition_bar.set_usage(usage, message)
        self.partition_bar.setVisible(usage is not None or bool(message and self.blocks))
        self._window = None
        self.plot.setMaximumHeight(max(200, self.rows * 90 + 60))
        self._update_axes()
        self._update_legend()
        self.refresh()

    def _block_to_bar_x(self, block: float) -> float:
        """Guest block -> x in the partition bar, through the plot's view (so they align)."""
        vb = self.plot.getViewBox()
        scene = vb.mapViewToScene(QPointF(block, 0))
        widget = self.plot.mapFromScene(scene)
        return float(self.partition_bar.mapFrom(self, self.plot.mapTo(self, widget)).x())

    def set_zero_masks(self, zero_masks: list[np.ndarray | None]) -> None:
        """Re-colour after an all-zero scan, keeping the zoom."""
        self.layer_codes = layer_codes(self.entries, zero_masks)
        self._make_pyramids()
        self._window = None
        self._update_legend()
        self.refresh()

    def _make_pyramids(self) -> None:
        """Fresh per-state counts for the rows (computed lazily at the first far zoom)."""
        self._pyramids = make_pyramids(self.layer_codes, self.served_codes)

    @property
    def band_count(self) -> int:
        """Bands a zoomed-out row is drawn with: enough for every state of the served row."""
        return max(4, len(self.labels) + 1)

    @property
    def blocks(self) -> int:
        """Guest blocks shown."""
        return int(self.serving.size)

    @property
    def has_use_row(self) -> bool:
        """Whether the "Guest uses" row is shown (the guest's filesystems were read)."""
        return bool(self.labels) and self.use_share.size > 0

    @property
    def rows(self) -> int:
        """Image rows: one per layer, the served row, then the guest-use row on top."""
        return len(self.labels) + 1 + self.has_use_row if self.labels else 0

    def _palettes(self) -> list[np.ndarray]:
        free = theme.rgba(theme.free_colour())
        zero = theme.rgba(theme.ZERO_COLOUR)
        all_zero = theme.rgba(theme.ALL_ZERO_COLOUR)
        out: list[np.ndarray] = []
        for i in range(len(self.labels)):
            out.append(np.stack([free, zero, theme.rgba(theme.layer_colour(i)), all_zero]))
        out.append(
            np.stack(
                [free, zero] + [theme.rgba(theme.layer_colour(i)) for i in range(len(self.labels))]
            )
        )
        return out

    def _update_axes(self) -> None:
        plot = self.plot.getPlotItem()
        ticks = [(i + 0.5, self._short(label)) for i, label in enumerate(self.labels)]
        if self.labels:
            ticks.append((len(self.labels) + 0.5, "Guest sees"))
        if self.has_use_row:
            ticks.append((len(self.labels) + 1.5, "Guest uses"))
        plot.getAxis("left").setTicks([ticks, []])
        fg = theme.foreground()
        for name in ("left", "bottom"):
            axis = plot.getAxis(name)
            axis.setTextPen(pg.mkPen(fg))
            axis.setPen(pg.mkPen(fg))
        self.plot.setBackground(theme.background())
        self.separator.setPen(pg.mkPen(theme.background(), width=4))
        self.separator.setPos(len(self.labels))
        self.separator.setVisible(bool(self.labels))
        vb = plot.getViewBox()
        rows = max(self.rows, 1)
        vb.setLimits(
            xMin=0,
            xMax=max(self.blocks, 1),
            yMin=0,
            yMax=rows,
            minXRange=min(16, max(self.blocks, 1)),
        )
        vb.setYRange(0, rows, padding=0)
        plot.setLabel("bottom", f"guest block (1 block = {human_size(self.block_size)})")

    @staticmethod
    def _short(label: str) -> str:
        return label if len(label) <= 22 else label[:20] + "…"

    def _update_legend(self) -> None:
        def swatch(colour: QColor | str, text: str) -> str:
            c = QColor(colour).name()
            words = html.escape(text).replace(" ", "&nbsp;")
            return (
                f'<span style="background-color:{c}; color:{c}">&#9608;&#9608;</span>'
                f"&nbsp;{words}&nbsp;&nbsp; "
            )

        parts = [
            swatch(theme.free_colour(), "free (reads through / zeros)"),
            swatch(theme.ZERO_COLOUR, "zero entry (hides the parent)"),
        ]
        if (self.layer_codes == ALL_ZERO).any():
            parts.append(swatch(theme.ALL_ZERO_COLOUR, "allocated but all zero"))
        parts += [
            swatch(theme.layer_colour(i), f"data in {self._short(label)}")
            for i, label in enumerate(self.labels)
        ]
        if self.has_use_row:
            parts.append(swatch(USE_COLOUR, "used by the guest (paler = partly, palest = unused)"))
        if self.labels:
            # What a zoomed-out cell means, with the palest tint a single block gets.
            free = theme.rgba(theme.free_colour())
            full = theme.rgba(theme.layer_colour(0))
            pale = QColor(*(round(float(c)) for c in (free + (full - free) * MIN_TINT)[:3]))
            parts.append(
                "<br>Zoomed out, one cell covers many blocks: "
                + swatch(pale, "one block of its kind")
                + "… "
                + swatch(theme.layer_colour(0), "all of them")
                + "(the shade deepens with every tenfold more); a cell holding "
                "several kinds is split into bands. Hover a cell for its counts."
            )
        self.legend.setText("".join(parts))

    # -- drawing ---------------------------------------------------------------------------
    def fit(self) -> None:
        """Show the whole disk."""
        if self.blocks:
            self.plot.getViewBox().setXRange(0, self.blocks, padding=0)
        self.refresh()

    def zoom(self, factor: float) -> None:
        """Zoom around the centre (factor < 1 zooms in)."""
        vb = self.plot.getViewBox()
        (x0, x1), _ = vb.viewRange()
        centre, half = (x0 + x1) / 2, (x1 - x0) * factor / 2
        vb.setXRange(centre - half, centre + half, padding=0)

    def show_block(self, block: int) -> None:
        """Zoom to ``block`` and mark it."""
        vb = self.plot.getViewBox()
        vb.setXRange(max(0, block - 32), min(self.blocks, block + 33), padding=0)
        self.marker.setPos(block + 0.5)
        self.marker.setVisible(True)
        self.refresh()

    def _schedule(self) -> None:
        self._timer.start()

    def _bin_size(self, x0: float, x1: float) -> int:
        pixels = max(self.plot.getViewBox().width(), 100.0)
        span = max(x1 - x0, 1.0)
        per_pixel = span / pixels
        return 1 if per_pixel <= 1 else 2 ** math.ceil(math.log2(per_pixel))

    def refresh(self) -> None:
        """Re-bin the visible window if the zoom or position left the cached one."""
        if not self.blocks:
            self.item.clear()
            self.scale_label.setText("")
            return
        (x0, x1), _ = self.plot.getViewBox().viewRange()
        k = self._bin_size(x0, x1)
        if self._window is not None:
            wk, w0, w1 = self._window
            if wk == k and w0 <= max(x0, 0) and min(x1, self.blocks) <= w1:
                return
        span = x1 - x0
        w0 = max(0, int((x0 - span) // k) * k)
        w1 = min(self.blocks, math.ceil((x1 + span) / k) * k)
        self._render(k, w0, w1)

    def _render(self, k: int, w0: int, w1: int) -> None:
        bins = -(-(w1 - w0) // k)
        palettes = self._palettes()
        layers = len(self.labels)
        if k == 1:
            # One block per cell: nothing to mix, one pixel row per map row.
            image = np.zeros((self.rows, bins, 4), dtype=np.uint8)
            for i in range(layers):
                image[i] = bin_colours(self.layer_codes[i, w0:w1], 1, palettes[i])
            image[layers] = bin_colours(self.served_codes[w0:w1], 1, palettes[-1])
            if self.has_use_row:
                image[layers + 1] = use_colours(self.use_share[w0:w1], 1)
            self.bands = image[:, None]
        else:
            bands = self.band_count
            self.bands = np.empty((self.rows, bands, bins, 4), dtype=np.uint8)
            for i, pyramid in enumerate(self._pyramids):
                self.bands[i] = cell_bands(pyramid.counts(k, w0, w1), palettes[i], bands)
            if self.has_use_row:
                self.bands[layers + 1] = use_colours(self.use_share[w0:w1], k)[None]
            image = self.bands.reshape(self.rows * bands, bins, 4)
        #: One RGBA cell per bin: its bottom band, the first state it holds (what tests check;
        #: the drawn image may be widened below). :attr:`bands` holds every band.
        self.cells = self.bands[:, 0]
        if k == 1 and w1 - w0 <= 4096:
            # Close up, draw a faint edge at the end of every block so neighbours with the
            # same state still read as separate blocks.
            image = np.repeat(image, 8, axis=1)
            image[:, 7::8, :3] = (image[:, 7::8, :3] * 0.82).astype(np.uint8)
        self.item.setImage(image, autoLevels=False, levels=(0, 255))
        self.item.setRect(QRectF(w0, 0, bins * k, self.rows))
        self._window = (k, w0, w1)
        self.bin_size = k
        if k == 1:
            self.scale_label.setText("1 cell = 1 block")
        else:
            self.scale_label.setText(f"1 cell = {k} blocks ({human_size(k * self.block_size)})")

    # -- hover -----------------------------------------------------------------------------
    def _cell_at(self, pos: QPointF) -> tuple[int, int] | None:
        """(block, row) under scene position ``pos``, or None outside the map."""
        vb = self.plot.getViewBox()
        if not self.blocks or not vb.sceneBoundingRect().contains(pos):
            return None
        point = vb.mapSceneToView(pos)
        block, row = int(point.x()), math.floor(point.y())
        if not 0 <= block < self.blocks or not 0 <= row < self.rows:
            return None
        return block, row

    def _clicked(self, event: Any) -> None:
        if event.button() != Qt.MouseButton.RightButton:
            return
        cell = self._cell_at(event.scenePos())
        menu = self.files_menu(cell[0]) if cell is not None else None
        if menu is not None:
            event.accept()
            menu.popup(event.screenPos().toPoint())

    def _hover(self, pos: QPointF) -> None:
        cell = self._cell_at(pos)
        if cell is None:
            return
        block, row = cell
        self._hovered = (block, row)
        text = self.describe(block, row)
        self.info.setText(text)
        # A plain-text tooltip is one line however long: wrap it, or it outgrows the screen.
        tip = "\n".join(textwrap.wrap(text, TOOLTIP_COLUMNS))
        QToolTip.showText(self.plot.mapToGlobal(self.plot.mapFromScene(pos)), tip, self.plot)

    def describe(self, block: int, row: int | None = None) -> str:
        """Plain words for guest block ``block`` (on ``row``; None = the served row)."""
        bs = self.block_size
        where = (
            f"Guest block {block:,} (bytes {human_size(block * bs)} – "
            f"{human_size((block + 1) * bs)})"
        )
        layers = len(self.labels)
        if row is not None and row == layers + 1 and self.has_use_row:
            return self._use_words(where, block) + self.files_words(block, row)
        if row is not None and row < layers:
            text = f"{where} in {self.labels[row]}: " + self._entry_words(row, block)
        else:
            layer = int(self.serving[block])
            if layer < 0:
                text = f"{where}: no layer holds it; the guest reads zeros."
            else:
                text = (
                    f"{where}: served by layer {layer} ({self.labels[layer]}): "
                    + self._entry_words(layer, block)
                )
        k = self.bin_size
        if k > 1:
            start = block // k * k
            stop = min(start + k, self.blocks)
            codes = self.layer_codes[row, start:stop] if row is not None and row < layers else None
            if codes is not None:
                counts = np.bincount(codes, minlength=4)
                mix = ", ".join(f"{int(c):,} {STATE_NAMES[s]}" for s, c in enumerate(counts) if c)
            else:
                mix = self._served_mix(start, stop)
            text += f" This cell covers blocks {start:,}–{stop - 1:,}: {mix}."
        return text + self.files_words(block, row)

    def _served_mix(self, start: int, stop: int) -> str:
        """Counts per class of the served row between ``start`` and ``stop``."""
        counts = np.bincount(self.served_codes[start:stop], minlength=2 + len(self.labels))
        names = ["not served (reads as zeros)", "zero entries"] + [
            f"served by {self._short(label)}" for label in self.labels
        ]
        return ", ".join(f"{int(c):,} {names[s]}" for s, c in enumerate(counts) if c)

    def _use_words(self, where: str, block: int) -> str:
        usage = self.usage
        assert usage is not None
        used = int(usage.used_bytes[block]) if block < usage.used_bytes.size else 0
        bs = self.block_size
        if used == 0:
            text = (
                f"{where}: the guest's filesystems use none of it; filesystem-aware "
                "compaction drops it."
            )
        elif used >= bs:
            text = f"{where}: the guest uses all of it."
        else:
            text = (
                f"{where}: the guest uses {human_size(used)} of it ({used / bs:.0%}); "
                "a partly used block is kept whole."
            )
        owner = next(
            (
                v
                for v in usage.volumes
                if v.start <= block * bs < v.start + v.size and not v.partition.startswith("LV")
            ),
            None,
        )
        if owner is not None:
            text += " " + volume_text(owner).split("\n")[0] + "."
        k = self.bin_size
        if k > 1:
            start = block // k * k
            share = self.use_share[start : min(start + k, self.blocks)]
            text += (
                f" This cell covers blocks {start:,}–{start + share.size - 1:,}: "
                f"{int((share == 0).sum())} unused, {int((share >= 1).sum())} full, "
                f"{int(((share > 0) & (share < 1)).sum())} partly used."
            )
        return text

    def _entry_words(self, layer: int, block: int) -> str:
        entry = int(self.entries[layer, block])
        if entry == BLOCK_FREE:
            return "free (reads through to the layer below)."
        if entry == BLOCK_ZERO:
            return "zero entry (reads as zeros and hides the layers below)."
        offset = self.headers[layer].slot_offset(entry) if layer < len(self.headers) else 0
        text = f"physical slot {entry:,}, file offset 0x{offset:X}."
        if self.layer_codes[layer, block] == ALL_ZERO:
            text += " The block holds only zeros."
        return text

    # -- the guest files under a block --------------------------------------------------------
    def _forget_files(self) -> None:
        """Drop what is known about the shown chain's files and stop reading them."""
        if self._files_runner is not None:
            self._files_runner.token.cancel()
            self._files_runner = None
        self._files_key = None
        self.block_files = None
        self.files_state = FilesState.NONE
        self.files_error = ""

    def index_files(self, workers: WorkerPool, paths: Sequence[Path] | None) -> None:
        """Learn which guest files each block of the chain ``paths`` (base first) holds.

        Call after :meth:`set_data`; None (an incomplete chain, whose filesystems would read
        as nonsense) says nothing about files. The index is built on ``workers`` from a
        private chain (the window may close its own meanwhile) and kept per chain files, their
        sizes and modification times, so coming back to a state costs nothing and a changed
        image is read again. A result for a chain no longer shown is dropped.
        """
        self._forget_files()
        if not paths:
            return
        try:
            stats = [(str(p), Path(p).stat()) for p in paths]
        except OSError:
            return
        key = tuple((name, st.st_size, st.st_mtime_ns) for name, st in stats)
        self._files_key = key
        cached = self._files_cache.get(key)
        if cached is not None:
            self._files_cache.move_to_end(key)
            self._files_ready(key, cached)
            return
        chain_paths = tuple(paths)

        def job(progress: Callable[..., None], token: Any) -> BlockFiles:
            chain = open_paths(chain_paths)
            try:
                return index_block_files(chain, progress=progress, cancel=token)
            finally:
                chain.close()

        def done(result: BlockFiles) -> None:
            self._files_cache[key] = result
            while len(self._files_cache) > FILE_INDEX_CACHE:
                self._files_cache.popitem(last=False)
            self._files_ready(key, result)

        def failed(exc: BaseException) -> None:
            if key == self._files_key:
                self._files_runner = None
                self.files_state = FilesState.FAILED
                self.files_error = messages.sentence(exc)
                self._rehover()

        def cancelled() -> None:
            if key == self._files_key:
                self._files_runner = None

        self.files_state = FilesState.READING
        self._files_runner = workers.start(
            job, "block-files", succeeded=done, failed=failed, cancelled=cancelled
        )

    def _files_ready(self, key: tuple[tuple[str, int, int], ...], result: BlockFiles) -> None:
        if key != self._files_key:
            return  # another chain is shown now
        self._files_runner = None
        self.block_files = result
        # No readable filesystem: the map says nothing about files rather than "no file".
        self.files_state = FilesState.READY if result.volumes else FilesState.NONE
        self._rehover()

    def _rehover(self) -> None:
        """Say again what the block under the mouse holds, now that more is known."""
        hovered = self._hovered
        if hovered is not None and hovered[0] < self.blocks and hovered[1] < self.rows:
            self.info.setText(self.describe(*hovered))

    def files_words(self, block: int, row: int | None = None) -> str:
        """What the hover text says about the guest files in ``block`` (its cell when binned).

        Leads with a space, or is "" when nothing can be said (no readable filesystem).
        """
        state = self.files_state
        if state is FilesState.NONE:
            return ""
        if state is FilesState.READING:
            return " Files: still reading the guest's directories…"
        if state is FilesState.FAILED:
            return f" The guest's files could not be read: {self.files_error}"
        index = self.block_files
        assert index is not None
        partial = "" if index.complete else f" (only the first {index.examined:,} files were read)"
        k = self.bin_size
        if k > 1:
            start = block // k * k
            stop = min(start + k, self.blocks)
            cell = index.files_in(start, stop, NAMED_FILES)
            if not cell.count:
                return (
                    f" No guest file uses this cell (free space or filesystem metadata){partial}."
                )
            named = self._file_list(cell.top, cell.count)
            empty = (
                f"; {cell.empty_blocks:,} of its {stop - start:,} blocks hold none"
                if cell.empty_blocks
                else ""
            )
            return f" Files in this cell: {named}{empty}{partial}."
        shares = index.files_at(block, NAMED_FILES)
        if not shares:
            return f" No guest file uses it (free space or filesystem metadata){partial}."
        layers = len(self.labels)
        lead = "Files"
        if row is not None and row < layers and int(self.serving[block]) != row:
            lead = "Files as the guest reads it now (from another layer)"
        return f" {lead}: {self._file_list(shares, index.count_at(block))}{partial}."

    #: Files a block's right-click menu offers.
    MENU_FILES = 8

    def files_menu(self, block: int) -> QMenu | None:
        """ "Show FILE in the Files tab" for the files of ``block`` (its cell when binned).

        None when no file is known there. Each action emits :attr:`reveal_requested`.
        """
        index = self.block_files
        if self.files_state is not FilesState.READY or index is None:
            return None
        k = self.bin_size
        if k > 1:
            start = block // k * k
            shares = index.files_in(start, min(start + k, self.blocks), self.MENU_FILES).top
        else:
            shares = index.files_at(block, self.MENU_FILES)
        if not shares:
            return None
        several = len(index.volumes) > 1
        menu = QMenu(self)
        menu.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        for share in shares:
            action = menu.addAction(
                f"Show {self._path_text(share, several)} in the Files tab "
                f"({human_size(share.held)} here)"
            )
            action.triggered.connect(
                lambda _checked=False, v=share.volume, p=share.path: self.reveal_requested.emit(
                    v, p
                )
            )
        return menu

    def _file_list(self, shares: list[FileShare], count: int) -> str:
        """ "/a, /b and 3 more": the first files named (volume first when there are several)."""
        index = self.block_files
        several = index is not None and len(index.volumes) > 1
        names = [self._path_text(s, several) for s in shares[:NAMED_FILES]]
        more = count - len(names)
        if more > 0:
            return f"{', '.join(names)} and {more:,} more"
        return " and ".join(names) if len(names) == 2 else ", ".join(names)

    @staticmethod
    def _path_text(share: FileShare, with_volume: bool) -> str:
        path = printable(share.path)
        if len(path) > SHOWN_PATH:
            half = (SHOWN_PATH - 1) // 2
            path = f"{path[:half]}…{path[-half:]}"
        return f"{share.volume}:{path}" if with_volume else path

    # -- highlight overlay (the Files tab's "Show Blocks") ---------------------------------
    #: Most highlighted stretches drawn; more are merged across their smallest gaps.
    MAX_HIGHLIGHTS = 200

    def set_highlight(self, blocks: np.ndarray | None, text: str = "") -> None:
        """Highlight guest ``blocks`` over every row (None or empty clears) and say ``text``.

        Drawn as a few translucent regions (consecutive blocks joined), so a file of any size
        costs at most :data:`MAX_HIGHLIGHTS` items; zooms to the highlighted blocks.
        """
        for region in getattr(self, "_highlights", []):
            self.plot.removeItem(region)
        self._highlights: list[pg.LinearRegionItem] = []
        label = getattr(self, "highlight_label", None)
        if label is None:
            label = self.highlight_label = QLabel()
            label.setWordWrap(True)
            label.setTextFormat(Qt.TextFormat.PlainText)
            layout = self.layout()
            assert isinstance(layout, QVBoxLayout)
            layout.insertWidget(1, label)
        label.setText(text)
        label.setVisible(bool(text))
        self.highlighted = (
            np.zeros(0, dtype=np.int64)
            if blocks is None
            else np.unique(np.asarray(blocks, dtype=np.int64))
        )
        if not self.highlighted.size:
            return
        b = self.highlighted
        cuts = np.flatnonzero(np.diff(b) != 1) + 1
        starts, stops = b[np.r_[0, cuts]], b[np.r_[cuts - 1, b.size - 1]] + 1
        while starts.size > self.MAX_HIGHLIGHTS:
            gaps = starts[1:] - stops[:-1]
            keep = gaps > np.sort(gaps)[gaps.size - self.MAX_HIGHLIGHTS]
            starts = starts[np.r_[True, keep]]
            stops = stops[np.r_[keep, True]]
        colour = QColor("#FFB000")  # amber: no layer or state of the map uses it
        colour.setAlpha(110)
        for lo, hi in zip(starts.tolist(), stops.tolist(), strict=True):
            region = pg.LinearRegionItem(
                values=(lo, hi),
                movable=False,
                brush=colour,
                pen=pg.mkPen(colour.darker(150), width=1),
            )
            region.setZValue(10)
            self.plot.addItem(region)
            self._highlights.append(region)
        first, last = int(b[0]), int(b[-1]) + 1
        pad = max(8, (last - first) // 10)
        self.plot.getViewBox().setXRange(
            max(0, first - pad), min(self.blocks, last + pad), padding=0
        )
        self.refresh()


def use_colours(share: np.ndarray, k: int) -> np.ndarray:
    """RGBA (bins x 4) for the "Guest uses" row: the mean used share of each bin of ``k``.

    Unused blocks take the free colour, fully used ones :data:`USE_COLOUR`, partly used ones
    a proportional blend, so partly used blocks (which compaction keeps) are visible as such.
    """
    n = share.size
    bins = -(-n // k) if n else 0
    padded = np.zeros(bins * k, dtype=np.float32)
    padded[:n] = share
    counts = np.full(bins, k, dtype=np.float32)
    if bins and n % k:
        counts[-1] = n % k
    mean = padded.reshape(bins, k).sum(axis=1) / np.maximum(counts, 1)
    free = theme.rgba(theme.free_colour()).astype(np.float32)
    full = theme.rgba(USE_COLOUR).astype(np.float32)
    # A clear tint even for a sliver of use, so "partly used" never looks unused.
    t = np.where(mean > 0, MIN_TINT + (1 - MIN_TINT) * mean, 0.0)[:, None]
    return np.rint(free + (full - free) * t).astype(np.uint8)
