"""The block copy of a merge (both directions, one loop) and its cheap verification.

The copy. A merge writes, into a *target* image, every block the *source* image defines
(``candidates``): backward (child into parent) every non-FREE block of the child; forward
(parent into child) every non-FREE block of the parent that the child leaves FREE. Per block:

- the target already holds a slot for it (backward only): the new content is written **in
  place** over that slot. The slot's old content was saved first as a before-image (see
  :func:`vdigui.engine.operations.journal.write_before_images`), which is what keeps the
  merge undoable without copy-on-write. An all-zero block (or a ZERO entry) from the child is
  written as zeros into the slot, so the target stays dense: no slot is freed, none added.
- the target has no slot (FREE or ZERO): when the content equals what the target shows there
  anyway (its fall-through: the ancestors below it, or zeros) nothing is written; an all-zero
  content over non-zero fall-through becomes a ZERO entry (VirtualBox gh-850: leaving it FREE
  would re-expose the old data); anything else goes to a new slot at ``cBlocksAllocated``,
  appended densely.

So a dense target with an exact ``cBlocksAllocated`` stays dense and exact, and the map never
needs more entries than the disk has blocks (the old copy-on-write merge had to raise
``cBlocks``; that is gone).

Data is read in runs of consecutive source slots into one buffer, then written with batched
``pwritev`` calls (coalesced by file offset), then the map entries and the header; one fsync
at the end (the journal's backups make intermediate states harmless).

The verification, and why it is enough. The state that must survive a merge is the view of
the child (backward: the child's view becomes the target's own; forward: the child is the
target). It is proved in two parts, reading back only what the merge wrote:

- while copying (``verify=True``), every batch of writes is re-read from the target right
  after it was written and compared byte for byte with the source bytes still in the copy
  buffer (the data already read for the copy; the source is not read twice). The writer
  also records the map the target must end with (``expected_map``): the old entries, with
  each new slot, ZERO entry or in-place write the loop decided. A block the loop left FREE
  was compared with the fall-through (or found all-zero over zeros) by the loop itself.
- after the relink, :func:`verify_merge` re-reads the target's map: it must equal
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

from vdigui.engine import fileio
from vdigui.engine import format as fmt
from vdigui.engine.chain import DiskChain
from vdigui.engine.errors import VdiError, VerificationError
from vdigui.engine.format import BLOCK_FREE, BLOCK_ZERO
from vdigui.engine.image import VdiImage, zeros
from vdigui.engine.progress import CancelToken, Progress, ProgressFn

#: Data moved per batch (one read run, the writes it causes, then the map update).
BATCH_BYTES = 16 * fmt.MIB
#: Most buffers one pwritev call takes (Linux IOV_MAX).
_IOV_MAX = 1024
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
    """Sorted target slots the merge writes over in place (their before-images are saved)."""
    n = min(source.guest_blocks, target.guest_blocks)
    t_map = target.block_map[:n]
    cand = candidate_mask(source.block_map[:n], t_map, backward)
    slots = t_map[cand & (t_map < fmt.FIRST_SPECIAL)].astype(np.int64)
    return np.unique(slots)


def new_slot_bound(source_map: np.ndarray, target_map: np.ndarray, backward: bool) -> int:
    """Upper bound of the slots a merge appends (source data over a target without a slot)."""
    n = min(source_map.size, target_map.size)
    s, t = source_map[:n], target_map[:n]
    cand = candidate_mask(s, t, backward)
    return int((cand & (s < fmt.FIRST_SPECIAL) & (t >= fmt.FIRST_SPECIAL)).sum())


def _words(data: memoryview | bytes) -> np.ndarray:
    """The bytes as 64-bit words where they fit (blocks are multiples of 512 bytes): faster."""
    return np.frombuffer(data, dtype=np.uint64 if len(data) % 8 == 0 else np.uint8)


def _nonzero(view: memoryview | bytes) -> bool:
    return bool(_words(view).any())


class _BlockWriter:
    """Collects slot writes and map entries of one batch; flushes data, then the map."""

    def __init__(self, target: VdiImage, allowed_overwrites: np.ndarray, expected_map: np.ndarray,
                 check: bool) -> None:
        self.target = target
        self.expected_map = expected_map
        self.check = check
        self.scratch = bytearray(BATCH_BYTES) if check else bytearray()
        self.h = target.header
        self.first_new = self.h.blocks_allocated
        self.next_slot = self.first_new
        self.allowed = {int(s) for s in allowed_overwrites.tolist()}
        self.items: list[tuple[int, bytes | memoryview]] = []
        self.pending_blocks: list[int] = []
        self.pending_values: list[int] = []
        self.written: list[int] = []
        self.bytes_written = 0
        self.entries = 0

    def overwrite(self, slot: int, data: bytes | memoryview) -> None:
        """Write ``data`` over an existing slot (only one whose before-image was saved)."""
        if slot < self.first_new and slot not in self.allowed:
            raise VdiError(f"internal error: slot {slot} of '{self.target.path.name}' would be "
                           "overwritten without a before-image (bug); rolling back.")
        self.items.append((self.h.slot_offset(slot), data))
        self.written.append(slot)

    def append(self, block: int, data: bytes | memoryview) -> None:
        """Give ``block`` a new slot at the end (``cBlocksAllocated``) holding ``data``."""
        slot = self.next_slot
        self.next_slot += 1
        self.overwrite(slot, data)
        self.set_entry(block, slot)

    def set_entry(self, block: int, value: int) -> None:
        """Change one map entry (written after the data, at the next flush)."""
        self.pending_blocks.append(block)
        self.pending_values.append(value)
        self.expected_map[block] = value

    def flush(self) -> None:
        """Data first (coalesced pwritev by file offset), then map entries and the header."""
        if self.items:
            self.items.sort(key=lambda item: item[0])
            start, bufs, length = self.items[0][0], [self.items[0][1]], len(self.items[0][1])
            for offset, data in self.items[1:]:
                if offset == start + length and len(bufs) < _IOV_MAX:
                    bufs.append(data)
                    length += len(data)
                    continue
                self._write(start, bufs, length)
                start, bufs, length = offset, [data], len(data)
            self._write(start, bufs, length)
            self.items = []
        if self.pending_blocks:
            self.target.write_entries(self.pending_blocks, self.pending_values)
            self.entries += len(self.pending_blocks)
            self.pending_blocks, self.pending_values = [], []
        if self.next_slot != self.target.header.blocks_allocated:
            self.target.write_header(self.target.header.replace(blocks_allocated=self.next_slot))

    def _write(self, offset: int, bufs: list[bytes | memoryview], length: int) -> None:
        fileio.pwritev(self.target.fd, bufs, offset)
        self.target.file_size = max(self.target.file_size, offset + length)
        self.bytes_written += length
        if self.check:
            self._read_back(offset, bufs, length)

    def _read_back(self, offset: int, bufs: list[bytes | memoryview], length: int) -> None:
        """Re-read what was just written and compare it with the bytes it was written from."""
        if len(self.scratch) < length:
            self.scratch = bytearray(length)
        view = memoryview(self.scratch)[:length]
        if os.preadv(self.target.fd, [view], offset) != length:
            raise VerificationError(f"'{self.target.path.name}' is shorter than what the merge "
                                    "just wrote; everything was rolled back.")
        pos = 0
        for data in bufs:
            size = len(data)
            if not np.array_equal(_words(view[pos:pos + size]), _words(data)):
                slot = (offset + pos - self.h.offset_data) // self.h.slot_size
                raise VerificationError(
                    f"Slot {slot} of '{self.target.path.name}' does not read back as the merged "
                    "data just written to it; everything was rolled back (please check the "
                    "disk, then report this).")
            pos += size


def _runs(entries: np.ndarray, blocks: np.ndarray, limit: int) -> list[tuple[int, int]]:
    """Split ``blocks`` (indices) into [start, end) index ranges of consecutive slots."""
    if blocks.size == 0:
        return []
    slots = entries[blocks].astype(np.int64)
    breaks = np.flatnonzero(np.diff(slots) != 1) + 1
    out: list[tuple[int, int]] = []
    for seg_start, seg_end in zip(np.r_[0, breaks], np.r_[breaks, blocks.size], strict=True):
        s = int(seg_start)
        while s < seg_end:
            e = min(int(seg_end), s + limit)
            out.append((s, e))
            s = e
    return out


def read_run(image: VdiImage, first_slot: int, count: int, buf: bytearray) -> memoryview:
    """Guest data of ``count`` consecutive slots from ``first_slot`` into ``buf``."""
    h = image.header
    size = count * h.block_size
    view = memoryview(buf)[:size]
    if h.block_extra:
        for i in range(count):
            view[i * h.block_size:(i + 1) * h.block_size] = image.read_slot(first_slot + i)
        return view
    if not image.slot_in_file(first_slot + count - 1):
        image.read_slot(first_slot + count - 1)  # raises the corrupt-image error
    got = os.preadv(image.fd, [view], h.slot_offset(first_slot))
    if got != size:
        raise VdiError(f"Short read from '{image.path.name}' ({image.path}).")
    return view


class _FallThrough:
    """What a target shows for a block it leaves FREE: the ancestors' view, or zeros."""

    def __init__(self, ancestors: DiskChain | None, block_size: int) -> None:
        self.ancestors = ancestors
        self.serving = ancestors.serving_layers() if ancestors is not None else None
        self.zero = zeros(block_size)

    def read(self, block: int) -> bytes | None:
        """The fall-through content, or None when it is zeros (no read needed)."""
        if self.ancestors is None or self.serving is None or block >= self.serving.size or \
                self.serving[block] < 0:
            return None
        data = self.ancestors.read_block(block)
        return None if data == self.zero else data


def copy_blocks(source: VdiImage, target: VdiImage, ancestors: DiskChain | None, *,
                backward: bool, overwrite: np.ndarray, verify: bool, progress: ProgressFn,
                cancel: CancelToken, phase: str) -> CopyOutcome:
    """Merge ``source`` into ``target`` (see the module docstring); one loop, both directions.

    Args:
        source: the image merged away (read-only).
        target: the image that receives the data (writable).
        ancestors: the chain the target falls through to afterwards (read-only), or None.
        backward: child into parent (True) or parent into child (False).
        overwrite: the target slots whose before-images are saved (the only existing slots
            this may write).
        verify: record the crc32 of every candidate's content for :func:`verify_merge`.
    """
    bs = target.header.block_size
    n = min(source.guest_blocks, target.guest_blocks)
    s_map = source.block_map[:n].copy()
    t_map = target.block_map[:n].copy()
    cand = candidate_mask(s_map, t_map, backward)
    zero = zeros(bs)
    fall = _FallThrough(ancestors, bs)
    writer = _BlockWriter(target, overwrite, t_map.copy(), verify)
    blocks = np.flatnonzero(cand)
    total = int(blocks.size)
    done = 0
    progress(Progress(phase, 0, total))

    def place(block: int, data: bytes | memoryview, is_zero: bool) -> None:
        entry = int(t_map[block])
        if entry < fmt.FIRST_SPECIAL:
            writer.overwrite(entry, zero if is_zero else data)
            return
        if entry == BLOCK_FREE:
            below = fall.read(block)
            if below is None and is_zero:
                return  # reads as zeros already
            if below is not None and not is_zero and np.array_equal(_words(data),
                                                                  _words(below)):
                return  # the fall-through shows the same bytes
        if is_zero:
            if entry != BLOCK_ZERO:
                writer.set_entry(block, BLOCK_ZERO)
            return
        writer.append(block, data)

    zero_blocks = blocks[s_map[blocks] == BLOCK_ZERO]
    for i, block in enumerate(zero_blocks.tolist()):
        if i % 256 == 0:
            cancel.raise_if_cancelled(_CANCELLED)
        place(block, zero, True)
        if len(writer.items) * bs >= BATCH_BYTES:
            writer.flush()
    writer.flush()
    done += int(zero_blocks.size)
    progress(Progress(phase, done, total, writer.bytes_written))

    data_blocks = blocks[s_map[blocks] < fmt.FIRST_SPECIAL]
    buf = bytearray(max(BATCH_BYTES, bs))
    per_run = max(1, len(buf) // bs)
    for start, end in _runs(s_map, data_blocks, per_run):
        cancel.raise_if_cancelled(_CANCELLED)
        run_blocks = data_blocks[start:end]
        view = read_run(source, int(s_map[run_blocks[0]]), len(run_blocks), buf)
        for i, block in enumerate(run_blocks.tolist()):
            data = view[i * bs:(i + 1) * bs]
            place(block, data, not _nonzero(data))
        writer.flush()  # writes (and reads back) before the buffer is reused
        done += len(run_blocks)
        progress(Progress(phase, min(done, total), total, writer.bytes_written))
    writer.flush()
    target.sync()
    progress(Progress(phase, total, total, writer.bytes_written))
    written = np.unique(np.asarray(writer.written, dtype=np.int64))
    return CopyOutcome(writer.entries, writer.bytes_written, cand, t_map, written,
                       writer.expected_map, verify)


def is_dense(image: VdiImage) -> bool:
    """Slots in use are exactly 0..cBlocksAllocated-1, each used once."""
    live = image.block_map[image.block_map < fmt.FIRST_SPECIAL].astype(np.int64)
    if live.size != image.header.blocks_allocated:
        return False
    return live.size == 0 or (int(live.max()) == live.size - 1 and
                              np.unique(live).size == live.size)


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
                "what the merge wrote; everything was rolled back (please report this).")
        cand = outcome.candidates
        live = new < fmt.FIRST_SPECIAL
        defined = new[cand & live].astype(np.int64)
        unwritten = defined[~np.isin(defined, outcome.written_slots)]
        if unwritten.size:
            raise VerificationError(
                f"After the merge a block of '{name}' points at slot {int(unwritten[0])}, which "
                "the merge did not write; everything was rolled back (please report this).")
        kept = new[~cand & live].astype(np.int64)
        hit = kept[np.isin(kept, outcome.written_slots)]
        if hit.size:
            raise VerificationError(
                f"The merge wrote over slot {int(hit[0])} of '{name}', which holds a block it "
                "does not define; everything was rolled back (please report this).")
        if was_dense and not is_dense(target):
            raise VerificationError(
                f"After the merge the slots of '{name}' are no longer dense or "
                "cBlocksAllocated is wrong; everything was rolled back (please report this).")
