"""Honest heatmaps: a cell or pixel that holds any block is visible, at every zoom.

The images are 2 TiB VDI files written by tests/builders.py with a few thousand data blocks at
scattered guest positions (the map says where; the data slots are sparse holes, so a file
takes a few MiB). What each cell must show is computed here from the list of blocks the test
wrote, never from the engine; the checks read the pixels Qt rendered offscreen.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
from builders import FREE, RawHeader, RawImage, place, write_raw
from gui_vmkit import open_and_wait
from PySide6.QtCore import QPointF
from PySide6.QtGui import QColor, QImage

from vdigui.engine import BLOCK_ZERO
from vdigui.engine.image import new_header
from vdigui.gui import theme
from vdigui.gui.blockstates import MIN_TINT
from vdigui.gui.main_window import MainWindow
from vdigui.gui.views.blockmap import BlockMapView

MiB = 1 << 20
BLOCKS = 2 * 1024 * 1024  # 2 TiB of 1 MiB blocks
#: Smallest channel difference from the free colour that counts as "visibly tinted".
MARGIN = 40


def scattered_image(path: Path, count: int, seed: int) -> np.ndarray:
    """A 2 TiB image with ``count`` data blocks at random guest blocks, slots shuffled.

    Returns the sorted guest blocks that hold data.
    """
    rng = random.Random(seed)
    written = np.array(sorted(rng.sample(range(BLOCKS), count)), dtype=np.int64)
    slots = list(range(count))
    rng.shuffle(slots)
    entries = np.full(BLOCKS, FREE, dtype="<u4")
    entries[written] = slots
    h = place(RawHeader(disk_size=BLOCKS * MiB, block_size=MiB, blocks=BLOCKS), "vbox")
    h.blocks_allocated = count
    write_raw(path, RawImage(h, [], [None] * count, map_bytes=entries.tobytes()))
    return written


def diff(a: QColor, b: np.ndarray) -> int:
    """Largest channel difference between a rendered pixel and an RGBA row."""
    return max(abs(a.red() - int(b[0])), abs(a.green() - int(b[1])), abs(a.blue() - int(b[2])))


def check_cells(view: BlockMapView, written: np.ndarray) -> tuple[int, int]:
    """Every visible cell's rendered pixel in both rows: tinted iff it holds a written block.

    Returns (cells with data, empty cells) checked.
    """
    k, w0, w1 = view._window  # the cached window is what is drawn
    image: QImage = view.plot.grab().toImage()
    vb = view.plot.getViewBox()
    (x0, x1), _ = vb.viewRange()
    box = view.plot.mapFromScene(vb.sceneBoundingRect()).boundingRect()
    left, right = box.left(), box.right()
    to_widget = view.plot.viewportTransform()
    free = theme.rgba(theme.free_colour())
    with_data = empty = 0
    start = max(w0, int(x0) // k * k)
    while start < min(w1, x1):
        stop = min(start + k, view.blocks)
        holds = int(np.searchsorted(written, stop) - np.searchsorted(written, start))

        def x_of(block: float) -> float:  # exact (QGraphicsView.mapFromScene rounds)
            return to_widget.map(vb.mapViewToScene(QPointF(block, 0))).x()

        xa, xb = x_of(start), x_of(stop)
        # Pixels whose centres lie well inside the cell show it, whatever the rounding.
        pixels = [
            p
            for p in range(int(xa), int(xb) + 1)
            if xa + 0.2 <= p + 0.5 <= xb - 0.2 and left + 8 <= p <= right - 3
        ]  # clear of the axis and its ticks
        if pixels:
            for row in (0.3, 1.3):  # the layer's own row and the "Guest sees" row
                y = view.plot.mapFromScene(vb.mapViewToScene(QPointF(start, row))).y()
                for x in pixels:
                    pixel = image.pixelColor(x, int(y))
                    seen = diff(pixel, free)
                    if holds:
                        assert seen >= MARGIN, (
                            f"cell {start}-{stop} (k={k}) holds {holds} "
                            f"block(s) but is drawn {pixel.name()}"
                        )
                    else:
                        assert seen <= 3, f"empty cell {start}-{stop} (k={k}) drawn {pixel.name()}"
            with_data += bool(holds)
            empty += not holds
        start += k
    return with_data, empty


def test_scattered_blocks_are_visible_at_every_zoom(
    qtbot: Any, window: MainWindow, tmp_path: Path
) -> None:
    written = scattered_image(tmp_path / "scattered.vdi", 2995, seed=3)
    window.resize(1400, 900)
    window.tabs.setCurrentWidget(window.blockmap)
    open_and_wait(qtbot, window, tmp_path / "scattered.vdi")
    view = window.blockmap
    assert view.blocks == BLOCKS
    view.fit()
    qtbot.wait(50)
    view.refresh()
    assert view.bin_size >= 2048  # full zoom-out: thousands of blocks per cell
    with_data, empty = check_cells(view, written)
    assert with_data > 400  # scattered data fills almost every 4 GiB cell
    # Closer: most cells are empty, each data cell holds one block among hundreds.
    vb = view.plot.getViewBox()
    for span in (1 << 17, 1 << 13):
        first = int(written[len(written) // 2])
        vb.setXRange(first - span // 3, first - span // 3 + span, padding=0)
        view.refresh()
        assert view.bin_size > 1
        with_data, empty = check_cells(view, written)
        assert with_data >= 1 and empty > with_data
    # The hover names the cell's counts.
    block = int(written[0])
    view.fit()
    view.refresh()
    text = view.describe(block, 0)
    k = view.bin_size
    cell = block // k * k
    holds = int(np.searchsorted(written, cell + k) - np.searchsorted(written, cell))
    assert f"{holds:,} allocated" in text and f"{k - holds:,} free" in text


def test_mixed_cells_show_a_band_per_kind(qapp: Any) -> None:
    blocks = 1 << 17
    entries = np.full((2, blocks), FREE, dtype=np.uint32)
    entries[0, 0] = 0  # cell 0: one block of the base's data ...
    entries[1, 1] = 0  # ... one of the snapshot's data ...
    entries[1, 2] = BLOCK_ZERO  # ... and one zero entry: three kinds in the served row
    entries[0, 4096:8192] = np.arange(1, 4097)  # a run the base holds whole
    serving = np.full(blocks, -1, dtype=np.int16)
    serving[0] = 0
    serving[4096:8192] = 0
    serving[[1, 2]] = 1
    header = new_header(blocks * MiB)
    view = BlockMapView()
    view.resize(1000, 400)
    view.set_data(["base", "snap"], entries, serving, (header, header))
    k = view.bin_size
    assert 64 <= k <= 1024
    free = theme.rgba(theme.free_colour())
    base, snap = theme.rgba(theme.layer_colour(0)), theme.rgba(theme.layer_colour(1))
    zero = theme.rgba(theme.ZERO_COLOUR)

    def tinted(colour: np.ndarray, share: float) -> list[int]:
        return list(np.rint(free + (colour - free) * share)[:3].astype(int))

    served = [list(c[:3].astype(int)) for c in view.bands[2, :, 0]]
    # One band per kind, each at the single-block tint, in state order (zero, base, snap).
    kinds = [tinted(zero, MIN_TINT), tinted(base, MIN_TINT), tinted(snap, MIN_TINT)]
    assert [c for i, c in enumerate(served) if i == 0 or c != served[i - 1]] == kinds
    # The snapshot's row: a zero entry and a data block, two bands.
    snap_row = {tuple(c[:3].astype(int)) for c in view.bands[1, :, 0]}
    assert snap_row == {tuple(tinted(zero, MIN_TINT)), tuple(tinted(snap, MIN_TINT))}
    # A cell held whole by the base is exactly the base colour; an empty cell exactly free.
    whole = 4096 // k
    assert (view.bands[0, :, whole, :3] == base[:3].astype(int)).all()
    assert (view.bands[1, :, whole, :3] == free[:3].astype(int)).all()
    # Hover: counts per kind.
    text = view.describe(0, 2)
    assert (
        f"{k - 3:,} not served (reads as zeros), 1 zero entries, 1 served by base, 1 served by snap"
    ) in text
    assert f"{k - 2:,} free, 1 zero, 1 allocated" in view.describe(0, 1)
    view.deleteLater()


def test_fragmentation_pixels_show_every_block(
    qtbot: Any, window: MainWindow, tmp_path: Path
) -> None:
    written = scattered_image(tmp_path / "many.vdi", 30_000, seed=5)
    window.resize(1400, 900)
    window.tabs.setCurrentWidget(window.fragmentation)
    open_and_wait(qtbot, window, tmp_path / "many.vdi")
    view = window.fragmentation
    qtbot.wait(50)
    assert view.sampled  # drawn as an image of pixels
    width, height = view._density_size
    assert width > 0 and height > 0
    image = view.plot.grab().toImage()
    vb = view.plot.getViewBox()
    to_widget = view.plot.viewportTransform()
    background = theme.rgba(theme.background())
    blocks, slots, _ = view.points
    np.testing.assert_array_equal(blocks, written)  # one point per written block
    top = int(slots.max()) + 1
    xi = blocks * width // BLOCKS
    yi = slots * height // top
    missing = 0
    for x, y in {(int(a), int(b)) for a, b in zip(xi, yi, strict=True)}:
        centre = QPointF((x + 0.5) * BLOCKS / width, (y + 0.5) * top / height)
        at = to_widget.map(vb.mapViewToScene(centre))
        missing += diff(image.pixelColor(int(at.x()), int(at.y())), background) < MARGIN
    assert missing == 0, f"{missing} of the points' pixels are not drawn"


def test_count_pyramid_matches_a_direct_count() -> None:
    """The kept 64-block counts, merged, equal counting the blocks directly (any window)."""
    from vdigui.gui.blockstates import CountPyramid

    rng = np.random.default_rng(4)
    codes = np.zeros(300_001, dtype=np.uint8)  # not a multiple of any bin size
    spots = rng.choice(codes.size, 5000, replace=False)
    codes[spots] = rng.integers(1, 4, spots.size)
    pyramid = CountPyramid(codes, 4)
    for k, w0, w1 in (
        (64, 0, codes.size),
        (4096, 0, codes.size),
        (128, 8192, 100_000),
        (16, 1024, 3000),
        (1024, 299_008, codes.size),
    ):
        counts = pyramid.counts(k, w0, w1)
        starts = np.arange(w0, w1, k)
        expected = np.array([np.bincount(codes[s : min(s + k, w1)], minlength=4) for s in starts])
        np.testing.assert_array_equal(counts, expected)
