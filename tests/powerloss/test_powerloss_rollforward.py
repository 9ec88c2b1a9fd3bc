"""Power loss during a snapshot deletion or merge that keeps no undo data: roll-forward.

Without undo data a merge writes no before-images (docs/crash-safety.md, "Roll-forward"): a
backward merge overwrites the parent's slots in place, so once it has begun, recovery must
*finish* it from the unchanged source image instead of rolling it back. At every crash state
(crashsim: durable, issued, page and sector subsets, names in any order), and again when the
recovery itself loses power:

- the user's next command (``journal.recover_pending``) leaves the folder exactly as before
  the deletion or exactly as the finished deletion leaves it, byte for byte (the files of an
  uninterrupted run), ``vdictl check`` clean and ``qemu-img check`` clean on every base;
- every surviving snapshot and the current state read as the independent model says
  (``vmbuild.read_state``); the deleted snapshot reads as before when rolled back;
- "rolled back" is only allowed when the crash came before the journal record was durable
  with its backups named: from that point on every state is finished ("completed");
- the trace holds no before-image, and the journal record is durable before the first write
  over an existing slot of the target (the moment the deleted snapshot's data is lost).
"""

from __future__ import annotations

import json
import shutil
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import test_powerloss_journal as base
from crashsim import DIRSYNC, RENAME, SYNC, WRITE, CrashState, Recorder, explore, record
from plcheck import finish
from vmbuild import assert_all_states, read_header_fields, read_state

from vdigui.engine.operations import journal as jr
from vdigui.engine.operations import merge as mg


@pytest.fixture(autouse=True)
def _setup(monkeypatch: pytest.MonkeyPatch, qemu_img: str) -> None:
    """No /proc scan for a running VM (not what these tests are about); qemu as the oracle."""
    monkeypatch.setattr(mg, "running_hint", lambda folder: None)
    monkeypatch.setattr(base, "QEMU_IMG", [qemu_img])


def expected_outcome(folder: Path) -> str | None:
    """What recovery must do with the crash state now in ``folder``: "completed" once the
    roll-forward journal is durable past its ``planned`` phase; None when either is allowed."""
    try:
        data = json.loads(jr.journal_path(folder).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    if data.get("recovery") != jr.ROLL_FORWARD:
        raise AssertionError(f"a run without undo data wrote a {data.get('recovery')!r} journal")
    return "completed" if data.get("phase", "planned") != "planned" else None


def rel(path: Path, root: Path) -> str:
    return path.resolve().relative_to(root.resolve()).as_posix()


def assert_trace(
    rec: Recorder, root: Path, plan: mg.MergePlan, sizes: dict[str, tuple[int, int]]
) -> None:
    """No before-images; the journal is durable before the first write over an old slot."""
    names = {e.path for e in rec.events} | {e.dst for e in rec.events}
    assert not [n for n in names if n.endswith(".before")], "a before-image was written"
    journal = rel(jr.journal_path(plan.folder), root)
    journal_dir = journal.rsplit("/", 1)[0]
    durable_journal = -1
    for e in rec.events:
        if e.kind == RENAME and e.dst == journal:
            durable_journal = -2  # renamed into place; durable at the next sync of its folder
        elif e.kind == DIRSYNC and durable_journal == -2 and e.path == journal_dir:
            durable_journal = e.seq
        if e.kind == WRITE and e.path in sizes:
            off_data, size = sizes[e.path]
            if off_data <= e.offset < size:  # over a slot the target held before
                assert 0 <= durable_journal < e.seq, (
                    f"{e.describe()} (call #{e.seq}) came before the journal record was durable"
                )
    overwrites = [
        e
        for e in rec.events
        if e.kind == WRITE and e.path in sizes and sizes[e.path][0] <= e.offset < sizes[e.path][1]
    ]
    data = [
        e
        for e in rec.events
        if e.kind == WRITE and e.path in sizes and e.offset >= sizes[e.path][0]
    ]
    moved = sum(len(e.data) for e in data)
    backups = sum(
        len(e.data) for e in rec.events if e.kind == WRITE and "/backups/" in f"/{e.path}"
    )
    # Header+map prefixes and the .vbox copy only: far less than the data the merge moves.
    assert backups < max(moved, 1), (backups, moved)
    if any(s.direction == "backward" for s in plan.steps if s.action == "merge"):
        assert overwrites or not sizes, "the case should write over old slots"


def run_rollforward(
    name: str,
    root: Path,
    folder: Path,
    plan: mg.MergePlan,
    states_check: Callable[[str], None],
    *,
    seed: int,
    max_states: int = 160,
) -> None:
    assert not plan.keep_undo
    targets = [s.target.path for s in plan.steps if s.action == "merge" and s.target]
    sizes = {}
    for t in targets:
        f = read_header_fields(t)
        sizes[rel(t, root)] = (int(f["off_data"]), t.stat().st_size)  # type: ignore[call-overload]
    before = base.visible(folder)
    rec, error = record(root, lambda: mg.run_merge(plan))
    assert error is None, error
    after = base.visible(folder)
    assert after != before, "the operation changed nothing"
    assert_trace(rec, root, plan, sizes)

    def check(_state: CrashState) -> str:
        must = expected_outcome(folder)
        outcome = base.recover_and_classify(folder, before, after, states_check)
        if must is not None and outcome != must:
            raise AssertionError(
                f"recovery {outcome} a deletion it had to finish "
                "(the journal was durable, and undo data is not kept)"
            )
        return outcome

    # Second cuts at spread points, at each commit point, and just before every flush of a
    # merge target: recovery then redoes a copy that was cut part way.
    commits = [e.seq for e in rec.events if e.kind == RENAME and e.dst.endswith(".vbox")]
    flushes = [e.seq for e in rec.events if e.kind == SYNC and e.path in sizes]
    report = explore(
        name,
        root,
        rec,
        check,
        seed=seed,
        per_barrier=5,
        max_states=max_states,
        recover=lambda: jr.recover_pending(folder),
        nested=3,
        outer_points=[*commits, *flushes],
    )
    finish(report)
    assert report.outcomes.get("completed", 0), report.outcomes
    assert report.outcomes.get("rolled back", 0), report.outcomes


@pytest.mark.parametrize(
    ("snap", "direction", "ndisks"),
    [
        ("one", "auto", 2),  # backward into the base, two disks: a cut can fall between merges
        ("two", "backward", 1),  # backward into a differencing image (fall-through to the base)
        ("two", "forward", 1),  # forward: the child gets the parent's blocks, appended
    ],
)
def test_snapshot_delete_without_undo(
    shm_root: Path, snap: str, direction: str, ndisks: int
) -> None:
    vm = base.small_vm(shm_root / "vm", ndisks)
    uid = vm.snap(snap).uuid
    plan = mg.plan_snapshot_delete(vm.folder, snap, direction=direction, keep_undo=False)

    def states(outcome: str) -> None:
        assert_all_states(vm, deleted=set() if outcome == "rolled back" else {uid})
        assert jr.undo_data_usage(vm.folder) == 0 or outcome == "rolled back"

    run_rollforward(
        f"no-undo delete {snap} ({direction}, {ndisks} disk(s))",
        shm_root,
        vm.folder,
        plan,
        states,
        seed=21,
    )


@pytest.mark.parametrize("mode", ["into-parent", "parent-into-this"])
def test_bare_merge_without_undo(shm_root: Path, mode: str) -> None:
    """A chain of three without a .vbox: the leaf and its parent, either direction."""
    vm = base.small_vm(shm_root / "vm")
    bare = shm_root / "bare"
    (bare / "Snapshots").mkdir(parents=True)
    leaf_uid = vm.leaves[0]
    chain = [
        vm.disks[vm.snap("one").disks[0]],
        vm.disks[vm.snap("two").disks[0]],
        vm.disks[leaf_uid],
    ]
    for disk, name in zip(chain, ("layer0.vdi", "layer1.vdi", "leaf.vdi"), strict=True):
        shutil.copy(disk.path, bare / name)
    shutil.rmtree(vm.folder)
    expected = vm.content[0]
    middle = vm.expected[vm.snap("two").uuid][0]
    plan = mg.plan_merge(bare / "leaf.vdi", mode=mode, keep_undo=False)
    assert plan.steps[0].direction == ("backward" if mode == "into-parent" else "forward")

    def states(outcome: str) -> None:
        leaf: uuidlib.UUID = leaf_uid
        if outcome == "completed" and mode == "into-parent":
            target = plan.steps[0].target
            assert target is not None
            leaf = read_header_fields(target.path)["uuid"]  # type: ignore[assignment]
        assert np.array_equal(read_state(bare, leaf), expected), "the leaf reads differently"
        if outcome == "rolled back":  # the merged-away layer still reads as it did
            mid = read_header_fields(bare / "layer1.vdi")["uuid"]
            assert np.array_equal(read_state(bare, mid), middle)  # type: ignore[arg-type]

    run_rollforward(f"no-undo bare merge ({mode})", shm_root, bare, plan, states, seed=22)
