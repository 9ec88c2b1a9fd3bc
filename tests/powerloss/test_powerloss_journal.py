"""Power loss during the journaled operations: snapshot deletion, bare merge, repairs,
set-uuid and undo -- and during their recovery (a second cut).

The user's next command on the folder runs ``journal.recover_pending(folder)`` first (every
writing vdictl command does). Acceptable afterwards: no journal is left, and the folder is
exactly as before the operation or exactly as the finished operation leaves it -- every
snapshot state and the current state read with ``vmbuild.read_state`` as the model says,
never a mixture.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from crashsim import Leftover, explore, record
from opshelpers import assert_qemu_clean
from plcheck import finish, vdictl
from vmbuild import (
    MIB,
    VmBuilder,
    assert_all_states,
    read_header_fields,
    read_state,
    vbox_states,
)

from vdigui.engine import create_image, open_paths
from vdigui.engine.operations import journal as jr
from vdigui.engine.operations import merge as mg
from vdigui.engine.operations import repair as rp

#: qemu-img, the oracle for every base image after recovery (set per test by a fixture).
QEMU_IMG: list[str | None] = [None]


@pytest.fixture(autouse=True)
def _setup(monkeypatch: pytest.MonkeyPatch, qemu_img: str) -> None:
    """No /proc scan for a running VM (not what these tests are about; costs time); qemu."""
    monkeypatch.setattr(mg, "running_hint", lambda folder: None)
    QEMU_IMG[0] = qemu_img


def small_vm(folder: Path, ndisks: int = 1) -> VmBuilder:
    """Two snapshots with saved states; rewritten, zeroed and partly written blocks."""
    vm = VmBuilder(folder, disk_size=6 * MIB, ndisks=ndisks)
    for d in range(ndisks):
        vm.scribble([0, 1, 2, 4], disk=d)
    vm.take_snapshot("one", saved_state=True)
    for d in range(ndisks):
        vm.scribble([1, 2], disk=d)
        vm.scribble([3], zero=True, disk=d)
        vm.scribble([5], partial=True, disk=d)
    vm.take_snapshot("two", saved_state=True)
    for d in range(ndisks):
        vm.scribble([2], disk=d)
        vm.scribble([4], zero=True, disk=d)
    return vm


def _temporary(name: str) -> bool:
    return ".vdigui-tmp" in name or name.endswith("-tmp") or ".new" in name


def visible(folder: Path) -> dict[str, str]:
    """What the user and VirtualBox see: every file but vdigui's state folder, the settings
    backup VirtualBox itself keeps (``-prev``) and temporary files (reported as leftovers),
    with a digest of its bytes."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if (
            not p.is_file()
            or jr.STATE_DIR in rel.parts
            or p.name.endswith("-prev")
            or _temporary(p.name)
        ):
            continue
        out[rel.as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def no_leftovers(folder: Path) -> None:
    found = [
        p.name
        for p in folder.rglob("*")
        if p.is_file() and jr.STATE_DIR not in p.relative_to(folder).parts and _temporary(p.name)
    ]
    if found:
        raise Leftover(f"the recovery left {found}")


def recover_and_classify(
    folder: Path,
    before: dict[str, str],
    after: dict[str, str],
    extra: Callable[[str], None] | None = None,
    checked: tuple[str, ...] = ("rolled back", "completed"),
) -> str:
    """The user's next command, then: exactly the old folder or exactly the new one, which
    ``vdictl check`` finds clean (for the ``checked`` outcomes: a repair's "before" is the
    broken folder it repairs)."""
    jr.recover_pending(folder)
    assert not jr.journal_path(folder).exists(), "the journal is still there after recovery"
    now = visible(folder)
    outcome = "rolled back" if now == before else "completed" if now == after else None
    if outcome is None:
        changed = sorted(
            k
            for k in set(now) | set(before) | set(after)
            if now.get(k) not in (before.get(k), after.get(k))
        )
        mixed = sorted(k for k in now if now.get(k) == before.get(k) != after.get(k))
        newer = sorted(k for k in now if now.get(k) == after.get(k) != before.get(k))
        raise AssertionError(
            f"the folder is neither as before nor as after: files matching "
            f"neither {changed}, old {mixed}, new {newer}"
        )
    if extra is not None:
        extra(outcome)
    if outcome in checked:
        for target in [folder] if any(folder.glob("*.vbox")) else sorted(folder.glob("*.vdi")):
            vdictl("check", target)
        if QEMU_IMG[0]:  # qemu reads VDI bases only
            for base in sorted(folder.glob("*.vdi")):
                if read_header_fields(base)["parent"] == uuidlib.UUID(int=0):
                    assert_qemu_clean(QEMU_IMG[0], base)
    no_leftovers(folder)
    return outcome


def run_journaled(
    name: str,
    root: Path,
    folder: Path,
    operation: Callable[[], object],
    states_check: Callable[[str], None] | None,
    *,
    seed: int,
    max_states: int = 160,
    nested: int = 3,
    checked: tuple[str, ...] = ("rolled back", "completed"),
) -> None:
    before = visible(folder)
    rec, error = record(root, operation)
    assert error is None, error
    after = visible(folder)
    assert after != before, "the operation changed nothing"

    def check(_state: object) -> str:
        return recover_and_classify(folder, before, after, states_check, checked)

    # Second cuts at spread points, and right at each commit point (the settings file's
    # rename), where recovery has the most to decide.
    commits = [e.seq for e in rec.events if e.kind == "rename" and e.dst.endswith(".vbox")]
    report = explore(
        name,
        root,
        rec,
        check,
        seed=seed,
        per_barrier=5,
        max_states=max_states,
        recover=lambda: jr.recover_pending(folder),
        nested=nested,
        outer_points=commits,
    )
    finish(report)
    assert report.outcomes.get("rolled back", 0) and report.outcomes.get("completed", 0), (
        report.outcomes
    )


# -- snapshot deletion and merges -------------------------------------------------------------
@pytest.mark.parametrize(
    ("snap", "direction", "ndisks", "keep_undo"),
    [
        ("one", "auto", 2, True),
        ("two", "forward", 1, True),
        ("two", "backward", 1, True),
        ("two", "auto", 1, False),
    ],
)
def test_snapshot_delete(
    shm_root: Path, snap: str, direction: str, ndisks: int, keep_undo: bool
) -> None:
    vm = small_vm(shm_root / "vm", ndisks)
    uid = vm.snap(snap).uuid
    plan = mg.plan_snapshot_delete(vm.folder, snap, direction=direction, keep_undo=keep_undo)

    def states(outcome: str) -> None:
        assert_all_states(vm, deleted=set() if outcome == "rolled back" else {uid})

    undo = "" if keep_undo else ", no undo"
    run_journaled(
        f"snapshot delete {snap} ({direction}{undo})",
        shm_root,
        vm.folder,
        lambda: mg.run_merge(plan),
        states,
        seed=11,
    )


@pytest.mark.parametrize(
    ("mode", "keep_undo"),
    [("into-parent", True), ("parent-into-this", True), ("into-parent", False)],
)
def test_bare_merge(shm_root: Path, mode: str, keep_undo: bool) -> None:
    """A chain of three in a folder without a .vbox: merge the leaf with its parent."""
    vm = small_vm(shm_root / "vm")
    bare = shm_root / "bare"
    (bare / "Snapshots").mkdir(parents=True)
    leaf_uid = vm.leaves[0]
    chain = [
        vm.disks[vm.snap("one").disks[0]],
        vm.disks[vm.snap("two").disks[0]],
        vm.disks[leaf_uid],
    ]  # base, middle, leaf
    for disk, name in zip(chain, ("layer0.vdi", "layer1.vdi", "leaf.vdi"), strict=True):
        shutil.copy(disk.path, bare / name)
    shutil.rmtree(vm.folder)
    expected = vm.content[0]
    assert np.array_equal(read_state(bare, leaf_uid), expected)
    plan = mg.plan_merge(bare / "leaf.vdi", mode=mode, keep_undo=keep_undo)

    def states(outcome: str) -> None:
        leaf = leaf_uid
        if outcome == "completed" and mode == "into-parent":
            leaf = read_header_fields(plan.steps[0].target.path)["uuid"]  # type: ignore[union-attr,assignment]
        assert np.array_equal(read_state(bare, leaf), expected), "the leaf reads differently"

    run_journaled(
        f"bare merge ({mode}{'' if keep_undo else ', no undo'})",
        shm_root,
        bare,
        lambda: mg.run_merge(plan),
        states,
        seed=12,
    )


# -- repairs ------------------------------------------------------------------------------
def linear(folder: Path) -> VmBuilder:
    vm = VmBuilder(folder, disk_size=6 * MIB)
    vm.scribble([0, 1, 2, 3])
    vm.take_snapshot("one")
    vm.scribble([1, 4])
    vm.take_snapshot("two")
    vm.scribble([2, 5])
    return vm


def poke(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _slots(root: Path) -> tuple[Path, Callable[[], object], Callable[[str], None] | None]:
    folder = root / "bare"
    folder.mkdir()
    path = folder / "d.vdi"
    create_image(path, 12 * MIB)
    rng = np.random.default_rng(3)
    with open_paths([path], writable_top=True) as chain:
        for b in range(6):
            chain.write(b * MIB, rng.integers(0, 256, MIB, np.uint8).tobytes())
    off = read_header_fields(path)["off_blocks"]
    poke(path, off + 4 * 7, struct.pack("<I", 2))  # cross-linked  # type: ignore[operator]
    poke(path, off + 4 * 8, struct.pack("<I", 100))  # past EOF  # type: ignore[operator]
    poke(path, 0x184, struct.pack("<I", 3))  # wrong cBlocksAllocated
    with open(path, "ab") as fh:
        fh.write(b"\xaa" * MIB)  # crash tail
    plan = rp.plan_repair(path)
    assert [f.kind for f in plan.fixes] == ["slots"]
    return folder, lambda: rp.run_repair(plan), None


def _vm_repair(
    kind: str,
) -> Callable[[Path], tuple[Path, Callable[[], object], Callable[[str], None] | None]]:
    def setup(root: Path) -> tuple[Path, Callable[[], object], Callable[[str], None] | None]:
        vm = linear(root / "vm")
        search: list[Path] | None = None
        choose: Callable[[rp.RepairPlan], set[str] | None] = lambda plan: None  # noqa: E731
        force = False
        check: Callable[[str], None] | None = lambda outcome: assert_all_states(vm)  # noqa: E731
        if kind == "base-type":
            poke(vm.folder / "vm.vdi", 0x4C, struct.pack("<I", 4))
            check = None  # before, the base says "differencing": registry_ok fails by design
        elif kind in ("header-uuid", "registry-uuid"):
            poke(vm.disks[vm.leaves[0]].path, 0x188, uuidlib.uuid4().bytes_le)
            if kind == "registry-uuid":
                choose = lambda plan: {plan.fixes[1].id}  # noqa: E731
            check = None  # one side of the disagreement is wrong before the repair
        elif kind == "new-uuid":
            shutil.copy(vm.folder / "vm.vdi", vm.folder / "copy-of-vm.vdi")
        elif kind in ("relocate", "drop-entry"):
            leaf = vm.disks[vm.leaves[0]].path
            if kind == "relocate":
                search = [root / "found"]
                search[0].mkdir()
                shutil.move(leaf, search[0] / leaf.name)
            else:
                leaf.unlink()
                force = True
            check = None  # the registry names a missing file before the repair
        elif kind in ("register-orphan", "quarantine-orphan"):
            orphan = vm.folder / "Snapshots" / f"{{{uuidlib.uuid4()}}}.vdi"
            create_image(orphan, parent=vm.disks[vm.leaves[0]].path)
            if kind == "quarantine-orphan":
                choose = lambda plan: {plan.fixes[1].id}  # noqa: E731
        elif kind == "relink":
            folder = root / "bare"
            folder.mkdir()
            base, child = folder / "base.vdi", folder / "child.vdi"
            shutil.copy(vm.folder / "vm.vdi", base)
            shutil.copy(vm.disks[vm.snap("two").disks[0]].path, child)
            poke(base, 0x188, uuidlib.uuid4().bytes_le)
            shutil.rmtree(vm.folder)
            plan = rp.plan_repair(child)
            assert [f.kind for f in plan.fixes] == ["relink"]
            return folder, lambda: rp.run_repair(plan), None
        elif kind == "set-uuid":
            plan = rp.plan_set_uuid(vm.disks[vm.snap("two").disks[0]].path, uuidlib.uuid4())
            return vm.folder, lambda: rp.run_repair(plan), check
        plan = rp.plan_repair(vm.folder, search_dirs=search)
        kinds = [f.kind for f in plan.fixes]
        assert kind in kinds, kinds
        return vm.folder, lambda: rp.run_repair(plan, choose=choose(plan), force=force), check

    return setup


REPAIRS = {
    "slots": _slots,
    **{
        k: _vm_repair(k)
        for k in (
            "base-type",
            "relink",
            "header-uuid",
            "registry-uuid",
            "new-uuid",
            "relocate",
            "drop-entry",
            "register-orphan",
            "quarantine-orphan",
            "set-uuid",
        )
    },
}


@pytest.mark.parametrize("kind", list(REPAIRS))
def test_repair(shm_root: Path, kind: str) -> None:
    folder, operation, states = REPAIRS[kind](shm_root)
    name = "set-uuid" if kind == "set-uuid" else f"repair {kind}"
    # vdictl check must pass where the folder is healthy on both sides; a repair's "before"
    # is broken by design, and some "after"s keep a finding (new-uuid leaves an unregistered
    # copy), so there the exact before/after comparison stands alone.
    checked = ("rolled back", "completed") if kind == "set-uuid" else ()
    run_journaled(
        name, shm_root, folder, operation, states, seed=13, max_states=40, nested=1, checked=checked
    )


# -- undo ---------------------------------------------------------------------------------
@pytest.mark.parametrize("what", ["snapshot-delete", "set-uuid"])
def test_undo(shm_root: Path, what: str) -> None:
    vm = small_vm(shm_root / "vm")
    uid = vm.snap("two").uuid
    if what == "snapshot-delete":
        mg.run_merge(mg.plan_snapshot_delete(vm.folder, "two"))
        gone = {uid}
    else:
        rp.run_repair(rp.plan_set_uuid(vm.disks[vm.snap("two").disks[0]].path))
        gone = set()

    def states(outcome: str) -> None:
        # "rolled back" = the undo did not happen (the deletion stands)
        assert_all_states(vm, deleted=gone if outcome == "rolled back" else set())
        snaps, _, _ = vbox_states(vm.vbox_path())
        assert (uid in snaps) == (outcome == "completed" or not gone)

    run_journaled(
        f"undo of {what}",
        shm_root,
        vm.folder,
        lambda: jr.undo_last(vm.folder),
        states,
        seed=14,
        max_states=120,
    )
