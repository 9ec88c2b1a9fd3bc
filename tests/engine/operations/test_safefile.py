"""Safe files: commits that never overwrite, the header + map backup, the swap of a rebuilt
file, and the one rewrite-beside sequence that leaves nothing behind when it fails."""

from __future__ import annotations

from pathlib import Path

import pytest
from opshelpers import files_in, make_base, ref_read

from vdigui.engine import OperationCancelled, OperationRefused, VdiError, VerificationError
from vdigui.engine.chain import open_paths
from vdigui.engine.image import open_image
from vdigui.engine.operations._rewrite import rewrite_beside
from vdigui.engine.operations.safefile import (
    FileStamp,
    commit_new,
    read_backup,
    replace_original,
    write_backup,
)
from vdigui.engine.progress import CancelToken, no_progress


def test_commit_new_never_overwrites(tmp_path: Path) -> None:
    tmp = tmp_path / ".x.tmp"
    tmp.write_bytes(b"new")
    dest = tmp_path / "x"
    dest.write_bytes(b"old")
    with pytest.raises(VdiError, match="Refusing to overwrite"):
        commit_new(tmp, dest)
    assert dest.read_bytes() == b"old"
    dest.unlink()
    commit_new(tmp, dest)
    assert dest.read_bytes() == b"new" and not tmp.exists()


def test_replace_original_refuses_a_changed_original(tmp_path: Path) -> None:
    original = tmp_path / "disk"
    original.write_bytes(b"old")
    original.chmod(0o640)
    stamp = FileStamp.of(original)
    tmp = tmp_path / ".disk.tmp"
    tmp.write_bytes(b"new")
    replace_original(tmp, original, stamp)
    assert original.read_bytes() == b"new" and not tmp.exists()
    assert original.stat().st_mode & 0o777 == 0o640  # the original's permissions kept
    tmp.write_bytes(b"newer")
    with pytest.raises(OperationRefused, match="changed since the operation was planned"):
        replace_original(tmp, original, stamp)  # the stamp is of the file before
    assert original.read_bytes() == b"new" and tmp.read_bytes() == b"newer"


def test_backup_round_trip_and_damage(tmp_path: Path) -> None:
    path, _ = make_base(tmp_path, 8)
    with open_image(path) as image:
        backup = write_backup(image)
        head = image.read_raw(0, 512)
        block_map = image.read_map_region()
    assert backup == tmp_path / ".disk.vdi.vdigui-backup"
    info, got_head, got_map = read_backup(backup)
    assert (got_head, got_map) == (head, block_map)
    assert info["offset_blocks"] == 1 << 20
    data = bytearray(backup.read_bytes())
    data[-1] ^= 0xFF
    backup.write_bytes(bytes(data))
    with pytest.raises(VdiError, match="is damaged"):
        read_backup(backup)


def _rewrite_beside(
    path: Path, dest: Path, *, check: object = None, cancel: CancelToken | None = None
) -> tuple[object, bool | None]:
    with open_paths([path]) as chain:
        return rewrite_beside(
            chain,
            dest,
            chain.top.header,
            keep_parent=False,
            progress=no_progress,
            cancel=cancel,
            verify=True,
            cancel_message="Cancelled.",
            commit=lambda tmp: commit_new(tmp, dest),
            check=check,  # type: ignore[arg-type]
            failure=lambda problem: f"the copy reads differently ({problem}).",
        )


def test_rewrite_beside_commits_a_verified_copy(tmp_path: Path) -> None:
    path, _ = make_base(tmp_path, 4)
    dest = tmp_path / "copy.vdi"
    _, verified = _rewrite_beside(path, dest)
    assert verified is True
    assert ref_read([dest]) == ref_read([path])
    assert files_in(tmp_path) == {"disk.vdi", "copy.vdi"}


def test_rewrite_beside_leaves_nothing_when_the_check_fails(tmp_path: Path) -> None:
    path, _ = make_base(tmp_path, 4)
    dest = tmp_path / "copy.vdi"
    seen: list[Path] = []

    def check(tmp: Path) -> str:
        seen.append(tmp)
        assert tmp.parent == tmp_path and tmp.exists()  # checked before the commit
        return "the filesystems differ"

    with pytest.raises(
        VerificationError,
        match=r"^Verification failed: the copy reads differently \(the "
        r"filesystems differ\)\.$",
    ):
        _rewrite_beside(path, dest, check=check)
    assert len(seen) == 1 and not seen[0].exists()
    assert files_in(tmp_path) == {"disk.vdi"}


def test_rewrite_beside_cancelled_after_the_copy_commits_nothing(tmp_path: Path) -> None:
    path, _ = make_base(tmp_path, 4)
    cancel = CancelToken()

    def check(tmp: Path) -> None:
        cancel.cancel()  # pressed after the last block: still "nothing done"

    with pytest.raises(OperationCancelled, match=r"^Cancelled\.$"):
        _rewrite_beside(path, tmp_path / "copy.vdi", check=check, cancel=cancel)
    assert files_in(tmp_path) == {"disk.vdi"}
