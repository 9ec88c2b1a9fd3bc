"""Write a fresh image from a chain in one streaming pass: the engine of clone, convert, defrag.

Why one pass and no per-block flush: the output is a temporary file nobody else can see until
it is complete, so crash safety comes from the final fsync + rename, not from ordering inside
the file. That lets the copy run at the speed of ``pread``/``pwrite`` of whole blocks. Blocks go
to the output in guest order, so the result is defragmented; all-zero blocks are not stored.

Verification runs in the same pass. A helper thread hashes what the source shows; every block
written is read back from the output file and compared byte for byte with what it should
hold. Each output slot is written exactly once and its map entry never changes afterwards, so
reading a block back right after writing it gives the same bytes as re-reading the finished
file; what remains is to check that the map and header the file really holds are the ones the
readback assumed, which :func:`rewrite` does at the end by re-opening the output. When every
block matches and the structure is right, the output's guest content is byte-identical to the
source's, so its sha256 is the source's: the "after" hash is established without hashing the
same bytes a second time, which would double the CPU cost of a verified copy.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vdigui.engine import fileio
from vdigui.engine import format as fmt
from vdigui.engine.chain import DiskChain
from vdigui.engine.format import BLOCK_FREE, BLOCK_ZERO, ImageType, VdiHeader
from vdigui.engine.image import open_image, write_new_image, zeros
from vdigui.engine.operations._common import GuestHasher, serving
from vdigui.engine.progress import CancelToken, Progress, ProgressFn

#: Source data read ahead of the writer while flattening.
PREFETCH_BYTES = 16 << 20

#: Data written between two requests to start write-back (see _start_writeback).
WRITEBACK_BYTES = 32 << 20

#: Header fields the finished output must hold exactly as intended.
_CHECKED_FIELDS = ("image_type", "disk_size", "block_size", "blocks", "blocks_allocated",
                   "offset_blocks", "offset_data", "uuid", "modify_uuid", "parent_uuid",
                   "parent_modify_uuid")


@dataclass(frozen=True, slots=True)
class RewriteStats:
    """What one rewrite pass wrote.

    Attributes:
        stored: blocks written with data.
        zero_blocks: blocks left out as zeros: when flattening, every block the source shows
            as zeros; when keeping the parent, allocated all-zero blocks turned into ZERO.
        parent_blocks: (differencing output) blocks identical to the parent, left FREE.
        file_size: size of the finished output.
        source_hash: sha256 of the source's guest content, or None when not verifying.
        output_hash: sha256 of the output's guest content as read back from the file (equal
            to ``source_hash`` when every block read back identical), None when not
            verifying, or ``"structure: ..."`` / ``"content: ..."`` saying what differs.
        dropped_blocks: blocks left out because the guest does not use them (``drop``).
    """

    stored: int
    zero_blocks: int
    parent_blocks: int
    file_size: int
    source_hash: str | None
    output_hash: str | None
    dropped_blocks: int = 0

    @property
    def verified(self) -> bool:
        """Whether both hashes exist and agree."""
        return self.source_hash is not None and self.source_hash == self.output_hash

    @property
    def mismatch(self) -> str:
        """What differs, for the VerificationError message."""
        out = self.output_hash or "none"
        if out.startswith(("structure: ", "content: ")):
            return out.split(": ", 1)[1]
        return f"sha256 {out} instead of {self.source_hash}"


class _Prefetch:
    """Reads the source blocks a flattening copy will need, in order, on a helper thread.

    Why: under write-back pressure ``pwrite`` stalls; with the reads on their own thread
    (``pread`` releases the GIL) the next blocks are already in memory when it returns, and on
    two cores reading and writing overlap, as qemu's parallel requests do.
    """

    def __init__(self, chain: DiskChain, blocks: np.ndarray, layer: np.ndarray,
                 entry: np.ndarray) -> None:
        self._chain = chain
        self._jobs = blocks
        self._layer = layer
        self._entry = entry
        self._stop = False
        depth = max(2, PREFETCH_BYTES // chain.block_size)
        self._queue: queue.Queue[tuple[int, bytes | BaseException]] = queue.Queue(depth)
        self._thread = threading.Thread(target=self._work, name="vdigui-read", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        layers = self._chain.layers
        for block in self._jobs.tolist():
            if self._stop:
                return
            try:
                item: bytes | BaseException = layers[int(self._layer[block])].read_slot(
                    int(self._entry[block]), block)
            except BaseException as exc:  # handed to the consumer at this block
                item = exc
            self._queue.put((block, item))
            if isinstance(item, BaseException):
                return

    def get(self, block: int) -> bytes:
        """The data of ``block`` (blocks must be asked for in the order given)."""
        got, item = self._queue.get()
        assert got == block, (got, block)
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stop the reader and wait for it (idempotent)."""
        self._stop = True
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.05)
        self._thread.join()


def rewrite(chain: DiskChain, out: Path, header: VdiHeader, *, keep_parent: bool,
            progress: ProgressFn, cancel: CancelToken | None, verify: bool,
            cancel_message: str, phase: str = "copying blocks",
            drop: np.ndarray | None = None) -> RewriteStats:
    """Write ``chain``'s guest content into the new file ``out`` with ``header``'s identity.

    Args:
        chain: the source, opened read-only.
        out: the output path; must not exist (created exclusively). The caller removes it on
            failure and renames it into place on success.
        header: the output header. Its type decides the layout: FIXED stores every block at
            its own slot (preallocated), anything else stores data blocks densely in guest
            order. ``blocks_allocated`` is set here.
        keep_parent: the output is a differencing image over ``chain``'s parents (defrag):
            its FREE blocks keep falling through, all-zero blocks become ZERO (they must keep
            hiding the parent) and blocks identical to the parent become FREE. Otherwise the
            chain is flattened into a standalone base.
        verify: hash the source's guest content and the output's (read back) in this pass.
        drop: bool per guest block the guest filesystems do not use (filesystem-aware): such
            a block is neither read nor stored; with ``keep_parent`` a block this layer stores
            becomes ZERO (never FREE, which would show the parent's stale bytes again). Both
            digests count these blocks as zeros, so verification proves every block the guest
            uses reads as before.
    """
    fixed = header.image_type == ImageType.FIXED
    bs = header.block_size
    header = header.replace(block_extra=0, blocks_allocated=header.blocks if fixed else 0)
    total = chain.guest_blocks
    zero = zeros(bs)
    before = GuestHasher(chain.disk_size, bs) if verify else None
    mismatch: int | None = None  # first guest block whose readback differs
    top_index = len(chain.layers) - 1
    prefetch: _Prefetch | None = None
    dropped = np.zeros(total, dtype=bool)
    if drop is not None:
        k = min(total, drop.size)
        dropped[:k] = drop[:k]
    if keep_parent:
        layer, entry = serving(chain, upto=top_index)
        own = chain.top.block_map[:total]
    else:
        layer, entry = serving(chain)
        own = None
        needed = np.flatnonzero((layer >= 0) & (entry != BLOCK_ZERO) & ~dropped)
        if needed.size > 1 and PREFETCH_BYTES > 0:
            prefetch = _Prefetch(chain, needed, layer, entry)
    new_map = (np.arange(header.blocks, dtype=np.uint32) if fixed
               else np.full(header.blocks, BLOCK_FREE, dtype=np.uint32))
    write_new_image(out, header, preallocate=fixed)
    fd = fileio.open_fd(out, os.O_RDWR)
    stored = zero_blocks = parent_blocks = drop_count = 0
    data_offset = header.offset_data
    layers = chain.layers

    unflushed = 0

    def store(data: bytes, slot: int) -> bytes:
        nonlocal unflushed
        offset = data_offset + slot * bs
        fileio.pwrite(fd, data, offset)
        unflushed += bs
        if unflushed >= WRITEBACK_BYTES:
            fileio.start_writeback(fd)
            unflushed = 0
        return os.pread(fd, bs, offset) if verify else data

    try:
        for block in range(total):
            if cancel is not None:
                cancel.raise_if_cancelled(cancel_message)
            parent_layer = int(layer[block])
            parent_entry = int(entry[block])
            readback: bytes | None = None  # what the output shows (None: same as visible)
            if dropped[block]:
                visible = zero
                if own is not None:
                    mine = int(own[block])
                    if mine != BLOCK_FREE:
                        new_map[block] = BLOCK_ZERO
                        drop_count += mine != BLOCK_ZERO
                elif parent_layer >= 0 and parent_entry != BLOCK_ZERO:
                    drop_count += 1
                if fixed and verify:
                    readback = os.pread(fd, bs, data_offset + block * bs)
            elif own is not None and int(own[block]) != BLOCK_FREE:
                # Keeping the parent: this layer decides the block.
                mine = int(own[block])
                if mine == BLOCK_ZERO:
                    new_map[block] = BLOCK_ZERO  # already a marker: not a new drop
                    visible = zero
                else:
                    data = layers[top_index].read_slot(mine, block)
                    under = (zero if parent_layer < 0 or parent_entry == BLOCK_ZERO
                             else layers[parent_layer].read_slot(parent_entry, block))
                    if data == zero:
                        new_map[block] = BLOCK_ZERO
                        zero_blocks += 1
                        visible = zero
                    elif data == under:
                        parent_blocks += 1  # stays FREE: the parent shows the same bytes
                        visible = under
                    else:
                        readback = store(data, stored)
                        new_map[block] = stored
                        stored += 1
                        visible = data
            elif parent_layer < 0 or parent_entry == BLOCK_ZERO:
                if own is None:
                    zero_blocks += 1
                visible = zero
                if fixed and verify:
                    readback = os.pread(fd, bs, data_offset + block * bs)
            elif own is not None:
                # FREE in the top layer: the parent keeps serving it (read only to hash it).
                visible = (layers[parent_layer].read_slot(parent_entry, block)
                           if before is not None else zero)
            else:
                data = (prefetch.get(block) if prefetch is not None
                        else layers[parent_layer].read_slot(parent_entry, block))
                if data == zero:
                    zero_blocks += 1
                    visible = zero
                    if fixed and verify:
                        readback = os.pread(fd, bs, data_offset + block * bs)
                else:
                    readback = store(data, block if fixed else stored)
                    if not fixed:
                        new_map[block] = stored
                    stored += 1
                    visible = data
            if before is not None:
                before.add(visible)
                if readback is not None and mismatch is None and readback != visible:
                    mismatch = block
            progress(Progress(phase, block + 1, total, (block + 1) * bs))
        final = header if fixed else header.replace(blocks_allocated=stored)
        if not fixed:
            fileio.pwrite(fd, new_map.astype("<u4").tobytes(), final.offset_blocks)
            size = final.expected_file_size(stored)
            fileio.ftruncate(fd, size)
        else:
            size = final.expected_file_size(final.blocks)
        fileio.pwrite(fd, fmt.pack_header(final), fmt.PREHEADER_SIZE)
        fileio.fsync(fd)
        source_hash = output_hash = None
        if before is not None:
            source_hash = before.hexdigest()
            output_hash = (_structure_problem(out, final, new_map)
                           or (f"content: guest block {mismatch} reads back differently"
                               if mismatch is not None else source_hash))
    finally:
        if prefetch is not None:
            prefetch.close()
        fileio.close(fd)
        if before is not None:
            before.close()
    return RewriteStats(stored, zero_blocks, parent_blocks, size, source_hash, output_hash,
                        drop_count)


def _structure_problem(out: Path, intended: VdiHeader, block_map: np.ndarray) -> str | None:
    """Re-open the finished output and check it holds the header and map the readback used."""
    with open_image(out) as image:
        for name in _CHECKED_FIELDS:
            if getattr(image.header, name) != getattr(intended, name):
                return f"structure: header field {name} is {getattr(image.header, name)}"
        if not np.array_equal(image.block_map, block_map):
            return "structure: the block map read back differs from the one written"
        if image.file_size != intended.expected_file_size(
                intended.blocks_allocated if intended.image_type != ImageType.FIXED
                else intended.blocks):
            return f"structure: the file is {image.file_size} bytes long"
    return None
