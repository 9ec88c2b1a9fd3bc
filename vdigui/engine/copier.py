"""The copy pipeline: blocks from one or more source files to one output, fast and verified.

Export, clone, convert, defrag and the slot moves of in-place compaction all do the same thing:
take blocks from source files in a given order, leave out the all-zero ones, write the rest to
their place in an output file, and prove the output holds what was read. One implementation
keeps the fast path and the proof in one place.

How it is fast (bench/README.md has the figures):

- **Large reads on a helper thread.** :class:`BlockReader` coalesces jobs whose source slots
  are adjacent in one file into one ``preadv`` of up to :data:`READ_BYTES`, into a small pool
  of reusable buffers (bounded memory, no per-block allocation), on its own thread: ``preadv``
  releases the GIL, so on two cores the next reads run while the main thread writes.
- **Vectorised zero detection.** :func:`nonzero_rows` looks at a whole batch with numpy: the
  first bytes of every block at once, and the whole block only where they are zero.
- **Batched writes.** Blocks whose destinations are adjacent go out in one ``pwritev``.
- **The flush overlaps the copy.** Every :data:`WRITEBACK_BYTES` a helper thread asks the
  kernel to start writing back what was written (``fileio.start_writeback``,
  ``sync_file_range`` on Linux, not a barrier), so the caller's final ``fsync`` finds little
  left to do; ranges a few steps older are waited for and dropped from the page cache, which
  keeps a multi-gigabyte copy from filling memory (:class:`Writeback`). Durability still
  comes only from that fsync, made before anything points at the data (the caller's job).

How it is verified: the source bytes are in memory anyway (zero detection needs them), so
right after a run of blocks is written it is read back from the output and compared byte for
byte with what was read (``verify=True``). A direct comparison and not a hash of both sides:
memcmp runs at memory speed (about 40 GiB/s here, as fast as XXH3 and 25 times sha256), needs
no second pass, and names the exact block that differs. Blocks left out as zeros need no read
back: the output is a fresh file (or, for compaction, the caller proves them otherwise).

Every write goes through :mod:`vdigui.engine.fileio`, so the power-loss tests see them all.

The primitive (:func:`copy_blocks`), for any operation that copies blocks:

    outcome = copy_blocks(CopySpec(fds, which, src, block_size), out_fd, dst=offsets,
                          verify=True, decide=None, report=None, cancel=token)

``which[i]``/``src[i]`` name job ``i``'s source (file ``fds[which[i]]`` at byte ``src[i]``);
``dst[i]`` its destination offset, or ``dst=None`` with ``dense_base`` to place the written
blocks one after the other from there in job order (a dynamic image's next slots).
``decide(first, count, data, nonzero)`` may look at each batch (compare it with a parent) and
returns which rows to write; ``on_written(job, data)`` sees each block right after it was
written and checked (hash it there, while it is in the cache). The outcome says which jobs
were written, where, and the first job whose read-back differed (``mismatch``; the caller
decides what that means).
"""

from __future__ import annotations

import collections
import contextlib
import mmap
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vdigui.engine import fileio
from vdigui.engine.errors import OperationCancelled, VdiError
from vdigui.engine.progress import CancelToken

#: Bytes one read request may cover (adjacent slots of one file are read together).
READ_BYTES = 8 << 20

#: Read buffers in flight between the reader thread and the writer (memory: this x READ_BYTES).
POOL_BUFFERS = 6

#: Bytes written between two requests to start write-back. Small, so the disk gets work as
#: soon as there is some: a 1 GiB verified export is disk-bound here (the copy itself takes
#: about as long as the flush), and with 8 MiB it ran 8 % faster than with 32 MiB (medians of
#: 5 alternating in-process runs, 0.62 s against 0.68 s; 128 MiB: 0.99 s).
WRITEBACK_BYTES = 8 << 20

#: Write-back requests after which a range is waited for and dropped from the page cache
#: (so a copy keeps about 32 MiB of its output dirty or cached: with 1 GiB the system time of
#: an 8 GiB verified copy here was three times as high).
WRITEBACK_LAG = 4

_FADVISE = getattr(os, "posix_fadvise", None)

#: Leading bytes of each block checked first for zeros (data almost always differs there).
HEAD_BYTES = 512

#: Unverified copies move the data with copy_file_range (inside the kernel).
KERNEL_COPY = True

#: Read-back maps the written pages (MAP_POPULATE) instead of copying them out. Off: it
#: measured no cheaper than ``preadv`` into a reused buffer here (see BlockWriter).
READBACK_MAPPED = False

#: Verified copies read back and compare on a helper thread, beside the writes: on two cores
#: that hid the whole check (1 GiB clone, quiet machine: 0.59 s verified, 0.59 s without).
VERIFY_THREAD = True

_PAGE = mmap.ALLOCATIONGRANULARITY
_MAP_FLAGS = getattr(mmap, "MAP_SHARED", 1) | getattr(mmap, "MAP_POPULATE", 0)

#: decide(first job, job count, batch data, nonzero rows) -> rows to write.
Decide = Callable[[int, int, memoryview, np.ndarray], np.ndarray]


@dataclass(frozen=True, slots=True)
class CopySpec:
    """Where each job's block comes from.

    Attributes:
        fds: the source files (descriptors, read with ``os.preadv``).
        which: per job, the index into ``fds`` (numpy integer array).
        src: per job, the byte offset of its block in that file (numpy int64 array).
        block_size: bytes per block.
    """

    fds: Sequence[int]
    which: np.ndarray
    src: np.ndarray
    block_size: int

    @property
    def jobs(self) -> int:
        """Number of blocks to copy."""
        return int(self.src.size)


@dataclass(frozen=True, slots=True)
class Batch:
    """``count`` consecutive jobs from ``first``, their blocks back to back in ``data``."""

    first: int
    count: int
    data: memoryview
    buffer: bytearray


def nonzero_rows(data: memoryview | bytes | bytearray, count: int, block_size: int) -> np.ndarray:
    """Per block of ``data`` (``count`` blocks back to back): whether any byte is non-zero."""
    word = 8 if block_size % 8 == 0 else 1
    rows = np.frombuffer(
        data, dtype=np.uint64 if word == 8 else np.uint8, count=count * block_size // word
    ).reshape(count, block_size // word)
    head = min(rows.shape[1], HEAD_BYTES // word)
    found = np.asarray(rows[:, :head].any(axis=1))
    for row in np.flatnonzero(~found).tolist():
        found[row] = bool(rows[row].any())
    return found


def same_bytes(a: memoryview | bytearray, b: memoryview | bytearray) -> bool:
    """Byte equality at memory speed (memoryview ``==`` compares item by item, 30x slower)."""
    if len(a) != len(b):
        return False
    word = 8 if len(a) % 8 == 0 else 1
    dtype = np.uint64 if word == 8 else np.uint8
    return bool(np.array_equal(np.frombuffer(a, dtype=dtype), np.frombuffer(b, dtype=dtype)))


def _groups(spec: CopySpec, max_blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """Split the jobs into read requests: (first job, job count) of each.

    A request covers jobs whose blocks lie back to back in one file, at most ``max_blocks``.
    """
    n = spec.jobs
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    which = np.asarray(spec.which)
    src = np.asarray(spec.src, dtype=np.int64)
    breaks = np.ones(n, dtype=bool)
    breaks[1:] = (which[1:] != which[:-1]) | (src[1:] != src[:-1] + spec.block_size)
    if max_blocks > 1 and not breaks.all():
        starts = np.flatnonzero(breaks)
        run = np.cumsum(breaks) - 1
        position = np.arange(n, dtype=np.int64) - starts[run]
        del run
        breaks |= position % max_blocks == 0
        del position
    elif max_blocks <= 1:
        breaks[:] = True
    firsts = np.flatnonzero(breaks).astype(np.int64)
    counts = np.diff(np.append(firsts, n))
    return firsts, counts


class BlockReader:
    """Reads the jobs' blocks in job order on a helper thread, into pooled buffers.

    Iterate to get :class:`Batch` objects; hand each back with :meth:`release` when done with
    it (the pool bounds memory: the reader waits for a free buffer). Always :meth:`close`
    (also on errors): it stops the thread.
    """

    def __init__(
        self, spec: CopySpec, *, read_bytes: int = READ_BYTES, buffers: int = POOL_BUFFERS
    ) -> None:
        self._spec = spec
        bs = spec.block_size
        self._max_blocks = max(1, read_bytes // bs)
        self._firsts, self._counts = _groups(spec, self._max_blocks)
        size = int(self._counts.max()) * bs if self._counts.size else bs
        self._pool: queue.Queue[bytearray] = queue.Queue()
        self._owned: list[bytearray] = [
            _take_buffer(size) for _ in range(max(1, min(buffers, len(self._firsts))))
        ]
        for buffer in self._owned:
            self._pool.put(buffer)
        self._out: queue.Queue[Batch | BaseException | None] = queue.Queue()
        self._stop = False
        self._thread: threading.Thread | None = None
        if len(self._firsts):
            self._thread = threading.Thread(target=self._work, name="vdigui-read", daemon=True)
            self._thread.start()

    def _read(self, first: int, count: int, buffer: bytearray) -> Batch:
        spec = self._spec
        bs = spec.block_size
        fd = spec.fds[int(spec.which[first])]
        offset = int(spec.src[first])
        view = memoryview(buffer)[: count * bs]
        done = 0
        while done < len(view):
            got = os.preadv(fd, [view[done:]], offset + done)
            if got <= 0:
                raise VdiError(
                    f"A source file ended early: {len(view) - done} bytes missing at "
                    f"byte {offset + done} (it changed while being read?)."
                )
            done += got
        return Batch(first, count, view, buffer)

    def _work(self) -> None:
        for first, count in zip(self._firsts.tolist(), self._counts.tolist(), strict=True):
            buffer = self._pool.get()
            if self._stop:
                return
            try:
                item: Batch | BaseException = self._read(first, count, buffer)
            except BaseException as exc:  # handed to the consumer in order
                item = exc
            self._out.put(item)
            if isinstance(item, BaseException):
                return
        self._out.put(None)

    def __iter__(self) -> Iterator[Batch]:
        if self._thread is None:
            return
        while True:
            item = self._out.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def release(self, batch: Batch) -> None:
        """Give a batch's buffer back to the reader."""
        self._pool.put(batch.buffer)

    def close(self) -> None:
        """Stop the reader thread and wait for it (idempotent)."""
        self._stop = True
        if self._thread is not None:
            while self._thread.is_alive():
                self._pool.put(bytearray(0))  # wakes a reader waiting for a buffer
                with contextlib.suppress(queue.Empty):
                    self._out.get(timeout=0.05)
            self._thread.join()
            self._thread = None
        owned, self._owned = self._owned, []
        for buffer in owned:
            _give_buffer(buffer)


#: Read buffers kept between readers (compaction starts one per batch of moves): allocating
#: and zeroing 8 MiB buffers each time cost more than the reads. At most this many are kept.
_SPARE_BUFFERS: list[bytearray] = []
_SPARE_LOCK = threading.Lock()


def _take_buffer(size: int) -> bytearray:
    """A buffer of at least ``size`` bytes (a spare one when there is)."""
    with _SPARE_LOCK:
        for i, buffer in enumerate(_SPARE_BUFFERS):
            if len(buffer) >= size:
                return _SPARE_BUFFERS.pop(i)
    return bytearray(size)


def _give_buffer(buffer: bytearray) -> None:
    """Keep a buffer for the next reader (bounded by POOL_BUFFERS buffers)."""
    with _SPARE_LOCK:
        if len(_SPARE_BUFFERS) < POOL_BUFFERS:
            _SPARE_BUFFERS.append(buffer)


class Writeback:
    """Keeps a copy's dirty and cached pages bounded, on a helper thread.

    The writer hands over each range once it is written (and checked). Every
    :data:`WRITEBACK_BYTES` the thread starts write-back of the new ranges (``sync_file_range``
    WRITE, returns at once), so the final fsync finds little left; ranges
    :data:`WRITEBACK_LAG` hand-offs older are waited for and dropped from the page cache
    (``POSIX_FADV_DONTNEED``: they are on disk and checked, nobody reads them again). Why:
    copying 8 GiB here with the page cache left to grow cost twice the system time of the
    bounded copy, every new page having to be reclaimed first. Why a thread: write-back does
    the filesystem's block allocation and I/O submission in the calling thread; on a helper
    thread that runs on the other core while the copy goes on. None of this is a durability
    barrier; the caller's fsync is.
    """

    def __init__(self, fd: int, every: int = 0, lag: int = 0) -> None:
        self._fd = fd
        self._every = every or WRITEBACK_BYTES
        self._lag = lag or WRITEBACK_LAG
        self._pending: list[tuple[int, int]] = []
        self._pending_bytes = 0
        self._queue: queue.Queue[list[tuple[int, int]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="vdigui-writeback", daemon=True)
        self._thread.start()

    def add(self, offset: int, length: int) -> None:
        """A range written (and checked); hands a batch to the thread every few MiB."""
        if self._pending and self._pending[-1][0] + self._pending[-1][1] == offset:
            start, size = self._pending[-1]
            self._pending[-1] = (start, size + length)
        else:
            self._pending.append((offset, length))
        self._pending_bytes += length
        if self._pending_bytes >= self._every:
            self.hand_off()

    def hand_off(self) -> None:
        """Give the ranges collected so far to the thread (returns at once)."""
        if self._pending:
            self._queue.put(self._pending)
            self._pending, self._pending_bytes = [], 0

    def _run(self) -> None:
        inflight: collections.deque[list[tuple[int, int]]] = collections.deque()
        while True:
            ranges = self._queue.get()
            if ranges is None:
                return
            with contextlib.suppress(OSError):  # hints: the caller's fsync reports errors
                for offset, length in ranges:
                    fileio.start_writeback(self._fd, offset, length)
                inflight.append(ranges)
                while len(inflight) > self._lag:
                    for offset, length in inflight.popleft():
                        fileio.wait_writeback(self._fd, offset, length)
                        if _FADVISE is not None:
                            _FADVISE(self._fd, offset, length, os.POSIX_FADV_DONTNEED)

    def close(self) -> None:
        """Start write-back of what is left and stop the thread (idempotent)."""
        if self._thread.is_alive():
            self.hand_off()
            self._queue.put(None)
            self._thread.join()


class BlockWriter:
    """Writes runs of blocks with ``pwritev``, starts write-back as it goes, reads back.

    With ``verify`` each block is read back right after it was written, while its bytes are
    still in the (shared) cache, and compared with the bytes written (memcmp), block by
    block: reading back 8 MiB runs later cost about three times as much CPU here, the bytes
    having left the cache by then. The checks run on a helper thread (:data:`VERIFY_THREAD`),
    which on two cores hides them behind the next writes (``preadv`` and numpy's comparison
    release the GIL); each batch goes back to the reader only once its checks are done.
    :attr:`mismatch` holds the first (job) index that read back differently, or None.
    """

    def __init__(
        self,
        fd: int,
        block_size: int,
        *,
        verify: bool,
        writeback_bytes: int = 0,
        release: Callable[[Batch], None] | None = None,
        threaded: bool | None = None,
    ) -> None:
        self.fd = fd
        self._bs = block_size
        self._verify = verify
        self._check = bytearray(block_size) if verify else bytearray(0)
        self.bytes_written = 0
        self.mismatch: int | None = None
        #: Called with (job, bytes) after each block is written (and checked).
        self.on_written: Callable[[int, memoryview], None] | None = None
        self._release = release or (lambda _batch: None)
        self._writeback = Writeback(fd, writeback_bytes)
        self._error: BaseException | None = None
        self._queue: queue.Queue[tuple[Batch, list[tuple[int, memoryview, int]]] | None] | None
        self._queue = None
        self._thread: threading.Thread | None = None
        if verify and (VERIFY_THREAD if threaded is None else threaded):
            self._queue = queue.Queue()
            self._thread = threading.Thread(
                target=self._verifier, name="vdigui-verify", daemon=True
            )
            self._thread.start()

    def _check_block(self, job: int, piece: memoryview, offset: int) -> None:
        if self.mismatch is None and not self._reads_back(piece, offset):
            self.mismatch = job
        if self.on_written is not None:
            self.on_written(job, piece)  # still in the cache
        self._writeback.add(offset, len(piece))  # checked: its pages may leave the cache

    def _verifier(self) -> None:
        assert self._queue is not None
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch, blocks = item
            try:
                if self._error is None:
                    for job, piece, offset in blocks:
                        self._check_block(job, piece, offset)
            except BaseException as exc:  # handed to the writer
                self._error = exc
            finally:
                self._release(batch)

    def _stop_verifier(self) -> None:
        if self._thread is not None and self._queue is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def write(
        self, batch: Batch, rows: np.ndarray, dst: np.ndarray, jobs: np.ndarray | None = None
    ) -> None:
        """Write row ``rows[i]`` of the batch at byte ``dst[i]`` for every i (rows ascending).

        ``jobs[i]`` names row i in :attr:`mismatch` (default: its job index).
        """
        bs = self._bs
        rows = np.asarray(rows, dtype=np.int64)
        dst = np.asarray(dst, dtype=np.int64)
        if jobs is None:
            jobs = batch.first + rows
        n = int(rows.size)
        if self._verify:
            queued: list[tuple[int, memoryview, int]] = []
            for i, (row, offset) in enumerate(zip(rows.tolist(), dst.tolist(), strict=True)):
                piece = batch.data[row * bs : (row + 1) * bs]
                fileio.pwritev(self.fd, [piece], offset)
                self.bytes_written += bs
                if self._queue is None:
                    self._check_block(int(jobs[i]), piece, offset)
                else:
                    queued.append((int(jobs[i]), piece, offset))
            if self._queue is None:
                self._release(batch)
            else:
                if self._error is not None:
                    raise self._error
                self._queue.put((batch, queued))
            return
        if n == 0:
            self._release(batch)
            return
        cuts = np.flatnonzero(dst[1:] != dst[:-1] + bs) + 1
        for start, end in zip([0, *cuts.tolist()], [*cuts.tolist(), n], strict=True):
            pieces: list[memoryview] = []
            run_rows = rows[start:end]
            # Rows adjacent in the buffer go out as one piece.
            split = np.flatnonzero(np.diff(run_rows) != 1) + 1
            for part in np.split(run_rows, split):
                pieces.append(batch.data[int(part[0]) * bs : (int(part[-1]) + 1) * bs])
            fileio.pwritev(self.fd, pieces, int(dst[start]))
            self.bytes_written += (end - start) * bs
            self._writeback.add(int(dst[start]), (end - start) * bs)
            if self.on_written is not None:
                for k in range(start, end):
                    row = int(rows[k])
                    self.on_written(int(jobs[k]), batch.data[row * bs : (row + 1) * bs])
        self._release(batch)

    def _reads_back(self, piece: memoryview, offset: int) -> bool:
        """Whether the file holds ``piece`` at ``offset`` now.

        The file's pages are mapped (``MAP_POPULATE``) and compared in place, which saves
        copying them out first; where mapping fails, they are read into a buffer instead.
        """
        length = len(piece)
        start = offset - offset % _PAGE
        mapped = None
        if READBACK_MAPPED:
            with contextlib.suppress(OSError, ValueError, OverflowError, AttributeError):
                mapped = mmap.mmap(
                    self.fd,
                    offset - start + length,
                    offset=start,
                    prot=mmap.PROT_READ,
                    flags=_MAP_FLAGS,
                )
        if mapped is not None:
            view = memoryview(mapped)
            try:
                return same_bytes(view[offset - start :], piece)
            finally:
                view.release()
                mapped.close()
        if len(self._check) < length:
            self._check = bytearray(length)
        view = memoryview(self._check)[:length]
        done = 0
        while done < length:
            got = os.preadv(self.fd, [view[done:]], offset + done)
            if got <= 0:
                return False
            done += got
        return self._check == piece if length == len(self._check) else same_bytes(view, piece)

    def finish(self) -> None:
        """Wait for the checks, start write-back of the rest, stop the helper threads."""
        try:
            self._stop_verifier()
            if self._error is not None:
                raise self._error
        finally:
            self._writeback.close()

    def abort(self) -> None:
        """Stop the helper threads (errors, cancel)."""
        self._error = self._error or OperationCancelled("stopped")  # skip queued checks
        self._stop_verifier()
        self._writeback.close()


@dataclass(frozen=True, slots=True)
class CopyOutcome:
    """What :func:`copy_blocks` did.

    Attributes:
        written: per job, whether its block was written.
        dst: per job, the byte offset it was written at (-1 when not written).
        stored: number of blocks written.
        mismatch: the first job whose block read back differently (None: all equal, or not
            verified).
    """

    written: np.ndarray
    dst: np.ndarray
    stored: int
    mismatch: int | None


def copy_blocks(
    spec: CopySpec,
    out_fd: int,
    *,
    dst: np.ndarray | None = None,
    dense_base: int = 0,
    verify: bool = False,
    decide: Decide | None = None,
    report: Callable[[int], None] | None = None,
    cancel: CancelToken | None = None,
    cancel_message: str = "Cancelled: nothing was changed.",
    read_bytes: int = READ_BYTES,
    on_written: Callable[[int, memoryview], None] | None = None,
    report_every: int | None = None,
) -> CopyOutcome:
    """Copy the jobs of ``spec`` to ``out_fd`` (see the module docstring for the contract).

    Args:
        dst: per job the destination byte offset; None places written blocks one after the
            other from ``dense_base``, in job order.
        verify: read every written run back and compare it (:class:`BlockWriter`).
        decide: called per batch with (first job, count, data, nonzero rows); returns the
            rows to write. Default: the non-zero ones. It runs before the batch's rows are
            placed, so with ``dst`` given it may set ``dst`` for the rows it returns (a merge
            numbers the new slots of the blocks it decides to store as it goes).
        report: called with the number of jobs done so far, after every ``report_every``
            jobs (default: a read request's worth, 8 MiB) and at the end.
        on_written: called with (job, its bytes) right after each block is written (and
            read back): the place to hash what was copied while it is still in the cache.
        cancel: checked before each batch; raises OperationCancelled(``cancel_message``).

    The output is not flushed: the caller fsyncs before anything points at the data.
    """
    if not verify and decide is None and on_written is None and KERNEL_COPY:
        return _kernel_copy(
            spec,
            out_fd,
            dst=dst,
            dense_base=dense_base,
            report=report,
            cancel=cancel,
            cancel_message=cancel_message,
        )
    n = spec.jobs
    bs = spec.block_size
    written = np.zeros(n, dtype=bool)
    where = np.full(n, -1, dtype=np.int64)
    next_offset = dense_base
    reader = BlockReader(spec, read_bytes=read_bytes)
    writer = BlockWriter(out_fd, bs, verify=verify, release=reader.release)
    reported = 0
    report_every = report_every or max(1, READ_BYTES // bs)
    writer.on_written = on_written
    finished = False
    try:
        for batch in reader:
            if cancel is not None and cancel.cancelled:
                reader.release(batch)
                raise OperationCancelled(cancel_message)
            nonzero = nonzero_rows(batch.data, batch.count, bs)
            rows_mask = (
                nonzero if decide is None else decide(batch.first, batch.count, batch.data, nonzero)
            )
            rows = np.flatnonzero(rows_mask)
            jobs = batch.first + rows
            if dst is None:
                targets = next_offset + np.arange(rows.size, dtype=np.int64) * bs
                next_offset += int(rows.size) * bs
            else:
                targets = np.asarray(dst[jobs], dtype=np.int64)
            writer.write(batch, rows, targets, jobs)  # hands the batch back when done
            written[jobs] = True
            where[jobs] = targets
            done = batch.first + batch.count
            if report is not None and (done - reported >= report_every or done == n):
                report(done)  # every few MiB: thousands of events a second would flood a GUI
                reported = done
        writer.finish()
        finished = True
    finally:
        if not finished:
            writer.abort()
        reader.close()
    mismatch = writer.mismatch if verify else None
    return CopyOutcome(written, where, int(np.count_nonzero(written)), mismatch)


def _kernel_copy(
    spec: CopySpec,
    out_fd: int,
    *,
    dst: np.ndarray | None,
    dense_base: int,
    report: Callable[[int], None] | None,
    cancel: CancelToken | None,
    cancel_message: str,
) -> CopyOutcome:
    """The unverified copy: the data never passes through Python.

    Only the first :data:`HEAD_BYTES` of each block are read to tell data from zeros (data
    almost always differs from zero there; a block whose head is zero is read whole and
    checked); the block itself is copied inside the kernel (``fileio.copy_range``,
    ``copy_file_range``), page cache to page cache, as ``cp`` does.
    """
    n = spec.jobs
    bs = spec.block_size
    written = np.zeros(n, dtype=bool)
    where = np.full(n, -1, dtype=np.int64)
    next_offset = dense_base
    writeback = Writeback(out_fd)
    fds = [int(fd) for fd in spec.fds]
    which = spec.which.tolist()
    src = spec.src.tolist()
    targets = None if dst is None else dst.tolist()
    step = max(1, READ_BYTES // bs)
    zero, zero_head = bytes(bs), bytes(min(HEAD_BYTES, bs))
    try:
        for first in range(0, n, step):
            if cancel is not None and cancel.cancelled:
                raise OperationCancelled(cancel_message)
            for job in range(first, min(n, first + step)):
                fd, offset = fds[which[job]], src[job]
                head = os.pread(fd, HEAD_BYTES, offset)
                if head == zero_head and os.pread(fd, bs, offset) == zero:
                    continue  # all zero: not stored
                at = next_offset if targets is None else targets[job]
                fileio.copy_range(fd, offset, out_fd, at, bs)
                next_offset += bs if targets is None else 0
                written[job] = True
                where[job] = at
                writeback.add(at, bs)
            if report is not None:
                report(min(n, first + step))
    finally:
        writeback.close()
    return CopyOutcome(written, where, int(np.count_nonzero(written)), None)


def read_blocks(
    spec: CopySpec,
    visit: Callable[[Batch], None],
    *,
    cancel: CancelToken | None = None,
    cancel_message: str = "Cancelled: nothing was changed.",
    read_bytes: int = READ_BYTES,
) -> None:
    """Read the jobs of ``spec`` in order and hand each batch to ``visit`` (scans, hashing)."""
    reader = BlockReader(spec, read_bytes=read_bytes)
    try:
        for batch in reader:
            if cancel is not None and cancel.cancelled:
                raise OperationCancelled(cancel_message)
            try:
                visit(batch)
            finally:
                reader.release(batch)
    finally:
        reader.close()


class TempOutput:
    """A new file beside its target: created exclusively, locked, committed or discarded.

    The descriptor (read-write) keeps the writer's ``flock`` (``preflight.lock_temp``) for as
    long as the file exists under its temporary name, so the leftover sweep of another
    vdigui never removes it while this one writes; it is closed after the rename or removal.
    """

    def __init__(self, path: Path, mode: int = 0o644) -> None:
        from vdigui.engine.operations.preflight import lock_temp

        self.path = path
        self.fd = fileio.open_fd(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)
        lock_temp(self.fd)
        self._open = True

    def sync(self) -> None:
        """Flush the file's data and metadata."""
        fileio.fsync(self.fd)

    def close(self) -> None:
        """Close the descriptor (drops the lock; idempotent)."""
        if self._open:
            self._open = False
            fileio.close(self.fd)

    def discard(self) -> None:
        """Remove the file (if still there) and close it."""
        try:
            fileio.unlink(self.path, missing_ok=True)
        finally:
            self.close()


__all__ = [
    "READ_BYTES",
    "WRITEBACK_BYTES",
    "Batch",
    "BlockReader",
    "BlockWriter",
    "CopyOutcome",
    "CopySpec",
    "TempOutput",
    "Writeback",
    "copy_blocks",
    "nonzero_rows",
    "read_blocks",
    "same_bytes",
]
