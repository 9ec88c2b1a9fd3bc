"""Per-block display states and honest binning (numpy only, so workers can compute them).

Why separate from the view: the codes of a 2 TiB chain (two million blocks per layer) take tens
of milliseconds to compute, which belongs on the worker that analyses the chain, not on the GUI
thread; the view module imports Qt and pyqtgraph, this one does not.

Honest heatmaps: zoomed out, one cell covers thousands of blocks.
Shading a cell by the *share* of its blocks that hold data made a 2 TiB disk with 3,000
scattered blocks look empty (each cell was 0.1 % data, a colour indistinguishable from free).
So a cell that holds any block of a class is tinted at least :data:`MIN_TINT` of the way to
that class's colour, the number of its blocks deepens the shade (logarithmically), and a cell
holding several classes is drawn as stacked bands, one per class (:func:`cell_bands`):
nothing a cell holds can vanish.
"""

from __future__ import annotations

import numpy as np

from vdigui.engine import BLOCK_FREE, BLOCK_ZERO

FREE, ZERO, ALLOCATED, ALL_ZERO = 0, 1, 2, 3
STATE_NAMES = ("free", "zero", "allocated", "allocated, all zero")
#: served-row codes: 0 no layer serves it, 1 a ZERO entry serves it, 2 + i layer i's data.
SERVED_NONE, SERVED_ZERO = 0, 1


def layer_codes(
    entries: np.ndarray, zero_masks: list[np.ndarray | None] | None = None
) -> np.ndarray:
    """uint8 (layers x blocks): FREE/ZERO/ALLOCATED/ALL_ZERO per map entry."""
    codes = np.full(entries.shape, ALLOCATED, dtype=np.uint8)
    codes[entries == BLOCK_FREE] = FREE
    codes[entries == BLOCK_ZERO] = ZERO
    for i, mask in enumerate(zero_masks or []):
        if mask is not None:
            codes[i, mask[: entries.shape[1]] & (codes[i] == ALLOCATED)] = ALL_ZERO
    return codes


def served_codes(entries: np.ndarray, serving: np.ndarray) -> np.ndarray:
    """uint8 per block: who serves it (see SERVED_* and 2 + layer index)."""
    out = np.full(serving.shape, SERVED_NONE, dtype=np.uint8)
    served = np.flatnonzero(serving >= 0)
    layer = serving[served].astype(np.int64)
    is_zero = entries[layer, served] == BLOCK_ZERO
    out[served] = np.where(is_zero, SERVED_ZERO, 2 + layer).astype(np.uint8)
    return out


def bin_counts(codes: np.ndarray, k: int, states: int) -> np.ndarray:
    """float32 (bins x states): how many blocks of each state each bin of ``k`` holds."""
    n = codes.size
    bins = -(-n // k)
    full = n // k
    counts = np.zeros((bins, states), dtype=np.float32)
    body = codes[: full * k].reshape(full, k)
    tail = codes[full * k :]
    # One pass per state over a (bins x k) view: faster than bincount on a built index.
    for state in range(1, states):
        counts[:full, state] = np.count_nonzero(body == state, axis=1)
        if tail.size:
            counts[full, state] = np.count_nonzero(tail == state)
    sizes = np.full(bins, k, dtype=np.float32)
    if tail.size:
        sizes[full] = tail.size
    counts[:, 0] = sizes - counts[:, 1:].sum(axis=1)
    return counts


def bin_colours(codes: np.ndarray, k: int, palette: np.ndarray) -> np.ndarray:
    """RGBA (bins x 4, uint8) of ``codes`` binned by ``k``: each bin blends its states.

    A bin of one state gets exactly that state's colour; a mixed bin gets the mix in
    proportion to the counts, so it reads as mixed.
    """
    if k == 1:
        return palette[codes].astype(np.uint8)
    counts = bin_counts(codes, k, palette.shape[0])
    totals = counts.sum(axis=1, keepdims=True)
    return np.rint(counts @ palette / totals).astype(np.uint8)


#: How far (0..1) from the free colour towards its class colour a cell holding even a single
#: block of that class is drawn; a cell made only of that class gets the full colour.
MIN_TINT = 0.5
#: Blocks per bin of the counts kept for the whole disk (:class:`CountPyramid`).
BASE_BIN = 64


def count_bins(codes: np.ndarray, k: int, states: int) -> np.ndarray:
    """int32 (bins x states): how many blocks of each state each bin of ``k`` holds.

    Like :func:`bin_counts` but exact integers; one vectorised comparison per state over a
    (bins x k) view, and a per-bin sum (~1 ms for two million blocks) only for states the
    row holds.
    """
    n = codes.size
    bins = -(-n // k) if n else 0
    full = n // k
    counts = np.zeros((bins, states), dtype=np.int32)
    if not n:
        return counts
    body = codes[: full * k].reshape(full, k)
    tail = codes[full * k :]
    for state in range(1, states):
        hits = body == state
        # Most rows hold few of their states (no zero entries, no all-zero scan): the
        # comparison is cheap, the per-bin sum is not, so skip states the row lacks.
        if hits.any():
            counts[:full, state] = hits.sum(axis=1, dtype=np.int32)
        if tail.size:
            counts[full, state] = int(np.count_nonzero(tail == state))
    sizes = np.full(bins, k, dtype=np.int32)
    if tail.size:
        sizes[full] = tail.size
    counts[:, 0] = sizes - counts[:, 1:].sum(axis=1)
    return counts


def merge_bins(counts: np.ndarray, factor: int) -> np.ndarray:
    """Counts of bins ``factor`` times wider (the last bin may be partial)."""
    if counts.shape[0] == 0:
        return counts
    return np.add.reduceat(counts, np.arange(0, counts.shape[0], factor), axis=0)


class CountPyramid:
    """Per-state counts of one row of codes, kept for the whole disk at :data:`BASE_BIN`.

    Why: at full zoom-out a cell covers thousands of blocks and the window is the whole disk;
    counting two million codes per row on every zoom step costs tens of milliseconds, while
    merging 32,768 precomputed bins costs well under one. Zoomed in closer than the base bin,
    the window is small (a few screens of few-block cells) and is counted directly.
    """

    def __init__(self, codes: np.ndarray, states: int) -> None:
        self.codes = codes
        self.states = states
        self._base: np.ndarray | None = None

    def prepare(self) -> CountPyramid:
        """Count the base bins now (on a worker), so the first far zoom costs only a merge."""
        if self._base is None:
            self._base = count_bins(self.codes, BASE_BIN, self.states)
        return self

    def counts(self, k: int, w0: int, w1: int) -> np.ndarray:
        """int32 (bins x states) for blocks ``w0``..``w1`` in bins of ``k``.

        Windows the kept counts cannot serve exactly (``k`` or an edge not on a multiple of
        :data:`BASE_BIN`; the view's windows always are, or end at the disk's end) are
        counted directly.
        """
        w1 = min(w1, self.codes.size)
        aligned = w0 % BASE_BIN == 0 and (w1 % BASE_BIN == 0 or w1 == self.codes.size)
        if k < BASE_BIN or k % BASE_BIN or not aligned:
            return count_bins(self.codes[w0:w1], k, self.states)
        base = self.prepare()._base
        assert base is not None
        base = base[w0 // BASE_BIN : -(-w1 // BASE_BIN)]
        return merge_bins(base, k // BASE_BIN)


def make_pyramids(
    layer_rows: np.ndarray, served_row: np.ndarray, *, prepare: bool = False
) -> list[CountPyramid]:
    """One pyramid per layer row and one for the served row (``prepare``: count them now)."""
    layers = layer_rows.shape[0] if layer_rows.ndim == 2 else 0
    pyramids = [CountPyramid(layer_rows[i], len(STATE_NAMES)) for i in range(layers)]
    pyramids.append(CountPyramid(served_row, 2 + layers))
    if prepare:
        for pyramid in pyramids:
            pyramid.prepare()
    return pyramids


def cell_bands(
    counts: np.ndarray, palette: np.ndarray, bands: int, min_tint: float = MIN_TINT
) -> np.ndarray:
    """RGBA (bands x bins x 4, uint8): how each cell of ``counts`` is drawn.

    State 0 is the background (free, not served). A cell holding blocks of ``m`` other
    states is split into ``m`` horizontal bands (in state order, bottom first), each band
    tinted towards its state's colour by ``min_tint + (1 - min_tint) * log(count) / log(k)``
    (``k`` the blocks the cell covers): one block among 4,096 still shows ``min_tint`` of the
    colour, every tenfold more blocks deepens it by the same step, a cell of one state only
    gets exactly that state's colour, and an empty cell is exactly the background. ``bands``
    must be at least ``states - 1``, so every state a cell holds gets a band of its own.
    """
    bins, states = counts.shape
    if bands < states - 1:
        raise ValueError(f"{bands} bands cannot show {states - 1} states")
    bg = palette[0].astype(np.float32)
    if bins == 0:
        return np.zeros((bands, 0, 4), dtype=np.uint8)
    total = np.maximum(counts.sum(axis=1), 1).astype(np.float32)
    present = counts[:, 1:] > 0
    n = present.sum(axis=1)
    # Present states first, in state order (a stable sort of "absent" flags).
    order = np.argsort(~present, axis=1, kind="stable") + 1
    band = (np.arange(bands)[:, None] * n[None, :]) // bands
    cols = np.arange(bins)[None, :]
    state = order[cols, band]
    count = counts[cols, state].astype(np.float32)
    # Logarithmic shade: 1 block of 4,096 and 6 of 4,096 must look different, which a linear
    # share (0.02 % against 0.15 %) never would; 1 block gives min_tint, all blocks 1.
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = np.log(np.maximum(count, 1)) / np.log(total)[None, :]
    depth = np.where(count >= total[None, :], 1.0, np.nan_to_num(depth, nan=1.0))
    tint = np.where(n[None, :] > 0, min_tint + (1.0 - min_tint) * depth, 0.0)
    colour = bg + (palette[state].astype(np.float32) - bg) * tint[..., None].astype(np.float32)
    return np.rint(colour).astype(np.uint8)
