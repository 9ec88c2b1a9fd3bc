"""Write a fresh image from a chain in one streaming pass: the engine of clone, convert, defrag.

Why one pass and no per-block flush: the output is a temporary file nobody else can see until
it is complete, so crash safety comes from the flushes and the rename at the end, not from
ordering inside the file. The data goes through the copy pipeline (:mod:`vdigui.engine.copier`:
large reads on a helper thread, vectorised zero detection, batched writes, write-back started
as it goes); blocks go to the output in guest order, so the result is defragmented; all-zero
blocks are not stored. At the end the data is flushed, then the map and header that point at
it are written and flushed (the same order as every other write in vdigui).

Verification runs in the same pass and reads nothing twice. Every block written is read back
from the output right after it was written and compared byte for byte with the bytes read
from the source; blocks not written (zeros, blocks left to the parent) are FREE or ZERO in the
new map or, in a fixed image, never-written parts of a fresh file, which read as zeros. What
remains is to check that the map and header the finished file holds are the ones the copy
assumed, which :func:`rewrite` does at the end by re-opening the output. The guest digest
(XXH3-128 per block, :class:`GuestDigest`) is computed from the source bytes as they pass; when
every block matched and the structure is right, it is the output's digest too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vdigui.engine import fileio
from vdigui.engine import format as fmt
from vdigui.engine.chain import DiskChain
from vdigui.engine.copier import (
    Batch,
    CopySpec,
    TempOutput,
    copy_blocks,
    read_blocks,
    same_bytes,
)
from vdigui.engine.errors import VerificationError
from vdigui.engine.format import BLOCK_FREE, BLOCK_ZERO, ImageType, VdiHeader, is_allocated
from vdigui.engine.image import open_image
from vdigui.engine.operations.safefile import discard, temp_path_beside
from vdigui.engine.operations.verify import GuestDigest
from vdigui.engine.progress import CancelToken, Progress, ProgressFn

#: Header fields the finished output must hold exactly as intended.
_CHECKED_FIELDS = (
    "image_type",
    "disk_size",
    "block_size",
    "blocks",
    "blocks_allocated",
    "offset_blocks",
    "offset_data",
    "uuid",
    "modify_uuid",
    "parent_uuid",
    "parent_modify_uuid",
)


@dataclass(frozen=True, slots=True)
class RewriteStats:
    """What one rewrite pass wrote.

    Attributes:
        stored: blocks written with data.
        zero_blocks: blocks left out as zeros: when flattening, every block the source shows
            as zeros; when keeping the parent, allocated all-zero blocks turned into ZERO.
        parent_blocks: (differencing output) blocks identical to the parent, left FREE.
        file_size: size of the finished output.
        source_hash: guest digest of the source, or None when not verifying.
        output_hash: the output's guest digest (equal to ``source_hash`` when every block
            read back identical and the structure is right), None when not verifying, or
            ``"structure: ..."`` / ``"content: ..."`` saying what differs.
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
        return f"digest {out} instead of {self.source_hash}"


def source_spec(
    chain: DiskChain, blocks: np.ndarray, layer: np.ndarray, entry: np.ndarray
) -> CopySpec:
    """The copy jobs reading guest ``blocks`` from the layers serving them.

    Every slot is checked to lie inside its file first, so a damaged map fails with the
    image's own sentence before anything is written.
    """
    layers = chain.layers
    which = layer[blocks].astype(np.int32)
    slots = entry[blocks].astype(np.int64)
    src = np.zeros(blocks.size, dtype=np.int64)
    for index, image in enumerate(layers):
        mine = which == index
        if not mine.any():
            continue
        h = image.header
        offsets = h.offset_data + slots[mine] * h.slot_size + h.block_extra
        past = np.flatnonzero(offsets + h.block_size > image.file_size)
        if past.size:
            bad = int(np.flatnonzero(mine)[past[0]])
            image.read_slot(int(slots[bad]), int(blocks[bad]))  # raises the past-EOF error
        src[mine] = offsets
    return CopySpec([image.fd for image in layers], which, src, chain.block_size)


def _start_output(out: TempOutput, header: VdiHeader, fixed: bool) -> None:
    """Write the empty image (banner, header, all-FREE or identity map, size)."""
    fd = out.fd
    banner = header.banner if header.banner.endswith("\n") else header.banner + "\n"
    fileio.pwrite(fd, fmt.pack_preheader(banner, header.version), 0)
    fileio.pwrite(fd, fmt.pack_header(header), fmt.PREHEADER_SIZE)
    step = 1 << 18  # map entries per write: a 2 TiB disk's 8 MiB map is not built at once
    for first in range(0, header.blocks, step):
        count = min(step, header.blocks - first)
        chunk = (
            np.arange(first, first + count, dtype="<u4")
            if fixed
            else np.full(count, BLOCK_FREE, dtype="<u4")
        )
        fileio.pwrite(fd, chunk.tobytes(), header.offset_blocks + 4 * first)
    end = header.expected_file_size(header.blocks if fixed else 0)
    fileio.ftruncate(fd, end)
    if fixed:
        fileio.fallocate(fd, header.offset_data, end - header.offset_data)


def rewrite(
    chain: DiskChain,
    out: TempOutput,
    header: VdiHeader,
    *,
    keep_parent: bool,
    progress: ProgressFn,
    cancel: CancelToken | None,
    verify: bool,
    cancel_message: str,
    phase: str = "copying blocks",
    drop: np.ndarray | None = None,
) -> RewriteStats:
    """Write ``chain``'s guest content into the new, empty file ``out`` with ``header``'s identity.

    Args:
        chain: the source, opened read-only.
        out: the output (a fresh temporary file). The caller discards it on failure and
            commits it on success; the data, map and header are flushed here.
        header: the output header. Its type decides the layout: FIXED stores every block at
            its own slot (preallocated), anything else stores data blocks densely in guest
            order. ``blocks_allocated`` is set here.
        keep_parent: the output is a differencing image over ``chain``'s parents (defrag):
            its FREE blocks keep falling through, all-zero blocks become ZERO (they must keep
            hiding the parent) and blocks identical to the parent become FREE. Otherwise the
            chain is flattened into a standalone base.
        verify: compare every written block as it is read back, check the finished
            structure, and compute the guest digest.
        drop: bool per guest block the guest filesystems do not use (filesystem-aware): such
            a block is neither read nor stored; with ``keep_parent`` a block this layer stores
            becomes ZERO (never FREE, which would show the parent's stale bytes again). The
            digest counts these blocks as zeros, so verification proves every block the
            guest uses reads as before.
    """
    fixed = header.image_type == ImageType.FIXED
    if keep_parent and fixed:
        raise ValueError("a rewrite keeping the parent writes a dynamic layout")
    bs = header.block_size
    header = header.replace(block_extra=0, blocks_allocated=header.blocks if fixed else 0)
    total = chain.guest_blocks
    digest = GuestDigest(chain.disk_size, bs) if verify else None
    top_index = len(chain.layers) - 1
    dropped = np.zeros(total, dtype=bool)
    if drop is not None:
        k = min(total, drop.size)
        dropped[:k] = drop[:k]
    new_map = (
        np.arange(header.blocks, dtype=np.uint32)
        if fixed
        else np.full(header.blocks, BLOCK_FREE, dtype=np.uint32)
    )
    _start_output(out, header, fixed)
    shown = [0]  # the last guest block count reported

    def show(done: int) -> None:
        if done > shown[0]:
            shown[0] = done
            progress(Progress(phase, done, total, done * bs))

    if keep_parent:
        stats = _keep_parent(
            chain,
            out,
            header,
            new_map,
            dropped,
            digest,
            top_index,
            show=show,
            cancel=cancel,
            verify=verify,
            cancel_message=cancel_message,
        )
        stored, zero_blocks, parent_blocks, drop_count, mismatch = stats
    else:
        layer, entry = chain.serving()
        has_data = (layer >= 0) & (entry != BLOCK_ZERO)
        needed = np.flatnonzero(has_data & ~dropped)
        drop_count = int(np.count_nonzero(has_data & dropped))
        spec = source_spec(chain, needed, layer, entry)

        def hash_written(job: int, data: memoryview) -> None:
            assert digest is not None
            digest.add(int(needed[job]), data)

        def report(done_jobs: int) -> None:
            show(int(needed[done_jobs - 1]) + 1)

        outcome = copy_blocks(
            spec,
            out.fd,
            dst=(header.offset_data + needed * bs) if fixed else None,
            dense_base=header.offset_data,
            verify=verify,
            report=report,
            cancel=cancel,
            cancel_message=cancel_message,
            on_written=None if digest is None else hash_written,
        )
        stored = outcome.stored
        zero_blocks = total - int(np.count_nonzero(dropped)) - stored
        if not fixed:
            written = outcome.written
            new_map[needed[written]] = ((outcome.dst[written] - header.offset_data) // bs).astype(
                np.uint32
            )
        parent_blocks = 0
        mismatch = None if outcome.mismatch is None else int(needed[outcome.mismatch])
    if cancel is not None:
        cancel.raise_if_cancelled(cancel_message)
    show(total)
    final = header if fixed else header.replace(blocks_allocated=stored)
    size = final.expected_file_size(final.blocks if fixed else stored)
    # The data first, durable, then the map and header that point at it.
    fileio.fsync(out.fd)
    if not fixed:
        fileio.pwrite(out.fd, new_map.astype("<u4", copy=False).tobytes(), final.offset_blocks)
        fileio.ftruncate(out.fd, size)
    fileio.pwrite(out.fd, fmt.pack_header(final), fmt.PREHEADER_SIZE)
    fileio.fsync(out.fd)
    source_hash = output_hash = None
    if digest is not None:
        source_hash = digest.hexdigest()
        output_hash = _structure_problem(out, final, new_map) or (
            f"content: guest block {mismatch} reads back differently"
            if mismatch is not None
            else source_hash
        )
    return RewriteStats(
        stored, zero_blocks, parent_blocks, size, source_hash, output_hash, drop_count
    )


def rewrite_beside(
    chain: DiskChain,
    target: Path,
    header: VdiHeader,
    *,
    commit: Callable[[Path], None],
    failure: Callable[[str], str],
    check: Callable[[Path], str | None] | None = None,
    keep_parent: bool,
    progress: ProgressFn,
    cancel: CancelToken | None,
    verify: bool,
    cancel_message: str,
    phase: str = "copying blocks",
    drop: np.ndarray | None = None,
) -> tuple[RewriteStats, bool | None]:
    """Rewrite ``chain`` into a new temporary file beside ``target``, verify it, commit it.

    The one sequence clone, convert and defrag share: temporary file beside the target,
    :func:`rewrite`, verification, a last look at the cancel button, then ``commit(tmp)``
    (which moves the file into place); on any failure or cancel the temporary file is removed,
    so a refused, failed or cancelled run leaves nothing behind (docs/crash-safety.md).

    Args:
        target: the file the result becomes (its folder holds the temporary file).
        commit: moves the finished temporary file into place (``commit_new`` for a new file,
            ``replace_original`` for a rebuilt one).
        failure: the sentence after "Verification failed: " for what differs.
        check: a further verification of the finished temporary file (the filesystem-aware
            usage comparison); returns what differs, or None. Runs only when the copy itself
            verified.
        The other arguments are :func:`rewrite`'s.

    Returns:
        The rewrite's statistics and ``True`` when verified (``None`` with ``verify`` off).

    Raises:
        VerificationError: the new file reads differently (it is removed).
    """
    tmp = temp_path_beside(target)
    out: TempOutput | None = None
    try:
        out = TempOutput(tmp)
        stats = rewrite(
            chain,
            out,
            header,
            keep_parent=keep_parent,
            progress=progress,
            cancel=cancel,
            verify=verify,
            cancel_message=cancel_message,
            phase=phase,
            drop=drop,
        )
        verified: bool | None = None
        if verify:
            problem = (
                stats.mismatch
                if not stats.verified
                else (check(tmp) if check is not None else None)
            )
            if problem is not None:
                raise VerificationError(f"Verification failed: {failure(problem)}")
            verified = True
        if cancel is not None:  # a cancel after the last block still means "nothing done"
            cancel.raise_if_cancelled(cancel_message)
        commit(tmp)
        out.close()
    except BaseException:
        if out is not None:
            out.discard()
        else:
            discard(tmp)
        raise
    return stats, verified


def _keep_parent(
    chain: DiskChain,
    out: TempOutput,
    header: VdiHeader,
    new_map: np.ndarray,
    dropped: np.ndarray,
    digest: GuestDigest | None,
    top_index: int,
    *,
    show: Callable[[int], None],
    cancel: CancelToken | None,
    verify: bool,
    cancel_message: str,
) -> tuple[int, int, int, int, int | None]:
    """The differencing rewrite (defrag): (stored, zero, parent, dropped, first mismatch)."""
    total = chain.guest_blocks
    bs = header.block_size
    top = chain.layers[top_index]
    own = top.block_map[:total]
    layer, entry = chain.serving(upto=top_index)
    parent_data = (layer >= 0) & (entry != BLOCK_ZERO)
    allocated = is_allocated(own)
    # Markers and drops first: they need no data.
    new_map[:total][own == BLOCK_ZERO] = BLOCK_ZERO
    drop_here = dropped & (own != BLOCK_FREE)
    new_map[:total][drop_here] = BLOCK_ZERO
    drop_count = int(np.count_nonzero(dropped & allocated))
    needed = np.flatnonzero(allocated & ~dropped)
    top_layer = np.broadcast_to(np.int16(top_index), (total,))  # no 2 TiB-sized array
    spec = source_spec(chain, needed, top_layer, own)
    counts = {"zero": 0, "parent": 0}

    def decide(first: int, count: int, data: memoryview, nonzero: np.ndarray) -> np.ndarray:
        write = nonzero.copy()
        for row in range(count):
            block = int(needed[first + row])
            piece = data[row * bs : (row + 1) * bs]
            if not nonzero[row]:
                new_map[block] = BLOCK_ZERO
                counts["zero"] += 1
                continue
            if parent_data[block]:
                under = chain.layers[int(layer[block])].read_slot(int(entry[block]), block)
                if same_bytes(piece, memoryview(under)):
                    write[row] = False  # stays FREE: the parent shows the same bytes
                    counts["parent"] += 1
                    if digest is not None:
                        digest.add(block, piece)
        return write

    def hash_written(job: int, data: memoryview) -> None:
        assert digest is not None
        digest.add(int(needed[job]), data)

    def report(done_jobs: int) -> None:
        show(int(needed[done_jobs - 1]) + 1)

    outcome = copy_blocks(
        spec,
        out.fd,
        dense_base=header.offset_data,
        verify=verify,
        decide=decide,
        report=report,
        cancel=cancel,
        cancel_message=cancel_message,
        on_written=None if digest is None else hash_written,
    )
    written = outcome.written
    new_map[needed[written]] = ((outcome.dst[written] - header.offset_data) // bs).astype(np.uint32)
    if digest is not None:
        # What the parent keeps showing through FREE entries is part of the guest view.
        through = np.flatnonzero((own == BLOCK_FREE) & parent_data & ~dropped)
        if through.size:

            def visit(batch: Batch) -> None:
                digest.add_rows(through[batch.first : batch.first + batch.count], batch.data)

            read_blocks(
                source_spec(chain, through, layer, entry),
                visit,
                cancel=cancel,
                cancel_message=cancel_message,
            )
    mismatch = None if outcome.mismatch is None else int(needed[outcome.mismatch])
    return outcome.stored, counts["zero"], counts["parent"], drop_count, mismatch


def _structure_problem(out: TempOutput, intended: VdiHeader, block_map: np.ndarray) -> str | None:
    """Re-open the finished output and check it holds the header and map the copy assumed."""
    with open_image(out.path) as image:
        for name in _CHECKED_FIELDS:
            if getattr(image.header, name) != getattr(intended, name):
                return f"structure: header field {name} is {getattr(image.header, name)}"
        if not np.array_equal(image.block_map, block_map):
            return "structure: the block map read back differs from the one written"
        if image.file_size != intended.expected_file_size(
            intended.blocks_allocated if intended.image_type != ImageType.FIXED else intended.blocks
        ):
            return f"structure: the file is {image.file_size} bytes long"
    return None
