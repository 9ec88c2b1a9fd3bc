"""The I/O boundary's newer calls: a rename that never overwrites, and one flush for many."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vdigui.engine import fileio


@pytest.mark.parametrize("native", [True, False])
def test_rename_noreplace_moves_and_never_overwrites(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    if not native:  # a platform or filesystem without renameat2: link, then unlink
        monkeypatch.setattr(fileio, "_RENAMEAT2", [None])
    src, dst = tmp_path / "a", tmp_path / "b"
    src.write_bytes(b"new")
    fileio.rename_noreplace(src, dst)
    assert not src.exists() and dst.read_bytes() == b"new"
    src.write_bytes(b"other")
    with pytest.raises(FileExistsError):
        fileio.rename_noreplace(src, dst)
    assert dst.read_bytes() == b"new" and src.read_bytes() == b"other"


def test_fd_calls_and_sync_filesystem(tmp_path: Path) -> None:
    path = tmp_path / "f"
    fd = fileio.open_fd(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        fileio.pwrite(fd, b"x", 0)
        fileio.fchmod(fd, 0o640)
        fileio.futime(fd, (1_600_000_000 * 10**9, 1_700_000_000 * 10**9))
        fileio.sync_filesystem(fd)
    finally:
        fileio.close(fd)
    st = path.stat()
    assert st.st_mode & 0o777 == 0o640
    assert st.st_mtime_ns == 1_700_000_000 * 10**9 and st.st_atime_ns == 1_600_000_000 * 10**9
