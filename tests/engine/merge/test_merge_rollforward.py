"""Snapshot deletion without undo data: no before-images, and interrupted runs roll forward.

docs/crash-safety.md, "Roll-forward". Expected contents come from ``vmbuild`` (its own model
and reader), never from the engine. Power loss (page subsets, torn sectors, names in any
order) is tests/powerloss/test_powerloss_rollforward.py; here: what is written, process
death at every file-changing call, I/O errors, cancel, and what recovery refuses.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from test_merge_crash import Interrupt, SimulatedCrash, clone, shm, template  # noqa: F401
from test_merge_snapshots import linear
from vmbuild import VmBuilder, assert_all_states, assert_check_clean, vbox_states

from vdigui.engine import OperationCancelled, VdiError, fileio
from vdigui.engine.operations import journal as jr
from vdigui.engine.operations import merge as mg
from vdigui.engine.progress import CancelToken, Progress


@pytest.fixture(autouse=True)
def _no_proc_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    """No /proc scan for a running VM: not what these tests are about, and it costs time."""
    monkeypatch.setattr(mg, "running_hint", lambda folder: None)


#: Base slots the deletion of "one" in ``linear`` writes over: the base holds blocks 0, 1, 2,
#: 3, 5 and 8; the child defines 0, 1, 2, 3 (a ZERO entry), 7 and 9.
OVERWRITTEN = 4 * 1024 * 1024


class CountWrites(fileio.FileOps):
    """Counts the bytes written per file name and the files created."""

    def __init__(self) -> None:
        self.fds: dict[int, str] = {}
        self.bytes: dict[str, int] = {}
        self.created: list[str] = []

    def open(self, path: Path, flags: int, mode: int) -> int:
        fd = super().open(path, flags, mode)
        self.fds[fd] = Path(path).name
        if flags & os.O_CREAT:
            self.created.append(Path(path).name)
        return fd

    def _count(self, fd: int, n: int) -> None:
        name = self.fds.get(fd, "?")
        self.bytes[name] = self.bytes.get(name, 0) + n

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        n = super().pwrite(fd, data, offset)
        self._count(fd, n)
        return n

    def pwritev(self, fd: int, buffers: object, offset: int) -> int:
        n = super().pwritev(fd, buffers, offset)  # type: ignore[arg-type]
        self._count(fd, n)
        return n

    def copy_range(
        self, src_fd: int, dst_fd: int, length: int, src_offset: int, dst_offset: int
    ) -> int:
        n = super().copy_range(src_fd, dst_fd, length, src_offset, dst_offset)
        self._count(dst_fd, n)
        return n


@pytest.mark.parametrize("keep_undo", [True, False])
def test_without_undo_each_byte_is_written_once(tmp_path: Path, keep_undo: bool) -> None:
    """The base's overwritten slots: saved first with undo data, not at all without."""
    vm = linear(tmp_path)
    plan = mg.plan_snapshot_delete(vm.folder, "one", keep_undo=keep_undo)
    counter = CountWrites()
    with fileio.use(counter):
        result = mg.run_merge(plan)
    before_images = [n for n in counter.created if n.endswith(".before")]
    total = sum(counter.bytes.values())
    assert result.bytes_written > 0
    if keep_undo:
        assert before_images
        assert total >= result.bytes_written + OVERWRITTEN
    else:
        assert not before_images
        # the data once, plus journal, header+map prefixes, maps and the .vbox (a few KiB)
        assert total <= result.bytes_written + 256 * 1024, (total, result.bytes_written)
    assert counter.bytes.get("vm.vdi", 0) >= result.bytes_written
    assert_all_states(vm, deleted={vm.snap("one").uuid})


def test_no_undo_plan_needs_no_room_for_before_images(tmp_path: Path) -> None:
    vm = linear(tmp_path)
    kept = mg.plan_snapshot_delete(vm.folder, "one")
    bare = mg.plan_snapshot_delete(vm.folder, "one", keep_undo=False)
    step_kept, step_bare = kept.steps[0], bare.steps[0]
    assert step_kept.direction == step_bare.direction == "backward"
    # the before-images of the overwritten 1 MiB slots, in records with 40-byte heads
    assert step_kept.costs[0].temp_space - step_bare.costs[0].temp_space >= OVERWRITTEN
    assert kept.space.peak_extra - bare.space.peak_extra >= OVERWRITTEN
    assert bare.space.undo_bytes == 0 and not bare.space.keep_undo


def test_plan_survives_the_journal(tmp_path: Path) -> None:
    """Recovery runs the plan stored in the journal: it must come back whole."""
    vm = linear(tmp_path, saved=True)
    for name, direction in (("two", "forward"), ("two", "backward"), ("one", "auto")):
        plan = mg.plan_snapshot_delete(vm.folder, name, direction=direction, keep_undo=False)
        again = mg.MergePlan.from_dict(plan.to_dict())
        first, second = plan.to_dict(), again.to_dict()
        first.pop("space")
        second.pop("space")
        assert first == second

        def bare(steps: tuple[mg.DiskStep, ...]) -> list[mg.DiskStep]:
            return [dataclasses.replace(st, costs=()) for st in steps]  # seconds are rounded

        assert bare(again.steps) == bare(plan.steps)
        assert again.extra_removed == plan.extra_removed
        assert again.vbox_sha256 == plan.vbox_sha256 and not again.keep_undo


def _outcome(vm: VmBuilder, name: str) -> str:
    snaps, _, _ = vbox_states(vm.vbox_path())
    assert not jr.journal_path(vm.folder).exists()
    if vm.snap(name).uuid in snaps:
        assert_all_states(vm)
        return "rolled back"
    assert_all_states(vm, deleted={vm.snap(name).uuid})
    return "completed"


def _journal_past_planned(folder: Path) -> bool:
    journal = jr.Journal.load(folder)
    return journal is not None and journal.rolls_forward()


@pytest.mark.parametrize(("name", "direction"), [("one", "auto"), ("two", "forward")])
def test_process_death_at_every_call_is_finished(
    shm: Path,  # noqa: F811
    template: VmBuilder,  # noqa: F811
    name: str,
    direction: str,
    qemu_img: str,
) -> None:
    """Killed at every file-changing call: once the journal is durable, always finished."""
    ref = clone(template, shm / "ref")
    counter = Interrupt()
    with fileio.use(counter):
        mg.run_merge(
            mg.plan_snapshot_delete(ref.folder, name, direction=direction, keep_undo=False)
        )
    total = counter.calls
    shutil.rmtree(ref.folder)
    outcomes: dict[str, int] = {}
    for k in range(1, total + 1):
        vm = clone(template, shm / f"k{k}")
        plan = mg.plan_snapshot_delete(vm.folder, name, direction=direction, keep_undo=False)
        injector = Interrupt(k)
        with fileio.use(injector), pytest.raises(SimulatedCrash):
            mg.run_merge(plan)
        must_finish = _journal_past_planned(vm.folder)
        result = jr.recover_pending(vm.folder)
        outcome = _outcome(vm, name)
        if must_finish:
            assert result is not None and result.action == "completed", (k, result)
            assert outcome == "completed", k
        if k % 7 == 0 or k == total:
            assert_check_clean(vm.folder, qemu_img)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        shutil.rmtree(vm.folder)
    assert outcomes.get("rolled back", 0) >= 3 and outcomes.get("completed", 0) > 10, outcomes


def test_io_error_after_the_point_of_no_return_leaves_it_to_recovery(
    shm: Path,  # noqa: F811
    template: VmBuilder,  # noqa: F811
) -> None:
    """Disk full at every call: rolled back while possible, else finished by the next command."""
    ref = clone(template, shm / "ref")
    counter = Interrupt()
    with fileio.use(counter):
        mg.run_merge(mg.plan_snapshot_delete(ref.folder, "one", keep_undo=False))
    total = counter.calls
    shutil.rmtree(ref.folder)
    seen: dict[str, int] = {}
    for k in range(1, total + 1, 2):
        vm = clone(template, shm / f"e{k}")
        plan = mg.plan_snapshot_delete(vm.folder, "one", keep_undo=False)
        injector = Interrupt(k, lambda: OSError(28, "No space left on device"))
        with fileio.use(injector):
            try:
                mg.run_merge(plan)
                kind = "finished"
            except OSError:
                kind = "raised"
            except VdiError as exc:
                assert "finishes it" in str(exc), exc
                assert jr.journal_path(vm.folder).exists()
                kind = "left to recovery"
        seen[kind] = seen.get(kind, 0) + 1
        result = jr.recover_pending(vm.folder)
        outcome = _outcome(vm, "one")
        if kind == "left to recovery":
            assert result is not None and result.action == "completed"
            assert outcome == "completed"
        shutil.rmtree(vm.folder)
    assert seen.get("left to recovery", 0) >= 2 and seen.get("raised", 0) >= 2, seen


def _cancel_when_merging(token: CancelToken) -> Callable[[Progress], None]:
    def progress(p: Progress) -> None:
        if p.phase.startswith("merging"):
            token.cancel()

    return progress


def test_cancel_is_honoured_until_the_first_overwrite(tmp_path: Path) -> None:
    """Backward into the base overwrites in place: the deletion runs to its end. Forward
    only appends: the cancel rolls it back."""
    vm = linear(tmp_path / "a")
    token = CancelToken()
    result = mg.run_merge(
        mg.plan_snapshot_delete(vm.folder, "one", keep_undo=False),
        progress=_cancel_when_merging(token),
        cancel=token,
    )
    assert token.cancelled and not result.undoable
    assert_all_states(vm, deleted={vm.snap("one").uuid})

    vm = linear(tmp_path / "b")
    token = CancelToken()
    plan = mg.plan_snapshot_delete(vm.folder, "two", direction="forward", keep_undo=False)
    with pytest.raises(OperationCancelled, match="rolled back"):
        mg.run_merge(plan, progress=_cancel_when_merging(token), cancel=token)
    assert not jr.journal_path(vm.folder).exists()
    assert_all_states(vm)


def _crash_mid_copy(vm: VmBuilder) -> None:
    """Process death half-way through the file-changing calls of a no-undo deletion of one."""
    plan = mg.plan_snapshot_delete(vm.folder, "one", keep_undo=False)
    counter = Interrupt()
    scratch = vm.folder.parent / "count"
    shutil.copytree(vm.folder, scratch)
    with fileio.use(counter):
        mg.run_merge(mg.plan_snapshot_delete(scratch, "one", keep_undo=False))
    shutil.rmtree(scratch)
    with fileio.use(Interrupt(counter.calls // 2)), pytest.raises(SimulatedCrash):
        mg.run_merge(plan)
    assert _journal_past_planned(vm.folder)


def test_recovery_refuses_a_vbox_changed_since(tmp_path: Path) -> None:
    vm = linear(tmp_path)
    _crash_mid_copy(vm)
    vbox = vm.vbox_path()
    vbox.write_bytes(vbox.read_bytes().replace(b'RAMSize="1024"', b'RAMSize="2048"', 1))
    with pytest.raises(VdiError, match="changed since"):
        jr.recover_pending(vm.folder)
    assert jr.journal_path(vm.folder).exists()  # nothing decided: the journal stays


def test_recovery_needs_the_unchanged_source(tmp_path: Path) -> None:
    vm = linear(tmp_path)
    _crash_mid_copy(vm)
    source = mg.MergePlan.from_dict(jr.Journal.load(vm.folder).data["plan"])  # type: ignore[union-attr]
    child = source.steps[0].source
    assert child is not None
    moved = child.path.with_name("elsewhere.vdi")
    child.path.rename(moved)
    with pytest.raises(VdiError, match="source image"):
        jr.recover_pending(vm.folder)
    moved.rename(child.path)
    result = jr.recover_pending(vm.folder)
    assert result is not None and result.action == "completed"
    assert_all_states(vm, deleted={vm.snap("one").uuid})
