"""Repair: every problem kind becomes a fix with evidence; fixes apply, roll back and undo."""

from __future__ import annotations

import shutil
import struct
import uuid as uuidlib
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
)

from vdigui.engine import OperationRefused, VerificationError, create_image, fileio, open_paths
from vdigui.engine.operations import journal as jr
from vdigui.engine.operations import repair as rp


def linear(tmp_path: Path) -> VmBuilder:
    vm = VmBuilder(tmp_path / "vm")
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


def kinds(plan: rp.RepairPlan) -> list[str]:
    return [f.kind for f in plan.fixes]


def test_slots_past_eof_duplicates_count_and_tail(tmp_path: Path, qemu_img: str) -> None:
    path = tmp_path / "d.vdi"
    create_image(path, 16 * MIB)
    rng = np.random.default_rng(3)
    model = np.zeros(16 * MIB, np.uint8)
    with open_paths([path], writable_top=True) as chain:
        for b in range(6):
            data = rng.integers(0, 256, MIB, np.uint8).tobytes()
            chain.write(b * MIB, data)
            model[b * MIB : (b + 1) * MIB] = np.frombuffer(data, np.uint8)
    f = read_header_fields(path)
    off = f["off_blocks"]
    poke(path, off + 4 * 7, struct.pack("<I", 2))  # block 7 cross-linked with block 2
    poke(path, off + 4 * 8, struct.pack("<I", 100))  # block 8 past EOF
    poke(path, 0x184, struct.pack("<I", 3))  # wrong cBlocksAllocated
    with open(path, "ab") as fh:
        fh.write(b"\xaa" * MIB)  # crash tail
    original = path.read_bytes()
    plan = rp.plan_repair(path)
    assert kinds(plan) == ["slots"]
    fix = plan.fixes[0]
    assert "past the end" in fix.problem and "cross-linked" in fix.problem
    assert "crash tail" in fix.problem and fix.strength == "certain"
    rp.run_repair(plan)
    f = read_header_fields(path)
    assert f["alloc"] == 6 and path.stat().st_size == f["off_data"] + 6 * MIB
    (tmp_path / "Snapshots").mkdir()
    assert np.array_equal(read_state(tmp_path, f["uuid"]), model)  # 7, 8 read as zeros
    assert rp.plan_repair(path).fixes == ()
    assert_check_clean(path, qemu_img)
    jr.undo_last(tmp_path)
    assert path.read_bytes() == original


def test_base_whose_header_says_differencing(tmp_path: Path, qemu_img: str) -> None:
    vm = linear(tmp_path)
    base = vm.folder / "vm.vdi"
    poke(base, 0x4C, struct.pack("<I", 4))
    plan = rp.plan_repair(vm.folder)
    assert kinds(plan) == ["base-type"]
    rp.run_repair(plan)
    assert read_header_fields(base)["type"] == 1
    assert_all_states(vm)
    assert_check_clean(vm.folder, qemu_img)


def _break_parent(vm: VmBuilder, *, weak: bool) -> tuple[Path, Path]:
    """Give the base a new uuidCreate (as a restore from elsewhere would) in a bare folder."""
    folder = vm.folder.parent / "bare"
    folder.mkdir()
    base = folder / "base.vdi"
    shutil.copy(vm.folder / "vm.vdi", base)
    child = folder / "child.vdi"
    shutil.copy(vm.disks[vm.snap("two").disks[0]].path, child)
    poke(base, 0x188, uuidlib.uuid4().bytes_le)
    if weak:
        poke(base, 0x198, uuidlib.uuid4().bytes_le)  # base written since: uuidModify changed
    return base, child


def test_relink_with_strong_evidence(tmp_path: Path, qemu_img: str) -> None:
    vm = linear(tmp_path)
    base, child = _break_parent(vm, weak=False)
    plan = rp.plan_repair(child)
    assert kinds(plan) == ["relink"] and plan.fixes[0].strength == "strong"
    rp.run_repair(plan)
    assert read_header_fields(child)["parent"] == read_header_fields(base)["uuid"]
    assert_check_clean(child, qemu_img)


def test_relink_with_weak_evidence_needs_force(tmp_path: Path) -> None:
    vm = linear(tmp_path)
    base, child = _break_parent(vm, weak=True)
    plan = rp.plan_repair(child)
    assert plan.fixes[0].strength == "weak" and plan.fixes[0].needs_force
    assert "may have been written" in plan.fixes[0].evidence
    with pytest.raises(OperationRefused, match="--force"):
        rp.run_repair(plan)
    rp.run_repair(plan, force=True)
    assert read_header_fields(child)["parent"] == read_header_fields(base)["uuid"]


@pytest.mark.parametrize("pick", ["header", "registry"])
def test_registry_header_uuid_disagreement_offers_both(
    tmp_path: Path, pick: str, qemu_img: str
) -> None:
    vm = linear(tmp_path)
    leaf = vm.disks[vm.leaves[0]].path
    new = uuidlib.uuid4()
    poke(leaf, 0x188, new.bytes_le)  # like 'VBoxManage internalcommands sethduuid'
    plan = rp.plan_repair(vm.folder)
    assert kinds(plan) == ["header-uuid", "registry-uuid"]
    assert plan.fixes[0].group == plan.fixes[1].group
    choose = {plan.fixes[1].id} if pick == "registry" else None
    rp.run_repair(plan, choose=choose)
    text = vm.vbox_path().read_text()
    assert (str(new) in text) == (pick == "registry")
    assert_all_states(vm)
    assert_check_clean(vm.folder, qemu_img)


def test_duplicated_uuid_copy_gets_new_identity(tmp_path: Path, qemu_img: str) -> None:
    vm = linear(tmp_path)
    copy = vm.folder / "copy-of-vm.vdi"
    shutil.copy(vm.folder / "vm.vdi", copy)
    plan = rp.plan_repair(vm.folder)
    assert kinds(plan) == ["new-uuid"] and "already exists" in plan.fixes[0].problem
    rp.run_repair(plan)
    assert read_header_fields(copy)["uuid"] != read_header_fields(vm.folder / "vm.vdi")["uuid"]
    assert_all_states(vm)
    # the copy stays beside the .vbox, unregistered: the user's to register or delete
    assert_check_clean(vm.folder, qemu_img, allow=("orphan-image",))


def test_missing_file_relocate_or_drop(tmp_path: Path, qemu_img: str) -> None:
    vm = linear(tmp_path)
    leaf = vm.disks[vm.leaves[0]].path
    elsewhere = tmp_path / "found"
    elsewhere.mkdir()
    shutil.move(leaf, elsewhere / leaf.name)
    plan = rp.plan_repair(vm.folder, search_dirs=[elsewhere])
    assert kinds(plan) == ["relocate", "drop-entry"]
    assert [f.id for f in plan.selected()] == [plan.fixes[0].id]
    assert "changes stored in that layer are lost" in plan.fixes[1].action
    rp.run_repair(plan)
    assert str(elsewhere / leaf.name) in vm.vbox_path().read_text()
    assert_check_clean(vm.folder, qemu_img)
    jr.undo_last(vm.folder)
    plan = rp.plan_repair(vm.folder)
    assert kinds(plan) == ["drop-entry"]
    with pytest.raises(OperationRefused, match="--force"):  # it loses data: explicit only
        rp.run_repair(plan)
    rp.run_repair(plan, force=True)
    vm.content = vm.expected[vm.snap("two").uuid]  # the lost layer's writes are gone
    assert_all_states(vm)
    assert_check_clean(vm.folder, qemu_img)


@pytest.mark.parametrize("pick", ["register", "quarantine"])
def test_orphan_register_or_quarantine(tmp_path: Path, pick: str, qemu_img: str) -> None:
    vm = linear(tmp_path)
    parent = vm.disks[vm.leaves[0]]
    orphan = vm.folder / "Snapshots" / f"{{{uuidlib.uuid4()}}}.vdi"
    create_image(orphan, parent=parent.path)
    plan = rp.plan_repair(vm.folder)
    assert kinds(plan) == ["register-orphan", "quarantine-orphan"]
    choose = {plan.fixes[1].id} if pick == "quarantine" else None
    rp.run_repair(plan, choose=choose)
    if pick == "quarantine":
        assert not orphan.exists()
        assert (vm.folder / rp.QUARANTINE / orphan.name).exists()
    else:
        assert orphan.name in vm.vbox_path().read_text()
    assert rp.plan_repair(vm.folder).fixes == ()
    assert_all_states(vm)
    assert_check_clean(vm.folder, qemu_img)


def test_set_uuid_updates_children_and_registry(tmp_path: Path, qemu_img: str) -> None:
    vm = linear(tmp_path)
    middle = vm.snap("two").disks[0]
    path = vm.disks[middle].path
    new = uuidlib.uuid4()
    plan = rp.plan_set_uuid(path, new)
    rp.run_repair(plan)
    assert read_header_fields(path)["uuid"] == new
    text = vm.vbox_path().read_text()
    assert f'uuid="{{{middle}}}"' not in text and f'uuid="{{{new}}}"' in text  # file keeps its name
    assert_all_states(vm)
    assert_check_clean(vm.folder, qemu_img)
    jr.undo_last(vm.folder)
    assert read_header_fields(path)["uuid"] == middle
    assert_all_states(vm)
    assert_check_clean(vm.folder, qemu_img)


def test_nothing_to_repair_refuses_to_run(tmp_path: Path) -> None:
    vm = linear(tmp_path)
    plan = rp.plan_repair(vm.folder)
    assert plan.fixes == ()
    with pytest.raises(OperationRefused, match="No fix"):
        rp.run_repair(plan)


class BreakLinkWrite(WritesInto):
    """Performs every call, but the first header written into ``child`` gets a wrong parent."""

    def __init__(self, child: Path) -> None:
        super().__init__(child)
        self.broken = 0

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        if fd in self.fds and offset == 0x48 and not self.broken:  # the header struct
            raw = bytearray(data)
            raw[0x1A8 - 0x48 : 0x1B8 - 0x48] = uuidlib.uuid4().bytes_le  # uuidLinkage
            data = bytes(raw)
            self.broken += 1
        return super().pwrite(fd, data, offset)


def test_set_uuid_verification_catches_a_wrong_link(tmp_path: Path) -> None:
    vm = linear(tmp_path)
    middle = vm.disks[vm.snap("two").disks[0]].path
    child = vm.disks[vm.leaves[0]].path  # links to the middle image
    files = {p: p.read_bytes() for p in (middle, child, vm.vbox_path())}
    plan = rp.plan_set_uuid(middle)
    broken = BreakLinkWrite(child)
    with fileio.use(broken), pytest.raises(VerificationError, match="disagree"):
        rp.run_repair(plan)
    assert broken.broken == 1
    assert {p: p.read_bytes() for p in files} == files  # rolled back
    assert not jr.journal_path(vm.folder).exists()
    assert_all_states(vm)
    assert rp.run_repair(plan).verified  # and without the fault it goes through


def test_repair_no_verify(tmp_path: Path) -> None:
    vm = linear(tmp_path)
    plan = rp.plan_set_uuid(vm.disks[vm.snap("two").disks[0]].path)
    assert not rp.run_repair(plan, verify=False).verified
    assert_all_states(vm)
