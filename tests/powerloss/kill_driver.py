"""Run vdictl with a counting I/O boundary; SIGKILL the process at its N-th file-changing call.

Usage: ``python kill_driver.py COUNT_FILE N vdictl-arguments...``

Every file-changing call through ``vdigui.engine.fileio`` (an open that creates or truncates,
write, pwritev, copy_file_range, truncate, fsync, fdatasync, replace, link, unlink, mkdir,
rmdir, directory fsync, chmod) is counted. With ``N > 0`` the process kills itself with
SIGKILL just before performing call N, so calls 1..N-1 are done and N is not: the kill lands
between two writes by construction.
With ``N == 0`` nothing is killed. In both cases COUNT_FILE receives the number of calls
performed (rewritten after each call, so after a kill it holds N-1); a test that chooses N
below the total of an uninterrupted run (N == 0) knows the kill landed mid-operation, and a
run that exits normally was *not* killed -- the tests treat that as a failure, never as a pass.

A test helper, not production code: vdigui itself has no test hooks.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

from vdigui.engine import fileio

COUNTED = (
    "pwrite",
    "pwritev",
    "copy_range",
    "ftruncate",
    "fallocate",
    "fsync",
    "fdatasync",
    "replace",
    "link",
    "unlink",
    "mkdir",
    "rmdir",
    "fsync_dir",
    "chmod",
    "chown",
)


class KillAt(fileio.FileOps):
    """Counts file-changing calls; SIGKILLs this process just before call ``kill_at``."""

    def __init__(self, count_file: Path, kill_at: int) -> None:
        self.count_file = count_file
        self.kill_at = kill_at
        self.done = 0
        self.lock = threading.Lock()
        self._save()

    def _save(self) -> None:
        # Plain os calls: the counter's own bookkeeping is not part of the operation.
        fd = os.open(self.count_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, str(self.done).encode())
        finally:
            os.close(fd)

    def tick(self) -> None:
        if self.done + 1 == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def tock(self) -> None:
        self.done += 1
        self._save()


def _counted(name: str):
    real = getattr(fileio.FileOps, name)

    def method(self: KillAt, *args: object, **kwargs: object) -> object:
        with self.lock:
            self.tick()
            result = real(self, *args, **kwargs)
            self.tock()
            return result

    method.__name__ = name
    return method


for _name in COUNTED:
    setattr(KillAt, _name, _counted(_name))


def _open(self: KillAt, path: Path, flags: int, mode: int) -> int:
    """An open that creates or truncates a file changes it: counted; a plain open is not."""
    if not flags & (os.O_CREAT | os.O_TRUNC):
        return fileio.FileOps.open(self, path, flags, mode)
    with self.lock:
        self.tick()
        fd = fileio.FileOps.open(self, path, flags, mode)
        self.tock()
        return fd


KillAt.open = _open  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    count_file, kill_at, args = Path(argv[0]), int(argv[1]), argv[2:]
    from vdigui.cli import main as vdictl

    with fileio.use(KillAt(count_file, kill_at)):
        return vdictl(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
