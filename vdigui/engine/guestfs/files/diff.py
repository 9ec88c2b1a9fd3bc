"""Which guest files differ between two states of a disk, reading as few bytes as possible.

Two states of one VM disk (two snapshots, or a snapshot and the current state) are two chains
that share their lower layers. A guest block can only read differently in the two states when
the layer serving it differs (docs/vdi-format.md §2.1: a chain reads each block from the
newest layer that has it): blocks served by the same image file are the same bytes, and blocks
that read as zeros in both (no layer has them, or a ZERO entry) are equal too. That per-block
verdict, :func:`changed_blocks`, comes from the block maps alone.

Files are then matched by path in a parallel walk of both trees. Everything is decided from
metadata (kind, size, extent list, times, permissions) except the one question metadata cannot
answer: did bytes change in place? Only for a file of equal size whose extents lie in changed
blocks (or that the two states keep in different places) are contents looked at: a changed
block is read once in both states and compared in 4 KiB pieces, which decides at once every
file sharing it (a 1 MiB block holds hundreds of small files), and only the file bytes in
pieces that differ, or that moved, are read and compared. So an unchanged file on an
unchanged part of the disk is never read, and whole volumes without a changed block are not
even walked.

Most files of a diff are unchanged, so their verdict is kept cheap: when both states keep the
file in the same places (for ext, the same inode bytes: the extents are listed once, see
``layout_key``) and none of its pieces differ, one check per extent decides it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np

from vdigui.engine.chain import DiskChain
from vdigui.engine.errors import VdiError
from vdigui.engine.format import BLOCK_ZERO
from vdigui.engine.progress import CancelToken, Progress, ProgressFn, no_progress

from ..model import DiskReader
from .api import BaseNamespace, Entry, EntryKind, ExtentKind, FileExtent, join
from .volumes import GuestVolume, list_volumes, open_namespace

#: Bytes compared per read when contents must be looked at.
_COMPARE_CHUNK = 1 << 20
#: Entries examined between two progress events and cancellation checks.
_TICK = 256
#: Bytes of a changed block compared as one piece when deciding which files it touches.
GRANULE = 4096


class ChangeKind(Enum):
    """How an entry differs between state A and state B."""

    ADDED = "added"  # only in B
    REMOVED = "removed"  # only in A
    CHANGED = "changed"  # in both, content or metadata differs


class Decided(Enum):
    """How a verdict on an entry present in both states was reached."""

    METADATA = "metadata"  # size, kind, link target or extent placement alone told
    CONTENT = "content"  # bytes of both states were read and compared


@dataclass(frozen=True, slots=True)
class Change:
    """One added, removed or changed entry.

    Attributes:
        volume: the volume's short name ("p1").
        path: the entry's path in the volume.
        change: added, removed or changed.
        kind: file, directory, symlink or other (B's kind, or A's when removed).
        size_a, size_b: sizes in A and B (None where the entry does not exist).
        mtime_a, mtime_b: modification times (None where unknown or absent).
        content_changed: for CHANGED: whether the bytes (or link target) differ; False means
            only times, permissions or owner changed.
        decided: for CHANGED: from metadata, or by comparing content.
    """

    volume: str
    path: str
    change: ChangeKind
    kind: EntryKind
    size_a: int | None
    size_b: int | None
    mtime_a: float | None
    mtime_b: float | None
    content_changed: bool = True
    decided: Decided = Decided.METADATA

    @property
    def delta(self) -> int:
        """Bytes B holds more than A (negative when smaller; directories count 0)."""
        if self.kind is EntryKind.DIRECTORY:
            return 0
        return (self.size_b or 0) - (self.size_a or 0)

    def to_dict(self) -> dict[str, object]:
        """The JSON form (``vdictl diff --json``)."""
        return {
            "volume": self.volume,
            "path": self.path,
            "change": self.change.value,
            "kind": self.kind.value,
            "size_a": self.size_a,
            "size_b": self.size_b,
            "delta": self.delta,
            "mtime_a": self.mtime_a,
            "mtime_b": self.mtime_b,
            "content_changed": self.content_changed,
            "decided": self.decided.value if self.change is ChangeKind.CHANGED else None,
        }


@dataclass(slots=True)
class DiffStats:
    """What the comparison cost: how much was decided without reading file contents.

    Attributes:
        changed_blocks: guest blocks served by different layers in the two states.
        entries: entries examined (both states together count once).
        compared: files whose contents had to be read.
        bytes_compared: content bytes read from each state.
        volumes_skipped: volumes not walked because none of their blocks changed.
        blocks_read: changed blocks read in both states to see which of their bytes differ.
    """

    changed_blocks: int = 0
    blocks_read: int = 0
    entries: int = 0
    compared: int = 0
    bytes_compared: int = 0
    volumes_skipped: list[str] = field(default_factory=list)


@dataclass(slots=True)
class StateDiff:
    """The changes between two states, plus notes about volumes that could not be compared."""

    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stats: DiffStats = field(default_factory=DiffStats)

    def by_kind(self, kind: ChangeKind) -> list[Change]:
        """The changes of one kind, in walk order."""
        return [c for c in self.changes if c.change is kind]


# -- blocks ---------------------------------------------------------------------------------
def _block_sources(chain: DiskChain, codes: dict[Path, int]) -> np.ndarray:
    """int32 per guest block: a code for the file serving it; -1 where it reads as zeros."""
    layer, entry = chain.serving()
    lut = np.array(
        [codes.setdefault(Path(img.path).resolve(), len(codes)) for img in chain.layers],
        dtype=np.int32,
    )
    out = np.where(layer >= 0, lut[np.maximum(layer, 0)], -1).astype(np.int32)
    out[entry == BLOCK_ZERO] = -1
    return out


def changed_blocks(chain_a: DiskChain, chain_b: DiskChain) -> np.ndarray:
    """Bool per guest block: whether it may read differently in the two chains.

    A block is unchanged when the same image file serves it in both, or when it reads as
    zeros in both. Blocks past the end of the smaller disk count as changed.
    """
    codes: dict[Path, int] = {}
    a = _block_sources(chain_a, codes)
    b = _block_sources(chain_b, codes)
    n = max(a.size, b.size)
    if a.size != b.size:
        a = np.concatenate([a, np.full(n - a.size, -2, dtype=np.int32)])
        b = np.concatenate([b, np.full(n - b.size, -3, dtype=np.int32)])
    result: np.ndarray = a != b
    return result


class _Blocks:
    """Answers "may these disk bytes differ between the two states?" for one comparison.

    At first per VDI block, from the maps alone. A file that needs a closer look makes its
    changed block be read once in both states and compared in :data:`GRANULE` pieces, so all
    the files sharing that block (hundreds of small ones in 1 MiB) are then decided from that
    one comparison instead of each being read (the blocks are cached per comparison).
    """

    def __init__(
        self,
        changed: np.ndarray,
        block_size: int,
        readers: tuple[DiskReader, DiskReader] | None = None,
        stats: DiffStats | None = None,
    ) -> None:
        self.changed = changed
        self.bs = block_size
        self.readers = readers
        self.stats = stats if stats is not None else DiffStats()
        self.size = min(r.size for r in readers) if readers else 0
        self._fine: dict[int, np.ndarray | None] = {}
        self._fine_bytes: dict[int, bytes | None] = {}
        # Prefix sums make any range query O(1), whatever the file's length.
        self._sums = np.concatenate([[0], np.cumsum(changed, dtype=np.int64)])
        # One byte per block (0 or 1): indexing bytes is far cheaper than a numpy scalar.
        self._changed_bytes = changed.astype(bool).tobytes()

    def any(self, disk_offset: int, length: int) -> bool:
        if length <= 0:
            return False
        first = disk_offset // self.bs
        last = (disk_offset + length - 1) // self.bs
        n = self.changed.size
        if last >= n:
            return True
        return bool(self._sums[last + 1] - self._sums[first] > 0)

    def differs(self, disk_offset: int, length: int) -> bool:
        """Whether any byte of the range may read differently (what :meth:`split` would call
        changed), without building the runs: one membership test per block for the usual
        file, the block's :data:`GRANULE` verdicts where it changed."""
        if length <= 0:
            return False
        bs = self.bs
        end = disk_offset + length
        first, last = disk_offset // bs, (end - 1) // bs
        if last >= self.changed.size:
            return True
        if first == last:
            if not self._changed_bytes[first]:
                return False
            touched = [first]
        else:
            if not self.any(disk_offset, length):
                return False
            touched = (np.flatnonzero(self.changed[first : last + 1]) + first).tolist()
        for block in touched:
            if block in self._fine_bytes:
                fine = self._fine_bytes[block]
            else:
                verdict = self.granules(block)
                fine = None if verdict is None else verdict.tobytes()  # one byte, 0 or 1, each
                self._fine_bytes[block] = fine
            if fine is None:
                return True
            base = block * bs
            g0 = (max(disk_offset, base) - base) // GRANULE
            g1 = (min(end, base + bs) - 1 - base) // GRANULE
            if b"\x01" in fine[g0 : g1 + 1]:
                return True
        return False

    def granules(self, block: int) -> np.ndarray | None:
        """Bool per :data:`GRANULE` of a changed block: its bytes differ (None: unknown)."""
        if block in self._fine:
            return self._fine[block]
        fine: np.ndarray | None = None
        start = block * self.bs
        if self.readers is not None and start < self.size:
            n = min(self.bs, self.size - start)
            a, b = (r.read(start, n) for r in self.readers)
            self.stats.blocks_read += 1
            count = -(-self.bs // GRANULE)
            if a == b:
                fine = np.zeros(count, dtype=bool)
            else:
                pad = count * GRANULE - n
                va = np.frombuffer(a + bytes(pad), dtype=np.uint8).reshape(count, GRANULE)
                vb = np.frombuffer(b + bytes(pad), dtype=np.uint8).reshape(count, GRANULE)
                fine = (va != vb).any(axis=1)
        self._fine[block] = fine
        return fine

    def split(self, disk_offset: int, length: int) -> Iterator[tuple[int, int, bool]]:
        """``(offset within the range, length, may differ)`` runs covering the range."""
        runs: list[list[int]] = []

        def emit(lo: int, hi: int, state: bool) -> None:
            if runs and runs[-1][1] == lo and bool(runs[-1][2]) == state:
                runs[-1][1] = hi
            elif hi > lo:
                runs.append([lo, hi, int(state)])

        pos, end, n = disk_offset, disk_offset + length, self.changed.size
        while pos < end:
            block = pos // self.bs
            stop = min(end, (block + 1) * self.bs)
            if block >= n:
                emit(pos, stop, True)
            elif not self.changed[block]:
                emit(pos, stop, False)
            else:
                fine = self.granules(block)
                if fine is None:
                    emit(pos, stop, True)
                else:
                    base = block * self.bs
                    for g in range((pos - base) // GRANULE, (stop - 1 - base) // GRANULE + 1):
                        lo = max(pos, base + g * GRANULE)
                        hi = min(stop, base + (g + 1) * GRANULE)
                        emit(lo, hi, bool(fine[g]))
            pos = stop
        for lo, hi, state in runs:
            yield lo - disk_offset, hi - lo, bool(state)


# -- files ----------------------------------------------------------------------------------
_ZERO_KINDS = (ExtentKind.SPARSE, ExtentKind.UNWRITTEN)


def _at(extents: list[FileExtent], offset: int, start: int) -> tuple[int, FileExtent | None]:
    """The extent holding file byte ``offset``, searching from index ``start``."""
    i = start
    while i < len(extents) and extents[i].file_offset + extents[i].length <= offset:
        i += 1
    if i < len(extents) and extents[i].file_offset <= offset:
        return i, extents[i]
    return i, None


def _untouched(extents: list[FileExtent], blocks: _Blocks) -> bool:
    """Whether the extents hold only holes and data whose bytes did not change."""
    for x in extents:
        if x.kind is ExtentKind.DATA:
            if x.disk_offset is None or blocks.differs(x.disk_offset, x.length):
                return False
        elif x.kind not in _ZERO_KINDS:
            return False
    return True


def ranges_to_compare(
    xa: list[FileExtent], xb: list[FileExtent], size: int, blocks: _Blocks
) -> list[tuple[int, int]]:
    """The file byte ranges whose equality the block maps cannot vouch for.

    A range is known equal when both states keep it as a hole (or unwritten), or at the same
    disk place in a block that did not change. Everything else must be read and compared.
    """
    if xa == xb and _untouched(xa, blocks):
        return []  # the common case, decided without cutting the file into pieces
    cuts = sorted(
        {
            0,
            size,
            *(x.file_offset for x in xa),
            *(x.file_offset for x in xb),
            *(x.file_offset + x.length for x in xa),
            *(x.file_offset + x.length for x in xb),
        }
    )
    out: list[tuple[int, int]] = []

    def add(lo: int, n: int) -> None:
        if out and out[-1][0] + out[-1][1] == lo:
            out[-1] = (out[-1][0], out[-1][1] + n)
        else:
            out.append((lo, n))

    ia = ib = 0
    for lo, hi in itertools.pairwise(cuts):
        if lo >= size or hi <= lo:
            continue
        hi = min(hi, size)
        ia, ea = _at(xa, lo, ia)
        ib, eb = _at(xb, lo, ib)
        ka = ea.kind if ea is not None else ExtentKind.SPARSE
        kb = eb.kind if eb is not None else ExtentKind.SPARSE
        if ka in _ZERO_KINDS and kb in _ZERO_KINDS:
            continue
        if (
            ea is not None
            and eb is not None
            and ka is ExtentKind.DATA
            and kb is ExtentKind.DATA
            and ea.disk_offset is not None
            and eb.disk_offset is not None
            and ea.disk_offset - ea.file_offset == eb.disk_offset - eb.file_offset
        ):
            disk = ea.disk_offset + lo - ea.file_offset
            for off, n, changed in blocks.split(disk, hi - lo):
                if changed:
                    add(lo + off, n)
            continue
        add(lo, hi - lo)
    return out


def _content_equal(
    ns_a: BaseNamespace,
    ea: Entry,
    ns_b: BaseNamespace,
    eb: Entry,
    blocks: _Blocks,
    stats: DiffStats,
    cancel: CancelToken | None,
) -> tuple[bool, Decided]:
    """Whether two same-sized files hold the same bytes, and whether that needed reading."""
    xa = ns_a.extents(ea)
    key = ns_a.layout_key(ea)
    # The same inode bytes in both states: the same extents, listed once.
    xb = xa if key is not None and key == ns_b.layout_key(eb) else ns_b.extents(eb)
    todo = ranges_to_compare(xa, xb, ea.size, blocks)
    if not todo:
        return True, Decided.METADATA
    stats.compared += 1
    for lo, n in todo:
        pos, end = lo, lo + n
        while pos < end:
            if cancel is not None:
                cancel.raise_if_cancelled("Cancelled: the comparison was stopped.")
            take = min(_COMPARE_CHUNK, end - pos)
            stats.bytes_compared += take
            if ns_a.read(ea, pos, take) != ns_b.read(eb, pos, take):
                return False, Decided.CONTENT
            pos += take
    return True, Decided.CONTENT


def _meta(e: Entry) -> tuple[object, ...]:
    return (e.mtime, e.mode, e.uid, e.gid, e.attributes)


class _Walker:
    """The parallel walk of one volume in two states."""

    def __init__(
        self,
        ns_a: BaseNamespace,
        ns_b: BaseNamespace,
        blocks: _Blocks,
        result: StateDiff,
        progress: ProgressFn,
        cancel: CancelToken | None,
        label: str,
    ) -> None:
        self.a, self.b = ns_a, ns_b
        self.blocks = blocks
        self.result = result
        self.stats = result.stats
        self.progress = progress
        self.cancel = cancel
        self.volume = ns_b.volume
        self.label = label

    def _tick(self) -> None:
        self.stats.entries += 1
        if self.stats.entries % _TICK == 0:
            if self.cancel is not None:
                self.cancel.raise_if_cancelled("Cancelled: the comparison was stopped.")
            self.progress(
                Progress(
                    f"comparing {self.label}", self.stats.entries, 0, self.stats.bytes_compared
                )
            )

    def _emit(
        self,
        change: ChangeKind,
        ea: Entry | None,
        eb: Entry | None,
        *,
        content_changed: bool = True,
        decided: Decided = Decided.METADATA,
    ) -> None:
        ref = eb if eb is not None else ea
        assert ref is not None
        self.result.changes.append(
            Change(
                self.volume,
                ref.path,
                change,
                ref.kind,
                None if ea is None else ea.size,
                None if eb is None else eb.size,
                None if ea is None else ea.mtime,
                None if eb is None else eb.mtime,
                content_changed,
                decided,
            )
        )

    def _note(self, path: str, exc: VdiError) -> None:
        self.result.notes.append(f"{self.volume}:{path}: {exc}")

    def _subtree(self, ns: BaseNamespace, top: Entry, change: ChangeKind) -> None:
        """``top`` and, for a folder, everything under it, as added or removed."""
        pair = (None, top) if change is ChangeKind.ADDED else (top, None)
        self._emit(change, *pair)
        self._tick()
        if not top.is_dir:
            return
        for _path, entries in ns.walk(top.path, onerror=self._note):
            for entry in entries:
                pair = (None, entry) if change is ChangeKind.ADDED else (entry, None)
                self._emit(change, *pair)
                self._tick()

    def run(self) -> None:
        stack: list[tuple[Entry, Entry, int]] = [(self.a.root(), self.b.root(), 0)]
        seen: set[tuple[int, int]] = set()
        while stack:
            da, db, depth = stack.pop()
            if (da.id, db.id) in seen or depth > 256:
                self._note(db.path, VdiError("a folder met twice (a loop) was skipped."))
                continue
            seen.add((da.id, db.id))
            try:
                la = {e.name: e for e in self.a.children(da)}
                lb = {e.name: e for e in self.b.children(db)}
            except VdiError as exc:
                self._note(db.path, exc)
                continue
            for name in sorted(la.keys() | lb.keys()):
                ea, eb = la.get(name), lb.get(name)
                if ea is None:
                    assert eb is not None
                    self._subtree(self.b, eb, ChangeKind.ADDED)
                    continue
                if eb is None:
                    self._subtree(self.a, ea, ChangeKind.REMOVED)
                    continue
                self._tick()
                if ea.kind is not eb.kind:
                    self._subtree(self.a, ea, ChangeKind.REMOVED)
                    self._subtree(self.b, eb, ChangeKind.ADDED)
                    continue
                if ea.is_dir:
                    stack.append((ea, eb, depth + 1))
                    continue
                try:
                    self._compare(ea, eb)
                except VdiError as exc:
                    self._note(join(db.path, name), exc)

    def _compare(self, ea: Entry, eb: Entry) -> None:
        if ea.kind is EntryKind.SYMLINK:
            differs = ea.target != eb.target
            decided = Decided.METADATA
        elif ea.kind is not EntryKind.FILE:
            differs, decided = False, Decided.METADATA
        elif ea.size != eb.size:
            differs, decided = True, Decided.METADATA
        else:
            same, decided = _content_equal(
                self.a, ea, self.b, eb, self.blocks, self.stats, self.cancel
            )
            differs = not same
        if differs or _meta(ea) != _meta(eb):
            self._emit(ChangeKind.CHANGED, ea, eb, content_changed=differs, decided=decided)


# -- states ---------------------------------------------------------------------------------
def _volume_changed(vol: GuestVolume, blocks: _Blocks) -> bool:
    return any(blocks.any(disk, length) for _local, disk, length in vol.extents.pieces)


def diff_readers(
    reader_a: DiskReader,
    reader_b: DiskReader,
    changed: np.ndarray,
    block_size: int,
    *,
    volume: str | None = None,
    progress: ProgressFn = no_progress,
    cancel: CancelToken | None = None,
    opener: Callable[[DiskReader, GuestVolume], BaseNamespace] = open_namespace,
) -> StateDiff:
    """Compare the guest files of two merged disk views.

    Args:
        reader_a, reader_b: the two states' guest views (``usage_report.GuestReader``).
        changed: :func:`changed_blocks` of the two chains.
        block_size: the chains' block size.
        volume: compare only this volume ("p2"); None compares every readable one.
        progress, cancel: reported and checked every few hundred entries.
        opener: how a volume becomes a namespace (tests count reads through it).
    """
    result = StateDiff()
    result.stats.changed_blocks = int(np.count_nonzero(changed))
    blocks = _Blocks(changed, block_size, (reader_a, reader_b), result.stats)
    vols_a = {v.name: v for v in list_volumes(reader_a)}
    vols_b = {v.name: v for v in list_volumes(reader_b)}
    names = list(dict.fromkeys([*vols_a, *vols_b]))
    if volume is not None:
        if volume not in names:
            known = ", ".join(names) or "none"
            raise VdiError(f"Neither state has a volume called '{volume}' (they have: {known}).")
        names = [volume]
    for name in names:
        va, vb = vols_a.get(name), vols_b.get(name)
        if va is None or vb is None:
            side = "B" if va is None else "A"
            result.notes.append(f"{name} exists only in state {side}; its files are not listed.")
            continue
        if not (va.readable and vb.readable):
            if volume is not None or va.kind == "ntfs":
                result.notes.append(
                    f"{name} ({vb.kind}) was not compared: its files cannot be read yet."
                )
            continue
        if va.extents == vb.extents and not _volume_changed(vb, blocks):
            result.stats.volumes_skipped.append(name)
            continue
        try:
            ns_a, ns_b = opener(reader_a, va), opener(reader_b, vb)
        except VdiError as exc:
            result.notes.append(f"{name} was not compared: {exc}")
            continue
        _Walker(ns_a, ns_b, blocks, result, progress, cancel, name).run()
    return result


def diff_chains(
    chain_a: DiskChain,
    chain_b: DiskChain,
    *,
    volume: str | None = None,
    progress: ProgressFn = no_progress,
    cancel: CancelToken | None = None,
) -> StateDiff:
    """Compare the guest files of two states given as open chains (see :func:`diff_readers`)."""
    from vdigui.engine.usage_report import GuestReader  # the usage layer imports guestfs

    if chain_a.block_size != chain_b.block_size:
        raise VdiError("The two states use different block sizes; they are not states of one disk.")
    changed = changed_blocks(chain_a, chain_b)
    return diff_readers(
        GuestReader(chain_a),
        GuestReader(chain_b),
        changed,
        chain_a.block_size,
        volume=volume,
        progress=progress,
        cancel=cancel,
    )


__all__ = [
    "Change",
    "ChangeKind",
    "Decided",
    "DiffStats",
    "StateDiff",
    "changed_blocks",
    "diff_chains",
    "diff_readers",
    "ranges_to_compare",
]
