"""The one I/O boundary: every call by which vdigui changes a file goes through this module.

Why one boundary (docs/crash-safety.md): what survives a power cut depends on the exact
sequence of writes, truncates, flushes, renames, links, unlinks and directory flushes. With
every such call in one place, the power-loss tests swap in a recording :class:`FileOps`
(:func:`use`) and replay the sequence under a model of what a power cut can keep, without
patching call sites. Reading needs no boundary and uses ``os`` directly.

Rules for callers:

- open every file that will be written with :func:`open_fd`, and close it with
  :func:`close`, so the recorder knows which path a descriptor names;
- use the durable helpers (:func:`write_file_durable`, :func:`replace_durable`,
  :func:`move_durable`) rather than composing the steps by hand;
- :func:`start_writeback` only starts write-back early (Linux ``sync_file_range``); it is not
  a barrier and promises nothing about durability.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

_BINARY = getattr(os, "O_BINARY", 0)
_COPY_CHUNK = 8 << 20
_SYNC_FILE_RANGE_WRITE = 2  # SYNC_FILE_RANGE_WRITE in <fcntl.h>
_SYNC_FILE_RANGE_WAIT_ALL = 1 | 2 | 4  # WAIT_BEFORE | WRITE | WAIT_AFTER


def _linux_call(name: str, *argtypes: Any) -> Callable[..., int] | None:
    """A Linux libc call Python's ``os`` has no binding for (returning int), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    fn.argtypes = list(argtypes)
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


_SYNC_FILE_RANGE = _linux_call(
    "sync_file_range", ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint
)
_SYNCFS = _linux_call("syncfs", ctypes.c_int)
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
# glibc 2.28 and later. A list: dropped for good once a filesystem refuses it.
_RENAMEAT2 = [
    _linux_call(
        "renameat2", ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint
    )
]


class FileOps:
    """The real operations. Tests subclass it to record calls (and still perform them)."""

    def open(self, path: Path, flags: int, mode: int) -> int:
        """``os.open``; the descriptor belongs to the caller."""
        return os.open(path, flags | _BINARY, mode)

    def close(self, fd: int) -> None:
        """``os.close``."""
        os.close(fd)

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        """Write all of ``data`` at ``offset`` (loops over short writes)."""
        view = memoryview(data)
        done = 0
        while done < len(view):
            n = os.pwrite(fd, view[done:], offset + done)
            if n <= 0:
                raise OSError(errno.EIO, "short write")
            done += n
        return done

    def pwritev(self, fd: int, buffers: Sequence[bytes | memoryview], offset: int) -> int:
        """Write the buffers back to back from ``offset`` (all of them)."""
        total = sum(len(b) for b in buffers)
        n = os.pwritev(fd, buffers, offset)
        if n != total:  # rare short vectored write: finish the rest one by one
            joined = b"".join(bytes(b) for b in buffers)
            self.pwrite(fd, joined[n:], offset + n)
        return total

    def copy_range(
        self, src_fd: int, dst_fd: int, length: int, src_offset: int, dst_offset: int
    ) -> int:
        """One ``copy_file_range`` call: bytes copied (may be fewer; 0 at end of source)."""
        return os.copy_file_range(src_fd, dst_fd, length, src_offset, dst_offset)

    def ftruncate(self, fd: int, size: int) -> None:
        """``os.ftruncate``."""
        os.ftruncate(fd, size)

    def fallocate(self, fd: int, offset: int, length: int) -> None:
        """Reserve space (best effort: silently nothing where unsupported)."""
        if hasattr(os, "posix_fallocate"):
            with contextlib.suppress(OSError):
                os.posix_fallocate(fd, offset, length)

    def fsync(self, fd: int) -> None:
        """Data and metadata of one file to stable storage."""
        os.fsync(fd)

    def fdatasync(self, fd: int) -> None:
        """Data (and the size) of one file to stable storage."""
        os.fdatasync(fd)

    def start_writeback(self, fd: int, offset: int = 0, length: int = 0) -> None:
        """Start writing dirty pages now, without waiting (not a durability barrier).

        ``length`` 0 means to the end of the file.
        """
        if _SYNC_FILE_RANGE is not None:
            _SYNC_FILE_RANGE(fd, offset, length, _SYNC_FILE_RANGE_WRITE)  # errors ignored

    def sync_filesystem(self, fd: int) -> None:
        """Every file and folder of the filesystem holding ``fd`` to stable storage.

        One barrier for many new files: an extraction of 100,000 small files that flushed
        each one waited for 100,000 journal commits (docs/crash-safety.md, "Many new
        files"). Linux ``syncfs`` (which reports write-back errors since Linux 5.8);
        elsewhere ``sync``, which flushes every filesystem.
        """
        if _SYNCFS is not None:
            if _SYNCFS(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
        else:
            os.sync()

    def wait_writeback(self, fd: int, offset: int, length: int) -> None:
        """Write a range's dirty pages and wait until the disk has them (Linux).

        Not a durability barrier either: it neither flushes the disk's cache nor the file's
        metadata. Copies use it to keep their dirty pages, and then their cached pages,
        bounded (a page cache grown by gigabytes makes every later write reclaim first).
        """
        if _SYNC_FILE_RANGE is not None:
            _SYNC_FILE_RANGE(fd, offset, length, _SYNC_FILE_RANGE_WAIT_ALL)

    def replace(self, src: Path, dst: Path) -> None:
        """Atomic rename over ``dst`` (durable only after :meth:`fsync_dir`)."""
        src.replace(dst)

    def link(self, src: Path, dst: Path) -> None:
        """Hard link to ``src`` itself (a symbolic link is never followed); fails with
        FileExistsError if ``dst`` exists."""
        os.link(src, dst, follow_symlinks=False)

    def rename_noreplace(self, src: Path, dst: Path) -> None:
        """Atomic rename that fails with FileExistsError if ``dst`` exists.

        Raises NotImplementedError where the platform or the filesystem cannot (the caller
        then links and unlinks, which is not atomic but never overwrites either).
        """
        fn = _RENAMEAT2[0]
        if fn is None:
            raise NotImplementedError("renameat2")
        if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE):
            err = ctypes.get_errno()
            if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise NotImplementedError("renameat2")
            raise OSError(err, os.strerror(err), str(src), None, str(dst))

    def unlink(self, path: Path) -> None:
        """Remove a name."""
        path.unlink()

    def mkdir(self, path: Path, mode: int) -> None:
        """Create one directory."""
        path.mkdir(mode)

    def rmdir(self, path: Path) -> None:
        """Remove an empty directory."""
        path.rmdir()

    def fsync_dir(self, folder: Path) -> None:
        """Make the entries of ``folder`` durable (no-op where directories cannot be opened)."""
        with contextlib.suppress(OSError):
            fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def chmod(self, path: Path, mode: int) -> None:
        """``os.chmod``."""
        path.chmod(mode)

    def fchmod(self, fd: int, mode: int) -> None:
        """``os.fchmod``: an open file's permission bits (no path lookup)."""
        os.fchmod(fd, mode)

    def chown(self, path: Path, uid: int, gid: int) -> None:
        """``os.chown``."""
        os.chown(path, uid, gid)

    def symlink(self, target: str, path: Path) -> None:
        """Create a symbolic link ``path`` -> ``target``; fails if ``path`` exists."""
        path.symlink_to(target)

    def utime(self, path: Path, ns: tuple[int, int]) -> None:
        """Set access and modification times (nanoseconds) of ``path`` itself, never a link's
        target."""
        os.utime(path, ns=ns, follow_symlinks=False)

    def futime(self, fd: int, ns: tuple[int, int]) -> None:
        """Set an open file's access and modification times (nanoseconds)."""
        os.utime(fd, ns=ns)


_ops: FileOps = FileOps()


@contextlib.contextmanager
def use(ops: FileOps) -> Iterator[FileOps]:
    """Route every file-changing call through ``ops`` inside the ``with`` block (tests)."""
    global _ops
    previous, _ops = _ops, ops
    try:
        yield ops
    finally:
        _ops = previous


def _path(p: Path | str) -> Path:
    """``p`` as a Path, without parsing it again when it already is one (extracting 100,000
    files called these wrappers a million times; re-parsing was a fifth of the run)."""
    return p if isinstance(p, Path) else Path(p)


# -- the calls ----------------------------------------------------------------------------
def open_fd(path: Path | str, flags: int, mode: int = 0o644) -> int:
    """Open ``path`` for writing (or reading) through the boundary."""
    return _ops.open(_path(path), flags, mode)


def close(fd: int) -> None:
    """Close a descriptor opened with :func:`open_fd`."""
    _ops.close(fd)


def pwrite(fd: int, data: bytes | memoryview, offset: int) -> int:
    """Write all of ``data`` at ``offset``."""
    return _ops.pwrite(fd, data, offset)


def pwritev(fd: int, buffers: Sequence[bytes | memoryview], offset: int) -> int:
    """Write all buffers back to back from ``offset``."""
    return _ops.pwritev(fd, buffers, offset)


def ftruncate(fd: int, size: int) -> None:
    """Set a file's size."""
    _ops.ftruncate(fd, size)


def fallocate(fd: int, offset: int, length: int) -> None:
    """Reserve space for a range (best effort)."""
    _ops.fallocate(fd, offset, length)


def fsync(fd: int) -> None:
    """Flush one file completely."""
    _ops.fsync(fd)


def fdatasync(fd: int) -> None:
    """Flush one file's data."""
    _ops.fdatasync(fd)


def start_writeback(fd: int, offset: int = 0, length: int = 0) -> None:
    """Start write-back of a file's dirty pages early (not a barrier; length 0: to the end)."""
    _ops.start_writeback(fd, offset, length)


def sync_filesystem(fd: int) -> None:
    """Flush the whole filesystem holding ``fd`` (files and folders): one barrier for many."""
    _ops.sync_filesystem(fd)


def wait_writeback(fd: int, offset: int, length: int) -> None:
    """Write back a range and wait for it (not a durability barrier: no cache flush)."""
    _ops.wait_writeback(fd, offset, length)


def replace(src: Path | str, dst: Path | str) -> None:
    """Atomic rename over ``dst``; durable after :func:`fsync_dir` of the folder."""
    _ops.replace(_path(src), _path(dst))


def link(src: Path | str, dst: Path | str) -> None:
    """Hard link that never overwrites."""
    _ops.link(_path(src), _path(dst))


def rename_noreplace(src: Path | str, dst: Path | str) -> None:
    """Move ``src`` to ``dst``, failing with FileExistsError rather than overwrite.

    One atomic call where the filesystem has ``renameat2(RENAME_NOREPLACE)``; elsewhere a
    link and an unlink (both names exist for a moment; neither overwrites).
    """
    a, b = _path(src), _path(dst)
    if _RENAMEAT2[0] is not None:
        try:
            _ops.rename_noreplace(a, b)
            return
        except NotImplementedError:
            _RENAMEAT2[0] = None
    _ops.link(a, b)
    _ops.unlink(a)


def unlink(path: Path | str, *, missing_ok: bool = False) -> None:
    """Remove a file name."""
    try:
        _ops.unlink(_path(path))
    except FileNotFoundError:
        if not missing_ok:
            raise


def fsync_dir(folder: Path | str) -> None:
    """Make renames, links and removals in ``folder`` durable."""
    _ops.fsync_dir(_path(folder))


def chmod(path: Path | str, mode: int) -> None:
    """Change permission bits."""
    _ops.chmod(_path(path), mode)


def fchmod(fd: int, mode: int) -> None:
    """Change an open file's permission bits."""
    _ops.fchmod(fd, mode)


def chown(path: Path | str, uid: int, gid: int) -> None:
    """Change the owner."""
    _ops.chown(_path(path), uid, gid)


def symlink(target: str, path: Path | str) -> None:
    """Create a symbolic link that never overwrites (extracting guest links)."""
    _ops.symlink(target, _path(path))


def futime(fd: int, ns: tuple[int, int]) -> None:
    """Set an open file's access and modification times in nanoseconds."""
    _ops.futime(fd, ns)


def utime(path: Path | str, ns: tuple[int, int]) -> None:
    """Set a file's access and modification times in nanoseconds (links are not followed)."""
    _ops.utime(_path(path), ns)


def copy_range(src_fd: int, src_offset: int, dst_fd: int, dst_offset: int, length: int) -> None:
    """Copy ``length`` bytes between files, inside the kernel where the platform allows.

    ``copy_file_range`` moves the bytes page cache to page cache, as ``cp`` does; where it is
    missing or refuses (another filesystem, old kernels) the bytes pass through memory.
    """
    while length > 0:
        done = 0
        if _KERNEL_COPY[0]:
            try:
                done = _ops.copy_range(src_fd, dst_fd, length, src_offset, dst_offset)
            except OSError as exc:
                if exc.errno not in (
                    errno.EXDEV,
                    errno.ENOSYS,
                    errno.EINVAL,
                    errno.EOPNOTSUPP,
                    errno.EBADF,
                    errno.EPERM,
                ):
                    raise
                _KERNEL_COPY[0] = False
        if done <= 0:
            chunk = os.pread(src_fd, min(length, _COPY_CHUNK), src_offset)
            if not chunk:
                raise OSError(errno.EIO, "unexpected end of file while copying")
            done = _ops.pwrite(dst_fd, chunk, dst_offset)
        src_offset += done
        dst_offset += done
        length -= done


_KERNEL_COPY = [hasattr(os, "copy_file_range")]


# -- composed, durable helpers ------------------------------------------------------------
def makedirs(path: Path | str, mode: int = 0o755) -> None:
    """Create ``path`` and missing parents, flushing each parent that got a new entry."""
    path = _path(path)
    missing: list[Path] = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for folder in reversed(missing):
        try:
            _ops.mkdir(folder, mode)
        except FileExistsError:
            if not folder.is_dir():
                raise
            continue
        _ops.fsync_dir(folder.parent)


def write_file_durable(
    path: Path | str, data: bytes, *, mode: int = 0o600, exclusive: bool = False
) -> None:
    """Write a whole file in place, flush it and its folder (the name is then durable).

    In place: the file exists under its final name while it is written. Use
    :func:`write_file_atomic` when a reader must never see a partial file.
    """
    path = _path(path)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = open_fd(path, flags, mode)
    try:
        pwrite(fd, data, 0)
        fsync(fd)
    finally:
        close(fd)
    fsync_dir(path.parent)


def write_file_atomic(
    path: Path | str, data: bytes, *, mode: int = 0o600, tmp: Path | None = None
) -> None:
    """Replace ``path`` with ``data`` completely or not at all (temp, fsync, rename, fsync).

    ``tmp`` names the temporary file (default: ``.NAME.vdigui-tmp`` beside it, which the
    leftover sweep recognises).
    """
    path = _path(path)
    tmp = tmp or path.with_name(f".{path.name}.vdigui-tmp")
    fd = open_fd(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        try:
            pwrite(fd, data, 0)
            fsync(fd)
        finally:
            close(fd)
        replace(tmp, path)
    except BaseException:
        unlink(tmp, missing_ok=True)
        raise
    fsync_dir(path.parent)


def copy_file_durable(src: Path | str, dst: Path | str, *, mode: int = 0o600) -> int:
    """Copy ``src`` to the new file ``dst`` and flush it and its folder; returns bytes copied."""
    src, dst = _path(src), _path(dst)
    in_fd = os.open(src, os.O_RDONLY | _BINARY)
    try:
        size = os.fstat(in_fd).st_size
        out_fd = open_fd(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            copy_range(in_fd, 0, out_fd, 0, size)
            fsync(out_fd)
        finally:
            close(out_fd)
    finally:
        os.close(in_fd)
    fsync_dir(dst.parent)
    return size


def move_durable(src: Path | str, dst: Path | str) -> None:
    """Move a file, durably in both folders (copy + flush + unlink across filesystems)."""
    src, dst = _path(src), _path(dst)
    makedirs(dst.parent)
    try:
        replace(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        partial = dst.with_name(dst.name + ".partial")
        unlink(partial, missing_ok=True)
        copy_file_durable(src, partial, mode=stat.S_IMODE(src.stat().st_mode))
        replace(partial, dst)
        fsync_dir(dst.parent)
        unlink(src)
    fsync_dir(dst.parent)
    fsync_dir(src.parent)


def remove_tree(path: Path | str) -> int:
    """Delete a folder and everything in it; returns the bytes of the files removed.

    Files first, then folders bottom up, then one flush of the parent: a power cut leaves
    either the whole folder or a part of it, never anything that reads as complete.
    """
    path = _path(path)
    if not path.exists():
        return 0
    freed = 0
    for root, dirs, files in os.walk(path, topdown=False):
        base = Path(root)
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                freed += (base / name).lstat().st_size
                unlink(base / name)
        for name in dirs:
            sub = base / name
            if sub.is_symlink():
                unlink(sub)
            else:
                _ops.rmdir(sub)
        fsync_dir(base)
    _ops.rmdir(path)
    fsync_dir(path.parent)
    return freed
