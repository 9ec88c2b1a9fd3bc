"""Crash and I/O-error injection at every write step of a deletion, a merge and a repair.

Every file-changing call (pwrite, pwritev, write, ftruncate, fsync, replace, link, unlink)
is counted; the k-th one raises, for every k until the operation runs through. A
``SimulatedCrash`` (a BaseException, like a kill: no handler of the operation runs) leaves
the folder as a power cut would, and the next run's recovery must roll back or complete;
an ``OSError`` (disk full) must be rolled back by the operation itself. Afterwards every
snapshot state and the current state must read exactly as modelled.
"""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from vmbuild import VmBuilder, assert_all_states, vbox_states

from vdigui.engine.operations import journal as jr
from vdigui.engine.operations import merge as mg

WRITE_CALLS = ("pwrite", "pwritev", "write", "ftruncate", "fsync", "replace", "link", "unlink",
               "copy_file_range")


class SimulatedCrash(BaseException):
    """The process died here."""


def _no_fsync(fd: int) -> None:
    """Counted as a step, but not executed: a simulated crash keeps the page cache anyway."""


def inject(monkeypatch: pytest.MonkeyPatch, k: int, make: Callable[[], BaseException]
           ) -> dict[str, int]:
    counter = {"n": 0}
    for name in WRITE_CALLS:
        original = getattr(os, name)

        def wrapper(*args: object, _original: Callable[..., object] = original,
                    **kwargs: object) -> object:
            counter["n"] += 1
            if counter["n"] == k:
                raise make()
            return _original(*args, **kwargs)

        monkeypatch.setattr(os, name, wrapper)
    return counter


@pytest.fixture(autouse=True)
def _fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """No real fsync (in-process crashes keep the page cache) and no /proc scan: speed."""
    monkeypatch.setattr(os, "fsync", _no_fsync)
    monkeypatch.setattr(mg, "running_hint", lambda folder: None)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> VmBuilder:
    vm = VmBuilder(tmp_path_factory.mktemp("tpl") / "vm", ndisks=2)
    for d in (0, 1):  # two disks: a crash can fall between the two merges
        vm.scribble([0, 1, 2, 3, 5], disk=d)
    vm.take_snapshot("one", saved_state=True)
    for d in (0, 1):
        vm.scribble([1, 2, 7], disk=d)
        vm.scribble([3], zero=True, disk=d)
        vm.scribble([9], partial=True, disk=d)
    vm.take_snapshot("two", saved_state=True)
    for d in (0, 1):
        vm.scribble([2, 10], disk=d)
        vm.scribble([5], zero=True, disk=d)
    return vm


def clone(vm: VmBuilder, dest: Path) -> VmBuilder:
    shutil.copytree(vm.folder, dest)
    other = copy.copy(vm)
    other.folder = dest
    return other


def visible_files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")
            if p.is_file() and ".vdigui" not in p.parts and not p.name.endswith("-prev")}


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


@pytest.mark.parametrize(("name", "direction", "kind", "stride"), [
    ("one", "auto", "crash", 1),
    ("two", "forward", "crash", 2),
    ("two", "backward", "oserror", 3),
])
def test_interrupt_deletion_at_every_step(tmp_path: Path,
                                          template: VmBuilder, name: str, direction: str,
                                          kind: str, stride: int) -> None:
    """Every k (base case), every 2nd (forward) or 3rd (I/O errors) k: same phases, cheaper."""
    make: Callable[[], BaseException] = (SimulatedCrash if kind == "crash" else
                                         lambda: OSError(28, "No space left on device"))
    outcomes: dict[str, int] = {}
    k = 1
    while True:
        vm = clone(template, tmp_path / f"k{k}")
        before = visible_files(vm.folder)
        plan = mg.plan_snapshot_delete(vm.folder, name, direction=direction)
        finished = False
        with pytest.MonkeyPatch.context() as mp:
            counter = inject(mp, k, make)
            try:
                mg.run_merge(plan)
                finished = True
            except (SimulatedCrash, OSError):
                pass
        result = jr.recover_pending(vm.folder)
        if kind == "oserror" and result is not None:
            # only an error after the commit point (or one that changed nothing) may leave
            # work for the next run
            assert result.action == "completed" or not result.notes
        outcome = check_after(vm, name, before)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        shutil.rmtree(vm.folder)
        if finished and counter["n"] < k:
            break
        k += stride
    assert outcomes.get("rolled back", 0) > 5 and outcomes.get("completed", 0) >= 2, outcomes


def test_interrupted_undo_is_completed(tmp_path: Path, template: VmBuilder) -> None:
    for k in range(1, 40, 4):
        vm = clone(template, tmp_path / f"u{k}")
        mg.run_merge(mg.plan_snapshot_delete(vm.folder, "two"))
        with pytest.MonkeyPatch.context() as mp:
            inject(mp, k, SimulatedCrash)
            try:
                jr.undo_last(vm.folder)
            except SimulatedCrash:
                pass
        jr.recover_pending(vm.folder)
        snaps, _, _ = vbox_states(vm.vbox_path())
        if vm.snap("two").uuid in snaps:
            assert_all_states(vm)
        else:  # crashed before the undo journal existed: nothing was undone
            assert_all_states(vm, deleted={vm.snap("two").uuid})
        shutil.rmtree(vm.folder)


def test_interrupt_repair_at_every_step(tmp_path: Path, template: VmBuilder) -> None:
    """set-uuid rewrites a header, a child's link and the .vbox: all or nothing."""
    from vdigui.engine.operations import repair as rp
    k = 1
    while True:
        vm = clone(template, tmp_path / f"r{k}")
        middle = vm.disks[vm.snap("two").disks[0]].path.name
        path = vm.folder / "Snapshots" / middle
        before = path.read_bytes()[:512], vm.vbox_path().read_bytes()
        plan = rp.plan_set_uuid(path)
        finished = False
        with pytest.MonkeyPatch.context() as mp:
            counter = inject(mp, k, SimulatedCrash)
            try:
                rp.run_repair(plan)
                finished = True
            except SimulatedCrash:
                pass
        result = jr.recover_pending(vm.folder)
        after = path.read_bytes()[:512], vm.vbox_path().read_bytes()
        if result is not None and result.action == "rolled back":
            assert after == before
        assert_all_states(vm)  # either way every state reads as before
        shutil.rmtree(vm.folder)
        if finished and counter["n"] < k:
            break
        k += 2
