"""Compact an image in place, VirtualBox's way (docs/vdi-format.md §3.1), crash-safe and verified.

What changes, in VirtualBox's order:

1. Slots are counted from the file size, not the header, and the map is sanitised: entries
   pointing past the last slot in the file become FREE, and of blocks sharing one slot only the
   lowest guest block keeps it (the others become FREE).
2. Allocated blocks that are all zero become ZERO (in a differencing image too, where ZERO must
   keep hiding the parent); in a differencing image, blocks byte-identical to what the parent
   chain shows become FREE.
3. Holes are filled by moving the highest slots down; cBlocksAllocated is set; the file is
   truncated last. UUIDs never change, so the .vbox stays valid.

Why it is safe at every instant: a slot is only ever copied into a slot no entry points at
(durably), the copy is flushed before the entry is repointed, and the repoint is flushed
before cBlocksAllocated is lowered past the old slot. Sources are never destinations (they
all lie above the final slot count), so many copies can share one flush. After an
interruption at any point the file reads as the same guest disk; cBlocksAllocated may be
inflated (safe for VirtualBox and qemu, which allocate at cBlocksAllocated; ``qemu-img
check`` reports it as a count mismatch) and a second compact finishes the job.

With ``fs_aware`` (``vdictl compact --fs-aware``) step 2 also drops, as ZERO, every allocated
block the guest's filesystems use none of (read from their own allocation maps on the merged
view up to this image, :mod:`vdigui.engine.usage_report`), even when it holds stale data. ZERO
and not FREE, also in a differencing image: FREE would make the guest see the parent's stale
bytes there again (harmless to the filesystem, which does not read free blocks, but it makes
the result depend on the parent, and a later merge would carry the stale parent data along);
ZERO costs nothing and hides them for good. Verification then also checks that the filesystems
of the result, re-read, give the same usage map -- right after the drops are durable and before
any slot is reused, so a mismatch can still be undone by pointing the dropped entries back. A
saved VM or an online snapshot whose chain includes the image is refused: its saved memory
refers to blocks the on-disk maps may still call free.

Verification reads nothing twice. The scan reads every allocated block once (in physical order,
through the copy pipeline's reader) and proves each dropped block all zero, identical to the
parent, or unused by the guest; it also computes the guest digest reported (unused blocks
counted as zeros). Each moved block is read from its old slot, written to the hole, and read
back and compared before any entry points at it. At the end the header and the whole map are
re-read from the file and compared with the intended ones: every block that did not move kept
its slot, so the image then reads exactly as before.

The header and map are backed up beside the image before the first write and the backup is
removed after success. With ``--defrag`` the image is instead rewritten in guest order into a
temporary file beside it (same UUIDs, type, comment and geometry), verified and renamed over
the original.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vdigui.engine import format as fmt
from vdigui.engine.chain import DiskChain, open_paths, resolve_chain
from vdigui.engine.copier import (
    Batch,
    CopySpec,
    copy_blocks,
    nonzero_rows,
    read_blocks,
    same_bytes,
)
from vdigui.engine.errors import OperationCancelled, OperationRefused, VdiError, VerificationError
from vdigui.engine.format import BLOCK_FREE, BLOCK_ZERO, ImageType, is_allocated
from vdigui.engine.guestfs import ReclaimForecast, UsageMap, forecast
from vdigui.engine.image import VdiImage, fsync_dir, open_image
from vdigui.engine.operations._rewrite import rewrite_beside
from vdigui.engine.operations.inuse import busy_reasons, in_place_refusals, take_exclusive_lock
from vdigui.engine.operations.preflight import check_writable_inputs, sweep_leftovers
from vdigui.engine.operations.safefile import (
    NOTHING_CHANGED,
    FileStamp,
    backup_path,
    discard,
    hard_link_warning,
    replace_original,
    require_unchanged,
    write_backup,
)
from vdigui.engine.operations.space import SpacePlan, free_space, space_refusal
from vdigui.engine.progress import CancelToken, Progress, ProgressFn, no_progress
from vdigui.engine.sniff import require_regular_file
from vdigui.engine.usage_report import (
    chain_usage,
    same_usage,
    saved_state_refusals,
    unused_mask,
)

PARTLY = "Cancelled: the image is consistent and partly compacted; run compact again to finish."

#: Data copied between two flushes while moving slots (many moves share one fsync). The
#: copies stream through the pipeline, so this bounds the work a crash can undo, not memory.
MOVE_BATCH_BYTES = 256 << 20


@dataclass(frozen=True, slots=True)
class CompactPlan:
    """What compacting one image will do. A plan with refusals cannot run.

    Block lists are numpy arrays of guest block numbers (cheap even for 2 TiB disks).

    Attributes:
        path: the image compacted.
        chain_paths: the chain ending at it, base first (just ``path`` for a base).
        differencing: whether it has a parent (ZERO hides the parent; FREE falls through).
        defrag: rewrite in guest order (to a temp file, swapped in) instead of in place.
        block_size: bytes per block.
        slot_size: bytes per physical slot (block + extra prefix).
        guest_blocks: blocks of the virtual disk.
        file_size: the file's size now.
        slots_in_file: complete slots the file holds (counted from its size, as VirtualBox).
        blocks_allocated: cBlocksAllocated in the header now.
        allocated: blocks holding a slot after the map is sanitised.
        out_of_range: blocks whose entries point past the last slot in the file (-> FREE).
        cross_linked: blocks sharing a slot with a lower block (-> FREE).
        scanned: whether the data was read to find zero and parent-identical blocks.
        zero_blocks: allocated all-zero blocks (-> ZERO); None unless scanned.
        parent_blocks: blocks identical to the parent chain (-> FREE); None unless scanned.
        moves: slots moved down (in place) or blocks rewritten (defrag); without a scan,
            counted as if no block turned out to be zero.
        moving_blocks: (in place) the guest blocks whose slot moves, highest slot first;
            None for defrag, which rewrites every block.
        size_after: the file size afterwards (an upper bound without a scan).
        space_needed: host bytes needed while running (backup, or the rebuilt file).
        space_free: host bytes free beside the image.
        refusals: sentences saying why it cannot run (empty: it can).
        warnings: sentences worth reading before running.
        stamp: the file's state when planned; a run refuses if it changed.
        fs_aware: also drop blocks the guest filesystems do not use (as ZERO).
        discard_swap: with ``fs_aware``, drop swap contents too (never a hibernation image).
        usage: (fs_aware or scanned) the guest usage map of the view up to this image.
        fs_blocks: (fs_aware, scanned) allocated blocks that are not all zero but unused by
            the guest (-> ZERO); None unless scanned.
        forecast: (scanned) the reclaim forecast: by zero blocks alone, FS-aware, and what
            partly used blocks keep (shown whether or not ``fs_aware`` drops those blocks).
    """

    path: Path
    chain_paths: tuple[Path, ...]
    differencing: bool
    defrag: bool
    block_size: int
    slot_size: int
    guest_blocks: int
    file_size: int
    slots_in_file: int
    blocks_allocated: int
    allocated: int
    out_of_range: np.ndarray = field(compare=False, repr=False)
    cross_linked: np.ndarray = field(compare=False, repr=False)
    scanned: bool = False
    zero_blocks: np.ndarray | None = field(default=None, compare=False, repr=False)
    parent_blocks: np.ndarray | None = field(default=None, compare=False, repr=False)
    moves: int = 0
    moving_blocks: np.ndarray | None = field(default=None, compare=False, repr=False)
    size_after: int = 0
    space_needed: int = 0
    space_free: int = 0
    refusals: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    stamp: FileStamp | None = None
    fs_aware: bool = False
    discard_swap: bool = False
    usage: UsageMap | None = field(default=None, compare=False, repr=False)
    fs_blocks: np.ndarray | None = field(default=None, compare=False, repr=False)
    forecast: ReclaimForecast | None = None

    @property
    def can_run(self) -> bool:
        """Whether nothing refuses the compaction."""
        return not self.refusals

    @property
    def bytes_reclaimed(self) -> int:
        """Host bytes freed (a lower bound without a scan)."""
        return max(0, self.file_size - self.size_after)

    @property
    def space(self) -> SpacePlan:
        """The space figures every plan states (compaction keeps no undo data)."""
        return SpacePlan.without_undo(self.path, self.file_size, self.size_after, self.space_needed)

    @property
    def nothing_to_do(self) -> bool:
        """Whether the image is already compact (known for sure only after a scan)."""
        drops = sum(
            0 if a is None else a.size
            for a in (self.zero_blocks, self.parent_blocks, self.fs_blocks)
        )
        return (
            not self.defrag
            and self.scanned
            and drops == 0
            and self.moves == 0
            and self.out_of_range.size == 0
            and self.cross_linked.size == 0
            and self.size_after == self.file_size
            and self.blocks_allocated == self.allocated
        )


@dataclass(frozen=True, slots=True)
class CompactResult:
    """What a compaction did.

    Attributes:
        path: the image.
        defragmented: it was rewritten in guest order.
        changed: whether anything was written.
        size_before: file size before.
        size_after: file size after.
        blocks_allocated_before: cBlocksAllocated before.
        blocks_allocated_after: cBlocksAllocated after.
        sanitised_blocks: map entries repaired (out of range or cross-linked -> FREE).
        zero_blocks: all-zero blocks dropped as ZERO.
        parent_blocks: blocks identical to the parent dropped as FREE.
        moved_blocks: slots moved (or blocks rewritten by defrag).
        hash: the guest digest (:class:`GuestDigest`, read while scanning; the content is
            unchanged when verified). With
            fs_aware, every block the guest does not use counts as zeros in it.
        verified: True when re-read and matched; None when not verified or nothing changed.
        fs_blocks: blocks the guest filesystems do not use, dropped as ZERO (fs_aware).
    """

    path: Path
    defragmented: bool
    changed: bool
    size_before: int
    size_after: int
    blocks_allocated_before: int
    blocks_allocated_after: int
    sanitised_blocks: int
    zero_blocks: int
    parent_blocks: int
    moved_blocks: int
    hash: str | None
    verified: bool | None
    fs_blocks: int = 0

    @property
    def bytes_reclaimed(self) -> int:
        """Host bytes freed."""
        return max(0, self.size_before - self.size_after)


# -- layout analysis (pure, on arrays) ----------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Layout:
    """The sanitised view of one image's map."""

    slots_in_file: int
    entries: np.ndarray  # sanitised copy of the whole map (cBlocks entries)
    out_of_range: np.ndarray
    cross_linked: np.ndarray


def _layout(image: VdiImage) -> _Layout:
    """Sanitise the map the way VirtualBox's compaction does, without writing anything."""
    h = image.header
    slots_in_file = max(0, (image.file_size - h.offset_data) // h.slot_size)
    entries = image.block_map.copy()
    live = np.flatnonzero(is_allocated(entries))
    slots = entries[live].astype(np.int64)
    beyond = slots >= slots_in_file
    out_of_range = live[beyond]
    live, slots = live[~beyond], slots[~beyond]
    order = np.lexsort((live, slots))  # by slot, then by guest block: the lowest keeps it
    sorted_slots = slots[order]
    dup = np.zeros(sorted_slots.size, dtype=bool)
    dup[1:] = sorted_slots[1:] == sorted_slots[:-1]
    cross_linked = np.sort(live[order][dup])
    entries[out_of_range] = BLOCK_FREE
    entries[cross_linked] = BLOCK_FREE
    return _Layout(int(slots_in_file), entries, out_of_range, cross_linked)


@dataclass(frozen=True, slots=True)
class _Moves:
    """Where live slots go: block ``blocks[i]`` moves from ``sources[i]`` to ``holes[i]``."""

    count: int  # live slots after the drops (K): the final cBlocksAllocated
    blocks: np.ndarray
    sources: np.ndarray
    holes: np.ndarray


def _moves(entries: np.ndarray) -> _Moves:
    """Pair the lowest holes with the highest live slots (VirtualBox's two-pointer fill)."""
    live = np.flatnonzero(is_allocated(entries))
    slots = entries[live].astype(np.int64)
    count = int(live.size)
    used = np.zeros(max(count, int(slots.max()) + 1 if count else 0), dtype=bool)
    used[slots] = True
    holes = np.flatnonzero(~used[:count])
    high = slots >= count
    order = np.argsort(slots[high])[::-1]
    return _Moves(count, live[high][order], slots[high][order], holes)


def _drops(
    entries: np.ndarray,
    zero_blocks: np.ndarray | None,
    parent_blocks: np.ndarray | None,
    fs_blocks: np.ndarray | None = None,
) -> np.ndarray:
    out = entries.copy()
    if zero_blocks is not None:
        out[zero_blocks] = BLOCK_ZERO
    if parent_blocks is not None:
        out[parent_blocks] = BLOCK_FREE
    if fs_blocks is not None:
        out[fs_blocks] = BLOCK_ZERO  # ZERO, not FREE: see the module docstring
    return out


#: Bytes read first from each allocated block while scanning: a block with any non-zero byte
#: there is data and needs no further look (unless it must be compared with its parent).
PROBE_BYTES = 4096


def _scan(
    chain: DiskChain,
    entries: np.ndarray,
    *,
    progress: ProgressFn,
    cancel: CancelToken | None,
    unused: np.ndarray | None = None,
    classify: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Find all-zero, parent-identical and (with ``unused``) guest-unused blocks.

    Reads as little as proves the answer, in physical order: the first :data:`PROBE_BYTES`
    of every allocated block (almost every data block differs from zero there, which settles
    it), then -- through the copy pipeline's reader, in large requests -- the whole of the
    blocks whose start is zero, and the whole of the blocks a differencing image stores over
    parent data (compared with what the parent shows). Blocks in ``unused`` (bool per guest
    block) are dropped anyway and not read at all -- unless ``classify`` asks to tell all-zero
    ones (zero blocks) from stale ones (FS blocks), which the preview's forecast shows.

    Returns:
        (zero blocks, parent-identical blocks, FS-unused blocks).
    """
    top = chain.top
    h = top.header
    total_blocks = chain.guest_blocks
    bs = chain.block_size
    own = entries[:total_blocks]
    differencing = len(chain.layers) > 1
    layer, entry = chain.serving(upto=len(chain.layers) - 1)
    parent_data = (layer >= 0) & (entry != BLOCK_ZERO)
    zero_mask = np.zeros(total_blocks, dtype=bool)
    parent_mask = np.zeros(total_blocks, dtype=bool)
    fs_mask = np.zeros(total_blocks, dtype=bool)
    skip = np.zeros(total_blocks, dtype=bool)
    if unused is not None:
        k = min(total_blocks, unused.size)
        skip[:k] = unused[:k]
    allocated = is_allocated(own)
    # Unused blocks are dropped without a look unless the forecast wants them classified.
    if not classify:
        fs_mask |= allocated & skip
    wanted = np.flatnonzero(allocated & (~skip | classify))
    wanted = wanted[np.argsort(own[wanted], kind="stable")]  # physical order
    total = int(wanted.size)
    offsets = h.offset_data + own[wanted].astype(np.int64) * h.slot_size + h.block_extra
    compare = (parent_data[wanted] & ~skip[wanted]) if differencing else np.zeros(total, bool)
    done = [0]

    def step(count: int) -> None:
        if count:
            done[0] += count
            progress(Progress("scanning blocks", done[0], total, done[0] * bs))

    # 1. Probe the start of each block that needs no comparison.
    probe = min(PROBE_BYTES, bs)
    zero_probe = bytes(probe)
    full = compare.copy()
    settled = 0
    for n, i in enumerate(np.flatnonzero(~compare).tolist()):
        if cancel is not None and n % 64 == 0:
            cancel.raise_if_cancelled(NOTHING_CHANGED)
        if os.pread(top.fd, probe, int(offsets[i])) == zero_probe:
            full[i] = True  # read it whole below
            continue
        block = int(wanted[i])
        if skip[block]:
            fs_mask[block] = True  # stale data the guest does not use (classify only)
        settled += 1
        if settled % 256 == 0:
            step(256)
    step(settled % 256)
    # 2. Read whole the blocks that start with zeros, and those to compare with the parent.
    reread = np.flatnonzero(full)

    def visit(batch: Batch) -> None:
        rows = reread[batch.first : batch.first + batch.count]
        blocks = wanted[rows]
        nonzero = nonzero_rows(batch.data, batch.count, bs)
        unused_here = skip[blocks]
        zero_mask[blocks[~nonzero]] = True
        fs_mask[blocks[nonzero & unused_here]] = True
        for row in np.flatnonzero(nonzero & ~unused_here & compare[rows]).tolist():
            block = int(blocks[row])
            under = chain.layers[int(layer[block])].read_slot(int(entry[block]), block)
            if same_bytes(batch.data[row * bs : (row + 1) * bs], memoryview(under)):
                parent_mask[block] = True
        step(batch.count)

    spec = CopySpec([top.fd], np.zeros(reread.size, dtype=np.int32), offsets[reread], bs)
    read_blocks(spec, visit, cancel=cancel, cancel_message=NOTHING_CHANGED)
    if total == 0:
        progress(Progress("scanning blocks", 0, 0, 0))
    return np.flatnonzero(zero_mask), np.flatnonzero(parent_mask), np.flatnonzero(fs_mask)


# -- planning -----------------------------------------------------------------------------
def plan_compact(
    path: Path | str,
    *,
    defrag: bool = False,
    scan: bool = False,
    progress: ProgressFn = no_progress,
    cancel: CancelToken | None = None,
    search_dirs: list[Path] | None = None,
    fs_aware: bool = False,
    discard_swap: bool = False,
) -> CompactPlan:
    """Plan compacting ``path``.

    Without ``scan`` it is fast (headers and maps only): it knows the map repairs, the holes
    and the crash tail, but not yet which blocks are all zero. With ``scan`` it reads every
    allocated block (with progress and cancel) to give exact figures, which is what
    ``--dry-run`` shows. With ``fs_aware`` it also reads the guest filesystems' allocation
    maps (metadata only, fast) to find blocks the guest does not use; the plan then carries
    the usage map (volumes, and why any is kept whole) and, with ``scan``, the forecast.

    Raises:
        VdiError: the image cannot be read at all (missing file, bad header).
    """
    path = Path(path)
    require_regular_file(path)  # missing, a FIFO, a device, a link loop: one sentence, no hang
    refusals: list[str] = []
    warnings: list[str] = []
    resolution = resolve_chain(path, search_dirs)
    stamp = FileStamp.of(path)
    with open_image(path) as image:
        h = image.header
        layout = _layout(image)
        file_size = image.file_size
    differencing = h.is_differencing
    chain_ok = resolution.error is None
    chain_paths = resolution.paths if chain_ok else (path,)
    if not chain_ok:
        refusals.append(
            f"{resolution.error} Compaction needs the whole chain to compare "
            "blocks with what the parent shows."
        )
    if h.image_type == ImageType.FIXED:
        refusals.append(
            f"'{path.name}' is a fixed-size image; compacting would break its "
            f"preallocated layout. Convert it first with 'vdictl convert {path} "
            "--to dynamic', which also drops its all-zero blocks."
        )
    refusals.extend(in_place_refusals(path, "needed for the backup of the block map"))
    if fs_aware:
        refusals.extend(saved_state_refusals(path))
    if defrag:
        warnings.extend(hard_link_warning(path))
    # A damaged map is refused, not sanitised on the fly: clearing entries changes what the
    # guest reads, and 'vdictl repair' is the one command that decides that, with undo.
    # Holes between slots, a crash tail and a low cBlocksAllocated are not damage: compaction
    # cleans them without changing a byte the guest sees.
    damage = []
    if layout.out_of_range.size:
        damage.append(f"{layout.out_of_range.size} block(s) point past the end of the file")
    if layout.cross_linked.size:
        damage.append(f"{layout.cross_linked.size} block(s) share a slot with a lower block")
    if damage:
        refusals.append(
            f"{path} has a damaged block map ({'; '.join(damage)}), so compacting "
            "it would change what the guest reads; run 'vdictl repair' on it "
            "first, the only command that changes a damaged map."
        )
    zero_blocks = parent_blocks = fs_blocks = None
    usage: UsageMap | None = None
    outlook: ReclaimForecast | None = None
    if chain_ok and h.image_type != ImageType.FIXED and (scan or fs_aware):
        with open_paths(chain_paths) as chain:
            # The usage map costs only metadata reads, so a scanned plan always carries the
            # forecast: "why isn't it shrinking more?" gets an answer without fs_aware too.
            # Without fs_aware it is only an explanation, so a disk it cannot read is no error.
            try:
                usage = chain_usage(chain, discard_swap=discard_swap)
            except VdiError:
                if fs_aware:
                    raise
            unused = unused_mask(usage) if fs_aware and usage is not None else None
            if scan:
                zero_blocks, parent_blocks, fs_blocks = _scan(
                    chain,
                    layout.entries,
                    progress=progress,
                    cancel=cancel,
                    unused=unused,
                    classify=True,
                )
                if usage is not None:
                    all_zero = np.zeros(chain.guest_blocks, dtype=bool)
                    all_zero[zero_blocks] = True
                    outlook = forecast(
                        usage, is_allocated(layout.entries[: chain.guest_blocks]), all_zero
                    )
                if not fs_aware:
                    fs_blocks = None
    after = _drops(layout.entries, zero_blocks, parent_blocks, fs_blocks)
    moves = _moves(after)
    if defrag:
        size_after = h.offset_data + moves.count * h.block_size
        moves_count = moves.count
        needed = size_after
        what = "the rebuilt copy of the image"
    else:
        size_after = h.offset_data + moves.count * h.slot_size
        moves_count = int(moves.blocks.size)
        needed = 4096 + h.map_size
        what = "the backup of the block map"
    free = free_space(path.parent)
    refusal = space_refusal(path.parent, needed, free, what)
    if refusal:
        refusals.append(refusal)
    if not refusals:  # the real open catches what os.access misses (root, immutable, ro fs)
        try:
            check_writable_inputs([path], folder=path.resolve().parent, check_maps=False)
        except OperationRefused as exc:
            refusals.append(str(exc))
    return CompactPlan(
        path=path,
        chain_paths=tuple(chain_paths),
        differencing=differencing,
        defrag=defrag,
        block_size=h.block_size,
        slot_size=h.slot_size,
        guest_blocks=min(h.blocks, -(-h.disk_size // h.block_size)),
        file_size=file_size,
        slots_in_file=layout.slots_in_file,
        blocks_allocated=h.blocks_allocated,
        allocated=int(np.count_nonzero(is_allocated(layout.entries))),
        out_of_range=layout.out_of_range,
        cross_linked=layout.cross_linked,
        scanned=zero_blocks is not None,
        zero_blocks=zero_blocks,
        parent_blocks=parent_blocks,
        moves=moves_count,
        moving_blocks=None if defrag else moves.blocks,
        size_after=size_after,
        space_needed=needed,
        space_free=free,
        refusals=tuple(refusals),
        warnings=tuple(warnings),
        stamp=stamp,
        fs_aware=fs_aware,
        discard_swap=discard_swap,
        usage=usage,
        fs_blocks=fs_blocks,
        forecast=outlook,
    )


# -- running ------------------------------------------------------------------------------
def run_compact(
    plan: CompactPlan,
    *,
    progress: ProgressFn = no_progress,
    cancel: CancelToken | None = None,
    verify: bool = True,
) -> CompactResult:
    """Run a compaction plan (in place, or by rewriting with ``plan.defrag``).

    Everything is re-derived from the file itself (the plan's figures are for display): the
    plan only fixes the choices and proves the file has not changed since.

    Raises:
        OperationRefused: the plan has refusals, the file changed, or it is now in use.
        OperationCancelled: cancelled; the message says the state (nothing changed, or
            consistent and partly compacted).
        VerificationError: the guest content changed (the message says what was kept).
    """
    if plan.refusals:
        raise OperationRefused(" ".join(plan.refusals))
    assert plan.stamp is not None
    require_unchanged(plan.path, plan.stamp)
    reasons = busy_reasons(plan.path)
    if plan.fs_aware:  # a VM may have been started and saved since the plan
        reasons += saved_state_refusals(plan.path)
    if reasons:
        raise OperationRefused(" ".join(reasons))
    sweep_leftovers(plan.path.resolve().parent)  # an interrupted run's temp file (preflight)
    with open_paths(plan.chain_paths, writable_top=True) as chain:
        take_exclusive_lock(chain.top.fd, plan.path)
        if plan.defrag:
            return _run_defrag(plan, chain, progress=progress, cancel=cancel, verify=verify)
        return _run_in_place(plan, chain, progress=progress, cancel=cancel, verify=verify)


def _safe_count(header: fmt.VdiHeader, *slot_counts: int) -> int:
    """cBlocksAllocated covering every slot in use, within what the header may say."""
    return min(header.blocks, max(slot_counts))


def _run_in_place(
    plan: CompactPlan,
    chain: DiskChain,
    *,
    progress: ProgressFn,
    cancel: CancelToken | None,
    verify: bool,
) -> CompactResult:
    top = chain.top
    h0 = top.header
    size_before = top.file_size
    layout = _layout(top)
    usage = chain_usage(chain, discard_swap=plan.discard_swap) if plan.fs_aware else None
    unused = unused_mask(usage) if usage is not None else None
    zero_blocks, parent_blocks, fs_blocks = _scan(
        chain, layout.entries, progress=progress, cancel=cancel, unused=unused
    )
    target = _drops(layout.entries, zero_blocks, parent_blocks, fs_blocks)
    moves = _moves(target)
    final_size = h0.offset_data + moves.count * h0.slot_size
    sanitised = int(layout.out_of_range.size + layout.cross_linked.size)
    changed_entries = np.flatnonzero(target != top.block_map)

    def result(changed: bool, verified: bool | None) -> CompactResult:
        return CompactResult(
            path=plan.path,
            defragmented=False,
            changed=changed,
            size_before=size_before,
            size_after=top.file_size,
            blocks_allocated_before=h0.blocks_allocated,
            blocks_allocated_after=top.header.blocks_allocated,
            sanitised_blocks=sanitised,
            zero_blocks=int(zero_blocks.size),
            parent_blocks=int(parent_blocks.size),
            moved_blocks=int(moves.blocks.size),
            hash=None,
            verified=verified,
            fs_blocks=int(fs_blocks.size),
        )

    def check_usage() -> None:
        """After the drops are durable, before any slot is reused: same filesystems?"""
        if usage is None or fs_blocks.size == 0:
            return
        problem = _usage_after(plan, chain, usage)
        if problem is None:
            return
        # Nothing was moved yet, so every dropped block's old slot still holds its data.
        top.write_entries(fs_blocks, layout.entries[fs_blocks])
        top.sync()
        raise VerificationError(
            f"Verification failed: after dropping the blocks the guest does not use, the "
            f"filesystems of '{plan.path.name}' read differently ({problem}). The dropped "
            f"blocks were restored and nothing else was changed; the original header and "
            f"block map are saved in '{backup_path(plan.path)}'. Please report this."
        )

    if (
        changed_entries.size == 0
        and moves.blocks.size == 0
        and h0.blocks_allocated == moves.count
        and size_before == final_size
    ):
        # A backup left by an interrupted earlier run describes a state that is gone now.
        discard(backup_path(plan.path))
        return result(False, None)
    if cancel is not None:
        cancel.raise_if_cancelled(NOTHING_CHANGED)
    backup = write_backup(top)
    try:
        _write_changes(
            chain,
            target,
            changed_entries,
            moves,
            progress=progress,
            cancel=cancel,
            after_drops=check_usage if verify else None,
            verify=verify,
            name=plan.path.name,
            backup=backup,
        )
        verified: bool | None = None
        if verify:
            _verify_in_place(plan, chain, target, moves, backup, progress=progress)
            verified = True
        top.truncate(final_size)
        top.sync()
    except OperationCancelled:
        discard(backup)  # the image is consistent: the backup is not needed to recover it
        raise
    discard(backup)
    fsync_dir(plan.path.parent)
    return result(True, verified)


def _write_changes(
    chain: DiskChain,
    target: np.ndarray,
    changed: np.ndarray,
    moves: _Moves,
    *,
    progress: ProgressFn,
    cancel: CancelToken | None,
    after_drops: Callable[[], None] | None = None,
    verify: bool = False,
    name: str = "",
    backup: Path | None = None,
) -> None:
    """Persist repairs and drops, then move slots down in flushed batches.

    ``after_drops`` runs once the drops are durable and before any slot is reused (the
    filesystem-aware check, which can still undo the drops there). With ``verify`` every
    moved block is read back from its new slot and compared with the bytes read from the old
    one before any entry points at it: a mismatch stops with nothing repointed.
    """
    top = chain.top
    h = top.header
    # Slots in use until the drops are durable: every entry that points inside the file.
    live_before = top.block_map[is_allocated(top.block_map)]
    in_file = (top.file_size - h.offset_data) // h.slot_size
    live_before = live_before[live_before < in_file]
    high_before = int(live_before.max()) + 1 if live_before.size else 0
    # 1. Raise cBlocksAllocated first if it is too low (a crash leftover): it must always
    #    cover every slot in use, or the next allocation would cross-link.
    safe = _safe_count(h, h.blocks_allocated, high_before)
    if safe != h.blocks_allocated:
        top.write_header(h.replace(blocks_allocated=safe))
    # 2. Repairs and drops. Drops leave the guest content as it was (ZERO reads zeros, FREE
    #    shows the identical parent data), so they need no ordering among themselves; they
    #    must be durable before any freed slot is reused.
    top.write_entries(changed, target[changed])
    top.sync()
    if after_drops is not None:
        after_drops()
    # 3. Moves. Destinations are holes no durable entry points at; sources all lie at or
    #    above the final count, so no source is ever a destination and a whole batch of
    #    copies can share one flush before its entries are repointed. The copies go through
    #    the copy pipeline (large reads on a helper thread, batched writes, read-back).
    total = int(moves.blocks.size)
    per_batch = max(1, MOVE_BATCH_BYTES // h.slot_size)
    bs = h.block_size

    def offsets(slots: np.ndarray) -> np.ndarray:
        return h.offset_data + slots.astype(np.int64) * h.slot_size + h.block_extra

    def write_all(first: int, count: int, data: memoryview, nonzero: np.ndarray) -> np.ndarray:
        return np.ones(count, dtype=bool)  # a live block moves whatever it holds

    done = 0
    while done < total:
        end = min(total, done + per_batch)
        base = done

        def report(jobs: int, base: int = base) -> None:
            progress(Progress("moving blocks", base + jobs, total, (base + jobs) * bs))

        spec = CopySpec(
            [top.fd], np.zeros(end - done, dtype=np.int32), offsets(moves.sources[done:end]), bs
        )
        try:
            outcome = copy_blocks(
                spec,
                top.fd,
                dst=offsets(moves.holes[done:end]),
                verify=verify,
                decide=write_all,
                report=report,
                cancel=cancel,
                cancel_message=PARTLY,
                report_every=1,
            )
        except OperationCancelled:
            top.sync()  # copies into holes nothing points at: harmless, flushed anyway
            raise
        top.file_size = max(top.file_size, int(offsets(moves.holes[done:end]).max()) + bs)
        if outcome.mismatch is not None:
            block = int(moves.blocks[done + outcome.mismatch])
            raise VerificationError(
                f"Verification failed: after compaction '{name}' would read differently: "
                f"guest block {block} read back differently from its new slot "
                f"{int(moves.holes[done + outcome.mismatch])}, so it was not repointed and "
                f"keeps its old slot; the image reads as before. The original header and "
                f"block map are saved in '{backup}'. Please report this."
            )
        top.sync()  # the copies are durable ...
        top.write_entries(moves.blocks[done:end], moves.holes[done:end])
        top.sync()  # ... before the entries point at them, durable before the count drops
        remaining = int(moves.sources[end]) + 1 if end < total else 0
        count = _safe_count(top.header, moves.count, remaining)
        if count != top.header.blocks_allocated:
            # Written after the repoints are durable, so it can never be persisted
            # without them; the next flush makes it durable itself.
            top.write_header(top.header.replace(blocks_allocated=count))
        done = end
    if top.header.blocks_allocated != moves.count:
        top.write_header(top.header.replace(blocks_allocated=moves.count))
    top.sync()


def _usage_after(
    plan: CompactPlan, chain: DiskChain, before: UsageMap, path: Path | None = None
) -> str | None:
    """Re-read the guest filesystems of the image as stored now in ``path`` (default: the
    image itself, through its own map from the file) over the same parents."""
    fresh = open_image(path or plan.path)
    try:
        after = chain_usage(DiskChain([*chain.layers[:-1], fresh]), discard_swap=plan.discard_swap)
    finally:
        fresh.close()
    return same_usage(before, after)


def _verify_in_place(
    plan: CompactPlan,
    chain: DiskChain,
    target: np.ndarray,
    moves: _Moves,
    backup: Path,
    *,
    progress: ProgressFn,
) -> None:
    """Re-read the header and map from the file and compare them with what was intended.

    The data needs no second look: every moved block was compared as it was written
    (:func:`_write_changes`), the dropped blocks were proven all zero, identical to the
    parent or unused by the guest while scanning, and every other block keeps its slot. So
    the image reads as before exactly when the map and count on disk are the intended ones:
    the scan's map with the drops, the moved entries pointing at their new slots.

    On a mismatch the moved entries are pointed back at their old slots, which still hold
    their data because nothing has been truncated yet, and the backup is kept.
    """
    progress(Progress("verifying", 0, 1, 0))
    intended = target.copy()
    intended[moves.blocks] = moves.holes
    with open_image(plan.path) as fresh:
        problem = None
        if fresh.header.blocks_allocated != moves.count:
            problem = (
                f"cBlocksAllocated is {fresh.header.blocks_allocated} instead of {moves.count}"
            )
        elif not np.array_equal(fresh.block_map, intended[: fresh.block_map.size]):
            wrong = int(np.flatnonzero(fresh.block_map != intended[: fresh.block_map.size])[0])
            problem = (
                f"the map entry of guest block {wrong} reads {int(fresh.block_map[wrong])} "
                f"instead of {int(intended[wrong])}"
            )
    progress(Progress("verifying", 1, 1, 0))
    if problem is None:
        return
    top = chain.top
    with contextlib.suppress(VdiError, OSError):
        high = int(moves.sources.max()) + 1 if moves.sources.size else 0
        top.write_header(
            top.header.replace(
                blocks_allocated=_safe_count(top.header, top.header.blocks_allocated, high)
            )
        )
        top.sync()
        top.write_entries(moves.blocks, moves.sources)
        top.sync()
    raise VerificationError(
        f"Verification failed: after compaction '{plan.path.name}' reads differently "
        f"({problem}). The moved blocks were pointed back at their original slots and the "
        f"file was not truncated; the original header and block map are saved in "
        f"'{backup}'. Please report this."
    )


def _run_defrag(
    plan: CompactPlan,
    chain: DiskChain,
    *,
    progress: ProgressFn,
    cancel: CancelToken | None,
    verify: bool,
) -> CompactResult:
    """Rewrite the image in guest order beside itself, verify, and swap it in atomically."""
    top = chain.top
    h0 = top.header
    size_before = top.file_size
    layout = _layout(top)
    # The rewrite reads through the sanitised map; the original file is never written.
    top.block_map = layout.entries[: h0.blocks].copy()
    chain.invalidate()
    usage = chain_usage(chain, discard_swap=plan.discard_swap) if plan.fs_aware else None
    # Rebuild beside the real file: replacing a symlink would leave its target stale.
    target = plan.path.resolve()
    assert plan.stamp is not None
    stamp = plan.stamp

    def usage_after(tmp: Path) -> str | None:
        return None if usage is None else _usage_after(plan, chain, usage, tmp)

    # keep_parent also for a base (it simply has no parent): ZERO markers stay, new
    # all-zero blocks become ZERO, as in-place compaction would leave them.
    stats, verified = rewrite_beside(
        chain,
        target,
        h0,
        keep_parent=True,
        progress=progress,
        cancel=cancel,
        verify=verify,
        cancel_message=NOTHING_CHANGED,
        drop=None if usage is None else unused_mask(usage),
        check=usage_after,
        commit=lambda tmp: replace_original(tmp, target, stamp),
        failure=lambda problem: (
            f"the rebuilt '{plan.path.name}' reads differently "
            f"({problem}); it was deleted and the original is unchanged."
        ),
    )
    with open_image(plan.path) as done:
        after_header = done.header
    return CompactResult(
        path=plan.path,
        defragmented=True,
        changed=True,
        size_before=size_before,
        size_after=stats.file_size,
        blocks_allocated_before=h0.blocks_allocated,
        blocks_allocated_after=after_header.blocks_allocated,
        sanitised_blocks=int(layout.out_of_range.size + layout.cross_linked.size),
        zero_blocks=stats.zero_blocks,
        parent_blocks=stats.parent_blocks,
        moved_blocks=stats.stored,
        hash=stats.source_hash,
        verified=verified,
        fs_blocks=stats.dropped_blocks,
    )


__all__ = ["CompactPlan", "CompactResult", "plan_compact", "run_compact"]
