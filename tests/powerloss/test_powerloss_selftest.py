"""The power-loss harness can fail: deliberately wrong write sequences must be caught.

Each sequence replaces ``target`` (old content) with new content through the I/O boundary.
The checker accepts only "exactly old" or "exactly new" after the sequence's own recovery. The
correct sequences must pass, the broken ones (a temp file renamed without an fsync; an
in-place overwrite before the backup is durable; the backup dropped before the overwrite is
durable) must
produce failing crash states -- and a write that bypasses the boundary must be noticed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from crashsim import CrashModel, Recorder, explore, record

from vdigui.engine import fileio

OLD = bytes(range(256)) * 48  # 12 KiB: three pages
NEW = bytes(255 - (i % 256) for i in range(3 * 4096 + 100))


def _write(
    path: Path, data: bytes, *, sync: bool, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
) -> None:
    fd = fileio.open_fd(path, flags)
    try:
        for off in range(0, len(data), 4096):  # page by page, as an engine would stream
            fileio.pwrite(fd, data[off : off + 4096], off)
        if sync:
            fileio.fsync(fd)
    finally:
        fileio.close(fd)


def atomic_replace(folder: Path, *, sync_tmp: bool = True, sync_dir: bool = True) -> None:
    tmp = folder / ".target.tmp"
    _write(tmp, NEW, sync=sync_tmp)
    fileio.replace(tmp, folder / "target")
    if sync_dir:
        fileio.fsync_dir(folder)


def in_place_with_backup(
    folder: Path, *, sync_backup: bool = True, sync_target: bool = True
) -> None:
    """Backup (the old bytes) durable first, then a marker, then the overwrite."""
    backup = folder / "backup"
    _write(backup, OLD, sync=sync_backup)
    if sync_backup:
        fileio.fsync_dir(folder)
    _write(folder / "intent", b"overwriting", sync=True)
    fileio.fsync_dir(folder)
    _write(folder / "target", NEW, sync=sync_target, flags=os.O_WRONLY)
    fileio.unlink(folder / "intent")
    fileio.fsync_dir(folder)
    fileio.unlink(backup)
    fileio.fsync_dir(folder)


def recover(folder: Path) -> None:
    """The sequences' recovery: an intent without its end means "restore the backup"."""
    if (folder / "intent").exists():
        data = (folder / "backup").read_bytes() if (folder / "backup").exists() else b""
        (folder / "target").write_bytes(data)
        (folder / "intent").unlink()
    for leftover in (folder / ".target.tmp", folder / "backup"):
        leftover.unlink(missing_ok=True)


def run(tmp_path: Path, operation: Callable[[Path], None]) -> list[str]:
    folder = tmp_path / "f"
    folder.mkdir(parents=True)
    (folder / "target").write_bytes(OLD)
    rec, error = record(folder, lambda: operation(folder))
    assert error is None

    def check(_state: object) -> str:
        recover(folder)
        data = (folder / "target").read_bytes() if (folder / "target").exists() else None
        if data == OLD:
            return "old"
        assert data == NEW, (
            f"target holds {None if data is None else len(data)} bytes "
            "that are neither the old nor the new content"
        )
        return "new"

    report = explore("selftest", folder, rec, check, seed=7)
    assert report.states >= 4
    assert set(report.outcomes) >= {"old", "new"} or report.failures
    return report.failures


def test_correct_sequences_pass(tmp_path: Path) -> None:
    assert run(tmp_path / "a", atomic_replace) == []
    assert run(tmp_path / "b", in_place_with_backup) == []


@pytest.mark.parametrize(
    "wrong",
    [
        "rename-unsynced-temp",
        "overwrite-before-backup-durable",
        "backup-dropped-before-target-synced",
    ],
)
def test_wrong_sequences_are_caught(tmp_path: Path, wrong: str) -> None:
    operation: Callable[[Path], None] = {
        "rename-unsynced-temp": lambda f: atomic_replace(f, sync_tmp=False),
        "overwrite-before-backup-durable": lambda f: in_place_with_backup(f, sync_backup=False),
        "backup-dropped-before-target-synced": lambda f: in_place_with_backup(f, sync_target=False),
    }[wrong]
    failures = run(tmp_path, operation)
    assert failures, f"the harness accepted the broken sequence {wrong}"


def test_a_write_that_bypasses_the_boundary_is_noticed(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "target").write_bytes(OLD)
    rec, _ = record(folder, lambda: (folder / "target").write_bytes(NEW))
    with pytest.raises(AssertionError, match="bypassed"):
        explore("bypass", folder, rec, lambda s: "x")


def test_model_keeps_only_synced_data(tmp_path: Path) -> None:
    """The durable state of an unsynced new file is "absent"; of a synced one, complete."""
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "target").write_bytes(OLD)
    rec, _ = record(folder, lambda: atomic_replace(folder, sync_tmp=True, sync_dir=False))
    model = CrashModel(rec)
    import random

    end = model.state(len(rec.events), "durable", random.Random(0))
    assert end.files == {"target": OLD}  # the rename was never made durable
    visible = model.state(len(rec.events), "visible", random.Random(0))
    assert visible.files == {"target": NEW}


class Forgetful(Recorder):
    """Records as if the engine had forgotten some barriers (the calls still run)."""

    def __init__(self, root: Path, drop: str) -> None:
        super().__init__(root)
        self.drop = drop

    def _add(self, kind: str, call: str, **fields: object) -> None:
        if kind == self.drop:
            return
        super()._add(kind, call, **fields)


@pytest.mark.parametrize("drop", ["sync", "dirsync"])
def test_engine_without_its_barriers_is_caught(
    tmp_path: Path, drop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real compaction and snapshot deletion, recorded as if every file sync (or every
    directory sync) were missing: the checks the real tests use must find failing states."""
    import random as rnd

    from builders import build_image, model_read, pattern
    from plcheck import assert_consistent, assert_reads
    from vmbuild import MIB, VmBuilder, assert_all_states, vbox_states

    from vdigui.engine.operations import compact
    from vdigui.engine.operations import journal as jr
    from vdigui.engine.operations import merge as mg

    monkeypatch.setattr(compact, "MOVE_BATCH_BYTES", 3 * 4096)
    monkeypatch.setattr(compact, "busy_reasons", lambda path: ())
    monkeypatch.setattr(mg, "running_hint", lambda folder: None)
    if drop == "sync":
        folder = tmp_path / "c"
        folder.mkdir()
        r = rnd.Random(2)
        layer = {
            b: bytes(4096) if r.random() < 0.3 else pattern(b, 4096)
            for b in r.sample(range(24), 20)
        }
        path = build_image(
            folder / "d.vdi",
            24 * 4096,
            layer,
            block_size=4096,
            placement="qemu",
            slot_order="shuffle",
            seed=2,
        ).path
        expected = model_read([layer], 24 * 4096, 4096)
        rec = Forgetful(folder, "sync")
        with fileio.use(rec):
            compact.run_compact(compact.plan_compact(path))

        def check(_state: object) -> str:
            assert_consistent(path)
            assert_reads([path], expected, "the image")
            return "ok"

        report = explore("forgetful compact", folder, rec, check, seed=3)
    else:
        vm = VmBuilder(tmp_path / "vm", disk_size=4 * MIB)
        vm.scribble([0, 1, 2])
        vm.take_snapshot("one")
        vm.scribble([1, 3])
        uid = vm.snap("one").uuid
        rec = Forgetful(tmp_path, "dirsync")
        with fileio.use(rec):
            mg.run_merge(mg.plan_snapshot_delete(vm.folder, "one"))

        def check(_state: object) -> str:
            jr.recover_pending(vm.folder)
            snaps, _, _ = vbox_states(vm.vbox_path())
            assert_all_states(vm, deleted=set() if uid in snaps else {uid})
            return "ok"

        report = explore("forgetful snapshot delete", tmp_path, rec, check, seed=4)
    print(report.text(2))
    assert report.failures, f"dropping every {drop} went unnoticed: {report.text()}"
