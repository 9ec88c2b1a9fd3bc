"""Filesystem-aware compaction and cloning on a real ext4 + NTFS + FAT16 guest disk.

The disk is built with Debian's tools (fsaware_disk.py), its free space full of stale data.
After each operation the result is exported and checked the way the guest would: every
filesystem checks clean and every file reads as before; and the image is smaller by exactly
the blocks the guest does not use. ZERO (never FREE) is what a differencing image gets.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from builders import write_vbox
from fsaware_disk import DISK, GuestDisk, build_guest_disk, check_raw
from opshelpers import ZERO, ref_open
from test_ops_crash import FailAt

from vdigui.engine import fileio
from vdigui.engine.chain import open_paths
from vdigui.engine.check import check_image
from vdigui.engine.errors import OperationRefused
from vdigui.engine.export import export_raw
from vdigui.engine.image import create_image, open_image
from vdigui.engine.operations import compact
from vdigui.engine.operations.clone import plan_clone, run_clone
from vdigui.engine.operations.compact import plan_compact, run_compact
from vdigui.engine.usage_report import usage_report

MiB = 1 << 20


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> GuestDisk:
    return build_guest_disk(tmp_path_factory.mktemp("guest"))


def _copy(guest: GuestDisk, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(guest.vdi, folder / "disk.vdi"))


def _export(paths: list[Path], out: Path) -> Path:
    with open_paths(paths) as chain:
        export_raw(chain, out)
    return out


def _used_equal(expected: bytes, paths: list[Path], used: np.ndarray) -> None:
    """Every block the guest uses reads the same; unused ones read as zeros or as before."""
    with open_paths(paths) as chain:
        for block in range(len(used)):
            x, y = expected[block * MiB : (block + 1) * MiB], chain.read_block(block)
            if used[block]:
                assert x == y, block
            else:
                assert y in (x, bytes(len(y))), block


def test_compact_fs_aware_end_to_end(guest: GuestDisk, tmp_path: Path) -> None:
    path = _copy(guest, tmp_path)
    before = usage_report([path])
    assert before.forecast.fs_unused_blocks >= 60
    plan = plan_compact(path, scan=True, fs_aware=True)
    assert plan.can_run and plan.forecast == before.forecast
    assert plan.fs_blocks is not None and plan.fs_blocks.size == before.forecast.fs_unused_blocks
    result = run_compact(plan)
    assert result.verified and result.fs_blocks == before.forecast.fs_unused_blocks
    after = ref_open(path)
    kept = int(np.count_nonzero(before.allocated & (before.usage.used_bytes > 0)))
    assert after.blocks_allocated == kept
    assert after.file_size == after.offset_data + kept * MiB
    assert [
        after.entries[b] for b in np.flatnonzero(before.allocated & (before.usage.used_bytes == 0))
    ] == [ZERO] * result.fs_blocks
    assert np.array_equal(usage_report([path]).usage.used_bytes, before.usage.used_bytes)
    raw = _export([path], tmp_path / "after.raw")
    check_raw(raw, guest.hashes, tmp_path / "check")
    _used_equal(guest.raw.read_bytes(), [path], before.usage.used_bytes > 0)
    # A second FS-aware run finds nothing more to do.
    assert not run_compact(plan_compact(path, fs_aware=True)).changed


def test_compact_fs_aware_defrag(guest: GuestDisk, tmp_path: Path) -> None:
    path = _copy(guest, tmp_path)
    result = run_compact(plan_compact(path, fs_aware=True, defrag=True))
    assert result.verified and result.defragmented and result.fs_blocks >= 60
    check_raw(_export([path], tmp_path / "after.raw"), guest.hashes, tmp_path / "check")


def test_differencing_child_drops_as_zero(guest: GuestDisk, tmp_path: Path) -> None:
    """A child's FS-unused blocks become ZERO: FREE would show the parent's stale data."""
    base = _copy(guest, tmp_path)
    child = tmp_path / "child.vdi"
    create_image(child, parent=base)
    usage = usage_report([base]).usage
    unused = np.flatnonzero(usage.used_bytes == 0)[:5]
    used = np.flatnonzero(usage.used_bytes == MiB)[:2]
    with open_paths([base, child], writable_top=True) as chain:
        for block in unused.tolist():  # the guest scribbled into free space, then freed it
            chain.write(block * MiB, bytes([0x5A]) * MiB, durable=False)
        for block in used.tolist():  # and rewrote used blocks with their own content
            chain.write(block * MiB, chain.read(block * MiB, MiB), durable=False)
        chain.top.sync()
    result = run_compact(plan_compact(child, fs_aware=True))
    assert result.verified and result.fs_blocks == 5
    entries = ref_open(child).entries
    assert all(entries[b] == ZERO for b in unused.tolist())
    raw = _export([base, child], tmp_path / "after.raw")
    check_raw(raw, guest.hashes, tmp_path / "check")


def test_clone_fs_aware(guest: GuestDisk, tmp_path: Path) -> None:
    dest = tmp_path / "clone.vdi"
    plan = plan_clone(guest.vdi, dest, fs_aware=True)
    assert plan.fs_blocks >= 60
    result = run_clone(plan)
    assert result.verified and result.fs_blocks == plan.fs_blocks
    assert result.stored_blocks == plan.data_blocks
    raw = _export([dest], tmp_path / "clone.raw")
    check_raw(raw, guest.hashes, tmp_path / "check")
    assert raw.stat().st_size == DISK


def test_refuses_saved_vm(guest: GuestDisk, tmp_path: Path) -> None:
    folder = tmp_path / "VM"
    path = _copy(guest, folder)
    with open_image(path) as image:
        disk_uuid = image.header.uuid
    vbox = write_vbox(folder / "VM.vbox", uuidlib.uuid4(), "VM", [(disk_uuid, "disk.vdi", [])])
    vbox.write_text(
        vbox.read_text().replace(
            'snapshotFolder="Snapshots"', 'snapshotFolder="Snapshots" stateFile="now.sav"'
        )
    )
    (folder / "now.sav").write_bytes(b"saved memory")
    plan = plan_compact(path, fs_aware=True)
    assert not plan.can_run and any("saved" in r for r in plan.refusals)
    with pytest.raises(OperationRefused):
        run_compact(plan)
    assert plan_compact(path).can_run  # plain compaction keeps the guest content: allowed


@pytest.fixture
def shm_tmp(tmp_path: Path) -> Iterator[Path]:
    """tmpfs when there is one: dozens of interrupted runs, each copying the disk."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="vdigui-fsa-", dir=shm))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_injected_failure_at_every_write(
    guest: GuestDisk, shm_tmp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like the plain crash tests: after a failure at any write or flush the image is
    consistent, every block the guest uses reads as before, and a rerun finishes."""
    monkeypatch.setattr(compact, "MOVE_BATCH_BYTES", 2 * MiB)
    monkeypatch.setattr(compact, "busy_reasons", lambda path: ())
    used = usage_report([guest.vdi]).usage.used_bytes > 0
    expected = guest.raw.read_bytes()
    work = shm_tmp / "work"
    counter = FailAt()
    with fileio.use(counter):
        run_compact(plan_compact(_copy(guest, work), fs_aware=True))
    assert counter.calls >= 6
    for k in range(1, counter.calls + 1):
        path = _copy(guest, work)
        plan = plan_compact(path, fs_aware=True)
        with fileio.use(FailAt(fail_at=k)):
            try:
                run_compact(plan)
            except OSError as exc:
                assert exc.errno == errno.EIO
        with open_image(path) as image:
            assert not [f for f in check_image(image) if f.severity == "error"]
        _used_equal(expected, [path], used)
        assert run_compact(plan_compact(path, fs_aware=True)).verified in (True, None)
        after = ref_open(path)
        assert after.file_size == after.offset_data + after.blocks_allocated * MiB
    check_raw(_export([path], tmp_path / "last.raw"), guest.hashes, tmp_path / "check")


def test_refuses_an_online_snapshot_of_the_disk(guest: GuestDisk, tmp_path: Path) -> None:
    """A snapshot taken while the VM ran holds memory that refers to the disk as it froze."""
    folder = tmp_path / "VM"
    path = _copy(guest, folder)
    with open_image(path) as image:
        disk_uuid = image.header.uuid
    vbox = write_vbox(
        folder / "VM.vbox",
        uuidlib.uuid4(),
        "VM",
        [(disk_uuid, "disk.vdi", [])],
        snapshot=("Running", uuidlib.uuid4()),
    )
    plan = plan_compact(path, fs_aware=True)
    assert plan.can_run, plan.refusals  # an offline snapshot is fine
    vbox.write_text(
        vbox.read_text().replace('name="Running"', 'name="Running" stateFile="run.sav"')
    )
    (folder / "run.sav").write_bytes(b"saved memory")
    plan = plan_compact(path, fs_aware=True)
    assert any("Snapshot 'Running' was taken while the VM ran" in r for r in plan.refusals)
