"""The snapshot cost map: a deletion frees what the cost map said, within one block per image.

Every figure is checked against the real files after the real deletion (on a copy of the VM
folder, once per snapshot and undo mode): the folder is measured with ``os.walk`` and
``st_size``, never with the engine. "Only here" is checked against the block maps read by
this file's own little reader. The cheapest order is checked against every other order of
a three-snapshot set, each planned and run for real on its own copy of the folder.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "merge"))
from vmbuild import MIB, VmBuilder, assert_all_states, read_header_fields

from vdigui.engine import (
    OperationRefused,
    OrderCost,
    SnapshotCost,
    best_order,
    order_cost,
    snapshot_costs,
)
from vdigui.engine.operations import merge as mg

FREE, ZERO = 0xFFFFFFFF, 0xFFFFFFFE


# -- builders and measures ----------------------------------------------------------------------


def chain_vm(folder: Path, snapshots: int, *, branch: bool = False, seed: int = 7) -> VmBuilder:
    """A VM with two disks and ``snapshots`` snapshots of random data (some with saved states).

    With ``branch`` the second-to-last snapshot is restored and one more is taken, so the
    snapshot before it has two children (a branch).
    """
    vm = VmBuilder(folder, ndisks=2, seed=seed)
    rng = np.random.default_rng(seed)
    for i in range(snapshots):
        for d in range(2):
            count = int(rng.integers(2, 9))
            vm.scribble(sorted(rng.choice(16, size=count, replace=False).tolist()), disk=d)
        vm.take_snapshot(f"s{i + 1}", saved_state=i % 2 == 0)
    for d in range(2):
        vm.scribble(sorted(rng.choice(16, size=3, replace=False).tolist()), disk=d)
    if branch and snapshots >= 2:
        vm.restore(vm.snap(f"s{snapshots - 1}"))
        vm.scribble([1, 9, 13], disk=0)
        vm.take_snapshot("side")
        vm.scribble([2], disk=1)
    return vm


def outside_bytes(folder: Path) -> int:
    """Apparent size of every file outside ``.vdigui``."""
    total = 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d != ".vdigui"]
        total += sum((Path(root) / n).lstat().st_size for n in files)
    return total


def folder_bytes(folder: Path) -> int:
    """Apparent size of every file in the folder, ``.vdigui`` included."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        total += sum((Path(root) / n).lstat().st_size for n in files)
    return total


def vdi_sizes(folder: Path) -> dict[Path, int]:
    return {
        p.relative_to(folder): p.stat().st_size
        for p in folder.rglob("*.vdi")
        if ".vdigui" not in p.parts
    }


def changed_images(before: dict[Path, int], after: dict[Path, int]) -> int:
    """Images whose size changed or that are gone (or new): the "per image" of the tolerance."""
    return sum(1 for p in set(before) | set(after) if before.get(p) != after.get(p))


def read_map(path: Path) -> np.ndarray:
    f = read_header_fields(path)
    raw = path.read_bytes()
    return np.frombuffer(
        raw,
        dtype="<u4",
        count=int(f["blocks"]),  # type: ignore[call-overload]
        offset=int(f["off_blocks"]),
    )  # type: ignore[call-overload]


def only_here_expected(vm: VmBuilder, name: str) -> int:
    """Blocks of the snapshot's disks that every child disk overrides, from the raw maps."""
    total = 0
    for disk in vm.snap(name).disks:
        own = read_map(vm.disks[disk].path)
        covered = own < ZERO
        kids = [d for d in vm.disks.values() if d.parent == disk]
        for kid in kids:
            covered &= read_map(kid.path) != FREE
        total += int(covered.sum()) * MIB
    return total


def deletable(costs: list[SnapshotCost]) -> list[SnapshotCost]:
    return [c for c in costs if c.refused_reason is None]


# -- frees what it said ---------------------------------------------------------------------------

SHAPES = [(1, False), (2, False), (3, False), (5, False), (3, True), (4, True)]


@pytest.mark.parametrize(("snapshots", "branch"), SHAPES)
def test_each_deletion_frees_what_the_cost_map_said(
    tmp_path: Path, snapshots: int, branch: bool
) -> None:
    vm = chain_vm(tmp_path / "vm", snapshots, branch=branch)
    kept_costs = snapshot_costs(vm.folder, rate=100 * MIB)
    bare_costs = snapshot_costs(vm.folder, keep_undo=False, rate=100 * MIB)
    assert [c.name for c in kept_costs] == [s.name for s in vm.snaps]
    assert len(deletable(kept_costs)) >= 1
    for kept, bare in zip(kept_costs, bare_costs, strict=True):
        assert kept.only_here == only_here_expected(vm, kept.name)
        if kept.refused_reason is not None:
            assert bare.refused_reason == kept.refused_reason
            assert kept.frees is None and kept.copies is None and kept.needs is None
            continue
        assert kept.frees == kept.frees_keeping_undo and bare.frees == bare.frees_without_undo
        assert kept.frees_without_undo == bare.frees_without_undo
        assert kept.seconds_estimate == pytest.approx(kept.copies / (100 * MIB))
        for keep_undo, cost in ((True, kept), (False, bare)):
            copy = tmp_path / f"{cost.name}-{keep_undo}" / "vm"
            shutil.copytree(vm.folder, copy)
            sizes = vdi_sizes(copy)
            before = folder_bytes(copy) if keep_undo else outside_bytes(copy)
            plan = mg.plan_snapshot_delete(copy, cost.name, keep_undo=keep_undo)
            mg.run_merge(plan)
            after = folder_bytes(copy) if keep_undo else outside_bytes(copy)
            tolerance = changed_images(sizes, vdi_sizes(copy)) * MIB
            assert cost.frees is not None
            assert abs((before - after) - cost.frees) <= tolerance, (cost.name, keep_undo)
            assert cost.needs == plan.space.peak_extra
            assert cost.copies == sum(s.costs[0].bytes for s in plan.steps if s.costs)
            shutil.rmtree(copy.parent)


def check_every_deletion(folder: Path, scratch: Path) -> int:
    """Delete each deletable snapshot of ``folder`` on a copy, in both undo modes; compare.

    Returns how many deletions were checked.
    """
    checked = 0
    for keep_undo in (True, False):
        for cost in snapshot_costs(folder, keep_undo=keep_undo):
            if cost.refused_reason is not None:
                continue
            copy = scratch / f"{cost.uuid}-{keep_undo}" / folder.name
            copy.parent.mkdir(parents=True)
            subprocess.run(["cp", "-a", "--sparse=always", str(folder), str(copy)], check=True)
            sizes = vdi_sizes(copy)
            before = folder_bytes(copy) if keep_undo else outside_bytes(copy)
            mg.run_merge(mg.plan_snapshot_delete(copy, cost.uuid, keep_undo=keep_undo))
            after = folder_bytes(copy) if keep_undo else outside_bytes(copy)
            tolerance = changed_images(sizes, vdi_sizes(copy)) * MIB
            assert cost.frees is not None
            assert abs((before - after) - cost.frees) <= tolerance, (cost.name, keep_undo)
            shutil.rmtree(copy.parent)
            checked += 1
    return checked


def test_zero_blocks_and_partial_writes(tmp_path: Path) -> None:
    """The merge tests' chain: all-zero blocks and partial writes, two disks, saved states."""
    from test_merge_snapshots import linear

    vm = linear(tmp_path / "src", ndisks=2, saved=True)
    assert check_every_deletion(vm.folder, tmp_path / "runs") == 6


def test_with_undo_data_of_an_earlier_deletion(tmp_path: Path) -> None:
    vm = chain_vm(tmp_path / "vm", 4)
    mg.run_merge(mg.plan_snapshot_delete(vm.folder, "s2"))
    assert folder_bytes(vm.folder) > outside_bytes(vm.folder)  # undo data is there
    assert check_every_deletion(vm.folder, tmp_path / "runs") == 6


def test_the_demo_vm(tmp_path: Path) -> None:
    """A real ext4 + FAT guest disk (when the tools are there), a branch, a broken chain."""
    from vdigui.engine.demo import build_demo_vm

    folder = build_demo_vm(tmp_path / "demo")
    costs = snapshot_costs(folder)
    assert [c.name for c in costs if c.refused_reason is None] == [
        "Before experiment",
        "Alternative",
    ]
    assert check_every_deletion(folder, tmp_path / "runs") == 4


def test_the_branch_point_is_refused_with_its_reason(tmp_path: Path) -> None:
    vm = chain_vm(tmp_path / "vm", 3, branch=True)
    costs = {c.name: c for c in snapshot_costs(vm.folder)}
    assert costs["s2"].refused_reason is not None
    assert "2 child snapshots" in costs["s2"].refused_reason
    assert costs["s2"].to_dict()["frees"] is None
    assert costs["side"].refused_reason is None and costs["s3"].refused_reason is None


def test_the_cost_map_writes_nothing(tmp_path: Path) -> None:
    vm = chain_vm(tmp_path / "vm", 3, branch=True)
    before = {p: p.read_bytes() for p in vm.folder.rglob("*") if p.is_file()}
    snapshot_costs(vm.folder)
    best_order(vm.folder, ["s1", "s3"])
    after = {p: p.read_bytes() for p in vm.folder.rglob("*") if p.is_file()}
    assert after == before
    assert_all_states(vm)


def test_to_dict_keys(tmp_path: Path) -> None:
    vm = chain_vm(tmp_path / "vm", 2)
    d = snapshot_costs(vm.folder, rate=50 * MIB)[0].to_dict()
    for key in (
        "name",
        "uuid",
        "only_here",
        "frees",
        "frees_keeping_undo",
        "frees_without_undo",
        "copies",
        "needs",
        "seconds_estimate",
        "refused_reason",
    ):
        assert key in d
    assert d["name"] == "s1" and d["uuid"] == str(vm.snap("s1").uuid)
    assert all(k == k.lower() and " " not in k for k in d)


# -- the cheapest order ---------------------------------------------------------------------------


def run_order(vm: VmBuilder, order: tuple[str, ...], where: Path) -> int:
    """Delete ``order`` for real on a copy; the cost model of the plans each step made."""
    copy = where / "vm"
    shutil.copytree(vm.folder, copy)
    copies, peak = 0, 0
    for name in order:
        plan = mg.plan_snapshot_delete(copy, name)
        copies += sum(s.costs[0].bytes for s in plan.steps if s.costs)
        peak = max(peak, plan.space.peak_extra)
        mg.run_merge(plan)
    shutil.rmtree(where)
    return copies + peak


def uneven_vm(folder: Path) -> VmBuilder:
    """Three snapshots whose deletion costs differ a lot, and depend on the order."""
    vm = VmBuilder(folder, ndisks=1, seed=3)
    vm.scribble(list(range(12)))
    vm.take_snapshot("a")
    vm.scribble([0, 1])
    vm.take_snapshot("b")
    vm.scribble(list(range(2, 11)))
    vm.take_snapshot("c")
    vm.scribble([11, 12, 13])
    return vm


def test_cheapest_order_is_no_more_expensive_than_any_other(tmp_path: Path) -> None:
    vm = uneven_vm(tmp_path / "vm")
    best = best_order(vm.folder, ["a", "b", "c"])
    assert isinstance(best, OrderCost) and best.exhaustive and best.tried == 6
    real = {
        order: run_order(vm, order, tmp_path / "-".join(order))
        for order in itertools.permutations(["a", "b", "c"])
    }
    assert real[best.order] == best.cost
    assert all(best.cost <= cost for cost in real.values())
    assert len(set(real.values())) > 1, "the orders must differ for this test to mean anything"
    simulated = order_cost(vm.folder, ("c", "b", "a"))
    assert simulated.cost == real[("c", "b", "a")]


def test_cheapest_order_skips_refused_orders(tmp_path: Path) -> None:
    vm = chain_vm(tmp_path / "vm", 3)
    vm.restore(vm.snap("s2"))  # s2 is now current and has a child: refused until s3 is gone
    best = best_order(vm.folder, ["s2", "s3"])
    assert best.order == ("s3", "s2") and best.tried == 2
    assert best.cost == run_order(vm, best.order, tmp_path / "real")
    with pytest.raises(OperationRefused, match="current snapshot and has a child"):
        order_cost(vm.folder, ["s2", "s3"])


def test_greedy_beyond_six(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vdigui.engine import snapshot_cost as sc

    vm = uneven_vm(tmp_path / "vm")
    monkeypatch.setattr(sc, "EXHAUSTIVE_LIMIT", 2)
    greedy = best_order(vm.folder, ["a", "b", "c"])
    assert not greedy.exhaustive and sorted(greedy.order) == ["a", "b", "c"]
    assert greedy.cost == run_order(vm, greedy.order, tmp_path / "greedy")
