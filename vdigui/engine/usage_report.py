"""Guest filesystem usage of an image or snapshot state, and what compaction could reclaim.

This is the glue between the guest-filesystem readers (:mod:`vdigui.engine.guestfs`, which only
know "a disk of ``size`` bytes with ``read(offset, length)``") and the VDI world (chains,
allocation maps, compaction). Everything that asks "which blocks does the guest use?" -- the
``vdictl usage`` command, filesystem-aware compaction and cloning, the app's partition bar --
goes through :func:`chain_usage`, so they can never disagree about the rule; and the one rule
for dropping is :func:`unused_mask` (a block is droppable only when the guest uses none of its
bytes: partly used blocks are always kept whole).

Why the analysis runs on the merged view *up to the image concerned*: the guest wrote its
filesystem through that view, so only that view's allocation maps describe the bytes the
image stores. A child's view would describe blocks its parent must still keep for the child's
siblings or for the snapshot itself.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vdigui.engine.chain import DiskChain, open_paths
from vdigui.engine.errors import VdiError
from vdigui.engine.format import BLOCK_ZERO, is_allocated
from vdigui.engine.guestfs import ReclaimForecast, UsageMap, analyze_usage, forecast
from vdigui.engine.image import zeros
from vdigui.engine.progress import CancelToken, Progress, ProgressFn, no_progress

#: Guest blocks a reader keeps cached: filesystem metadata is read in small, clustered pieces.
_CACHE_BLOCKS = 8


class GuestReader:
    """A :class:`~vdigui.engine.guestfs.DiskReader` over a chain's merged guest view.

    Why not ``DiskChain.read`` directly: that reads a whole block for every request, and the
    analysis makes thousands of small reads (one bitmap block per ext group); this reader asks
    each layer only for the bytes wanted and caches the few blocks read most recently.
    """

    def __init__(self, chain: DiskChain) -> None:
        self.chain = chain
        self.size = chain.disk_size
        # The serving layer and its entry per block, built layer by layer: indexing a stacked
        # copy of every map with int64 index arrays took about 35 bytes per guest block.
        self._layer, self._entry = chain.serving()
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self.reads = 0

    def _block(self, block: int) -> bytes | None:
        """The whole block, or None when it reads as zeros (never read from a file)."""
        layer, entry = int(self._layer[block]), int(self._entry[block])
        if layer < 0 or entry == BLOCK_ZERO:
            return None
        data = self._cache.get(block)
        if data is None:
            data = self.chain.layers[layer].read_slot(entry, block)
            self.reads += 1
            self._cache[block] = data
            if len(self._cache) > _CACHE_BLOCKS:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(block)
        return data

    def read(self, offset: int, length: int) -> bytes:
        """Guest bytes ``[offset, offset+length)`` as the chain shows them."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise VdiError(
                f"Read of {length} bytes at {offset} is outside the {self.size}-byte disk."
            )
        bs = self.chain.block_size
        parts: list[bytes] = []
        pos, end = offset, offset + length
        while pos < end:
            block, within = divmod(pos, bs)
            take = min(bs - within, end - pos)
            data = self._block(block)
            parts.append(bytes(take) if data is None else data[within : within + take])
            pos += take
        return parts[0] if len(parts) == 1 else b"".join(parts)


def chain_usage(chain: DiskChain, *, discard_swap: bool = False) -> UsageMap:
    """How many bytes of every guest block the guest's filesystems use, through ``chain``.

    ``chain`` must end at the image concerned (its merged view is what the guest wrote).
    """
    return analyze_usage(GuestReader(chain), chain.block_size, discard_swap=discard_swap)


def unused_mask(usage: UsageMap) -> np.ndarray:
    """Bool per guest block: the guest uses none of its bytes, so it may be dropped as ZERO.

    The single rule every filesystem-aware operation applies; a partly used block is kept.
    """
    unused: np.ndarray = usage.used_bytes == 0
    return unused


def same_usage(before: UsageMap, after: UsageMap) -> str | None:
    """None when two maps agree; otherwise a sentence saying where (for verification)."""
    if before.block_size != after.block_size or len(before.used_bytes) != len(after.used_bytes):
        return "the usage map has a different shape"
    differ = np.flatnonzero(before.used_bytes != after.used_bytes)
    if differ.size:
        return (
            f"the guest filesystems' use of {differ.size} block(s) differs, first at guest "
            f"block {int(differ[0])}"
        )
    kept = [v.kept_whole for v in before.volumes], [v.kept_whole for v in after.volumes]
    if kept[0] != kept[1]:
        return "a volume is now read differently (kept whole before or after)"
    return None


@dataclass(frozen=True, slots=True)
class BlockUseSummary:
    """Guest blocks by how much of them the guest uses (the per-block use in four numbers).

    Attributes:
        blocks: guest blocks of the disk.
        unused: blocks the guest uses none of (filesystem-aware compaction drops them).
        partly: blocks the guest uses some of (kept whole).
        full: blocks the guest uses completely.
        used_bytes: bytes the guest uses in total.
    """

    blocks: int
    unused: int
    partly: int
    full: int
    used_bytes: int

    @classmethod
    def of(cls, usage: UsageMap, disk_size: int) -> BlockUseSummary:
        """Summarise ``usage`` of a ``disk_size``-byte disk (its last block may be short)."""
        used = usage.used_bytes.astype(np.int64)
        cap = np.full(len(used), usage.block_size, dtype=np.int64)
        if len(cap) and disk_size % usage.block_size:
            cap[-1] = disk_size % usage.block_size
        full = int(np.count_nonzero(used >= cap))
        unused = int(np.count_nonzero(used == 0))
        return cls(len(used), unused, len(used) - unused - full, full, int(used.sum()))


@dataclass(frozen=True, slots=True)
class UsageReport:
    """What ``vdictl usage`` shows: the guest's volumes, its per-block use and the forecast.

    Attributes:
        paths: the chain read, base first (the last one is the image the forecast is for).
        disk_size: the guest disk size.
        usage: the usage map of the merged view up to the last image.
        summary: the per-block use summary.
        forecast: what compacting the last image would reclaim (plain and FS-aware).
        allocated: bool per guest block: the last image stores it.
        all_zero: bool per guest block: the last image stores it and it is all zero (all
            False when ``zeros_scanned`` is False: nothing was read to tell).
        zeros_scanned: whether the blocks the last image stores were read to find the all-zero
            ones; without it the report cost only headers, maps and filesystem metadata, and
            the forecast's zero-block figure is unknown (its FS-aware total is still right).
        stored_blocks: guest blocks any image of the chain stores data for (0: an empty disk).
    """

    paths: tuple[Path, ...]
    disk_size: int
    usage: UsageMap
    summary: BlockUseSummary
    forecast: ReclaimForecast
    allocated: np.ndarray
    all_zero: np.ndarray
    zeros_scanned: bool = True
    stored_blocks: int = -1

    @property
    def understood(self) -> bool:
        """Whether every byte of the disk was accounted for by volumes vdigui understands."""
        return not any(v.kept_whole and v.used is None for v in self.usage.volumes)

    @property
    def guest_uses(self) -> int | None:
        """Bytes the guest uses, or None when unknown.

        Unknown when nothing is stored at all (a blank disk has no filesystem to ask) and when
        any volume's contents were not understood: those are counted fully used so that
        compaction keeps them, which is right for safety but no answer to "how much does the
        guest use?".
        """
        if self.stored_blocks == 0 or not self.understood:
            return None
        return self.summary.used_bytes


def zero_blocks(
    chain: DiskChain,
    blocks: np.ndarray,
    *,
    progress: ProgressFn = no_progress,
    cancel: CancelToken | None = None,
    phase: str = "looking for zero blocks",
) -> np.ndarray:
    """Bool per guest block: among ``blocks`` (stored by the top layer), those all zero."""
    top = chain.top
    bs = chain.block_size
    zero = zeros(bs)
    out = np.zeros(chain.guest_blocks, dtype=bool)
    total = int(blocks.size)
    for done, block in enumerate(blocks.tolist(), start=1):
        if cancel is not None:
            cancel.raise_if_cancelled("Cancelled.")
        out[block] = top.read_slot(int(top.block_map[block]), block) == zero
        progress(Progress(phase, done, total, done * bs))
    return out


def usage_of_chain(
    chain: DiskChain,
    *,
    discard_swap: bool = False,
    progress: ProgressFn = no_progress,
    cancel: CancelToken | None = None,
    paths: Sequence[Path] = (),
    scan_zeros: bool = True,
) -> UsageReport:
    """The report for an open chain: usage, then (``scan_zeros``) a zero scan of the top.

    The zero scan reads every block the top image stores (that is what tells plain compaction
    apart from FS-aware compaction), with progress and cancel; the analysis itself only reads
    metadata, so without ``scan_zeros`` the report reads headers, maps and filesystem
    metadata only.
    """
    usage = chain_usage(chain, discard_swap=discard_swap)
    own = chain.top.block_map[: chain.guest_blocks]
    allocated = np.zeros(chain.guest_blocks, dtype=bool)
    allocated[: own.size] = is_allocated(own)
    if scan_zeros:
        all_zero = zero_blocks(chain, np.flatnonzero(allocated), progress=progress, cancel=cancel)
    else:
        all_zero = np.zeros(chain.guest_blocks, dtype=bool)
    stored = np.zeros(chain.guest_blocks, dtype=bool)
    for layer in chain.layers:
        stored |= layer.allocated_mask()[: chain.guest_blocks]
    summary = BlockUseSummary.of(usage, chain.disk_size)
    return UsageReport(
        tuple(paths),
        chain.disk_size,
        usage,
        summary,
        forecast(usage, allocated, all_zero),
        allocated,
        all_zero,
        zeros_scanned=scan_zeros,
        stored_blocks=int(stored.sum()),
    )


def usage_report(
    paths: Sequence[Path],
    *,
    discard_swap: bool = False,
    progress: ProgressFn = no_progress,
    cancel: CancelToken | None = None,
    scan_zeros: bool = True,
) -> UsageReport:
    """The report for the chain ``paths`` (base first), e.g. from ``resolve_source``."""
    paths = tuple(Path(p) for p in paths)
    with open_paths(paths) as chain:
        return usage_of_chain(
            chain,
            discard_swap=discard_swap,
            progress=progress,
            cancel=cancel,
            paths=paths,
            scan_zeros=scan_zeros,
        )


# -- which VM, and may its disk content change? --------------------------------------------
def vm_folder_of(image: Path) -> Path | None:
    """The VM folder an image belongs to (its folder, or the folder above ``Snapshots/``).

    None when neither holds a ``.vbox``: a loose image has no VM state to protect.
    """
    image = Path(image).absolute()
    for candidate in (image.parent, image.parent.parent):
        try:
            if any(candidate.glob("*.vbox")):
                return candidate
        except OSError:
            continue
    return None


def saved_state_refusals(image: Path) -> tuple[str, ...]:
    """Why the guest content of ``image`` must not be rewritten: a saved state refers to it.

    A saved VM (and an online snapshot) holds the guest's RAM, whose filesystem caches and
    delayed allocations refer to blocks the on-disk maps may still call free; dropping them
    would corrupt the guest when it resumes. Checked: the machine's saved state (the current
    state's disks) and every snapshot's saved state, when ``image`` lies in that state's chain.
    """
    folder = vm_folder_of(image)
    if folder is None:
        return ()
    from vdigui.engine.vmfolder import load_vm_folder

    try:
        vm = load_vm_folder(folder)
    except (VdiError, OSError):
        return (
            f"The VM folder '{folder}' could not be read, so it is unknown whether a saved "
            "state refers to this disk; filesystem-aware changes need that certainty.",
        )
    target = Path(image).resolve()

    def in_chain(leaves: Sequence[object]) -> bool:
        for leaf in leaves:
            try:
                chain = vm.chain_for(leaf)  # type: ignore[arg-type]
            except (VdiError, OSError):
                return True  # unknown: assume it does (fail closed)
            if any(Path(p).resolve() == target for p in chain):
                return True
        return False

    out: list[str] = []
    if vm.state_file is not None and in_chain(vm.current_disks()):
        out.append(
            f"The VM '{vm.name}' is saved (its state file '{vm.state_file.name}' holds "
            "the guest's memory, which refers to this disk); start it and shut it down "
            "properly, or discard the saved state, first."
        )
    for node in vm.iter_snapshots():
        if node.state_file is not None and in_chain(vm.disk_for_snapshot(node)):
            out.append(
                f"Snapshot '{node.name}' was taken while the VM ran; its saved memory "
                "refers to this disk as it is, so filesystem-aware changes would break "
                "restoring it."
            )
    return tuple(out)


__all__ = [
    "BlockUseSummary",
    "GuestReader",
    "UsageReport",
    "chain_usage",
    "same_usage",
    "saved_state_refusals",
    "unused_mask",
    "usage_of_chain",
    "usage_report",
    "vm_folder_of",
    "zero_blocks",
]
