"""Power loss during a resize -- and during its recovery (a second cut).

At every flush the harness builds crash states (durable state plus subsets of the unsynced
writes, torn sectors, lost renames), runs the user's next command (``recover_pending``), and
requires the folder to be byte for byte as before the resize or as the finished resize left
it, never a mixture; qemu-img check and ``vdictl check`` must find it clean, and every
snapshot state must read as before (the old disk) or as before plus zeros (the grown disk).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import test_powerloss_journal as tpj
from crashsim import explore, record
from plcheck import finish
from vmbuild import MIB, VmBuilder, assert_all_states, read_state

from vdigui.engine.operations import journal as jr
from vdigui.engine.operations import merge as mg
from vdigui.engine.operations.resize import plan_resize, run_resize

LINUX_GUID = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"


@pytest.fixture(autouse=True)
def _setup(monkeypatch: pytest.MonkeyPatch, qemu_img: str) -> None:
    monkeypatch.setattr(mg, "running_hint", lambda folder: None)
    tpj.QEMU_IMG[0] = qemu_img


def _qemu_disk(folder: Path, qemu_img: str, size: str, table: str) -> Path:
    folder.mkdir(parents=True)
    raw = folder.parent / "disk.raw"
    subprocess.run([qemu_img, "create", "-q", "-f", "raw", str(raw), size], check=True)
    subprocess.run(
        ["sfdisk", "-q", str(raw)], input=table, text=True, check=True, capture_output=True
    )
    vdi = folder / "disk.vdi"
    subprocess.run([qemu_img, "convert", "-O", "vdi", str(raw), str(vdi)], check=True)
    raw.unlink()
    return vdi


def _explore(
    name: str, root: Path, folder: Path, operation: object, states: object, seed: int
) -> None:
    before = tpj.visible(folder)
    rec, error = record(root, operation)  # type: ignore[arg-type]
    assert error is None, error
    after = tpj.visible(folder)
    assert after != before, "the resize changed nothing"

    def check(_state: object) -> str:
        return tpj.recover_and_classify(folder, before, after, states)  # type: ignore[arg-type]

    phases = [e.seq for e in rec.events if e.kind == "rename" and e.dst.endswith("journal.json")]
    report = explore(
        name,
        root,
        rec,
        check,
        seed=seed,
        per_barrier=4,
        max_states=120,
        recover=lambda: jr.recover_pending(folder),
        nested=2,
        outer_points=phases[-2:],
    )
    finish(report)
    assert report.outcomes.get("rolled back", 0) and report.outcomes.get("completed", 0), (
        report.outcomes
    )


def test_grow_with_moved_blocks_and_gpt(shm_root: Path, qemu_img: str, qemu_io: str) -> None:
    table = f"label: gpt\nstart=2048, size=10240, type={LINUX_GUID}\n"
    vdi = _qemu_disk(shm_root / "img", qemu_img, "8M", table)
    subprocess.run(
        [qemu_io, "-c", "write -P 0x3c 1M 2M", "-c", "write -P 0x7e 5M 1M", str(vdi)],
        check=True,
        capture_output=True,
    )
    plan = plan_resize(vdi, 1024 * MIB, grow_partition=True)
    assert plan.images[0].moved_slots >= 1 and plan.table is not None
    _explore(
        "resize grow (moved blocks, GPT)",
        shm_root,
        vdi.parent,
        lambda: run_resize(plan),
        None,
        seed=31,
    )


def test_shrink_with_moved_blocks(shm_root: Path, qemu_img: str, qemu_io: str) -> None:
    vdi = _qemu_disk(
        shm_root / "img", qemu_img, "24M", "label: dos\nstart=2048, size=10240, type=83\n"
    )
    subprocess.run(
        [
            qemu_io,
            "-c",
            "write -P 0x99 20M 2M",
            "-c",
            "write -P 0x42 1M 2M",
            "-c",
            "write -P 0x43 5M 1M",
            str(vdi),
        ],
        check=True,
        capture_output=True,
    )
    plan = plan_resize(vdi, 8 * MIB)
    assert plan.images[0].moved_slots >= 1 and plan.images[0].dropped_slots == 2
    _explore(
        "resize shrink (moved blocks)",
        shm_root,
        vdi.parent,
        lambda: run_resize(plan),
        None,
        seed=32,
    )


def test_vm_with_snapshots_grow(shm_root: Path) -> None:
    vm = VmBuilder(shm_root / "vm", disk_size=6 * MIB)
    vm.scribble([0, 1, 2, 5])
    vm.take_snapshot("one")
    vm.scribble([1, 3])
    vm.take_snapshot("two")
    vm.scribble([2, 4])
    plan = plan_resize(vm.folder, 12 * MIB)

    def states(outcome: str) -> None:
        if outcome == "rolled back":
            assert_all_states(vm)
            return
        for snap in vm.snaps:
            state = read_state(vm.folder, snap.disks[0])
            assert np.array_equal(state[: 6 * MIB], vm.expected[snap.uuid][0])
            assert state.size == 12 * MIB and not state[6 * MIB :].any()
        current = read_state(vm.folder, vm.leaves[0])
        assert np.array_equal(current[: 6 * MIB], vm.content[0]) and current.size == 12 * MIB

    _explore(
        "resize grow (VM, two snapshots)",
        shm_root,
        vm.folder,
        lambda: run_resize(plan),
        states,
        seed=33,
    )


def test_grow_fixed(shm_root: Path, qemu_img: str, qemu_io: str) -> None:
    folder = shm_root / "img"
    folder.mkdir()
    vdi = folder / "fixed.vdi"
    subprocess.run(
        [qemu_img, "create", "-q", "-f", "vdi", "-o", "static=on", str(vdi), "4M"], check=True
    )
    subprocess.run([qemu_io, "-c", "write -P 0x5a 0 4M", str(vdi)], check=True, capture_output=True)
    plan = plan_resize(vdi, 160 * MIB)  # the map outgrows qemu's map area: blocks move
    assert plan.images[0].fixed and plan.images[0].moved_slots >= 1
    _explore(
        "resize grow (fixed, moved blocks)",
        shm_root,
        folder,
        lambda: run_resize(plan),
        None,
        seed=34,
    )
