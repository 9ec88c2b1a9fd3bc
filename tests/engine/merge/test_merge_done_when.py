"""The done-when test of trustworthy writes: delete every snapshot of many VM shapes.

VM folders with 1 to 5 snapshots and a branch are built by :mod:`vmbuild` (which models every
state itself); each snapshot is deleted in turn, with the automatic direction and with forced
forward and backward merges where VirtualBox allows them. After every deletion:

- every remaining state reads exactly as modelled (the independent reader ``read_state``);
- ``vdictl check`` on the VM folder exits 0 (dense slots, exact cBlocksAllocated, no finding);
- ``qemu-img check`` finds no errors and no leaks in every base image.
"""

from __future__ import annotations

import uuid as uuidlib
from pathlib import Path

import numpy as np
import pytest
from vmbuild import MIB, VmBuilder, assert_all_states, assert_check_clean, base_images

from vdigui.engine import OperationRefused
from vdigui.engine.operations import merge as mg

DISK = 6 * MIB


def build(folder: Path, snapshots: int, seed: int) -> VmBuilder:
    """A chain of ``snapshots`` snapshots, then a branch from the middle one.

    Each layer overwrites some blocks with data, zeroes a block that an older layer holds
    (a ZERO entry, written as zeros in place by a backward merge) and writes part of a block.
    """
    vm = VmBuilder(folder, disk_size=DISK, seed=seed)
    rng = np.random.default_rng(seed)
    blocks = DISK // MIB
    vm.scribble(sorted(rng.choice(blocks, 4, replace=False).tolist()))
    for i in range(snapshots):
        vm.take_snapshot(f"s{i + 1}")
        vm.scribble(sorted(rng.choice(blocks, 2, replace=False).tolist()))
        vm.scribble([int(rng.integers(blocks))], zero=True)
        vm.scribble([int(rng.integers(blocks))], partial=True)
    if snapshots >= 2:
        vm.restore(vm.snaps[(snapshots - 1) // 2])
        vm.scribble([int(rng.integers(blocks))])
        vm.take_snapshot("branch")
        vm.scribble([int(rng.integers(blocks))], zero=True)
        vm.scribble([int(rng.integers(blocks))])
    return vm


def assert_clean(vm: VmBuilder, deleted: set[uuidlib.UUID], qemu_img: str) -> None:
    assert_all_states(vm, deleted=deleted)
    assert_check_clean(vm.folder, qemu_img)


@pytest.mark.parametrize("direction", ["auto", "forward", "backward"])
@pytest.mark.parametrize("snapshots", [1, 2, 3, 4, 5])
def test_delete_every_snapshot_leaves_clean_images(
    tmp_path: Path,
    snapshots: int,
    direction: str,
    qemu_img: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    vm = build(tmp_path / "vm", snapshots, seed=snapshots)
    deleted: set[uuidlib.UUID] = set()
    assert_clean(vm, deleted, qemu_img)
    pending = list(vm.snaps)
    while pending:
        progressed = False
        for snap in list(pending):
            try:
                plan = mg.plan_snapshot_delete(vm.folder, str(snap.uuid), direction=direction)
            except OperationRefused as exc:
                if "always merged backward" in str(exc):  # a base: forward is not allowed
                    plan = mg.plan_snapshot_delete(vm.folder, str(snap.uuid))
                elif "child snapshots" in str(exc) or "current snapshot and has a child" in str(
                    exc
                ):
                    continue  # a branch point: delete one branch first
                else:
                    raise
            result = mg.run_merge(plan)
            assert result.verified
            deleted.add(snap.uuid)
            pending.remove(snap)
            progressed = True
            assert_clean(vm, deleted, qemu_img)
        assert progressed, [s.name for s in pending]
    capsys.readouterr()
    assert len(base_images(vm.folder)) == 1
