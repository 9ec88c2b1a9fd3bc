"""Pieces every writing operation shares: safe output files, guest hashing, in-use checks.

Why these live together: compact, clone and convert all promise the same three things --
(1) a new file only ever appears complete (temp file beside the target, fsync, rename, directory
fsync), (2) the guest sees the same disk afterwards (the data compared as it is copied, and a
digest of the guest-visible disk), and (3) nothing else is using the file while it changes (no
other process has it open, nobody holds a lock on it). Keeping one implementation means one
place to get each of them right.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import secrets
import shutil
import struct
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xxhash

from vdigui.engine import fileio
from vdigui.engine import format as fmt
from vdigui.engine.chain import DiskChain
from vdigui.engine.errors import OperationRefused, VdiError
from vdigui.engine.format import BLOCK_FREE
from vdigui.engine.image import VdiImage, zeros

if sys.platform != "win32":
    import fcntl
else:  # pragma: no cover - Windows has no fcntl; locking is best effort there
    fcntl = None  # type: ignore[assignment]

NOTHING_CHANGED = "Cancelled: nothing was changed."


# -- file identity ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FileStamp:
    """Identity and state of a file when it was planned, to notice changes before running.

    A plan describes one particular file content; if anything rewrote the file between plan
    and run (a VM started, another tool ran), running the old plan would be wrong.
    """

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileStamp:
        """The stamp of ``path`` now."""
        st = path.stat()
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def matches(self, path: Path) -> bool:
        """Whether ``path`` still is the same, unchanged file."""
        try:
            return FileStamp.of(path) == self
        except OSError:
            return False


def require_unchanged(path: Path, stamp: FileStamp) -> None:
    """Refuse to run a plan whose file changed since it was planned."""
    if not stamp.matches(path):
        raise OperationRefused(
            f"'{path.name}' changed since the operation was planned; plan it again ({path}).")


# -- temporary files and atomic commits ---------------------------------------------------
def temp_path_beside(target: Path, tag: str = "tmp") -> Path:
    """A hidden, unique file name in the target's folder.

    Beside the target so the final rename stays on one filesystem (atomic), hidden and marked
    ``vdigui`` so a user who finds a leftover after a power cut knows where it came from.
    """
    return target.with_name(f".{target.name}.vdigui-{tag}-{secrets.token_hex(4)}")


def discard(path: Path | None) -> None:
    """Remove a temporary file if it exists (cleanup after cancel or failure)."""
    if path is not None:
        fileio.unlink(path, missing_ok=True)


def commit_new(tmp: Path, dest: Path) -> None:
    """Move the finished ``tmp`` to ``dest`` without ever overwriting an existing ``dest``.

    A hard link fails if ``dest`` appeared meanwhile, which a rename would silently replace;
    filesystems without hard links fall back to a checked rename.
    """
    try:
        fileio.link(tmp, dest)
    except FileExistsError:
        raise VdiError(f"Refusing to overwrite '{dest}': a file of that name appeared while "
                       "the operation ran; the new file was not kept.") from None
    except OSError:
        if dest.exists():
            raise VdiError(f"Refusing to overwrite '{dest}': the file already exists.") from None
        fileio.replace(tmp, dest)
    else:
        fileio.unlink(tmp)
    fileio.fsync_dir(dest.parent)


def commit_replace(tmp: Path, dest: Path) -> None:
    """Atomically put ``tmp`` in place of ``dest`` (convert, defrag) and flush the folder."""
    fileio.replace(tmp, dest)
    fileio.fsync_dir(dest.parent)


def copy_mode(source: Path, dest: Path) -> None:
    """Give a rebuilt file the owner and permission bits of the file it replaces.

    The owner matters when run as root on a user's disk: a root-owned replacement would lock
    the user's VirtualBox out of their own disk. Best effort: only root may change owners.
    """
    st = source.stat()
    with contextlib.suppress(OSError):
        if (st.st_uid, st.st_gid) != (os.getuid(), os.getgid()):
            fileio.chown(dest, st.st_uid, st.st_gid)
    with contextlib.suppress(OSError):
        fileio.chmod(dest, st.st_mode & 0o7777)


def hard_link_warning(path: Path) -> tuple[str, ...]:
    """A warning when a file rebuilt beside itself has other names (they keep the old file)."""
    try:
        links = path.stat().st_nlink
    except OSError:
        return ()
    if links <= 1:
        return ()
    return (f"'{path.name}' has {links - 1} other hard link(s); only this name will show the "
            "rebuilt file, the others keep the old one.",)


def write_file_atomic(path: Path, data: bytes) -> None:
    """Write a small file completely or not at all (temp + fsync + rename + folder fsync)."""
    fileio.write_file_atomic(path, data, tmp=temp_path_beside(path))


# -- header + map backup ------------------------------------------------------------------
BACKUP_MAGIC = b"VDIGUI-BACKUP 1\n"


def backup_path(image_path: Path) -> Path:
    """Where the header + block map of ``image_path`` are saved before an in-place change."""
    return image_path.with_name(f".{image_path.name}.vdigui-backup")


def write_backup(image: VdiImage) -> Path:
    """Save the first header bytes and the block map of ``image`` beside it.

    Format: the magic line, one JSON line describing the layout, then the raw header bytes
    (``header_bytes`` from offset 0) and the raw map (``map_bytes`` from ``offset_blocks``).
    It is small (the map of a 2 TiB disk is 8 MiB) and written atomically, so whoever finds it
    after a crash can see exactly what the metadata was before vdigui touched the file.
    """
    h = image.header
    header_len = min(fmt.HEADER_READ_SIZE, h.offset_blocks)
    head = image.read_raw(0, header_len)
    block_map = image.read_map_region()
    info = {"image": image.path.name, "file_size": image.file_size,
            "header_bytes": len(head), "offset_blocks": h.offset_blocks,
            "map_bytes": len(block_map),
            "sha256": hashlib.sha256(head + block_map).hexdigest()}
    target = backup_path(image.path)
    write_file_atomic(target, BACKUP_MAGIC + json.dumps(info).encode() + b"\n" + head
                      + block_map)
    return target


def read_backup(path: Path) -> tuple[dict[str, object], bytes, bytes]:
    """Parse a backup written by :func:`write_backup`: (info, header bytes, map bytes)."""
    data = Path(path).read_bytes()
    if not data.startswith(BACKUP_MAGIC):
        raise VdiError(f"'{path}' is not a vdigui backup file.")
    line_end = data.index(b"\n", len(BACKUP_MAGIC))
    info = json.loads(data[len(BACKUP_MAGIC):line_end])
    body = data[line_end + 1:]
    head = body[: int(info["header_bytes"])]
    block_map = body[len(head): len(head) + int(info["map_bytes"])]
    if hashlib.sha256(head + block_map).hexdigest() != info["sha256"]:
        raise VdiError(f"The backup '{path}' is damaged (its checksum does not match).")
    return info, head, block_map


# -- guest content hashing ----------------------------------------------------------------
#: Name of the guest digest, as shown to users next to it ("verified (guest xxh3-128 ...)").
DIGEST_NAME = "xxh3-128"


def block_digest(data: bytes | memoryview) -> bytes:
    """The 16-byte digest of one guest block (XXH3-128, canonical big-endian bytes)."""
    return xxhash.xxh3_128_digest(data)


def _sparse_zeros(size: int) -> np.ndarray:
    """``size`` zero bytes that cost memory only where written (anonymous mmap pages).

    Not ``np.zeros``: numpy asks for transparent huge pages on large arrays, so writing the
    16-byte digests of a few blocks scattered over a 2 TiB disk would make 32 MiB resident.
    """
    private = getattr(mmap, "MAP_PRIVATE", None)  # private: reading a page maps no memory
    if size == 0 or private is None:
        return np.zeros(size, dtype=np.uint8)
    area = mmap.mmap(-1, size, flags=private)
    with contextlib.suppress(AttributeError, OSError):
        area.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(area, dtype=np.uint8)


class GuestDigest:
    """The guest digest: XXH3-128 over the XXH3-128 of each guest block, in guest order.

    Why per block: a dynamic disk is mostly unallocated, and hashing terabytes of zeros would
    take as long as reading them; with one digest per block a zero block costs a cached
    16-byte digest, so the digest follows the data actually stored. Why XXH3-128 and not
    sha256: the digest guards against bugs and bad hardware, not an adversary, and XXH3 runs
    at memory speed (about 40 GiB/s here, sha256 1.4 GiB/s; see bench/README.md), so hashing
    the data while it passes through the copy costs next to nothing. It is easy to reproduce
    independently: ``xxh3_128(b"".join(xxh3_128(block) for block in blocks_of(raw_disk)))``,
    the last block cut at the disk size (:func:`digest_of_raw`).

    Blocks may be added in any order (each digest is kept at its guest block, in a calloc'd
    array whose untouched pages cost no memory), so a scan can read a file in physical order.
    Blocks never added count as zeros.
    """

    def __init__(self, disk_size: int, block_size: int) -> None:
        self._disk_size = disk_size
        self._block_size = block_size
        self._blocks = -(-disk_size // block_size)
        self._digests = _sparse_zeros(self._blocks * 16).reshape(self._blocks, 16)
        self._have = _sparse_zeros(self._blocks).view(bool)
        self._zero_digest = np.frombuffer(block_digest(zeros(block_size)), dtype=np.uint8)
        tail = disk_size - (self._blocks - 1) * block_size if self._blocks else block_size
        self._tail = tail
        self._tail_zero = np.frombuffer(block_digest(zeros(tail)), dtype=np.uint8)

    def add(self, block: int, data: bytes | memoryview) -> None:
        """The content of guest ``block`` (``block_size`` bytes; the tail past the disk end
        of the last block is ignored)."""
        if block == self._blocks - 1 and self._tail != self._block_size:
            data = memoryview(data)[: self._tail]
        self._digests[block] = np.frombuffer(block_digest(data), dtype=np.uint8)
        self._have[block] = True

    def add_rows(self, blocks: np.ndarray | Sequence[int], data: bytes | memoryview,
                 rows: np.ndarray | Sequence[int] | None = None) -> None:
        """Blocks held back to back in ``data``: row ``rows[i]`` (default ``i``) is guest
        block ``blocks[i]``."""
        view = memoryview(data)
        bs = self._block_size
        picks = range(len(blocks)) if rows is None else rows
        for block, row in zip(blocks, picks, strict=True):
            start = int(row) * bs
            self.add(int(block), view[start:start + bs])

    def hexdigest(self) -> str:
        """The digest of the whole disk (blocks never added count as zeros)."""
        outer = xxhash.xxh3_128()
        step = 1 << 16
        for first in range(0, self._blocks, step):
            last = min(self._blocks, first + step)
            rows = self._digests[first:last].copy()
            missing = ~self._have[first:last]
            rows[missing] = self._zero_digest
            if last == self._blocks and missing[-1] and self._tail != self._block_size:
                rows[-1] = self._tail_zero
            outer.update(rows.tobytes())
        return outer.hexdigest()


class GuestHasher:
    """The guest digest (:class:`GuestDigest`) fed one block at a time in guest order.

    ``threaded`` is accepted for older callers and ignored: XXH3 is faster than handing a
    block to another thread, so hashing runs inline.
    """

    def __init__(self, disk_size: int, block_size: int, *, threaded: bool = True) -> None:
        del threaded
        self._digest = GuestDigest(disk_size, block_size)
        self._zero = zeros(block_size)
        self._next = 0

    def add(self, data: bytes | memoryview | None) -> None:
        """Feed the next guest block (``None`` = all zeros). Blocks must come in guest order."""
        if data is not None and data is not self._zero:
            self._digest.add(self._next, data)
        self._next += 1

    def skip(self, count: int) -> None:
        """``count`` blocks of zeros (cheap: nothing is hashed for them)."""
        self._next += count

    def hexdigest(self) -> str:
        """The digest of everything fed so far (blocks not fed count as zeros)."""
        return self._digest.hexdigest()

    def close(self) -> None:
        """Nothing to stop (kept for callers written for the threaded hasher)."""


def digest_of_raw(data: bytes, block_size: int) -> str:
    """The guest digest of a raw disk image held in memory (the reference definition)."""
    outer = xxhash.xxh3_128()
    for start in range(0, len(data), block_size):
        outer.update(xxhash.xxh3_128_digest(data[start:start + block_size]))
    return outer.hexdigest()


def serving(chain: DiskChain, upto: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per guest block: index of the layer serving it (-1 = none) and that layer's entry.

    Computed once with numpy so per-block loops do no map walking; ``upto`` restricts the view
    to the first ``upto`` layers (what a layer's parents show).
    """
    total = chain.guest_blocks
    layers = chain.layers if upto is None else chain.layers[:upto]
    layer = np.full(total, -1, dtype=np.int16)
    entry = np.full(total, BLOCK_FREE, dtype=np.uint32)
    for index, image in enumerate(layers):
        row = image.block_map[:total]  # a view: no copy of a 2 TiB disk's 8 MiB map
        mask = row != BLOCK_FREE
        layer[: row.size][mask] = index
        entry[: row.size][mask] = row[mask]
    return layer, entry


# -- in-use checks and locks --------------------------------------------------------------
def _process_name(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip() or "?"
    except OSError:
        return "?"


def processes_holding(paths: Iterable[Path]) -> dict[Path, list[tuple[int, str, bool]]]:
    """Other processes that have any of ``paths`` open: {path: [(pid, name, writing), ...]}.

    Linux only (scans ``/proc/*/fd``; ``writing`` comes from the descriptor's access mode in
    ``fdinfo``); elsewhere it finds nothing and the lock check is the only guard. Processes we
    may not inspect are skipped: best effort, by design.
    """
    wanted = {os.path.realpath(p): Path(p) for p in paths}
    found: dict[Path, list[tuple[int, str, bool]]] = {}
    proc = Path("/proc")
    if not wanted or not (proc / "self" / "fd").is_dir():
        return found
    me = str(os.getpid())
    try:
        pids = [e.name for e in os.scandir(proc) if e.name.isdigit() and e.name != me]
    except OSError:
        return found
    for pid in pids:
        try:
            fds = list(os.scandir(f"/proc/{pid}/fd"))
        except OSError:
            continue
        hit: dict[Path, bool] = {}
        for fd in fds:
            try:
                target = os.readlink(fd.path)  # noqa: PTH115 - str compare, no Path
            except OSError:
                continue
            path = wanted.get(target)
            if path is not None:
                hit[path] = hit.get(path, False) or _fd_writing(pid, fd.name)
        for path, writing in hit.items():
            found.setdefault(path, []).append((int(pid), _process_name(pid), writing))
    return found


def _fd_writing(pid: str, fd: str) -> bool:
    """Whether descriptor ``fd`` of ``pid`` was opened for writing (unknown counts as yes)."""
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags:"):
                    return (int(line.split()[1], 8) & os.O_ACCMODE) != os.O_RDONLY
    except (OSError, ValueError, IndexError):
        pass
    return True


_FLOCK = "hhqqi4x"  # struct flock on Linux (x86-64, arm64): type, whence, start, len, pid


def _lock_conflict(fd: int) -> bool:
    """Whether another open file description holds a lock that an exclusive lock would hit."""
    if fcntl is None:  # pragma: no cover
        return False
    getlk = getattr(fcntl, "F_OFD_GETLK", None)
    if getlk is None:  # pragma: no cover - non-Linux: classic POSIX query
        getlk = fcntl.F_GETLK
    probe = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
    try:
        answer = fcntl.fcntl(fd, getlk, probe)
    except OSError:
        return False
    return bool(struct.unpack(_FLOCK, answer)[0] != fcntl.F_UNLCK)


def locked_by_others(path: Path) -> bool:
    """Whether some process holds an fcntl lock on ``path`` (qemu and others take them)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    except OSError:
        return False
    try:
        return _lock_conflict(fd)
    finally:
        os.close(fd)


def take_exclusive_lock(fd: int, path: Path) -> None:
    """Hold an exclusive lock on the open ``fd`` until it is closed.

    Linux open-file-description locks are used where available: unlike classic POSIX locks
    they are not dropped when this process closes some other descriptor of the same file
    (verification reopens the image), and they conflict with qemu's locks.

    Raises:
        OperationRefused: another process holds a lock on the file.
    """
    if fcntl is None:  # pragma: no cover
        return
    setlk = getattr(fcntl, "F_OFD_SETLK", None)
    try:
        if setlk is not None:
            fcntl.fcntl(fd, setlk, struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
        else:  # pragma: no cover - non-Linux
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise OperationRefused(locked_sentence(path)) from None


def locked_sentence(path: Path) -> str:
    """The refusal for a file some other program has locked."""
    return (f"'{path.name}' is locked by another program (a running VM, qemu or another "
            f"vdigui); close it and try again ({path}).")


def in_use_reasons(paths: Sequence[Path], *, writers_only: bool = False) -> tuple[str, ...]:
    """Refusal sentences for each of ``paths`` another process has open or has locked.

    ``writers_only`` ignores readers (a clone may read a disk another reader has open, but not
    one something is writing to, which would give an inconsistent copy).
    """
    reasons: list[str] = []
    holders = processes_holding(paths)
    for path in paths:
        who = [w for w in holders.get(Path(path), []) if w[2] or not writers_only]
        if who:
            names = ", ".join(f"{name} (process {pid})" for pid, name, _ in who[:3])
            more = f" and {len(who) - 3} more" if len(who) > 3 else ""
            reasons.append(f"'{Path(path).name}' is open in another program: {names}{more}; "
                           f"close it (or shut the VM down) and try again.")
        elif not writers_only and locked_by_others(Path(path)):
            reasons.append(locked_sentence(Path(path)))
    return tuple(reasons)


def check_not_in_use(paths: Sequence[Path]) -> None:
    """Raise OperationRefused when another process has any of ``paths`` open or locked."""
    reasons = in_use_reasons(paths)
    if reasons:
        raise OperationRefused(" ".join(reasons))


def running_vm_reasons(path: Path) -> tuple[str, ...]:
    """Refusals when the VM owning ``path`` looks running (delegated to the VM-folder model).

    The open-file scan already catches a VM process holding the disk; this adds whatever the
    VM-folder code knows (e.g. a session lock), when that code is present.
    """
    try:
        from vdigui.engine import vmfolder
    except ImportError:
        return ()
    hint = getattr(vmfolder, "running_hint", None) or getattr(vmfolder, "vm_running_hint", None)
    if hint is None:
        return ()
    try:
        message = hint(path)
    except (VdiError, OSError):
        return ()
    return (str(message),) if message else ()


def busy_reasons(path: Path) -> tuple[str, ...]:
    """Why ``path`` must not be changed now: open or locked elsewhere, or its VM running.

    The VM hint is only asked when nothing holds the file, so one cause gives one sentence.
    """
    return in_use_reasons([path]) or running_vm_reasons(path)


def in_place_refusals(path: Path, beside_why: str) -> tuple[str, ...]:
    """Why ``path`` cannot be rewritten in place: no write access to it, or to its folder
    (``beside_why`` says what must be created there), or it is busy (:func:`busy_reasons`)."""
    reasons: list[str] = []
    if not os.access(path, os.R_OK | os.W_OK):
        reasons.append(f"You may not write to '{path}'.")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        reasons.append(f"You may not create files in '{path.parent}' ({beside_why}).")
    return (*reasons, *busy_reasons(path))


# -- host space -----------------------------------------------------------------------------
def free_space(folder: Path) -> int:
    """Bytes an unprivileged user may still write in ``folder``'s filesystem."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0


def space_refusal(folder: Path, needed: int, free: int, what: str) -> str | None:
    """The refusal sentence when ``needed`` bytes do not fit in ``free``, else None."""
    if needed <= free:
        return None
    return (f"Not enough free space in '{folder}' for {what}: {_mib(needed)} needed, "
            f"{_mib(free)} free.")


def _mib(value: int) -> str:
    return f"{value / (1 << 20):.1f} MiB"


def file_size(path: Path) -> int:
    """Size of ``path`` in bytes."""
    return path.stat().st_size
