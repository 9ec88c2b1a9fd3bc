"""Numbers about images and chains: block counts, who serves each block, fragmentation.

Everything here is read-only and vectorised with numpy: a 2 TiB disk has two million map
entries, and the views need these figures in milliseconds. Scanning block *contents* (which
allocated blocks are all zero) is the one slow part, so it is a separate function with
progress and cancel that the GUI runs on a worker thread.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vdigui.engine.chain import DiskChain
from vdigui.engine.format import BLOCK_FREE, BLOCK_ZERO, is_allocated
from vdigui.engine.image import VdiImage, is_all_zero
from vdigui.engine.progress import CancelToken, Progress, ProgressFn, no_progress


@dataclass(frozen=True, slots=True)
class ImageStats:
    """Block counts of one image (its own map, not the chain's).

    Attributes:
        guest_blocks: blocks of guest data the disk size needs.
        allocated: blocks with a slot in this file.
        zero: blocks marked ZERO (read as zeros; in a diff they hide the parent).
        free: blocks marked FREE (read through to the parent, or zeros in a base).
        file_size: bytes the file occupies (apparent size).
        data_bytes: bytes of guest data stored (allocated x block size).
    """

    guest_blocks: int
    allocated: int
    zero: int
    free: int
    file_size: int
    data_bytes: int


def image_stats(image: VdiImage) -> ImageStats:
    """Count allocated / zero / free blocks of ``image``."""
    entries = image.block_map[: image.guest_blocks]
    zero = int(np.count_nonzero(entries == BLOCK_ZERO))
    free = int(np.count_nonzero(entries == BLOCK_FREE))
    allocated = entries.size - zero - free
    return ImageStats(
        entries.size, allocated, zero, free, image.file_size, allocated * image.header.block_size
    )


@dataclass(frozen=True, slots=True)
class FragStats:
    """How a sequential read of the guest disk moves inside a file.

    Attributes:
        allocated: blocks that are read from the file.
        discontinuities: times the next block is not in the next slot (a seek).
        longest_run: the most blocks read in one contiguous stretch.
        in_order_share: share of block-to-block steps that need no seek (1.0 = perfectly
            sequential; also 1.0 with fewer than two blocks).
        mean_jump: mean distance in slots of the seeks (0 when there are none).
    """

    allocated: int
    discontinuities: int
    longest_run: int
    in_order_share: float
    mean_jump: float


def fragmentation(entries: np.ndarray, layers: np.ndarray | None = None) -> FragStats:
    """Fragmentation of the slots ``entries`` would be read in, in guest order.

    Args:
        entries: map entries in guest block order; FREE/ZERO entries are skipped.
        layers: for a chain, the serving layer of each entry: a change of layer is a seek too.
    """
    mask = is_allocated(entries)
    slots = entries[mask].astype(np.int64)
    count = int(slots.size)
    if count < 2:
        return FragStats(count, 0, count, 1.0, 0.0)
    step = np.diff(slots)
    breaks = step != 1
    if layers is not None:
        breaks |= np.diff(layers[mask].astype(np.int64)) != 0
    discontinuities = int(np.count_nonzero(breaks))
    if discontinuities:
        cuts = np.flatnonzero(breaks)
        run_lengths = np.diff(np.concatenate(([-1], cuts, [count - 1])))
        longest = int(run_lengths.max())
        mean_jump = float(np.abs(step[breaks] - 1).mean())
    else:
        longest = count
        mean_jump = 0.0
    share = (count - 1 - discontinuities) / (count - 1)
    return FragStats(count, discontinuities, longest, share, mean_jump)


@dataclass(frozen=True, slots=True)
class Extent:
    """One host-filesystem extent of a file (bytes)."""

    logical: int
    physical: int
    length: int


@dataclass(frozen=True, slots=True)
class HostExtents:
    """Where a file lies on the host disk, as the host filesystem reports it.

    Attributes:
        available: False when the platform or filesystem cannot say (``reason`` says why).
        reason: empty when available.
        extents: in file order (capped at ``MAX_EXTENTS``; ``truncated`` then says so).
        truncated: more extents exist than were listed.
    """

    available: bool
    reason: str
    extents: tuple[Extent, ...] = ()
    truncated: bool = False

    @property
    def count(self) -> int:
        """Number of extents listed."""
        return len(self.extents)


MAX_EXTENTS = 100_000
_FS_IOC_FIEMAP = 0xC020660B
_FIEMAP_FLAG_SYNC = 0x1
_FIEMAP_EXTENT_LAST = 0x1
_FIEMAP_HEAD = struct.Struct("=QQIIII")
_FIEMAP_EXTENT = struct.Struct("=QQQQQIIII")
_BATCH = 512


def host_extents(path: Path | str) -> HostExtents:
    """The host extents of ``path`` via Linux FIEMAP (no root needed).

    Never raises for an unsupported platform or filesystem: it says "not available" and why.
    """
    path = Path(path)
    if not hasattr(fcntl, "ioctl") or os.name != "posix":
        return HostExtents(False, "the host platform offers no FIEMAP call")
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        return HostExtents(False, f"the file cannot be opened ({exc.strerror})")
    extents: list[Extent] = []
    start = 0
    try:
        while len(extents) < MAX_EXTENTS:
            buf = bytearray(_FIEMAP_HEAD.size + _BATCH * _FIEMAP_EXTENT.size)
            _FIEMAP_HEAD.pack_into(
                buf, 0, start, (1 << 64) - 1 - start, _FIEMAP_FLAG_SYNC, 0, _BATCH, 0
            )
            arr = array.array("B", buf)
            try:
                fcntl.ioctl(fd, _FS_IOC_FIEMAP, arr, True)
            except OSError as exc:
                if exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL):
                    return HostExtents(
                        False, "the host filesystem does not report extents (FIEMAP unsupported)"
                    )
                return HostExtents(False, f"FIEMAP failed ({exc.strerror})")
            raw = arr.tobytes()
            mapped = _FIEMAP_HEAD.unpack_from(raw, 0)[3]
            if mapped == 0:
                break
            last = False
            for i in range(mapped):
                at = _FIEMAP_HEAD.size + i * _FIEMAP_EXTENT.size
                fields = _FIEMAP_EXTENT.unpack_from(raw, at)
                logical, physical, length, flags = fields[0], fields[1], fields[2], fields[5]
                extents.append(Extent(logical, physical, length))
                start = logical + length
                last = bool(flags & _FIEMAP_EXTENT_LAST)
            if last:
                break
    finally:
        os.close(fd)
    return HostExtents(True, "", tuple(extents[:MAX_EXTENTS]), len(extents) >= MAX_EXTENTS)


@dataclass(frozen=True, slots=True)
class Analysis:
    """Everything the views show about a chain, computed from the maps alone.

    Attributes:
        paths: layer files, base first.
        serving: int16 per guest block: the layer that serves it (-1: no layer, reads zeros).
        serving_counts: blocks each layer serves.
        layer_stats: ImageStats per layer.
        layer_frag: FragStats of each layer's own file.
        chain_frag: FragStats of a sequential read through the whole chain.
        entries: uint32 (layers x guest blocks) raw map entries.
    """

    paths: tuple[Path, ...]
    serving: np.ndarray
    serving_counts: tuple[int, ...]
    layer_stats: tuple[ImageStats, ...]
    layer_frag: tuple[FragStats, ...]
    chain_frag: FragStats
    entries: np.ndarray

    def served_entries(self) -> np.ndarray:
        """uint32 per guest block: the entry of the serving layer (FREE where none serves)."""
        return _served_entries(self.entries, self.serving)


def _served_entries(entries: np.ndarray, serving: np.ndarray) -> np.ndarray:
    out = np.full(serving.size, BLOCK_FREE, dtype=np.uint32)
    served = np.flatnonzero(serving >= 0)
    out[served] = entries[serving[served], served]
    return out


def analyze(chain: DiskChain) -> Analysis:
    """Block counts, serving layers and fragmentation of ``chain`` (maps only, no data reads)."""
    entries = chain.entries()
    serving = chain.serving_layers()
    counts = np.bincount(serving[serving >= 0].astype(np.int64), minlength=len(chain.layers))
    served = _served_entries(entries, serving)
    return Analysis(
        paths=tuple(layer.path for layer in chain.layers),
        serving=serving,
        serving_counts=tuple(int(c) for c in counts),
        layer_stats=tuple(image_stats(layer) for layer in chain.layers),
        layer_frag=tuple(fragmentation(entries[i]) for i in range(entries.shape[0])),
        chain_frag=fragmentation(served, np.where(serving >= 0, serving, 0)),
        entries=entries,
    )


@dataclass(frozen=True, slots=True)
class Location:
    """Where a guest byte lives.

    Attributes:
        offset: the guest byte offset asked for.
        block: guest block index.
        within: offset inside the block.
        layer: index of the serving layer (-1: none; reads as zero).
        path: the serving layer's file (None when no layer serves it).
        state: "allocated", "zero" (a ZERO entry) or "free" (no layer has it).
        slot: physical slot in that file (None unless allocated).
        file_offset: byte offset in that file (None unless allocated).
    """

    offset: int
    block: int
    within: int
    layer: int
    path: Path | None
    state: str
    slot: int | None
    file_offset: int | None


def locate(chain: DiskChain, offset: int) -> Location:
    """Map guest byte ``offset`` to its block, serving layer, slot and file position."""
    if not 0 <= offset < chain.disk_size:
        raise ValueError(f"offset {offset} is outside the {chain.disk_size}-byte disk")
    block, within = divmod(offset, chain.block_size)
    for index in range(len(chain.layers) - 1, -1, -1):
        layer = chain.layers[index]
        entry = int(layer.block_map[block]) if block < layer.header.blocks else BLOCK_FREE
        if entry == BLOCK_FREE:
            continue
        if entry == BLOCK_ZERO:
            return Location(offset, block, within, index, layer.path, "zero", None, None)
        return Location(
            offset,
            block,
            within,
            index,
            layer.path,
            "allocated",
            entry,
            layer.header.slot_offset(entry) + within,
        )
    return Location(offset, block, within, -1, None, "free", None, None)


def scan_zero_blocks(
    image: VdiImage, progress: ProgressFn = no_progress, cancel: CancelToken | None = None
) -> np.ndarray:
    """Bool per guest block: allocated in ``image`` and entirely zero (what compaction drops).

    Reads every allocated slot once, in file order so the read is sequential.
    """
    entries = image.block_map[: image.guest_blocks]
    result = np.zeros(entries.size, dtype=bool)
    blocks = np.flatnonzero(is_allocated(entries))
    order = blocks[np.argsort(entries[blocks], kind="stable")]
    total = int(order.size)
    size = image.header.block_size
    for done, block in enumerate(order, start=1):
        if cancel is not None:
            cancel.raise_if_cancelled()
        slot = int(entries[block])
        if image.slot_in_file(slot):
            result[block] = is_all_zero(image.read_slot(slot, int(block)))
        progress(Progress("scanning blocks", done, total, done * size))
    return result
