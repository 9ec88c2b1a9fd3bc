"""In-use detection: nothing else may be using a disk while vdigui changes it.

Why it is checked twice (when planning and right before running) and in three ways: a VM or
qemu writing a disk while its blocks move would corrupt it beyond repair. Other processes that
have the file open are found in ``/proc``; fcntl locks (qemu and VirtualBox take them) are
probed; and the VM-folder model may know the VM is running (a session lock). While an
operation runs it holds an exclusive lock itself (:func:`take_exclusive_lock`).
"""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from vdigui.engine import vmfolder
from vdigui.engine.errors import OperationRefused, VdiError

if sys.platform != "win32":
    import fcntl
else:  # pragma: no cover - Windows has no fcntl; locking is best effort there
    fcntl = None  # type: ignore[assignment]


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
    return (
        f"'{path.name}' is locked by another program (a running VM, qemu or another "
        f"vdigui); close it and try again ({path})."
    )


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
            reasons.append(
                f"'{Path(path).name}' is open in another program: {names}{more}; "
                f"close it (or shut the VM down) and try again."
            )
        elif not writers_only and locked_by_others(Path(path)):
            reasons.append(locked_sentence(Path(path)))
    return tuple(reasons)


def check_not_in_use(paths: Sequence[Path]) -> None:
    """Raise OperationRefused when another process has any of ``paths`` open or locked."""
    reasons = in_use_reasons(paths)
    if reasons:
        raise OperationRefused(" ".join(reasons))


def running_vm_reasons(path: Path) -> tuple[str, ...]:
    """Refusals when the VM owning ``path`` looks running (asked of the VM-folder model).

    The open-file scan already catches a VM process holding the disk; this adds whatever the
    VM-folder code knows (e.g. a session lock). Looked up through the module at call time, so
    a test can stand in for a running VM.
    """
    try:
        message = vmfolder.find_running_vm_hint(path)
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
