"""Process death and I/O errors during a snapshot deletion, an undo and a repair.

Three kinds of interruption, all through the one I/O boundary (``vdigui.engine.fileio``),
every file-changing call counted (creating open, write, pwritev, copy_file_range, truncate,
fsync, fdatasync, replace, link, unlink, mkdir, rmdir, directory fsync):

- ``SimulatedCrash`` at call k, in process: a BaseException, so no handler of the operation
  runs, and every later call dies too (a ``finally`` cannot tidy up after a dead process).
  Real fsyncs run: this models a process death, where the page cache survives. Power loss,
  where it does not, is tests/powerloss.
- ``OSError`` (disk full) at call k: the operation must roll itself back.
- a real ``vdictl snapshot delete`` killed with SIGKILL just before its N-th call
  (tests/powerloss/kill_driver.py), N below the total of an uninterrupted run.

Every k below the measured total must interrupt the run: a run that finishes before the
injected point fails the test. Afterwards the recovery every writing command runs first
(``recover_pending``) must leave every snapshot state and the current state exactly as
modelled (``vmbuild``): as before, or as after the operation.
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from vmbuild import MIB, VmBuilder, assert_all_states, vbox_states

from vdigui.engine import fileio
from vdigui.engine.operations import journal as jr
from vdigui.engine.operations import merge as mg

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "powerloss"))
from killrun import kill_mid, kill_points, total_calls

COUNTED = (
    "open",
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


class SimulatedCrash(BaseException):
    """The process died here."""


class Interrupt(fileio.FileOps):
    """Counts file-changing calls; at call ``at`` raises ``make()`` instead of performing it.

    After a SimulatedCrash every further call raises it again: the process is dead.
    """

    def __init__(self, at: int = 0, make: Callable[[], BaseException] = SimulatedCrash) -> None:
        self.calls = 0
        self.at = at
        self.make = make
        self.fired = False

    def tick(self, name: str, flags: int) -> None:
        if self.fired and self.make is SimulatedCrash:
            raise SimulatedCrash
        if name == "open" and not flags & (os.O_CREAT | os.O_TRUNC):
            return
        self.calls += 1
        if self.calls == self.at:
            self.fired = True
            raise self.make()


def _interrupting(name: str) -> Callable[..., object]:
    real = getattr(fileio.FileOps, name)

    def method(self: Interrupt, *args: object) -> object:
        self.tick(name, int(args[1]) if name == "open" else -1)  # type: ignore[call-overload]
        return real(self, *args)

    return method


for _name in COUNTED:
    setattr(Interrupt, _name, _interrupting(_name))


@pytest.fixture(autouse=True)
def _no_proc_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    """No /proc scan for a running VM: not what these tests are about, and it costs time."""
    monkeypatch.setattr(mg, "running_hint", lambda folder: None)


@pytest.fixture
def shm(tmp_path: Path) -> Iterator[Path]:
    """tmpfs where available: real fsyncs, hundreds of runs."""
    base = Path("/dev/shm")
    if not (base.is_dir() and os.access(base, os.W_OK)):
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="vdigui-merge-", dir=base))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> VmBuilder:
    vm = VmBuilder(tmp_path_factory.mktemp("tpl") / "vm", ndisks=2, disk_size=8 * MIB)
    for d in (0, 1):  # two disks: a crash can fall between the two merges
        vm.scribble([0, 1, 2, 3, 5], disk=d)
    vm.take_snapshot("one", saved_state=True)
    for d in (0, 1):
        vm.scribble([1, 2, 7], disk=d)
        vm.scribble([3], zero=True, disk=d)
        vm.scribble([6], partial=True, disk=d)
    vm.take_snapshot("two", saved_state=True)
    for d in (0, 1):
        vm.scribble([2, 4], disk=d)
        vm.scribble([5], zero=True, disk=d)
    return vm


def clone(vm: VmBuilder, dest: Path) -> VmBuilder:
    shutil.copytree(vm.folder, dest)
    other = copy.copy(vm)
    other.folder = dest
    other.disks = {u: copy.copy(d) for u, d in vm.disks.items()}
    for d in other.disks.values():
        d.path = dest / d.path.relative_to(vm.folder)
    return other


def visible_files(folder: Path) -> set[str]:
    return {
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and jr.STATE_DIR not in p.parts and not p.name.endswith("-prev")
    }


def check_after(vm: VmBuilder, name: str, before: set[str]) -> str:
    snaps, _, _ = vbox_states(vm.vbox_path())
    uid = vm.snap(name).uuid
    assert not jr.journal_path(vm.folder).exists()
    if uid in snaps:
        assert_all_states(vm)
        assert visible_files(vm.folder) == before
        return "rolled back"
    assert_all_states(vm, deleted={uid})
    assert visible_files(vm.folder) < before
    return "completed"


def measure(vm: VmBuilder, operation: Callable[[], object]) -> int:
    """File-changing calls of an uninterrupted run on a copy."""
    counter = Interrupt()
    with fileio.use(counter):
        operation()
    return counter.calls


@pytest.mark.parametrize(
    ("name", "direction", "kind", "stride"),
    [
        ("one", "auto", "crash", 2),
        ("two", "forward", "crash", 3),
        ("two", "backward", "oserror", 3),
    ],
)
def test_interrupt_deletion_at_every_step(
    shm: Path, template: VmBuilder, name: str, direction: str, kind: str, stride: int
) -> None:
    """Every 2nd k (base case) or every 3rd k (forward, I/O errors): the same phases, cheaper."""
    make: Callable[[], BaseException] = (
        SimulatedCrash if kind == "crash" else lambda: OSError(28, "No space left on device")
    )
    ref = clone(template, shm / "ref")
    total = measure(
        ref, lambda: mg.run_merge(mg.plan_snapshot_delete(ref.folder, name, direction=direction))
    )
    shutil.rmtree(ref.folder)
    assert total > 20
    outcomes: dict[str, int] = {}
    for k in range(1, total + 1, stride):
        vm = clone(template, shm / f"k{k}")
        before = visible_files(vm.folder)
        plan = mg.plan_snapshot_delete(vm.folder, name, direction=direction)
        injector = Interrupt(k, make)
        with fileio.use(injector):
            try:
                mg.run_merge(plan)
            except (SimulatedCrash, OSError):
                pass
        assert injector.fired, f"the run finished before call {k} of {total}"
        result = jr.recover_pending(vm.folder)
        if kind == "oserror":
            # the operation rolled itself back, unless the error came after the commit point
            # or hit the rollback's own last steps (a journal left with nothing to undo)
            assert result is None or result.action == "completed" or not result.notes, result
        outcome = check_after(vm, name, before)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        shutil.rmtree(vm.folder)
    assert outcomes.get("rolled back", 0) > 5 and outcomes.get("completed", 0) >= 1, outcomes


def test_interrupted_undo_is_completed_or_not_begun(shm: Path, template: VmBuilder) -> None:
    ref = clone(template, shm / "ref")
    mg.run_merge(mg.plan_snapshot_delete(ref.folder, "two"))
    total = measure(ref, lambda: jr.undo_last(ref.folder))
    shutil.rmtree(ref.folder)
    for k in range(1, total + 1, 3):
        vm = clone(template, shm / f"u{k}")
        mg.run_merge(mg.plan_snapshot_delete(vm.folder, "two"))
        injector = Interrupt(k)
        with fileio.use(injector):
            try:
                jr.undo_last(vm.folder)
            except SimulatedCrash:
                pass
        assert injector.fired, f"the undo finished before call {k} of {total}"
        jr.recover_pending(vm.folder)
        snaps, _, _ = vbox_states(vm.vbox_path())
        if vm.snap("two").uuid in snaps:
            assert_all_states(vm)
        else:  # crashed before the undo journal existed: nothing was undone
            assert_all_states(vm, deleted={vm.snap("two").uuid})
        shutil.rmtree(vm.folder)


def test_interrupt_set_uuid_at_every_step(shm: Path, template: VmBuilder) -> None:
    """set-uuid rewrites a header, a child's link and the .vbox: all or nothing."""
    from vdigui.engine.operations import repair as rp

    def target(vm: VmBuilder) -> Path:
        return vm.folder / "Snapshots" / vm.disks[vm.snap("two").disks[0]].path.name

    ref = clone(template, shm / "ref")
    total = measure(ref, lambda: rp.run_repair(rp.plan_set_uuid(target(ref))))
    shutil.rmtree(ref.folder)
    for k in range(1, total + 1, 2):
        vm = clone(template, shm / f"r{k}")
        path = target(vm)
        before = path.read_bytes()[:512], vm.vbox_path().read_bytes()
        plan = rp.plan_set_uuid(path)
        injector = Interrupt(k)
        with fileio.use(injector):
            try:
                rp.run_repair(plan)
            except SimulatedCrash:
                pass
        assert injector.fired, f"set-uuid finished before call {k} of {total}"
        result = jr.recover_pending(vm.folder)
        after = path.read_bytes()[:512], vm.vbox_path().read_bytes()
        if result is not None and result.action == "rolled back":
            assert after == before
        assert_all_states(vm)  # either way every state reads as before
        shutil.rmtree(vm.folder)


def test_sigkill_mid_snapshot_delete(shm: Path, template: VmBuilder) -> None:
    """A real ``vdictl snapshot delete`` killed at calls spread over the whole run."""
    count = shm / "calls"
    ref = clone(template, shm / "ref")
    total = total_calls(["snapshot", "delete", str(ref.folder), "two"], count)
    shutil.rmtree(ref.folder)
    outcomes: dict[str, int] = {}
    done = []
    for n in kill_points(total, 6, seed=5):
        vm = clone(template, shm / f"k{n}")
        before = visible_files(vm.folder)
        done.append(kill_mid(["snapshot", "delete", str(vm.folder), "two"], n, count))
        jr.recover_pending(vm.folder)  # what the next writing command does first
        outcome = check_after(vm, "two", before)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        shutil.rmtree(vm.folder)
    print(f"snapshot delete: {total} calls; killed after {done}; {outcomes}")
    assert len(done) >= 5 and max(done) > total // 2, (done, total)
    assert outcomes.get("rolled back", 0) >= 2, outcomes
