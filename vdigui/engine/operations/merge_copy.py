"""The block copy of a merge (both directions, one loop) and its cheap verification.

The copy. A merge writes, into a *target* image, every block the *source* image defines
(``candidates``): backward (child into parent) every non-FREE block of the child; forward
(parent into child) every non-FREE block of the parent that the child leaves FREE. Per block:

- the target already holds a slot for it (backward only): the new content is written **in
  place** over that slot. With undo data kept, the slot's old content was saved first as a
  before-image (:func:`vdigui.engine.operations.journal.write_before_images`); without, the
  merge rolls forward after a crash instead (docs/crash-safety.md, "Roll-forward"). An
  all-zero block (or a ZERO entry) from the child is written as zeros into the slot, so the
  target stays dense: no slot is freed, none added.
- the target has no slot (FREE or ZERO): when the content equals what the target shows there
  anyway (its fall-through: the ancestors below it, or zeros) nothing is written; an all-zero
  content over non-zero fall-through becomes a ZERO entry (VirtualBox gh-850: leaving it FREE
  would re-expose the old data); anything else goes to a new slot at ``cBlocksAllocated``,
  appended densely, numbered in guest block order.

So a dense target with an exact ``cBlocksAllocated`` stays dense and exact, and the map never
needs more entries than the disk has blocks.

Both directions run through the one loop of :func:`vdigui.engine.copier.copy_blocks` (reads
on a helper thread, batched ``pwritev``, write-back started as it goes, read-back checks on a
helper thread): the jobs are the source's data blocks in guest order; the destination of a
block that has a target slot is known up front, and the ``decide`` hook makes the choice
above for the others (and numbers their new slots). ZERO entries of the source need no read;
those over target slots are written as zeros first.

Order on disk (docs/crash-safety.md, "data before the metadata that points at it"): all data,
one fsync, then the map entries and ``cBlocksAllocated``, one fsync. A map entry therefore
never points at a slot whose data is not durable, so a state that reads the target through
its map (the child's view, in a forward merge) reads correctly at every moment.

The result depends only on the source, the target's *original* header and map, and the
ancestors (the in-place slots are overwritten, never read): running the copy again from the
original header and map writes the same bytes to the same places. That makes the merge
idempotent, which is what lets crash recovery redo it
(:func:`vdigui.engine.operations.merge.roll_forward`).

The verification, and why it is enough. The state that must survive a merge is the view of
the child (backward: the child's view becomes the target's own; forward: the child is the
target). It is proved in two parts, reading back only what the merge wrote:

- while copying (``verify=True``), every block is re-read from the target right after it was
  written and compared byte for byte with the source bytes still in the copy buffer (the
  data already read for the copy; the source is not read twice). The loop also records the
  map the target must end with (``expected_map``): the old entries, with each new slot, ZERO
  entry or in-place write it decided. A block it left FREE was compared with the
  fall-through (or found all-zero over zeros) by the loop itself.
- after the copy, :func:`verify_merge` re-reads the target's map: it must equal
  ``expected_map`` exactly (so every block the merge does not define keeps its entry); every
  slot a defined block points at must be one the writer wrote and checked; no slot of an
  undefined block may be among the written ones; and a target that was dense must still be.
  An undefined block therefore reads through an unchanged entry to an untouched slot, or falls
  through to ancestors that were only ever opened read-only: unchanged, without reading it.

The cost is one page-cache read and one memcmp of the bytes written, no checksums.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vdigui.engine import copier, fileio
from vdigui.engine import format as fmt
from vdigui.engine.chain import DiskChain
from vdigui.engine.copier import CopySpec, same_bytes
from vdigui.engine.errors import VdiError, VerificationError
from vdigui.engine.format import BLOCK_FREE, BLOCK_ZERO
from vdigui.engine.image import VdiImage, zeros
from vdigui.engine.progress import CancelToken, Progress, ProgressFn

_CANCELLED = "Cancelled: rolling back."


@dataclass(frozen=True, slots=True)
class CopyOutcome:
    """What the copy loop did, for the result figures and the verification.

    Attributes:
        entries: map entries changed in the target.
        bytes_written: data bytes written into the target (in place and appended).
        candidates: bool per guest block: the merge defines this block's new view.
        old_map: the target's first ``candidates.size`` map entries before the copy.
        written_slots: sorted slots of the target the copy wrote.
        expected_map: the first ``candidates.size`` entries the target's map must end with.
        checked: every write was read back and compared (``verify=True``).
    """

    entries: int
    bytes_written: int
    candidates: np.ndarray
    old_map: np.ndarray
    written_slots: np.ndarray
    expected_map: np.ndarray
    checked: bool


def candidate_mask(source_map: np.ndarray, target_map: np.ndarray, backward: bool) -> np.ndarray:
    """Bool per guest block: the block whose new view the merge takes from the source."""
    defined: np.ndarray = np.asarray(source_map != BLOCK_FREE)
    if backward:
        return defined
    return np.asarray(defined & (target_map == BLOCK_FREE))


def overwritten_slots(source: VdiImage, target: VdiImage, backward: bool) -> np.ndarray:
    """Sorted target slots the merge writes over in place (before-images, when undo is kept)."""
    n = min(source.guest_blocks, target.guest_blocks)
    t_map = target.block_map[:n]
    cand = candidate_mask(source.block_map[:n], t_map, backward)
    slots = t_map[cand & fmt.is_allocated(t_map)].astype(np.int64)
    return np.unique(slots)


def new_slot_bound(source_map: np.ndarray, target_map: np.ndarray, backward: bool) -> int:
    """Upper bound of the slots a merge appends (source data over a target without a slot)."""
    n = min(source_map.size, target_map.size)
    s, t = source_map[:n], target_map[:n]
    cand = candidate_mask(s, t, backward)
    return int((cand & fmt.is_allocated(s) & ~fmt.is_allocated(t)).sum())


class _Placement:
    """The map the target must end with, as the loop decides it, and the slots it writes."""

    def __init__(
        self, target: VdiImage, allowed_overwrites: np.ndarray, old_map: np.ndarray
    ) -> None:
        self.target = target
        self.h = target.header
        self.first_new = self.h.blocks_allocated
        self.next_slot = self.first_new
        self.allowed = {int(s) for s in allowed_overwrites.tolist()}
        self.expected_map = old_map.copy()
        self.blocks: list[int] = []
        self.values: list[int] = []
        self.written: list[int] = []

    def overwrite(self, slot: int) -> int:
        """An existing slot gets new content (only one the caller declared it overwrites)."""
        if slot < self.first_new and slot not in self.allowed:
            raise VdiError(
                f"internal error: slot {slot} of '{self.target.path.name}' would be "
                "overwritten although the plan does not overwrite it (bug); "
                "rolling back."
            )
        self.written.append(slot)
        return self.h.slot_offset(slot)

    def append(self, block: int) -> int:
        """Give ``block`` the next new slot (``cBlocksAllocated`` onwards); its data offset."""
        slot = self.next_slot
        self.next_slot += 1
        self.written.append(slot)
        self.set_entry(block, slot)
        return self.h.slot_offset(slot)

    def set_entry(self, block: int, value: int) -> None:
        """One map entry to write once the data is durable."""
        self.blocks.append(block)
        self.values.append(value)
        self.expected_map[block] = value


class _FallThrough:
    """What a target shows for a block it leaves FREE: the ancestors' view, or zeros."""

    def __init__(self, ancestors: DiskChain | None, block_size: int) -> None:
        self.ancestors = ancestors
        self.serving = ancestors.serving_layers() if ancestors is not None else None
        self.zero = zeros(block_size)

    def read(self, block: int) -> bytes | None:
        """The fall-through content, or None when it is zeros (no read needed)."""
        if (
            self.ancestors is None
            or self.serving is None
            or block >= self.serving.size
            or self.serving[block] < 0
        ):
            return None
        data = self.ancestors.read_block(block)
        return None if data == self.zero else data


def _slot_offsets(h: fmt.VdiHeader, slots: np.ndarray) -> np.ndarray:
    """File offsets of the guest data of ``slots`` (vectorised ``slot_offset``)."""
    return (h.offset_data + h.block_extra + slots.astype(np.int64) * np.int64(h.slot_size)).astype(
        np.int64
    )


def _write_zero_slots(target: VdiImage, slots: list[int], check: bool) -> None:
    """Write zeros over whole slots (ZERO entries of a backward merge's child), read back."""
    bs = target.header.block_size
    zero = zeros(bs)
    for slot in sorted(slots):
        offset = target.header.slot_offset(slot)
        fileio.pwritev(target.fd, [zero], offset)
        if check and os.pread(target.fd, bs, offset) != zero:
            raise VerificationError(
                f"Slot {slot} of '{target.path.name}' does not read back as the zeros just "
                "written to it (please check the disk, then report this)."
            )


def copy_blocks(
    source: VdiImage,
    target: VdiImage,
    ancestors: DiskChain | None,
    *,
    backward: bool,
    overwrite: np.ndarray,
    verify: bool,
    progress: ProgressFn,
    cancel: CancelToken,
    phase: str,
) -> CopyOutcome:
    """Merge ``source`` into ``target`` (see the module docstring); one loop, both directions.

    Args:
        source: the image merged away (read-only).
        target: the image that receives the data (writable), with its original map.
        ancestors: the chain the target falls through to afterwards (read-only), or None.
        backward: child into parent (True) or parent into child (False).
        overwrite: the target slots the merge writes over in place
            (:func:`overwritten_slots`; the only existing slots this may write).
        verify: read every write back and compare it (and record what
            :func:`verify_merge` needs).

    Returns the outcome once the data, then the map and header, are durable.
    """
    h = target.header
    bs = h.block_size
    n = min(source.guest_blocks, target.guest_blocks)
    s_map = source.block_map[:n].copy()
    t_map = target.block_map[:n].copy()
    cand = candidate_mask(s_map, t_map, backward)
    fall = _FallThrough(ancestors, bs)
    place = _Placement(target, overwrite, t_map)
    blocks = np.flatnonzero(cand)
    total = int(blocks.size)
    progress(Progress(phase, 0, total))

    # ZERO entries of the source: no data to read.
    zero_blocks = blocks[s_map[blocks] == BLOCK_ZERO]
    zero_slots: list[int] = []
    for i, block in enumerate(zero_blocks.tolist()):
        if i % 256 == 0:
            cancel.raise_if_cancelled(_CANCELLED)
        entry = int(t_map[block])
        if fmt.is_allocated(entry):
            place.overwrite(entry)
            zero_slots.append(entry)
        elif entry == BLOCK_FREE and fall.read(block) is None:
            continue  # reads as zeros already
        elif entry != BLOCK_ZERO:
            place.set_entry(block, BLOCK_ZERO)
    _write_zero_slots(target, zero_slots, verify)
    done_before = int(zero_blocks.size)
    progress(Progress(phase, done_before, total, len(zero_slots) * bs))

    # Data blocks of the source: the copier's loop, in guest block order.
    jobs = blocks[fmt.is_allocated(s_map[blocks])]
    spec = CopySpec(
        [source.fd],
        np.zeros(jobs.size, dtype=np.int64),
        _slot_offsets(source.header, s_map[jobs]),
        bs,
    )
    has_slot = fmt.is_allocated(t_map[jobs])
    dst = np.full(jobs.size, -1, dtype=np.int64)
    dst[has_slot] = _slot_offsets(h, t_map[jobs][has_slot])
    moved = [len(zero_slots) * bs]

    def decide(first: int, count: int, data: memoryview, nonzero: np.ndarray) -> np.ndarray:
        # Runs before the copier reads ``dst`` for this batch: new slots are numbered here.
        rows = np.ones(count, dtype=bool)
        for i in range(count):
            job = first + i
            block = int(jobs[job])
            entry = int(t_map[block])
            if fmt.is_allocated(entry):
                place.overwrite(entry)
                continue
            is_zero = not bool(nonzero[i])
            if entry == BLOCK_FREE:
                below = fall.read(block)
                if (below is None and is_zero) or (
                    below is not None
                    and not is_zero
                    and same_bytes(data[i * bs : (i + 1) * bs], memoryview(below))
                ):
                    rows[i] = False  # the target shows these bytes already
                    continue
            if is_zero:
                rows[i] = False
                if entry != BLOCK_ZERO:
                    place.set_entry(block, BLOCK_ZERO)
                continue
            dst[job] = place.append(block)
        moved[0] += int(rows.sum()) * bs
        return rows

    def report(done: int) -> None:
        progress(Progress(phase, done_before + done, total, moved[0]))

    outcome = copier.copy_blocks(
        spec,
        target.fd,
        dst=dst,
        verify=verify,
        decide=decide,
        report=report,
        cancel=cancel,
        cancel_message=_CANCELLED,
    )
    if outcome.mismatch is not None:
        block = int(jobs[outcome.mismatch])
        raise VerificationError(
            f"Guest block {block} of '{target.path.name}' does not read back as the merged "
            "data just written to it (please check the disk, then report this)."
        )
    if outcome.stored:
        end = int(outcome.dst[outcome.written].max()) + bs
        target.file_size = max(target.file_size, end)
    # Data before the metadata that points at it: flush, then the map and the header.
    target.sync()
    if place.blocks:
        target.write_entries(place.blocks, place.values)
    if place.next_slot != target.header.blocks_allocated:
        target.write_header(target.header.replace(blocks_allocated=place.next_slot))
    if place.blocks or place.next_slot != place.first_new:
        target.sync()
    progress(Progress(phase, total, total, moved[0]))
    written = np.unique(np.asarray(place.written, dtype=np.int64))
    bytes_written = (int(outcome.stored) + len(zero_slots)) * bs
    return CopyOutcome(
        len(place.blocks), bytes_written, cand, t_map, written, place.expected_map, verify
    )


def is_dense(image: VdiImage) -> bool:
    """Slots in use are exactly 0..cBlocksAllocated-1, each used once."""
    live = image.block_map[fmt.is_allocated(image.block_map)].astype(np.int64)
    if live.size != image.header.blocks_allocated:
        return False
    return live.size == 0 or (
        int(live.max()) == live.size - 1 and np.unique(live).size == live.size
    )


def verify_merge(target_path: Path, outcome: CopyOutcome, *, was_dense: bool) -> None:
    """Prove the target's map is the one the checked writes promised (module docstring).

    Raises:
        VerificationError: an entry differs from the expected map, a block points at a slot
            that was not written and checked, a write hit a slot of a block the merge does not
            define, or a dense target is no longer dense.
    """
    if not outcome.checked:
        raise VdiError("verify_merge needs a copy run with verify=True (bug)")
    from vdigui.engine.image import open_image

    with open_image(target_path) as target:
        n = outcome.candidates.size
        new = target.block_map[:n]
        name = target.path.name
        differ = np.flatnonzero(new != outcome.expected_map)
        if differ.size:
            raise VerificationError(
                f"After the merge '{name}' maps guest block {int(differ[0])} differently from "
                "what the merge wrote; everything was rolled back (please report this)."
            )
        cand = outcome.candidates
        live = fmt.is_allocated(new)
        defined = new[cand & live].astype(np.int64)
        unwritten = defined[~np.isin(defined, outcome.written_slots)]
        if unwritten.size:
            raise VerificationError(
                f"After the merge a block of '{name}' points at slot {int(unwritten[0])}, which "
                "the merge did not write; everything was rolled back (please report this)."
            )
        kept = new[~cand & live].astype(np.int64)
        hit = kept[np.isin(kept, outcome.written_slots)]
        if hit.size:
            raise VerificationError(
                f"The merge wrote over slot {int(hit[0])} of '{name}', which holds a block it "
                "does not define; everything was rolled back (please report this)."
            )
        if was_dense and not is_dense(target):
            raise VerificationError(
                f"After the merge the slots of '{name}' are no longer dense or "
                "cBlocksAllocated is wrong; everything was rolled back (please report this)."
            )
