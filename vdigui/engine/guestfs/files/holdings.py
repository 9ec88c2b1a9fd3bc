"""From files to VDI blocks and back: where one file's blocks live, and what a layer holds.

Two questions join the guest file world to the VDI world (docs/guest-files.md):

- "Where is this file?" -- :func:`file_blocks`: the VDI blocks under a file's extents, the
  layer serving each (docs/vdi-format.md §2.1), and how fragmented the file is twice over:
  inside the guest (its extent count) and inside the VDI files (runs of consecutive slots of
  one layer, read in file order).
- "Why is this snapshot 12 GB?" -- :func:`layer_holdings`: for one image of a chain, which
  guest files its allocated blocks belong to, largest first, seen in the state that image
  completes (the chain up to it: the guest wrote those blocks through that view). Bytes of the
  layer that no file claims are metadata, deleted files or free space, and are reported as one
  figure. A walk of a huge filesystem is bounded: it stops after ``max_files`` files and says
  so, so the answer is always quick and never silently partial.

Both read only metadata (directories, inodes, extent lists) and block maps; never contents.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vdigui.engine.chain import DiskChain
from vdigui.engine.errors import VdiError
from vdigui.engine.format import is_allocated
from vdigui.engine.progress import CancelToken, Progress, ProgressFn, no_progress

from .api import BaseNamespace, EntryKind, ExtentKind, FileExtent

#: Files looked at by :func:`layer_holdings` before it stops and says so.
MAX_FILES = 200_000


@dataclass(frozen=True, slots=True)
class FileBlocks:
    """The VDI blocks under one file.

    Attributes:
        extents: the file's data extents inside the guest (holes not counted).
        blocks: guest block indexes under the file's data, in file order (each once).
        layers: the layer serving each of ``blocks`` (-1: no layer; reads as zeros).
        slots: the serving layer's map entry for each of ``blocks`` (slot, or ZERO/FREE).
        slot_runs: stretches of consecutive slots in one layer, in file order: 1 means the
            file's blocks lie in one piece of one image file.
    """

    extents: int
    blocks: np.ndarray
    layers: np.ndarray
    slots: np.ndarray
    slot_runs: int

    def by_layer(self) -> dict[int, int]:
        """Blocks per serving layer (-1 for none)."""
        values, counts = np.unique(self.layers, return_counts=True)
        return {int(v): int(c) for v, c in zip(values, counts, strict=True)}


def file_blocks(chain: DiskChain, extents: list[FileExtent]) -> FileBlocks:
    """The blocks under ``extents`` (from ``namespace.extents``) in ``chain``, and their layers."""
    bs = chain.block_size
    order: list[int] = []
    seen: set[int] = set()
    data = [x for x in extents if x.kind is ExtentKind.DATA and x.disk_offset is not None]
    for x in data:
        assert x.disk_offset is not None
        first, last = x.disk_offset // bs, (x.disk_offset + x.length - 1) // bs
        for b in range(first, min(last, chain.guest_blocks - 1) + 1):
            if b not in seen:
                seen.add(b)
                order.append(b)
    blocks = np.array(order, dtype=np.int64)
    layer, entry = chain.serving()
    layers = layer[blocks] if blocks.size else np.zeros(0, dtype=np.int16)
    slots = entry[blocks] if blocks.size else np.zeros(0, dtype=np.uint32)
    runs = 0
    alloc = is_allocated(slots) if slots.size else np.zeros(0, dtype=bool)
    prev_layer, prev_slot = -2, -2
    for lay, slot, ok in zip(layers.tolist(), slots.tolist(), alloc.tolist(), strict=True):
        if not ok:
            prev_layer = -2
            continue
        if lay != prev_layer or slot != prev_slot + 1:
            runs += 1
        prev_layer, prev_slot = lay, slot
    return FileBlocks(len(data), blocks, layers, slots, runs)


@dataclass(frozen=True, slots=True)
class Holding:
    """A file and the bytes of it that one layer stores."""

    volume: str
    path: str
    size: int
    layer_bytes: int


@dataclass(slots=True)
class LayerHoldings:
    """What one layer's blocks hold, largest files first.

    Attributes:
        layer_bytes: bytes of guest data the layer stores (allocated blocks x block size).
        files: files with bytes in the layer, largest share first.
        unclaimed: the layer's bytes no file listed here claims (filesystem metadata, deleted
            files, free space, partition tables, unreadable volumes).
        examined: files looked at.
        complete: False when the walk stopped at ``max_files`` (``files`` is then partial).
        notes: plain sentences about volumes that could not be read.
    """

    layer_bytes: int
    files: list[Holding] = field(default_factory=list)
    unclaimed: int = 0
    examined: int = 0
    complete: bool = True
    notes: list[str] = field(default_factory=list)


class _Mask:
    def __init__(self, mask: np.ndarray, bs: int) -> None:
        self.mask = mask
        self.bs = bs
        self.sums = np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])

    def bytes_in(self, start: int, length: int) -> int:
        """Bytes of ``[start, start+length)`` lying in blocks of the mask."""
        bs, n = self.bs, self.mask.size
        end = start + length
        b0, b1 = start // bs, (end - 1) // bs
        if length <= 0 or b0 >= n:
            return 0
        if b1 >= n:
            b1, end = n - 1, n * bs
        if b0 == b1:
            return end - start if self.mask[b0] else 0
        total = ((b0 + 1) * bs - start if self.mask[b0] else 0) + (
            end - b1 * bs if self.mask[b1] else 0
        )
        return total + int(self.sums[b1] - self.sums[b0 + 1]) * bs


def layer_holdings(
    chain: DiskChain,
    layer: int,
    namespaces: list[BaseNamespace],
    *,
    max_files: int = MAX_FILES,
    top: int = 500,
    progress: ProgressFn = no_progress,
    cancel: CancelToken | None = None,
) -> LayerHoldings:
    """Which files the allocated blocks of ``chain.layers[layer]`` belong to.

    Args:
        chain: a chain whose top is ``layer`` (or above it); the namespaces must read the state
            that ends at ``layer`` for the answer to mean "what this image holds".
        namespaces: the readable volumes of that state.
        max_files: stop after looking at this many files (``complete`` is then False).
        top: keep this many files (largest share first).
    """
    image = chain.layers[layer]
    bs = chain.block_size
    entries = image.block_map[: chain.guest_blocks]
    mask = np.zeros(chain.guest_blocks, dtype=bool)
    mask[: entries.size] = is_allocated(entries)
    result = LayerHoldings(int(mask.sum()) * bs)
    m = _Mask(mask, bs)
    found: list[Holding] = []
    claimed = 0
    linked: set[tuple[str, int]] = set()
    for ns in namespaces:

        def onerror(path: str, exc: VdiError, ns: BaseNamespace = ns) -> None:
            result.notes.append(f"{ns.volume}:{path}: {exc}")

        try:
            for _dirpath, listing in ns.walk("/", onerror=onerror):
                for entry in listing:
                    if entry.kind is not EntryKind.FILE:
                        continue
                    result.examined += 1
                    if result.examined > max_files:
                        result.complete = False
                        result.examined = max_files
                        break
                    if result.examined % 512 == 0:
                        if cancel is not None:
                            cancel.raise_if_cancelled("Cancelled.")
                        progress(Progress("mapping files to blocks", result.examined, 0))
                    if entry.nlink > 1:  # a hard link: its blocks are counted once
                        if (ns.volume, entry.id) in linked:
                            continue
                        linked.add((ns.volume, entry.id))
                    try:
                        extents = ns.extents(entry)
                    except VdiError as exc:
                        onerror(entry.path, exc)
                        continue
                    held = sum(
                        m.bytes_in(x.disk_offset, x.length)
                        for x in extents
                        if x.kind is ExtentKind.DATA and x.disk_offset is not None
                    )
                    if held:
                        claimed += held
                        found.append(Holding(ns.volume, entry.path, entry.size, held))
                if not result.complete:
                    break
        except VdiError as exc:
            onerror("/", exc)
        if not result.complete:
            break
    found.sort(key=lambda h: (-h.layer_bytes, h.volume, h.path))
    result.files = found[:top]
    result.unclaimed = max(0, result.layer_bytes - claimed)
    return result


__all__ = ["MAX_FILES", "FileBlocks", "Holding", "LayerHoldings", "file_blocks", "layer_holdings"]
