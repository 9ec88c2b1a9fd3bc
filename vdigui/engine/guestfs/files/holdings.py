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

- "What is in this block?" -- :func:`index_block_files`: the reverse of ``file_blocks`` for
  every file of every readable volume at once, so the block map can name the files under the
  block the mouse is on (:meth:`BlockFiles.files_at`, a binary search) without any I/O.

All read only metadata (directories, inodes, extent lists) and block maps; never contents. The
two walks over every file share :func:`_walk_files`, so the file cap, hard links, cancelling
and the notes about unreadable folders behave the same in both.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from vdigui.engine.chain import DiskChain
from vdigui.engine.errors import OperationCancelled, VdiError
from vdigui.engine.format import is_allocated
from vdigui.engine.progress import CancelToken, Progress, ProgressFn, no_progress

from .api import BaseNamespace, Entry, EntryKind, ExtentKind, FileExtent
from .volumes import list_volumes, open_namespace

#: Files looked at by :func:`layer_holdings` and :func:`index_block_files` before they stop
#: and say so.
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


@dataclass(slots=True)
class _Walk:
    """What a walk over the files of several volumes saw (filled in while it runs)."""

    max_files: int
    examined: int = 0
    complete: bool = True
    notes: list[str] = field(default_factory=list)


def _walk_files(
    namespaces: list[BaseNamespace],
    walk: _Walk,
    *,
    phase: str,
    progress: ProgressFn,
    cancel: CancelToken | None,
) -> Iterator[tuple[BaseNamespace, Entry, list[FileExtent]]]:
    """Every regular file of ``namespaces`` with its extents, each object once.

    A hard-linked file is yielded under the first name met (its blocks must be counted once).
    Unreadable folders and files become notes. The walk stops after ``walk.max_files`` files
    and sets ``walk.complete`` to False, so a huge guest never makes the caller wait long.
    """
    linked: set[tuple[str, int]] = set()
    for ns in namespaces:

        def onerror(path: str, exc: VdiError, ns: BaseNamespace = ns) -> None:
            walk.notes.append(f"{ns.volume}:{path}: {exc}")

        try:
            for _dirpath, listing in ns.walk("/", onerror=onerror):
                for entry in listing:
                    if entry.kind is not EntryKind.FILE:
                        continue
                    walk.examined += 1
                    if walk.examined > walk.max_files:
                        walk.complete = False
                        walk.examined = walk.max_files
                        return
                    if walk.examined % 512 == 0:
                        if cancel is not None:
                            cancel.raise_if_cancelled("Cancelled.")
                        progress(Progress(phase, walk.examined, 0))
                    if entry.nlink > 1:  # a hard link: its blocks are counted once
                        if (ns.volume, entry.id) in linked:
                            continue
                        linked.add((ns.volume, entry.id))
                    try:
                        extents = ns.extents(entry)
                    except OperationCancelled:
                        raise
                    except VdiError as exc:
                        onerror(entry.path, exc)
                        continue
                    yield ns, entry, extents
        except OperationCancelled:
            raise  # a VdiError too, but never a note about the volume
        except VdiError as exc:
            onerror("/", exc)


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
    walk = _Walk(max_files)
    files = _walk_files(
        namespaces, walk, phase="mapping files to blocks", progress=progress, cancel=cancel
    )
    for ns, entry, extents in files:
        held = sum(
            m.bytes_in(x.disk_offset, x.length)
            for x in extents
            if x.kind is ExtentKind.DATA and x.disk_offset is not None
        )
        if held:
            claimed += held
            found.append(Holding(ns.volume, entry.path, entry.size, held))
    result.examined, result.complete, result.notes = walk.examined, walk.complete, walk.notes
    found.sort(key=lambda h: (-h.layer_bytes, h.volume, h.path))
    result.files = found[:top]
    result.unclaimed = max(0, result.layer_bytes - claimed)
    return result


# -- the reverse index: from a block to the files in it -----------------------------------
@dataclass(frozen=True, slots=True)
class IndexedFile:
    """A file of the guest named by :class:`BlockFiles` (``path`` is inside ``volume``)."""

    volume: str
    path: str
    size: int


@dataclass(frozen=True, slots=True)
class FileShare:
    """A file and how many of its bytes lie in the block (or cell) asked about."""

    volume: str
    path: str
    size: int
    held: int


@dataclass(frozen=True, slots=True)
class CellFiles:
    """The files of a stretch of blocks (one zoomed-out cell of the block map).

    Attributes:
        top: the files with most bytes in the stretch, largest first.
        count: how many different files have bytes in it.
        empty_blocks: blocks of the stretch that hold no file's bytes.
    """

    top: list[FileShare]
    count: int
    empty_blocks: int


@dataclass(frozen=True)
class BlockFiles:
    """Which guest files have bytes in each VDI guest block (the reverse of ``file_blocks``).

    Three parallel arrays, one row per (block, file) pair, sorted by block, then by the bytes
    the file has in the block (largest first), then by volume and path, so
    :meth:`files_at` is two binary searches and a slice: the GUI calls it on every mouse move.

    Attributes:
        block_size: bytes per block.
        blocks: guest block index of each row (int64, ascending).
        file_ids: index into :attr:`files` of each row (int32).
        held: bytes of that file inside that block (int64).
        files: every file with bytes on the disk, by id.
        volumes: the volumes whose files were read.
        complete: False when the walk stopped at the file cap: blocks may then hold files
            that are not listed (the user must be told).
        examined: files looked at.
        notes: plain sentences about volumes, folders or files that could not be read.
    """

    block_size: int
    blocks: np.ndarray
    file_ids: np.ndarray
    held: np.ndarray
    files: tuple[IndexedFile, ...]
    volumes: tuple[str, ...] = ()
    complete: bool = True
    examined: int = 0
    notes: tuple[str, ...] = ()

    def _share(self, row_file: int, held: int) -> FileShare:
        f = self.files[row_file]
        return FileShare(f.volume, f.path, f.size, held)

    def _rows(self, block: int) -> tuple[int, int]:
        lo = int(np.searchsorted(self.blocks, block, side="left"))
        return lo, int(np.searchsorted(self.blocks, block, side="right"))

    def count_at(self, block: int) -> int:
        """How many files have bytes in ``block``."""
        lo, hi = self._rows(block)
        return hi - lo

    def files_at(self, block: int, limit: int | None = None) -> list[FileShare]:
        """The files with bytes in ``block``, most bytes first (then by volume and path).

        ``limit`` keeps only the first ones (a hover text names two of hundreds).
        """
        lo, hi = self._rows(block)
        if limit is not None:
            hi = min(hi, lo + max(0, limit))
        return [
            self._share(f, h)
            for f, h in zip(self.file_ids[lo:hi].tolist(), self.held[lo:hi].tolist(), strict=True)
        ]

    def files_in(self, start: int, stop: int, top: int = 3) -> CellFiles:
        """The files of blocks ``[start, stop)``: the ``top`` largest shares and the counts."""
        lo = int(np.searchsorted(self.blocks, start, side="left"))
        hi = int(np.searchsorted(self.blocks, stop, side="left"))
        used = np.unique(self.blocks[lo:hi]).size if hi > lo else 0
        empty = max(0, stop - start - used)
        if hi <= lo:
            return CellFiles([], 0, empty)
        ids, inverse = np.unique(self.file_ids[lo:hi], return_inverse=True)
        sums = np.bincount(inverse, weights=self.held[lo:hi]).astype(np.int64)
        # Largest share first; ties by id (ids follow the walk, roughly path order).
        order = np.lexsort((ids, -sums))[:top]
        shares = [self._share(int(ids[i]), int(sums[i])) for i in order.tolist()]
        return CellFiles(shares, int(ids.size), empty)

    @property
    def pairs(self) -> int:
        """How many (block, file) rows the index holds."""
        return int(self.blocks.size)


def _block_pieces(
    extents: list[FileExtent], bs: int, nblocks: int, blocks: array[int], held: array[int]
) -> None:
    """Append the blocks under ``extents``' data and the bytes of each piece inside them."""
    for x in extents:
        if x.kind is not ExtentKind.DATA or x.disk_offset is None or x.length <= 0:
            continue
        start, end = x.disk_offset, x.disk_offset + x.length
        b0, b1 = start // bs, (end - 1) // bs
        if b0 >= nblocks:
            continue
        if b1 >= nblocks:  # past the disk's last block (a damaged volume): clip
            b1, end = nblocks - 1, nblocks * bs
        if b0 == b1:
            blocks.append(b0)
            held.append(end - start)
            continue
        blocks.append(b0)
        held.append((b0 + 1) * bs - start)
        if b1 > b0 + 1:
            blocks.extend(range(b0 + 1, b1))
            held.extend([bs] * (b1 - b0 - 1))
        blocks.append(b1)
        held.append(end - b1 * bs)


def index_block_files(
    chain: DiskChain,
    *,
    max_files: int = MAX_FILES,
    progress: ProgressFn = no_progress,
    cancel: CancelToken | None = None,
) -> BlockFiles:
    """Which files every guest block of ``chain``'s merged view holds (metadata reads only).

    Every readable volume (``list_volumes``, ``open_namespace``) is walked; each file's data
    extents are split at block boundaries. Volumes that cannot be opened become notes.
    Resident or inline content (NTFS small files, ext4 inline data) lives inside filesystem
    metadata and is not counted in any block, like the metadata itself.

    Args:
        chain: the state to read (an image through its parents).
        max_files: stop after this many files; ``complete`` is then False.
    """
    from vdigui.engine.usage_report import GuestReader  # the usage layer imports guestfs

    reader = GuestReader(chain)
    walk = _Walk(max_files)
    namespaces: list[BaseNamespace] = []
    for vol in list_volumes(reader):
        if not vol.readable:
            continue
        try:
            namespaces.append(open_namespace(reader, vol))
        except OperationCancelled:
            raise
        except VdiError as exc:
            walk.notes.append(f"{vol.name}: {exc}")
    bs, nblocks = chain.block_size, chain.guest_blocks
    blocks, held, counts = array("q"), array("q"), array("q")
    files: list[IndexedFile] = []
    found = _walk_files(
        namespaces,
        walk,
        phase="reading which files use each block",
        progress=progress,
        cancel=cancel,
    )
    for ns, entry, extents in found:
        before = len(blocks)
        _block_pieces(extents, bs, nblocks, blocks, held)
        if len(blocks) > before:
            files.append(IndexedFile(ns.volume, entry.path, entry.size))
            counts.append(len(blocks) - before)
    if cancel is not None:
        cancel.raise_if_cancelled("Cancelled.")
    b = np.frombuffer(blocks, dtype=np.int64) if blocks else np.zeros(0, dtype=np.int64)
    h = np.frombuffer(held, dtype=np.int64) if held else np.zeros(0, dtype=np.int64)
    c = np.frombuffer(counts, dtype=np.int64) if counts else np.zeros(0, dtype=np.int64)
    f = np.repeat(np.arange(len(files), dtype=np.int64), c)
    if b.size:
        # A file whose extents meet inside one block has one row for it, with the bytes summed.
        keys, inverse = np.unique(b * len(files) + f, return_inverse=True)
        h = np.bincount(inverse, weights=h).astype(np.int64)
        b, f = keys // len(files), keys % len(files)
        rank = np.empty(len(files), dtype=np.int64)
        rank[sorted(range(len(files)), key=lambda i: (files[i].volume, files[i].path))] = np.arange(
            len(files)
        )
        order = np.lexsort((rank[f], -h, b))
        b, f, h = b[order], f[order], h[order]
    return BlockFiles(
        bs,
        np.ascontiguousarray(b, dtype=np.int64),
        np.ascontiguousarray(f, dtype=np.int32),
        np.ascontiguousarray(h, dtype=np.int64),
        tuple(files),
        tuple(ns.volume for ns in namespaces),
        walk.complete,
        walk.examined,
        tuple(walk.notes),
    )


__all__ = [
    "MAX_FILES",
    "BlockFiles",
    "CellFiles",
    "FileBlocks",
    "FileShare",
    "Holding",
    "IndexedFile",
    "LayerHoldings",
    "file_blocks",
    "index_block_files",
    "layer_holdings",
]
