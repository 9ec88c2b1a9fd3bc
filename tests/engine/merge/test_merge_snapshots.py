"""Snapshot deletion and bare merges: positions, directions, refusals, hostile settings, undo."""

from __future__ import annotations

import shutil
import uuid as uuidlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from vmbuild import (
    MIB,
    VmBuilder,
    WritesInto,
    assert_all_states,
    assert_check_clean,
    read_header_fields,
    read_state,
    vbox_states,
)

from vdigui.engine import (
    OperationCancelled,
    OperationRefused,
    VerificationError,
    create_image,
    fileio,
    open_paths,
)
from vdigui.engine.operations import journal as jr
from vdigui.engine.operations import merge as mg
from vdigui.engine.progress import CancelToken


def linear(tmp_path: Path, *, ndisks: int = 1, saved: bool = False, **kw: object) -> VmBuilder:
    """base -> one -> two -> three (current), with data, zero blocks and partial writes."""
    vm = VmBuilder(tmp_path / "vm", ndisks=ndisks, **kw)  # type: ignore[arg-type]
    for d in range(ndisks):
        vm.scribble([0, 1, 2, 3, 5, 8], disk=d)
    vm.take_snapshot("one", saved_state=saved)
    for d in range(ndisks):
        vm.scribble([1, 2, 7], disk=d)
        vm.scribble([3], zero=True, disk=d)
        vm.scribble([9, 0], partial=True, disk=d)
    vm.take_snapshot("two", saved_state=saved)
    for d in range(ndisks):
        vm.scribble([2, 10, 11], disk=d)
        vm.scribble([5, 12], zero=True, disk=d)
    vm.take_snapshot("three", saved_state=saved)
    for d in range(ndisks):
        vm.scribble([4, 1], disk=d)
        vm.scribble([7], zero=True, disk=d)
    return vm


def delete(vm: VmBuilder, name: str, **kw: object) -> mg.MergeResult:
    plan = mg.plan_snapshot_delete(vm.folder, name, **kw)  # type: ignore[arg-type]
    return mg.run_merge(plan)


def files_snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".vdigui" not in p.parts
    }


@pytest.mark.parametrize("name", ["one", "two", "three"])
@pytest.mark.parametrize("direction", ["auto", "forward", "backward"])
def test_delete_each_position_and_direction(tmp_path: Path, name: str, direction: str) -> None:
    vm = linear(tmp_path, ndisks=2, saved=True)
    snap = vm.snap(name)
    if name == "one" and direction == "forward":
        with pytest.raises(OperationRefused, match="always merged backward"):
            mg.plan_snapshot_delete(vm.folder, name, direction=direction)
        return
    result = delete(vm, name, direction=direction)
    assert_all_states(vm, deleted={snap.uuid})
    assert not (vm.folder / str(snap.state_file)).exists()
    others = [s for s in vm.snaps if s is not snap]
    assert all((vm.folder / str(s.state_file)).exists() for s in others)
    assert result.removed and not jr.journal_path(vm.folder).exists()
    _, _, current = vbox_states(vm.vbox_path())
    assert current == (vm.snap("two").uuid if name == "three" else vm.snap("three").uuid)


class FlipTargetWrite(WritesInto):
    """Performs every call, but flips one byte of the first data write into ``target``.

    Data writes of a merge are the ``pwritev`` calls on the target's descriptor (header and
    map entries go through ``pwrite``), so this corrupts real bytes between the copy and the
    verification, exactly what a bad disk or a bug in the copy loop would do.
    """

    def __init__(self, target: Path) -> None:
        super().__init__(target)
        self.flipped = 0

    def pwritev(self, fd: int, buffers: Sequence[bytes | memoryview], offset: int) -> int:
        if fd in self.fds and not self.flipped:
            first = bytearray(buffers[0])
            first[len(first) // 2] ^= 0x5A
            buffers = [first, *buffers[1:]]
            self.flipped += 1
        return super().pwritev(fd, buffers, offset)


@pytest.mark.parametrize(
    ("name", "direction"), [("one", "backward"), ("two", "backward"), ("two", "forward")]
)
def test_verification_catches_a_corrupted_write_and_rolls_back(
    tmp_path: Path, name: str, direction: str
) -> None:
    vm = linear(tmp_path)
    before = files_snapshot(vm.folder)
    plan = mg.plan_snapshot_delete(vm.folder, name, direction=direction)
    step = plan.steps[0]
    assert step.target is not None
    flip = FlipTargetWrite(step.target.path)
    with fileio.use(flip), pytest.raises(VerificationError, match="does not read back as"):
        mg.run_merge(plan)
    assert flip.flipped == 1
    assert files_snapshot(vm.folder) == before  # byte-identical, vm.vbox-prev included
    assert not jr.journal_path(vm.folder).exists()
    assert list((vm.folder / ".vdigui" / "backups").iterdir()) == []
    assert_all_states(vm)
    # the same plan without the corruption goes through, verified
    result = mg.run_merge(plan)
    assert result.verified
    assert_all_states(vm, deleted={vm.snap(name).uuid})


class BreakMapWrite(FlipTargetWrite):
    """Performs every call, but the first map-entry write into ``target`` says FREE instead."""

    def __init__(self, target: Path, map_start: int, map_end: int) -> None:
        super().__init__(target)
        self.map_start, self.map_end = map_start, map_end

    def pwritev(self, fd: int, buffers: Sequence[bytes | memoryview], offset: int) -> int:
        return fileio.FileOps.pwritev(self, fd, buffers, offset)

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        if fd in self.fds and not self.flipped and self.map_start <= offset < self.map_end:
            data = b"\xff\xff\xff\xff" + bytes(data)[4:]
            self.flipped += 1
        return super().pwrite(fd, data, offset)


@pytest.mark.parametrize(("name", "direction"), [("one", "backward"), ("two", "forward")])
def test_verification_catches_a_wrong_map_entry_and_rolls_back(
    tmp_path: Path, name: str, direction: str
) -> None:
    vm = linear(tmp_path)
    before = files_snapshot(vm.folder)
    plan = mg.plan_snapshot_delete(vm.folder, name, direction=direction)
    step = plan.steps[0]
    assert step.target is not None
    f = read_header_fields(step.target.path)
    start = int(f["off_blocks"])  # type: ignore[call-overload]
    broken = BreakMapWrite(step.target.path, start, start + 4 * int(f["blocks"]))  # type: ignore[call-overload]
    with fileio.use(broken), pytest.raises(VerificationError, match="maps guest block"):
        mg.run_merge(plan)
    assert broken.flipped == 1
    assert files_snapshot(vm.folder) == before
    assert_all_states(vm)


def test_no_verify_skips_the_check(tmp_path: Path) -> None:
    vm = linear(tmp_path)
    plan = mg.plan_snapshot_delete(vm.folder, "one")
    assert plan.steps[0].target is not None
    with fileio.use(FlipTargetWrite(plan.steps[0].target.path)):
        result = mg.run_merge(plan, verify=False)  # the corruption goes unnoticed
    assert not result.verified


def test_delete_all_snapshots_in_any_order_leaves_one_base(tmp_path: Path) -> None:
    vm = linear(tmp_path)
    deleted: set[uuidlib.UUID] = set()
    for name in ("two", "three", "one"):
        delete(vm, name)
        deleted.add(vm.snap(name).uuid)
        assert_all_states(vm, deleted=deleted)
    snaps, current, cur = vbox_states(vm.vbox_path())
    assert snaps == {} and cur is None
    assert read_header_fields(vm.folder / "vm.vdi")["uuid"] == current[0]
    assert list((vm.folder / "Snapshots").glob("*.vdi")) == []
    assert "currentSnapshot" not in vm.vbox_path().read_text()


def test_forward_merge_of_diff_keeps_zero_blocks_hidden(tmp_path: Path) -> None:
    vm = linear(tmp_path)
    # zero block 3 in 'two's diff hides the base's data: a forward merge must keep it hidden
    delete(vm, "two", direction="forward")
    assert_all_states(vm, deleted={vm.snap("two").uuid})
    assert np.array_equal(
        read_state(vm.folder, vbox_states(vm.vbox_path())[0][vm.snap("three").uuid][0])[
            3 * MIB : 4 * MIB
        ],
        np.zeros(MIB, np.uint8),
    )


def test_auto_direction_smaller_into_larger(tmp_path: Path) -> None:
    vm = VmBuilder(tmp_path / "vm")
    vm.scribble([0])
    vm.take_snapshot("one")
    vm.scribble([1])  # small diff under 'two'
    vm.take_snapshot("two")
    vm.scribble(list(range(2, 12)))  # large current diff
    plan = mg.plan_snapshot_delete(vm.folder, "two")
    assert plan.steps[0].direction == "forward"
    assert {c.direction for c in plan.steps[0].costs} == {"forward", "backward"}
    mg.run_merge(plan)
    assert_all_states(vm, deleted={vm.snap("two").uuid})


def test_full_target_is_overwritten_in_place(tmp_path: Path) -> None:
    vm = VmBuilder(tmp_path / "vm")
    vm.scribble(list(range(16)))  # every block of the base allocated
    vm.take_snapshot("one")
    vm.scribble(list(range(0, 16, 2)))  # overwrite half of them
    vm.scribble([3], zero=True)  # and zero one: written as zeros into its slot
    vm.take_snapshot("two")
    vm.scribble([1])
    base = vm.folder / "vm.vdi"
    size = base.stat().st_size
    original = base.read_bytes()
    delete(vm, "one")
    f = read_header_fields(base)
    assert (f["alloc"], f["blocks"]) == (16, 16)  # dense, exact, no longer map
    assert base.stat().st_size == size
    assert_all_states(vm, deleted={vm.snap("one").uuid})
    jr.undo_last(vm.folder)
    assert base.read_bytes() == original  # the before-images came back
    assert_all_states(vm)


def test_saved_state_machine_and_current_snapshot(tmp_path: Path) -> None:
    vm = linear(tmp_path, saved=True)
    vm.machine_state_file = "Snapshots/current.sav"
    (vm.folder / vm.machine_state_file).write_bytes(b"current state")
    vm.write_vbox()
    delete(vm, "three")
    assert (vm.folder / "Snapshots/current.sav").exists()
    assert 'stateFile="Snapshots/current.sav"' in vm.vbox_path().read_text()
    assert_all_states(vm, deleted={vm.snap("three").uuid})


def test_vbox_keeps_unknown_content_and_layout(tmp_path: Path) -> None:
    vm = linear(tmp_path)
    delete(vm, "two")
    text = vm.vbox_path().read_text()
    assert text.startswith('<?xml version="1.0"?>\n<!--\n** DO NOT EDIT THIS FILE.\n-->\n')
    assert '<FutureElement mode="keep"><!-- unknown --></FutureElement>' in text
    assert 'value="k&#xE9;ep"' in text
    assert '<VirtualBox xmlns="http://www.virtualbox.org/" version="1.19-linux">' in text
    assert (vm.folder / "vm.vbox-prev").read_text() == vm.vbox_text()
    assert not (vm.folder / "vm.vbox-tmp").exists()
    assert "about two" not in text and "about three" in text


# -- refusals ---------------------------------------------------------------------------------


def branching(tmp_path: Path) -> VmBuilder:
    vm = VmBuilder(tmp_path / "vm")
    vm.scribble([0, 1])
    vm.take_snapshot("one")
    vm.scribble([2])
    vm.take_snapshot("two")
    vm.scribble([3])
    vm.restore(vm.snap("one"))
    vm.scribble([4])
    vm.take_snapshot("three")  # 'one' now has two children: two, three
    vm.scribble([5])
    return vm


def test_refuse_more_than_one_child_snapshot(tmp_path: Path) -> None:
    vm = branching(tmp_path)
    before = files_snapshot(vm.folder)
    with pytest.raises(OperationRefused, match="has 2 child snapshots"):
        mg.plan_snapshot_delete(vm.folder, "one")
    assert files_snapshot(vm.folder) == before
    delete(vm, "two")  # a leaf of the branch is fine
    assert_all_states(vm, deleted={vm.snap("two").uuid})


def test_refuse_current_with_child(tmp_path: Path) -> None:
    vm = linear(tmp_path)
    vm.restore(vm.snap("two"))
    with pytest.raises(OperationRefused, match="current snapshot and has a child"):
        mg.plan_snapshot_delete(vm.folder, "two")


def test_refuse_branch_point_disk(tmp_path: Path) -> None:
    vm = linear(tmp_path)
    # a second (unregistered) child of 'two's disk: a linked clone elsewhere, say
    two_disk = vm.snap("two").disks[0]
    create_image(vm.folder / "Snapshots" / "clone.vdi", parent=vm.disks[two_disk].path)
    with pytest.raises(OperationRefused, match="branch point"):
        mg.plan_snapshot_delete(vm.folder, "two")


@pytest.mark.parametrize("kind", ["Immutable", "MultiAttach"])
def test_refuse_immutable_and_multiattach(tmp_path: Path, kind: str) -> None:
    vm = linear(tmp_path, base_types=(kind,))
    with pytest.raises(OperationRefused, match=kind):
        mg.plan_snapshot_delete(vm.folder, "one")


def test_writethrough_disk_is_skipped(tmp_path: Path) -> None:
    vm = VmBuilder(tmp_path / "vm", ndisks=2, base_types=("Normal", "Writethrough"))
    vm.scribble([0, 1], disk=0)
    vm.scribble([0, 1], disk=1)
    vm.take_snapshot("one")
    vm.scribble([2], disk=0)
    wt = vm.disks[vm.leaves[1]].path.read_bytes()
    plan = mg.plan_snapshot_delete(vm.folder, "one")
    assert [s.action for s in plan.steps] == ["merge", "skip"]
    mg.run_merge(plan)
    assert vm.disks[vm.leaves[1]].path.read_bytes() == wt
    assert_all_states(vm, deleted={vm.snap("one").uuid})


def test_refuse_running_vm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vm = linear(tmp_path)
    monkeypatch.setattr(mg, "running_hint", lambda folder: "The VM looks running.")
    with pytest.raises(OperationRefused, match="power the VM off"):
        mg.plan_snapshot_delete(vm.folder, "two")


def test_refuse_unknown_snapshot_and_shared_disk(tmp_path: Path) -> None:
    vm = linear(tmp_path)
    with pytest.raises(OperationRefused, match="no snapshot named"):
        mg.plan_snapshot_delete(vm.folder, "nope")
    # the current state also attaches 'two's disk (hand-edited settings)
    two_disk = vm.snap("two").disks[0]
    vm.leaves.append(two_disk)
    vm.write_vbox()
    with pytest.raises(OperationRefused, match="also attached to the current state"):
        mg.plan_snapshot_delete(vm.folder, "two")


# -- hostile or stale settings ---------------------------------------------------------------


def test_registry_location_at_wrong_file_is_refused(tmp_path: Path) -> None:
    vm = linear(tmp_path)
    victim_disk = vm.disks[vm.snap("three").disks[0]]  # merged away when 'two' is deleted
    other = vm.disks[vm.leaves[0]]
    old = victim_disk.path.relative_to(vm.folder).as_posix()
    text = vm.vbox_text().replace(
        f'location="{old}"', f'location="{other.path.relative_to(vm.folder).as_posix()}"'
    )
    vm.vbox_path().write_text(text)
    before = files_snapshot(vm.folder)
    with pytest.raises(OperationRefused, match="header UUID is"):
        delete(vm, "two")
    assert files_snapshot(vm.folder) == before


def test_registry_location_outside_folder_is_not_touched(tmp_path: Path) -> None:
    vm = linear(tmp_path)
    src = vm.disks[vm.snap("three").disks[0]]
    outside = tmp_path / "elsewhere" / src.path.name
    outside.parent.mkdir()
    shutil.move(src.path, outside)
    src.path = outside
    vm.write_vbox()
    plan = mg.plan_snapshot_delete(vm.folder, "two")
    assert outside in plan.outside_files
    assert any("[OUTSIDE THE FOLDER]" in line for line in plan.describe())
    before = files_snapshot(tmp_path)
    with pytest.raises(OperationRefused, match="outside"):
        mg.run_merge(plan)
    assert files_snapshot(tmp_path) == before
    mg.run_merge(mg.plan_snapshot_delete(vm.folder, "two", allow_outside=True))
    assert_all_states(vm, deleted={vm.snap("two").uuid})


@pytest.mark.parametrize("state_file", ["../victim.sav", "vm.vdi", "/etc/hostname"])
def test_hostile_state_file_is_never_deleted(tmp_path: Path, state_file: str) -> None:
    vm = linear(tmp_path)
    victim = (vm.folder / state_file).resolve()
    if state_file.startswith(".."):
        victim.write_bytes(b"precious")
    before = victim.read_bytes() if victim.exists() else None
    vm.snap("two").state_file = state_file
    vm.write_vbox()
    plan = mg.plan_snapshot_delete(vm.folder, "two")
    assert victim not in [p for p, _ in plan.files_removed]
    mg.run_merge(plan)
    if before is not None:
        assert victim.read_bytes() == before


def test_header_changed_after_planning_is_refused(tmp_path: Path) -> None:
    vm = linear(tmp_path)
    plan = mg.plan_snapshot_delete(vm.folder, "two")
    src = plan.steps[0].source
    assert src is not None
    src.path.unlink()
    create_image(src.path, vm.disk_size)  # same name, another image
    before = files_snapshot(vm.folder)
    with pytest.raises(OperationRefused, match="header UUID"):
        mg.run_merge(plan)
    assert files_snapshot(vm.folder) == before


# -- cancel and undo -------------------------------------------------------------------------


def test_cancel_rolls_back_and_leaves_no_strays(tmp_path: Path) -> None:
    vm = linear(tmp_path, disk_size=32 * MIB)
    vm.scribble(list(range(13, 30)))
    before = files_snapshot(vm.folder)
    token = CancelToken()
    events: list[object] = []

    def progress(event: object) -> None:
        events.append(event)
        if len(events) == 2:
            token.cancel()

    plan = mg.plan_snapshot_delete(vm.folder, "three")
    with pytest.raises(OperationCancelled, match="rolled back"):
        mg.run_merge(plan, progress=progress, cancel=token)
    assert files_snapshot(vm.folder) == before
    assert not jr.journal_path(vm.folder).exists()
    assert list((vm.folder / ".vdigui" / "backups").iterdir()) == []


@pytest.mark.parametrize("name", ["one", "two"])
def test_undo_restores_deleted_snapshot(tmp_path: Path, name: str, qemu_img: str) -> None:
    vm = linear(tmp_path, saved=True)
    before = files_snapshot(vm.folder)
    delete(vm, name)
    assert_check_clean(vm.folder, qemu_img)
    jr.undo_last(vm.folder)
    assert_check_clean(vm.folder, qemu_img)
    after = files_snapshot(vm.folder)
    assert after.pop("vm.vbox-prev") is not None
    before.pop("vm.vbox-prev", None)
    assert after == before
    assert_all_states(vm)
    with pytest.raises(OperationRefused, match="no vdigui operation"):
        jr.undo_last(vm.folder)


def test_undo_refused_after_the_vm_wrote(tmp_path: Path) -> None:
    vm = linear(tmp_path)
    delete(vm, "three")  # the leaf is merged into 'three's disk, which becomes the leaf
    vm.leaves[0] = vm.snap("three").disks[0]
    vm.scribble([6])  # the VM ran and wrote into it
    with pytest.raises(OperationRefused, match="changed since"):
        jr.undo_last(vm.folder)


# -- bare chains -----------------------------------------------------------------------------


def bare_chain(tmp_path: Path) -> tuple[list[Path], list[np.ndarray]]:
    """base <- mid <- top in a plain folder, and the model of each layer's view."""
    folder = tmp_path / "chain"
    folder.mkdir()
    rng = np.random.default_rng(5)
    paths: list[Path] = []
    views: list[np.ndarray] = []
    content = np.zeros(16 * MIB, np.uint8)
    for i, blocks in enumerate(([0, 1, 2, 3], [1, 4, 5], [2, 5, 6])):
        path = folder / f"layer{i}.vdi"
        create_image(path, 16 * MIB, parent=paths[-1] if paths else None)
        paths.append(path)
        with open_paths(paths, writable_top=True) as chain:
            for b in blocks:
                data = (
                    bytes(MIB)
                    if b == 5 and i == 2
                    else rng.integers(0, 256, MIB, np.uint8).tobytes()
                )
                chain.write(b * MIB, data)
                content[b * MIB : (b + 1) * MIB] = np.frombuffer(data, np.uint8)
        views.append(content.copy())
    return paths, views


@pytest.mark.parametrize("mode", ["into-parent", "parent-into-this", "auto"])
def test_bare_merge(tmp_path: Path, mode: str, qemu_img: str) -> None:
    paths, views = bare_chain(tmp_path)
    plan = mg.plan_merge(paths[2], mode=mode)
    mg.run_merge(plan)
    assert_check_clean(paths[0].parent, qemu_img)
    folder = paths[0].parent
    leaf = paths[1] if plan.steps[0].direction == "backward" else paths[2]
    assert not (paths[2] if leaf == paths[1] else paths[1]).exists()
    leaf_uuid = read_header_fields(leaf)["uuid"]
    got = read_state_flat(folder, leaf_uuid)  # type: ignore[arg-type]
    assert np.array_equal(got, views[2])
    assert np.array_equal(
        read_state_flat(folder, read_header_fields(paths[0])["uuid"]),  # type: ignore[arg-type]
        views[0],
    )


@pytest.mark.parametrize("mode", ["parent-into-this", "into-parent"])
def test_bare_merge_of_base_both_directions(tmp_path: Path, mode: str, qemu_img: str) -> None:
    paths, views = bare_chain(tmp_path)
    mg.run_merge(mg.plan_merge(paths[1], mode=mode))
    assert_check_clean(paths[0].parent, qemu_img)
    if mode == "into-parent":  # layer1 went into the base, layer2 now builds on the base
        assert not paths[1].exists()
        fields = read_header_fields(paths[2])
        assert fields["parent"] == read_header_fields(paths[0])["uuid"]
        assert np.array_equal(read_state_flat(paths[0].parent, fields["uuid"]), views[2])  # type: ignore[arg-type]
        return
    fields = read_header_fields(paths[1])
    assert fields["type"] == 1 and fields["parent"] == uuidlib.UUID(int=0)
    assert not paths[0].exists()
    assert np.array_equal(read_state_flat(paths[1].parent, fields["uuid"]), views[1])  # type: ignore[arg-type]
    assert np.array_equal(
        read_state_flat(paths[1].parent, read_header_fields(paths[2])["uuid"]),  # type: ignore[arg-type]
        views[2],
    )


def test_bare_merge_refuses_registered_image(tmp_path: Path) -> None:
    vm = linear(tmp_path)
    leaf = vm.disks[vm.leaves[0]].path
    with pytest.raises(OperationRefused, match="registered in"):
        mg.plan_merge(leaf, mode="into-parent")


def read_state_flat(folder: Path, leaf: uuidlib.UUID) -> np.ndarray:
    """read_state for a plain folder (no Snapshots subfolder needed)."""
    (folder / "Snapshots").mkdir(exist_ok=True)
    return read_state(folder, leaf)


def test_fixed_base_takes_the_merge_in_place(tmp_path: Path, qemu_img: str) -> None:
    vm = VmBuilder(tmp_path / "vm", disk_size=8 * MIB)
    base = vm.folder / "vm.vdi"
    base.unlink()
    create_image(base, 8 * MIB, fixed=True, uuid=vm.leaves[0])
    vm.scribble([0, 1, 2])
    vm.take_snapshot("one")
    vm.scribble([1, 5])
    vm.scribble([2], zero=True)
    vm.take_snapshot("two")
    vm.scribble([6])
    size = base.stat().st_size
    delete(vm, "one")
    f = read_header_fields(base)
    assert f["type"] == 2 and f["alloc"] == 8 and base.stat().st_size == size
    assert_all_states(vm, deleted={vm.snap("one").uuid})
    assert_check_clean(vm.folder, qemu_img)
