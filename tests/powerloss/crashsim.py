"""A power-loss model for vdigui's file operations: record every change, replay crash states.

How it works (docs/crash-safety.md, "How trusted projects test it"; ALICE and CrashMonkey):

1. :class:`Recorder` is a :class:`vdigui.engine.fileio.FileOps` that performs every call for
   real and records it: writes (with their bytes; a ``copy_file_range`` is recorded as the
   bytes it copied), truncates, file syncs, creates, renames, links, unlinks, mkdir/rmdir and
   directory syncs. Descriptors are mapped to model inodes at ``open``, so a rename or a hard
   link keeps naming the same file content.
2. :class:`CrashModel` replays the trace under a persistence model. The starting folder is
   fully durable. Per inode: its content at its last ``fsync``/``fdatasync`` plus the volatile
   writes and truncates after it; per directory: its entries at its last directory sync plus
   the pending namespace operations. A write is cut into 4 KiB pages: a page that was written
   back holds the page as it was at some moment, i.e. a *prefix* of the writes to that page.
   Namespace operations persist in issue order (journalled metadata) -- or, in the
   ``names-any`` states, in any subset -- except that a directory sync makes the operations
   on that directory durable; a rename is atomic (both names change together) and durable
   once both folders were synced. A file's sync does not make its name durable.
3. At every barrier (each file sync or directory sync, and the end) several crash states are
   materialised: the durable state alone, everything issued (what a process death leaves),
   names durable with data issued and the reverse, a random earlier cut with everything
   before it persisted, random page (or torn-page: 512-byte sector) subsets with random
   namespace prefixes or subsets. Identical states are materialised once. The state after
   the last call must reproduce the real folder byte for byte: a change that bypassed the
   boundary fails the run.
4. Optionally the recovery itself is recorded on some crash states and cut again.

The caller then runs the recovery a user would run and checks the folder with the
independent readers of the tests; :func:`explore` drives that and collects precise failure
descriptions (barrier, state, what read differently).
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vdigui.engine import fileio

PAGE = 4096
SECTOR = 512  # a page torn on a device without power-safe overwrite (SQLite's test6.c)
DIR = -1  # the namespace value of a directory

#: Kinds of recorded events.
WRITE, TRUNC, SYNC, CREATE, RENAME, LINK, UNLINK, MKDIR, RMDIR, DIRSYNC = (
    "write",
    "trunc",
    "sync",
    "create",
    "rename",
    "link",
    "unlink",
    "mkdir",
    "rmdir",
    "dirsync",
)
NAMESPACE = (CREATE, RENAME, LINK, UNLINK, MKDIR, RMDIR)


@dataclass
class Event:
    """One recorded file-changing call (paths relative to the recorded root, '/'-joined)."""

    seq: int
    kind: str
    inode: int = 0
    offset: int = 0
    data: bytes = b""
    size: int = 0
    path: str = ""
    dst: str = ""
    call: str = ""

    def dirs(self) -> tuple[str, ...]:
        """The directories whose entries this namespace operation changes."""
        if self.kind == RENAME:
            return tuple(dict.fromkeys((_parent(self.path), _parent(self.dst))))
        if self.kind == LINK:
            return (_parent(self.dst),)
        return (_parent(self.path),)

    def describe(self) -> str:
        """The call in words, for failure reports."""
        if self.kind == WRITE:
            return f"{self.call} {self.path} [{self.offset}, +{len(self.data)})"
        if self.kind == TRUNC:
            return f"{self.call} {self.path} to {self.size}"
        if self.kind in (RENAME, LINK):
            return f"{self.call} {self.path} -> {self.dst}"
        return f"{self.call} {self.path or '.'}"


def _parent(rel: str) -> str:
    return rel.rsplit("/", 1)[0] if "/" in rel else ""


class Recorder(fileio.FileOps):
    """Performs every call for real and records it relative to ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.events: list[Event] = []
        self.outside: list[str] = []
        self._lock = threading.RLock()
        self._fd: dict[int, tuple[int, str]] = {}
        self.initial_files: dict[int, bytes] = {}
        self.initial_names: dict[str, int] = {}
        self._names: dict[str, int] = {}
        self._next = 1
        for dirpath, dirnames, filenames in os.walk(self.root):
            base = Path(dirpath)
            for d in dirnames:
                self.initial_names[self._rel(base / d)] = DIR  # type: ignore[index]
            for f in filenames:
                p = base / f
                if p.is_symlink():
                    continue
                ino = self._new_inode()
                self.initial_files[ino] = p.read_bytes()
                self.initial_names[self._rel(p)] = ino  # type: ignore[index]
        self._names = dict(self.initial_names)

    # -- helpers ------------------------------------------------------------------------
    def _new_inode(self) -> int:
        ino = self._next
        self._next += 1
        return ino

    def _rel(self, path: Path | str) -> str | None:
        absolute = os.path.normpath(Path(path).absolute())
        root = str(self.root)
        if absolute == root:
            return ""
        if not absolute.startswith(root + os.sep):
            self.outside.append(absolute)
            return None
        return absolute[len(root) + 1 :].replace(os.sep, "/")

    def _add(self, kind: str, call: str, **fields: object) -> None:
        self.events.append(Event(len(self.events), kind, call=call, **fields))  # type: ignore[arg-type]

    def _file(self, fd: int) -> tuple[int, str] | None:
        return self._fd.get(fd)

    def count(self) -> int:
        """Recorded events so far."""
        return len(self.events)

    # -- the calls ------------------------------------------------------------------------
    def open(self, path: Path, flags: int, mode: int) -> int:
        with self._lock:
            rel = self._rel(path)
            existed = Path(path).exists()
            fd = super().open(path, flags, mode)
            if rel is None:
                return fd
            ino = self._names.get(rel)
            if ino is None or not existed:
                ino = self._new_inode()
                self._names[rel] = ino
                self._add(CREATE, "open(O_CREAT)", inode=ino, path=rel)
            elif flags & os.O_TRUNC and flags & (os.O_WRONLY | os.O_RDWR):
                self._add(TRUNC, "open(O_TRUNC)", inode=ino, size=0, path=rel)
            self._fd[fd] = (ino, rel)
            return fd

    def close(self, fd: int) -> None:
        with self._lock:
            self._fd.pop(fd, None)
            super().close(fd)

    def _write(self, fd: int, call: str, offset: int, data: bytes) -> None:
        f = self._file(fd)
        if f is not None and data:
            self._add(WRITE, call, inode=f[0], offset=offset, data=data, path=f[1])

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        with self._lock:
            n = super().pwrite(fd, data, offset)
            self._write(fd, "pwrite", offset, bytes(data))
            return n

    def pwritev(self, fd: int, buffers: Sequence[bytes | memoryview], offset: int) -> int:
        with self._lock:
            n = super().pwritev(fd, buffers, offset)
            self._write(fd, "pwritev", offset, b"".join(bytes(b) for b in buffers))
            return n

    def copy_range(
        self, src_fd: int, dst_fd: int, length: int, src_offset: int, dst_offset: int
    ) -> int:
        with self._lock:
            n = super().copy_range(src_fd, dst_fd, length, src_offset, dst_offset)
            if n > 0:
                self._write(dst_fd, "copy_file_range", dst_offset, os.pread(src_fd, n, src_offset))
            return n

    def ftruncate(self, fd: int, size: int) -> None:
        with self._lock:
            super().ftruncate(fd, size)
            f = self._file(fd)
            if f is not None:
                self._add(TRUNC, "ftruncate", inode=f[0], size=size, path=f[1])

    def fallocate(self, fd: int, offset: int, length: int) -> None:
        with self._lock:
            before = os.fstat(fd).st_size
            super().fallocate(fd, offset, length)
            after = os.fstat(fd).st_size
            f = self._file(fd)
            if f is not None and after != before:
                self._add(TRUNC, "fallocate", inode=f[0], size=after, path=f[1])

    def fsync(self, fd: int) -> None:
        with self._lock:
            super().fsync(fd)
            f = self._file(fd)
            if f is not None:
                self._add(SYNC, "fsync", inode=f[0], path=f[1])

    def fdatasync(self, fd: int) -> None:
        with self._lock:
            super().fdatasync(fd)
            f = self._file(fd)
            if f is not None:
                self._add(SYNC, "fdatasync", inode=f[0], path=f[1])

    def sync_filesystem(self, fd: int) -> None:
        """A barrier for everything: each file with a name or an open descriptor, each
        folder (a cut during it keeps any prefix of these flushes, like a real syncfs)."""
        with self._lock:
            super().sync_filesystem(fd)
            files = {ino: rel for rel, ino in self._names.items() if ino != DIR}
            files.update(dict(self._fd.values()))
            for ino, rel in sorted(files.items()):
                self._add(SYNC, "syncfs", inode=ino, path=rel)
            folders = {""} | {rel for rel, ino in self._names.items() if ino == DIR}
            for rel in sorted(folders):
                self._add(DIRSYNC, "syncfs", path=rel)

    def replace(self, src: Path, dst: Path) -> None:
        with self._lock:
            super().replace(src, dst)
            a, b = self._rel(src), self._rel(dst)
            if a is None or b is None:
                return
            ino = self._names.pop(a)
            if ino == DIR:
                raise NotImplementedError(f"directory rename {a} -> {b} is not modelled")
            self._names[b] = ino
            self._add(RENAME, "replace", inode=ino, path=a, dst=b)

    def rename_noreplace(self, src: Path, dst: Path) -> None:
        with self._lock:
            super().rename_noreplace(src, dst)
            a, b = self._rel(src), self._rel(dst)
            if a is None or b is None:
                return
            ino = self._names.pop(a)
            self._names[b] = ino
            self._add(RENAME, "renameat2(NOREPLACE)", inode=ino, path=a, dst=b)

    def link(self, src: Path, dst: Path) -> None:
        with self._lock:
            super().link(src, dst)
            a, b = self._rel(src), self._rel(dst)
            if a is None or b is None:
                return
            ino = self._names[a]
            self._names[b] = ino
            self._add(LINK, "link", inode=ino, path=a, dst=b)

    def unlink(self, path: Path) -> None:
        with self._lock:
            super().unlink(path)
            rel = self._rel(path)
            if rel is None:
                return
            ino = self._names.pop(rel, 0)
            self._add(UNLINK, "unlink", inode=ino, path=rel)

    def mkdir(self, path: Path, mode: int) -> None:
        with self._lock:
            super().mkdir(path, mode)
            rel = self._rel(path)
            if rel is not None:
                self._names[rel] = DIR
                self._add(MKDIR, "mkdir", path=rel)

    def rmdir(self, path: Path) -> None:
        with self._lock:
            super().rmdir(path)
            rel = self._rel(path)
            if rel is not None:
                self._names.pop(rel, None)
                self._add(RMDIR, "rmdir", path=rel)

    def fsync_dir(self, folder: Path) -> None:
        with self._lock:
            super().fsync_dir(folder)
            rel = self._rel(folder)
            if rel is not None:
                self._add(DIRSYNC, "fsync_dir", path=rel)


# -- the persistence model ------------------------------------------------------------------
@dataclass(frozen=True)
class CrashState:
    """One state a power cut can leave: files by path, and how it was chosen (in words)."""

    point: int  # events issued before the cut
    mode: str
    files: dict[str, bytes]
    dirs: frozenset[str]
    links: dict[str, str]  # extra names of one inode -> the first name
    note: str

    def digest(self) -> str:
        """Identifies the state (names, link structure and every file's bytes)."""
        h = hashlib.sha256()
        for name in sorted(self.dirs):
            h.update(b"D" + name.encode() + b"\0")
        for name in sorted(self.files):
            h.update(
                b"F"
                + name.encode()
                + b"\0"
                + _content_digest(self.files[name])
                + self.links.get(name, "").encode()
                + b"\0"
            )
        return h.hexdigest()

    def materialise(self, root: Path) -> None:
        """Make ``root`` hold exactly this state (it is wiped first)."""
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        for d in sorted(self.dirs, key=lambda s: s.count("/")):
            (root / d).mkdir(exist_ok=True)
        for name, data in self.files.items():
            if name in self.links:
                continue
            (root / name).write_bytes(data)
        for name, first in self.links.items():
            os.link(root / first, root / name)


_DIGESTS: dict[int, tuple[bytes, bytes]] = {}


def _content_digest(data: bytes) -> bytes:
    """sha256 of a file's bytes, cached by object: most states share most files' contents."""
    hit = _DIGESTS.get(id(data))
    if hit is None or hit[0] is not data:
        if len(_DIGESTS) > 256:
            _DIGESTS.clear()
        hit = (data, hashlib.sha256(data).digest())
        _DIGESTS[id(data)] = hit
    return hit[1]


def _apply(content: bytearray, ev: Event) -> None:
    if ev.kind == TRUNC:
        if ev.size < len(content):
            del content[ev.size :]
        else:
            content.extend(bytes(ev.size - len(content)))
    else:
        end = ev.offset + len(ev.data)
        if end > len(content):
            content.extend(bytes(end - len(content)))
        content[ev.offset : end] = ev.data


def _pages(ev: Event, unit: int = PAGE) -> Iterator[tuple[int, Event]]:
    """A write cut at page (or sector) boundaries: (page number, piece)."""
    pos, end = ev.offset, ev.offset + len(ev.data)
    while pos < end:
        stop = min(end, (pos // unit + 1) * unit)
        yield (
            pos // unit,
            Event(
                ev.seq,
                WRITE,
                ev.inode,
                pos,
                ev.data[pos - ev.offset : stop - ev.offset],
                path=ev.path,
            ),
        )
        pos = stop


class CrashModel:
    """The crash states of one recorded trace."""

    def __init__(self, recorder: Recorder) -> None:
        self.rec = recorder
        self.events = recorder.events
        self.barriers = [e.seq for e in self.events if e.kind in (SYNC, DIRSYNC)]
        self._cache: dict[tuple[int, int], bytes] = {}

    # durability ------------------------------------------------------------------------
    def _last_sync(self, inode: int, point: int) -> int:
        """Index of the last sync of ``inode`` before ``point`` (-1: none)."""
        for i in range(point - 1, -1, -1):
            e = self.events[i]
            if e.kind == SYNC and e.inode == inode:
                return i
        return -1

    def _durable_ns(self, ev: Event, point: int) -> bool:
        need = set(ev.dirs())
        for e in self.events[ev.seq + 1 : point]:
            if e.kind == DIRSYNC:
                need.discard(e.path)
                if not need:
                    return True
        return not need

    def _content_at(self, inode: int, upto: int) -> bytes:
        """Content of ``inode`` with every event on it before index ``upto`` applied."""
        key = (inode, upto)
        if key not in self._cache:
            data = bytearray(self.rec.initial_files.get(inode, b""))
            for e in self.events[:upto]:
                if e.inode == inode and e.kind in (WRITE, TRUNC):
                    _apply(data, e)
            self._cache[key] = bytes(data)
        return self._cache[key]

    # state construction ----------------------------------------------------------------
    def state(self, point: int, mode: str, rng: random.Random) -> CrashState:
        """A crash after ``point`` events under ``mode``.

        Modes: ``durable`` (only what syncs guarantee), ``visible`` (everything issued: a
        process death), ``cut`` (everything before a random earlier event, nothing after),
        ``pages`` (random page prefixes, random namespace prefix), ``names-durable`` (data as
        issued, names as of the last directory syncs), ``data-durable`` (the reverse),
        ``names-any`` (data as in ``pages``; any subset of the unsynced namespace operations,
        for filesystems that do not keep metadata in order), ``sectors`` (as ``pages`` at
        512-byte granularity: torn pages).
        """
        events = self.events
        last_barrier = max([b for b in self.barriers if b < point], default=-1)
        cut = point
        if mode == "cut":
            cut = rng.randint(last_barrier + 1, point) if point > last_barrier + 1 else point
        # namespace
        pending = [e for e in events[:point] if e.kind in NAMESPACE]
        durable_ns = [e for e in pending if self._durable_ns(e, point)]
        durable_seqs = {e.seq for e in durable_ns}
        volatile_ns = [e for e in pending if e.seq not in durable_seqs]
        if mode in ("visible", "data-durable"):
            keep_ns = len(volatile_ns)
        elif mode in ("durable", "names-durable"):
            keep_ns = 0
        elif mode == "cut":
            keep_ns = sum(1 for e in volatile_ns if e.seq < cut)
        else:
            keep_ns = rng.randint(0, len(volatile_ns))
        kept_ns = volatile_ns[:keep_ns]
        if mode == "names-any":  # no ordering among unsynced namespace operations at all
            kept_ns = [e for e in volatile_ns if rng.random() < 0.5]
            keep_ns = len(kept_ns)
        chosen_ns = sorted(durable_ns + kept_ns, key=lambda e: e.seq)
        names = dict(self.rec.initial_names)
        for e in chosen_ns:
            if e.kind == CREATE:
                names[e.path] = e.inode
            elif e.kind == MKDIR:
                names[e.path] = DIR
            elif e.kind == RMDIR:
                names.pop(e.path, None)
            elif e.kind == UNLINK:
                if names.get(e.path) == e.inode:
                    names.pop(e.path)
            elif e.kind == RENAME:
                if names.get(e.path) == e.inode:
                    names.pop(e.path)
                names[e.dst] = e.inode
            elif e.kind == LINK:
                names[e.dst] = e.inode
        # data, per inode that some name shows
        contents: dict[int, bytes] = {}
        notes = []
        for ino in {v for v in names.values() if v != DIR}:
            synced = self._last_sync(ino, point)
            base = self._content_at(ino, synced + 1)
            volatile = [
                e for e in events[synced + 1 : point] if e.inode == ino and e.kind in (WRITE, TRUNC)
            ]
            if not volatile:
                contents[ino] = base
                continue
            if mode in ("durable", "data-durable"):
                picked: list[Event] = []
            elif mode in ("visible", "names-durable"):
                picked = volatile
            elif mode == "cut":
                picked = [e for e in volatile if e.seq < cut]
            else:
                picked = self._page_prefixes(volatile, rng, SECTOR if mode == "sectors" else PAGE)
            data = bytearray(base)
            for e in picked:
                _apply(data, e)
            contents[ino] = bytes(data)
            if 0 < len(picked) < len(volatile) or (not picked and volatile):
                notes.append(
                    f"{volatile[0].path}: {len(picked)} of {len(volatile)} volatile "
                    "writes/pieces kept"
                )
        if volatile_ns and keep_ns < len(volatile_ns):
            kept_seqs = {e.seq for e in kept_ns}
            lost = [e for e in volatile_ns if e.seq not in kept_seqs]
            dropped = ", ".join(e.describe() for e in lost[:4])
            notes.append(
                f"names: {keep_ns} of {len(volatile_ns)} pending operations kept "
                f"(lost: {dropped}{', ...' if len(lost) > 4 else ''})"
            )
        # reachable names only
        dirs = {n for n, v in names.items() if v == DIR}

        def reachable(name: str) -> bool:
            parent = _parent(name)
            while parent:
                if parent not in dirs:
                    return False
                parent = _parent(parent)
            return True

        dirs = {d for d in dirs if reachable(d)}
        files: dict[str, bytes] = {}
        links: dict[str, str] = {}
        first: dict[int, str] = {}
        for name in sorted(names):
            ino = names[name]
            if ino == DIR or not reachable(name):
                continue
            files[name] = contents[ino]
            if ino in first:
                links[name] = first[ino]
            else:
                first[ino] = name
        if mode == "cut":
            notes.insert(0, f"cut after event {cut}")
        return CrashState(point, mode, files, frozenset(dirs), links, "; ".join(notes))

    @staticmethod
    def _page_prefixes(volatile: list[Event], rng: random.Random, unit: int = PAGE) -> list[Event]:
        """Per page (or sector: a torn page) and for the size, a random prefix of the
        volatile updates."""
        units: dict[object, list[Event]] = {}
        for e in volatile:
            if e.kind == TRUNC:
                units.setdefault("size", []).append(e)
            else:
                for page, piece in _pages(e, unit):
                    units.setdefault(page, []).append(piece)
        style = rng.random()
        picked: list[Event] = []
        for seq in units.values():
            r = rng.random()
            if style < 0.3:  # mostly written back
                k = len(seq) if r < 0.8 else rng.randint(0, len(seq))
            elif style < 0.6:  # mostly lost
                k = 0 if r < 0.8 else rng.randint(0, len(seq))
            else:
                k = rng.randint(0, len(seq))
            picked.extend(seq[:k])
        picked.sort(key=lambda e: (e.seq, e.offset))
        return picked

    def crash_points(self) -> list[int]:
        """Just before every barrier, and after the last event."""
        return sorted(set(self.barriers) | {len(self.events)})

    def states(self, seed: int, per_barrier: int = 8) -> Iterator[CrashState]:
        """Distinct crash states at every crash point: the durable state, the issued state,
        the two mixed ones, and random cuts and page subsets -- ``per_barrier`` in all, more
        where many writes are pending (up to three times as many)."""
        rng = random.Random(seed)
        seen: set[str] = set()
        fixed = ["durable", "visible", "names-durable", "data-durable"]
        previous = -1
        for point in self.crash_points():
            pending = point - previous - 1
            previous = point
            extra = min(3 * per_barrier, per_barrier + pending // 2) - len(fixed)
            randoms = [
                rng.choice(("cut", "pages", "pages", "names-any", "sectors"))
                for _ in range(max(0, extra))
            ]
            for mode in fixed + randoms:
                st = self.state(point, mode, rng)
                key = st.digest()
                if key in seen:
                    continue
                seen.add(key)
                yield st

    def describe_point(self, point: int) -> str:
        """Where a crash point lies, in words."""
        if point >= len(self.events):
            return f"after the last of {len(self.events)} calls"
        return f"just before call #{point} of {len(self.events)} ({self.events[point].describe()})"


# -- driving ---------------------------------------------------------------------------------
class Leftover(AssertionError):
    """The state reads right, but the next command left a vdigui temporary file behind."""


@dataclass
class Report:
    """What one exploration found."""

    name: str
    calls: int = 0
    barriers: int = 0
    states: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    nested: int = 0

    def text(self, limit: int = 6) -> str:
        head = (
            f"{self.name}: {self.calls} calls, {self.barriers} barriers, {self.states} "
            f"crash states, outcomes {self.outcomes}, {len(self.failures)} failing, "
            f"{len(self.leftovers)} with leftovers"
        )
        return "\n".join([head, *self.failures[:limit], *self.leftovers[:limit]])


SUMMARY_FILE = Path("/tmp/vdigui-powerloss-summary.txt")
#: This session's lines (the conftest prints them in pytest's terminal summary).
SUMMARY_LINES: list[str] = []


def record_summary(report: Report) -> None:
    """Append one line per operation to the summary table printed at the end of the run."""
    line = (
        f"{report.name:<38} calls {report.calls:>5}  barriers {report.barriers:>4}  "
        f"states {report.states:>5} (second cut {report.nested:>3})  "
        f"failing {len(report.failures):>3}  "
        f"leftovers {len(report.leftovers):>3}  "
        f"{' '.join(f'{k}={v}' for k, v in sorted(report.outcomes.items()))}\n"
    )
    print(line, end="")
    SUMMARY_LINES.append(line.rstrip("\n"))
    with open(SUMMARY_FILE, "a", encoding="utf-8") as f:
        f.write(line)


def snapshot_tree(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` by relative path."""
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for f in filenames:
            p = Path(dirpath) / f
            if not p.is_symlink():
                out[p.relative_to(root).as_posix()] = p.read_bytes()
    return out


def record(root: Path, operation: Callable[[], object]) -> tuple[Recorder, BaseException | None]:
    """Run ``operation`` with a :class:`Recorder` on ``root`` installed; returns its trace."""
    rec = Recorder(root)
    error: BaseException | None = None
    with fileio.use(rec):
        try:
            operation()
        except Exception as exc:  # the caller decides whether an error is expected
            error = exc
    return rec, error


def explore(
    name: str,
    root: Path,
    rec: Recorder,
    check: Callable[[CrashState], str],
    *,
    seed: int = 0,
    per_barrier: int = 8,
    max_states: int = 400,
    recover: Callable[[], object] | None = None,
    nested: int = 0,
    nested_states: int = 30,
    outer_points: Sequence[int] = (),
) -> Report:
    """Materialise the crash states of ``rec`` into ``root`` and ``check`` each one.

    ``check`` runs the user's recovery and the independent comparison; it returns the
    outcome ("before", "after", ...) or raises AssertionError (:class:`Leftover` when only a
    temporary file was left). The real final state is checked last and ``root`` is left in it.

    With ``recover`` and ``nested``, the recovery itself loses power too: at ``nested`` crash
    points spread over the run (and at every index in ``outer_points``), ``recover`` is
    recorded on the process-death state there, and up to ``nested_states`` crash states of
    *that* trace are checked with ``check`` (which runs the recovery again, as the user would
    after the second cut).

    ``VDIGUI_POWERLOSS_SCALE=N`` in the environment multiplies every budget by N (a deeper
    search by hand; the suite's default keeps it within a few minutes).
    """
    scale = max(1, int(os.environ.get("VDIGUI_POWERLOSS_SCALE", "1")))  # deeper runs by hand
    per_barrier, max_states = per_barrier * scale, max_states * scale
    nested, nested_states = nested * scale, nested_states * scale
    model = CrashModel(rec)
    report = Report(name, calls=len(rec.events), barriers=len(model.barriers))
    final = model.state(len(rec.events), "visible", random.Random(0))
    real = snapshot_tree(root)
    if real != final.files:  # a call that bypassed the boundary, or a recorder bug
        diff = sorted(set(real) ^ set(final.files)) or sorted(
            n for n in real if real[n] != final.files[n]
        )
        raise AssertionError(
            f"{name}: the recorded trace does not reproduce the folder "
            f"(differs in {diff[:5]}); some change bypassed vdigui.engine.fileio"
        )
    states = list(model.states(seed, per_barrier))
    if len(states) > max_states:  # keep both ends and an even spread
        step = len(states) / max_states
        states = [states[int(i * step)] for i in range(max_states)]
    for st in [*states, final]:
        _check_one(report, model, st, root, check, "")
    if recover is not None and (nested or outer_points):
        points = model.crash_points()
        step = max(1, len(points) // max(1, nested))
        chosen = [(p, "visible") for p in points[step // 2 :: step][:nested]]
        chosen += [(p, "visible") for p in outer_points or ()]
        for point, mode in dict.fromkeys(chosen):
            outer = model.state(point, mode, random.Random(point))
            outer.materialise(root)
            inner_rec, error = record(root, recover)
            where = f"recovery of [{outer.mode}] crash {model.describe_point(outer.point)}"
            if error is not None:
                report.failures.append(f"  {where} raised {type(error).__name__}: {error}")
                continue
            inner = CrashModel(inner_rec)
            picked = list(inner.states(seed + point, per_barrier=4))
            if len(picked) > nested_states:
                step2 = len(picked) / nested_states
                picked = [picked[int(i * step2)] for i in range(nested_states)]
            for st in picked:
                _check_one(report, inner, st, root, check, f"second cut, in the {where}: ")
                report.nested += 1
    final.materialise(root)
    return report


def _check_one(
    report: Report,
    model: CrashModel,
    st: CrashState,
    root: Path,
    check: Callable[[CrashState], str],
    prefix: str,
) -> None:
    st.materialise(root)
    try:
        outcome = check(st)
    except Leftover as exc:
        report.leftovers.append(
            f"  {prefix}[{st.mode}] crash {model.describe_point(st.point)}: {exc}"
        )
        outcome = "leftover"
    except Exception as exc:
        msg = str(exc).strip().splitlines()
        first = msg[0] if msg else type(exc).__name__
        report.failures.append(
            f"  {prefix}[{st.mode}] crash {model.describe_point(st.point)}; state: "
            f"{st.note or 'nothing volatile'} -> {type(exc).__name__}: {first[:300]}"
        )
        outcome = "FAILED"
    report.outcomes[outcome] = report.outcomes.get(outcome, 0) + 1
    report.states += 1
