"""Per-block display states and honest binning (numpy only, so workers can compute them).

Why separate from the view: the codes of a 2 TiB chain (two million blocks per layer) take tens
of milliseconds to compute, which belongs on the worker that analyses the chain, not on the GUI
thread; the view module imports Qt and pyqtgraph, this one does not.
"""

from __future__ import annotations

import numpy as np

from vdigui.engine import BLOCK_FREE, BLOCK_ZERO

FREE, ZERO, ALLOCATED, ALL_ZERO = 0, 1, 2, 3
STATE_NAMES = ("free", "zero", "allocated", "allocated, all zero")
#: served-row codes: 0 no layer serves it, 1 a ZERO entry serves it, 2 + i layer i's data.
SERVED_NONE, SERVED_ZERO = 0, 1


def layer_codes(entries: np.ndarray, zero_masks: list[np.ndarray | None] | None = None
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
    tail = codes[full * k:]
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


