"""Space is part of the plan: what a deletion frees, keeps for undo, and what discarding frees.

The figures are measured on the real folder (every file, recursively, ``.vdigui`` included)
and compared with ``plan.space``; plans may be off by at most one block per image (a block
that turns out all-zero is not appended, which the map-only plan cannot know).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_merge_snapshots import bare_chain, linear
from vmbuild import MIB, assert_all_states

from vdigui.engine import OperationRefused
from vdigui.engine.operations import journal as jr
from vdigui.engine.operations import merge as mg


def folder_bytes(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        total += sum((Path(root) / name).lstat().st_size for name in files)
    return total


def tolerance(plan: mg.MergePlan) -> int:
    images = sum(1 for f in plan.space.files if f.path.suffix.lower() == ".vdi")
    return images * MIB


@pytest.mark.parametrize("name", ["one", "two", "three"])
def test_no_undo_frees_what_the_plan_says(tmp_path: Path, name: str) -> None:
    vm = linear(tmp_path, ndisks=2, saved=True)
    before = folder_bytes(vm.folder)
    plan = mg.plan_snapshot_delete(vm.folder, name, keep_undo=False)
    assert not plan.space.keep_undo and plan.space.undo_bytes == 0
    assert "Keeps no undo data: this operation cannot be undone." in plan.space.lines()
    assert plan.space.frees > 0
    result = mg.run_merge(plan)
    assert not result.undoable
    assert abs((before - folder_bytes(vm.folder)) - plan.space.frees) <= tolerance(plan)
    assert jr.undo_data_usage(vm.folder) == 0
    assert all(not p.exists() for p, _ in plan.files_removed)
    assert_all_states(vm, deleted={vm.snap(name).uuid})
    with pytest.raises(OperationRefused, match="without keeping undo data"):
        jr.undo_last(vm.folder)


@pytest.mark.parametrize("name", ["one", "two"])
def test_kept_undo_then_discard_reaches_the_same_total(tmp_path: Path, name: str) -> None:
    vm = linear(tmp_path, saved=True)
    before = folder_bytes(vm.folder)
    plan = mg.plan_snapshot_delete(vm.folder, name)
    assert plan.space.keep_undo and plan.space.undo_dir == jr.backups_dir(vm.folder)
    mg.run_merge(plan)
    kept = jr.undo_data_usage(vm.folder)
    assert abs(kept - plan.space.undo_bytes) <= tolerance(plan)
    assert abs((before - folder_bytes(vm.folder)) - plan.space.net_frees) <= tolerance(plan)
    freed = jr.discard_undo_data(vm.folder)
    assert freed == kept
    assert abs((before - folder_bytes(vm.folder)) - plan.space.frees) <= tolerance(plan)
    assert jr.undo_data_usage(vm.folder) == 0
    assert_all_states(vm, deleted={vm.snap(name).uuid})
    with pytest.raises(OperationRefused, match="undo data was discarded"):
        jr.plan_undo(vm.folder)


def test_discard_is_refused_while_an_operation_is_open(tmp_path: Path) -> None:
    vm = linear(tmp_path)
    mg.run_merge(mg.plan_snapshot_delete(vm.folder, "two"))
    plan = mg.plan_snapshot_delete(vm.folder, "one")
    jr.Journal.begin(plan.folder, plan.kind, plan.to_dict(), plan.summary, plan.vbox)
    kept = jr.undo_data_usage(vm.folder)
    with pytest.raises(OperationRefused, match="still needs its backups"):
        jr.discard_undo_data(vm.folder)
    assert jr.undo_data_usage(vm.folder) == kept


def test_bare_merge_without_undo_deletes_the_merged_away_image(tmp_path: Path) -> None:
    paths, _ = bare_chain(tmp_path)
    folder = paths[0].parent
    before = folder_bytes(folder)
    plan = mg.plan_merge(paths[2], mode="into-parent", keep_undo=False)
    mg.run_merge(plan)
    assert not paths[2].exists()
    assert abs((before - folder_bytes(folder)) - plan.space.frees) <= tolerance(plan)
    assert jr.undo_data_usage(folder) == 0


def test_run_can_override_keep_undo(tmp_path: Path) -> None:
    vm = linear(tmp_path)
    plan = mg.plan_snapshot_delete(vm.folder, "two")
    result = mg.run_merge(plan, keep_undo=False)
    assert not result.undoable and not result.plan.space.keep_undo
    assert jr.undo_data_usage(vm.folder) == 0
