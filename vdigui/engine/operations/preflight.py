"""Checks every writing command runs before it writes anything, and the leftover sweep.

Why a separate step: a writing command that fails half-way has already written something (a
backup, a journal record, a temporary file), and a refused command must write nothing
(docs/crash-safety.md). So everything that can be known up front -- the inputs are plain files
this user can really open for writing, the folder takes new files, the filesystem has room, the
block maps are sound -- is checked here first, without ever blocking: a FIFO or a device named
``x.vdi`` is recognised by ``lstat``/``stat`` and opened only with ``O_NONBLOCK``.

A damaged block map (entries past the end of the file, slots shared by two blocks, entries
beyond the slot range) is refused for every writing command except ``vdictl repair``: writing
through a damaged map would change guest content, and repair is the one command that decides
what a damaged map should become, with its own undo.

The leftover sweep removes temporary files an interrupted operation left beside its target
(``.NAME.vdigui-tmp`` and ``.NAME.vdigui-tmp-XXXX``). A writer keeps an exclusive ``flock`` on
its temporary file for as long as it exists (:func:`lock_temp` / :func:`locked_temp`), and the
sweep removes only files it can lock itself and that no other process has open, so the
temporary file of an operation running right now in another process is never removed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from vdigui.engine import fileio
from vdigui.engine.errors import OperationRefused, VdiError
from vdigui.engine.sniff import file_kind, regular_file_problem

if sys.platform != "win32":
    import fcntl
else:  # pragma: no cover - no flock on Windows; the sweep then removes nothing
    fcntl = None  # type: ignore[assignment]

#: Finding kinds of vdigui.engine.check that mean the map itself is damaged (not merely
#: untidy: holes between slots and a crash tail are harmless and compaction cleans them).
DAMAGE_KINDS = frozenset(
    {"slot-out-of-range", "slot-past-eof", "duplicate-slot", "allocated-count-low"}
)

#: Names of temporary files vdigui writes beside a target; group 1 is the target's name.
_LEFTOVER = re.compile(r"^\.(.+)\.vdigui-tmp(?:-[0-9a-f]+)?$")

_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_NOCTTY = getattr(os, "O_NOCTTY", 0)
_BINARY = getattr(os, "O_BINARY", 0)


# -- the preflight --------------------------------------------------------------------------
def _writable_problem(path: Path) -> str | None:
    """Open ``path`` read-write without blocking and close it again: the only honest test.

    ``os.access`` answers yes for root on any mode and knows nothing of read-only mounts in
    some setups; an actual open asks the kernel the real question (permissions, ACLs, the
    immutable flag, a read-only filesystem). Nothing is written.
    """
    try:
        fd = os.open(path, os.O_RDWR | _NONBLOCK | _NOCTTY | _BINARY)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            return f"You may not write to {path} (permission denied); nothing was changed."
        if exc.errno == errno.EROFS:
            return f"{path} is on a read-only filesystem; nothing was changed."
        if exc.errno == errno.ETXTBSY:
            return f"{path} is busy (in use as a program); nothing was changed."
        return f"{path} cannot be opened for writing: {exc.strerror or exc}."
    os.close(fd)
    return None


def _folder_problem(folder: Path) -> str | None:
    try:
        st = folder.stat()
    except OSError as exc:
        return f"The folder {folder} cannot be used: {exc.strerror or exc}."
    if not stat.S_ISDIR(st.st_mode):
        return f"{folder} is {file_kind(st.st_mode)}, not a folder."
    try:
        vfs = os.statvfs(folder)
    except OSError:
        vfs = None
    if vfs is not None and vfs.f_flag & getattr(os, "ST_RDONLY", 1):
        return f"The folder {folder} is on a read-only filesystem; nothing was changed."
    # access() with the effective ids honours ACLs and (for root) capabilities; creating a
    # probe file instead would itself be a write, which a refused command must not make.
    effective = os.access in os.supports_effective_ids
    if not os.access(folder, os.W_OK | os.X_OK, effective_ids=effective):
        return (
            f"You may not create files in the folder {folder} (permission denied); "
            "nothing was changed."
        )
    return None


def _map_problem(path: Path) -> str | None:
    """Why the block map of the VDI at ``path`` must not be written through; None if sound."""
    # Imported here: check imports the image layer, which imports nothing from operations.
    from vdigui.engine.check import check_image
    from vdigui.engine.image import open_image

    try:
        with open_image(path) as image:
            findings = check_image(image)
    except VdiError as exc:
        return f"{exc} Nothing was changed."
    damage = [f for f in findings if f.kind in DAMAGE_KINDS]
    if not damage:
        return None
    detail = damage[0].message
    prefix = f"{path.name}: "
    if detail.startswith(prefix):
        detail = detail[len(prefix) :]
    detail = detail.rstrip(".")
    return (
        f"{path} has a damaged block map, so nothing was changed; run 'vdictl repair' on "
        f"it first, the only command that changes a damaged map ({detail})."
    )


def check_writable_inputs(
    paths: Sequence[Path], *, folder: Path, needed: int = 0, check_maps: bool = True
) -> None:
    """Refuse, before anything is written, a command that could not finish cleanly.

    Args:
        paths: files the command will change in place (may be empty, e.g. for a clone that
            only creates a new file in ``folder``).
        folder: where the command creates files (temporary files, backups, the journal, a
            new image).
        needed: bytes of new host space the command needs in ``folder``'s filesystem
            (a leftover the sweep will remove counts as free).
        check_maps: check the block map of each ``.vdi`` path; only ``vdictl repair``
            passes False, since changing a damaged map is its job.

    Raises:
        OperationRefused: one plain sentence naming the file and what to do.
    """
    folder = Path(folder)
    for raw in paths:
        path = Path(raw)
        problem = regular_file_problem(path) or _writable_problem(path)
        if problem is not None:
            raise OperationRefused(problem)
    problem = _folder_problem(folder)
    if problem is not None:
        raise OperationRefused(problem)
    if needed > 0:
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            free = 0
        free += sum(size for _, size in find_leftovers(folder, removable_only=True))
        if needed > free:
            raise OperationRefused(
                f"Not enough free space in {folder}: {_mib(needed)} needed, {_mib(free)} "
                "free; nothing was changed."
            )
    if check_maps:
        for raw in paths:
            path = Path(raw)
            if path.suffix.lower() == ".vdi":
                problem = _map_problem(path)
                if problem is not None:
                    raise OperationRefused(problem)


def _mib(value: int) -> str:
    return f"{value / (1 << 20):.1f} MiB"


# -- temporary files: the writer's lock -----------------------------------------------------
def lock_temp(fd: int) -> None:
    """Take the exclusive ``flock`` a writer holds on its temporary file while it exists.

    Call it right after creating the temporary file; the lock lasts until the descriptor is
    closed, so keep the descriptor open until the file has been renamed into place (or
    removed). Never blocks: a fresh file has no other holder.
    """
    if fcntl is None:  # pragma: no cover
        return
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


@contextlib.contextmanager
def locked_temp(
    path: Path, flags: int = os.O_RDWR | os.O_CREAT | os.O_EXCL, mode: int = 0o600
) -> Iterator[int]:
    """Create (through :mod:`vdigui.engine.fileio`) and lock a temporary file; yield its fd.

    The descriptor is closed on leaving the block. The caller renames or removes the file
    before leaving, while the lock is still held.
    """
    fd = fileio.open_fd(path, flags, mode)
    try:
        lock_temp(fd)
        yield fd
    finally:
        fileio.close(fd)


# -- leftovers ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Leftover:
    """A temporary file an interrupted operation left behind."""

    path: Path
    size: int
    target: str  #: the name of the file it was being written for


def list_leftovers(folder: Path) -> list[Leftover]:
    """Every vdigui temporary file in ``folder`` (not recursive; nothing is opened)."""
    found: list[Leftover] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return found
    for entry in entries:
        match = _LEFTOVER.match(entry.name)
        if match is None:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        found.append(Leftover(Path(entry.path), st.st_size, match.group(1)))
    return sorted(found, key=lambda item: item.path.name)


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on ``path``, or None when someone else holds it."""
    if fcntl is None:  # pragma: no cover
        return None
    try:
        fd = os.open(path, os.O_RDONLY | _NONBLOCK | _NOCTTY | _BINARY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _open_elsewhere(path: Path) -> bool:
    # The /proc scan catches a writer between creating its file and locking it.
    from vdigui.engine.operations.inuse import processes_holding

    return bool(processes_holding([path]))


def find_leftovers(folder: Path, *, removable_only: bool = False) -> list[tuple[Path, int]]:
    """(path, size) of the leftovers in ``folder``; only those no one holds if asked."""
    result: list[tuple[Path, int]] = []
    for item in list_leftovers(folder):
        if removable_only:
            fd = _try_lock(item.path)
            if fd is None:
                continue
            os.close(fd)
        result.append((item.path, item.size))
    return result


def sweep_leftovers(folder: Path) -> list[Path]:
    """Remove the temporary files interrupted operations left in ``folder``; return them.

    A file is removed only while this process holds its exclusive lock and no other process
    has it open, so a temporary file in use by a running operation is left alone.
    """
    removed: list[Path] = []
    leftovers = list_leftovers(Path(folder))
    if not leftovers:
        return removed
    for item in leftovers:
        fd = _try_lock(item.path)
        if fd is None:
            continue
        try:
            if _open_elsewhere(item.path):
                continue
            with contextlib.suppress(FileNotFoundError):
                fileio.unlink(item.path)
                removed.append(item.path)
        finally:
            os.close(fd)
    if removed:
        fileio.fsync_dir(Path(folder))
    return removed


def sweep_around(paths: Sequence[Path], folder: Path) -> list[Path]:
    """:func:`sweep_leftovers` in ``folder`` and in the folder of each of ``paths``.

    Call it right after :func:`check_writable_inputs` passed, before the command's own first
    write: an in-place command (merge, repair, set-uuid) writes beside files that may sit in a
    snapshot folder below the VM folder.
    """
    removed: list[Path] = []
    folders = [Path(folder), *(Path(p).absolute().parent for p in paths)]
    for where in dict.fromkeys(folders):
        removed += sweep_leftovers(where)
    return removed
