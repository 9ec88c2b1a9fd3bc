"""Compact in place and --defrag: semantics, sanitising, refusals, cancel, progress, verify."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from builders import MIB, RawImage, build_image, folder_state, model_read, pattern, write_raw
from opshelpers import (
    FREE,
    ZERO,
    FaultyOps,
    Recorder,
    assert_qemu_clean,
    assert_qemu_same,
    files_in,
    holder,
    make_base,
    make_chain,
    nth_write,
    ref_open,
    ref_read,
    release,
)

from vdigui.engine import (
    OperationCancelled,
    OperationRefused,
    Progress,
    VerificationError,
    fileio,
)
from vdigui.engine.operations import compact, inuse
from vdigui.engine.operations.compact import plan_compact, run_compact
from vdigui.engine.operations.safefile import backup_path, read_backup
from vdigui.engine.progress import CancelToken


def dense(entries: list[int]) -> bool:
    live = sorted(e for e in entries if e < ZERO)
    return live == list(range(len(live)))


def test_compact_base_drops_zero_blocks_and_fills_holes(tmp_path: Path, qemu_img: str) -> None:
    path, expected = make_base(tmp_path, 40)
    before = ref_open(path)
    zero_alloc = [
        b
        for b, e in enumerate(before.entries)
        if e < ZERO and expected[b * MIB : (b + 1) * MIB] == bytes(MIB)
    ]
    assert zero_alloc, "the builder should have made all-zero allocated blocks"
    rec = Recorder()
    plan = plan_compact(path)
    result = run_compact(plan, progress=rec)
    after = ref_open(path)
    assert ref_read([path]) == expected
    assert_qemu_clean(qemu_img, path)
    assert_qemu_same(qemu_img, expected, path, tmp_path)
    assert result.changed and result.verified is True
    assert result.hash is None  # in place, nothing is read twice: no whole-disk digest
    assert result.zero_blocks == len(zero_alloc)
    assert all(after.entries[b] == ZERO for b in zero_alloc)
    assert dense(after.entries)
    live = sum(1 for e in after.entries if e < ZERO)
    assert after.blocks_allocated == live == before.blocks_allocated - len(zero_alloc)
    assert after.file_size == after.offset_data + live * MIB == result.size_after
    assert (after.uuid, after.modify_uuid, after.parent_uuid) == (
        before.uuid,
        before.modify_uuid,
        before.parent_uuid,
    )
    assert not backup_path(path).exists()
    assert files_in(tmp_path) == {path.name}
    rec.assert_sane()
    assert {e.phase for e in rec.events} == {"scanning blocks", "moving blocks", "verifying"}


def test_compact_closes_slots_older_merges_left_unreferenced(tmp_path: Path, qemu_img: str) -> None:
    """Older vdigui merges left replaced slots unreferenced but counted by cBlocksAllocated.

    That is the state qemu-img check calls "allocated blocks mismatch": the next compaction
    must close those holes, leaving a dense image both checkers call clean.
    """
    layer = {b: pattern(b + 1, MIB) for b in range(6)}
    built = build_image(tmp_path / "old.vdi", 8 * MIB, layer, poke={2: FREE, 4: FREE})
    path = built.path
    expected = model_read([{b: c for b, c in layer.items() if b not in (2, 4)}], 8 * MIB, MIB)
    before = ref_open(path)
    assert before.blocks_allocated == 6 and not dense(before.entries)
    assert subprocess.run([qemu_img, "check", str(path)], capture_output=True).returncode != 0
    result = run_compact(plan_compact(path))
    after = ref_open(path)
    assert result.changed and ref_read([path]) == expected
    assert dense(after.entries) and after.blocks_allocated == 4
    assert after.file_size == after.offset_data + 4 * MIB
    assert_qemu_clean(qemu_img, path)
    assert_qemu_same(qemu_img, expected, path, tmp_path)


def test_second_compact_has_nothing_to_do(tmp_path: Path) -> None:
    path, _ = make_base(tmp_path, 24)
    run_compact(plan_compact(path))
    state = folder_state(tmp_path)
    plan = plan_compact(path, scan=True)
    assert plan.nothing_to_do
    result = run_compact(plan)
    assert not result.changed and result.verified is None
    assert folder_state(tmp_path) == state


def test_plan_is_read_only_and_scan_gives_exact_figures(tmp_path: Path) -> None:
    path, _ = make_base(tmp_path, 32)
    state = folder_state(tmp_path)
    quick = plan_compact(path)
    scanned = plan_compact(path, scan=True)
    assert folder_state(tmp_path) == state
    assert not quick.scanned and quick.zero_blocks is None
    assert scanned.scanned and scanned.zero_blocks is not None
    result = run_compact(scanned)
    assert result.zero_blocks == scanned.zero_blocks.size
    assert result.moved_blocks == scanned.moves
    assert result.size_after == scanned.size_after
    assert quick.size_after >= scanned.size_after


def test_no_verify_skips_hash(tmp_path: Path) -> None:
    path, expected = make_base(tmp_path, 16)
    rec = Recorder()
    result = run_compact(plan_compact(path), progress=rec, verify=False)
    assert result.verified is None and result.hash is None
    assert "verifying" not in {e.phase for e in rec.events}
    assert ref_read([path]) == expected


def test_damaged_map_is_refused_naming_repair(tmp_path: Path) -> None:
    """Out-of-range and cross-linked entries are damage: compaction refuses, writes nothing.

    Clearing them would change what the guest reads; 'vdictl repair' is the one command that
    changes a damaged map (with undo).
    """
    blocks = 16
    slots = [pattern(100 + i, MIB) for i in range(6)]
    built = build_image(tmp_path / "x.vdi", blocks * MIB, {b: slots[b] for b in range(6)})
    for poke in ({9: 1}, {10: 40}):  # cross-linked with block 1; past the end of the file
        entries = list(built.entries)
        for block, value in poke.items():
            entries[block] = value
        write_raw(built.path, RawImage(built.header, entries, slots))
        state = folder_state(tmp_path)
        for defrag in (False, True):
            plan = plan_compact(built.path, defrag=defrag)
            assert not plan.can_run
            assert any("vdictl repair" in r and "damaged" in r for r in plan.refusals)
            with pytest.raises(OperationRefused, match="vdictl repair"):
                run_compact(plan)
        assert folder_state(tmp_path) == state


def test_low_count_and_crash_tail_are_cleaned(tmp_path: Path, qemu_img: str) -> None:
    """Crash leftovers that are not damage: a low cBlocksAllocated, a tail, a hole."""
    blocks = 16
    slots = [pattern(100 + i, MIB) for i in range(6)] + [bytes(MIB)]
    built = build_image(tmp_path / "x.vdi", blocks * MIB, {b: slots[b] for b in range(6)})
    h = built.header
    entries = [FREE] * blocks
    entries[0:7] = [3, 1, 2, 0, 4, 5, 7]  # slot 6 is a hole
    entries[11] = ZERO
    h.blocks_allocated = 3  # too low: a crash leftover (entry written, header not)
    raw = RawImage(
        h,
        entries,
        [slots[3], slots[1], slots[2], slots[0], slots[4], slots[5], pattern(999, MIB), slots[6]],
        tail=b"\x77" * 1000,
    )
    write_raw(built.path, raw)
    expected = bytearray(blocks * MIB)
    for b in range(6):
        expected[b * MIB : (b + 1) * MIB] = slots[b]
    plan = plan_compact(built.path)
    assert plan.can_run, plan.refusals
    result = run_compact(plan)
    after = ref_open(built.path)
    assert after.entries[6] == ZERO  # the all-zero block
    assert result.sanitised_blocks == 0
    assert ref_read([built.path]) == bytes(expected)
    assert_qemu_clean(qemu_img, built.path)
    assert after.blocks_allocated == 6 and after.file_size == after.offset_data + 6 * MIB


def test_differencing_zero_hides_parent_and_identical_blocks_fall_through(tmp_path: Path) -> None:
    chain = make_chain(tmp_path / "vm", 32)
    top = chain.leaf
    before = ref_open(top)
    below = chain.expected_upto(len(chain.images) - 1)
    layer = chain.images[-1].layer
    zero_blocks = [b for b, c in layer.items() if isinstance(c, bytes) and c == bytes(MIB)]
    same = [
        b
        for b, c in layer.items()
        if isinstance(c, bytes) and c != bytes(MIB) and c == below[b * MIB : (b + 1) * MIB]
    ]
    hidden = [b for b in zero_blocks if below[b * MIB : (b + 1) * MIB] != bytes(MIB)]
    assert hidden and same, "the chain should exercise both rules"
    plan = plan_compact(top, scan=True)
    assert plan.differencing
    assert sorted(plan.zero_blocks.tolist()) == sorted(zero_blocks)
    assert sorted(plan.parent_blocks.tolist()) == sorted(same)
    result = run_compact(plan)
    after = ref_open(top)
    assert ref_read(chain.paths) == chain.expected
    assert all(after.entries[b] == ZERO for b in zero_blocks)  # must keep hiding the parent
    assert all(after.entries[b] == FREE for b in same)
    assert result.parent_blocks == len(same) and result.zero_blocks == len(zero_blocks)
    assert dense(after.entries)
    assert (after.uuid, after.modify_uuid, after.parent_uuid, after.parent_modify_uuid) == (
        before.uuid,
        before.modify_uuid,
        before.parent_uuid,
        before.parent_modify_uuid,
    )
    # The parents were not touched.
    for built in chain.images[:-1]:
        assert ref_open(built.path).entries == built.entries


@pytest.mark.parametrize("differencing", [False, True])
def test_defrag_puts_blocks_in_guest_order_keeping_identity(
    tmp_path: Path, qemu_img: str, differencing: bool
) -> None:
    if differencing:
        chain = make_chain(tmp_path / "vm", 24)
        path, paths, expected = chain.leaf, chain.paths, chain.expected
    else:
        path, expected = make_base(tmp_path, 24, comment=b"my disk", lchs=(100, 16, 63, 512))
        paths = [path]
    before = ref_open(path)
    path.chmod(0o640)
    result = run_compact(plan_compact(path, defrag=True))
    after = ref_open(path)
    assert result.defragmented and result.verified
    assert ref_read(paths) == expected
    live = [(b, e) for b, e in enumerate(after.entries) if e < ZERO]
    assert [e for _, e in live] == list(range(len(live)))  # guest order, dense
    assert (
        after.uuid,
        after.modify_uuid,
        after.parent_uuid,
        after.parent_modify_uuid,
        after.image_type,
        after.comment,
        after.lchs,
    ) == (
        before.uuid,
        before.modify_uuid,
        before.parent_uuid,
        before.parent_modify_uuid,
        before.image_type,
        before.comment,
        before.lchs,
    )
    assert path.stat().st_mode & 0o777 == 0o640
    assert files_in(path.parent) == {p.name for p in paths if p.parent == path.parent}
    if not differencing:
        assert_qemu_clean(qemu_img, path)
        assert_qemu_same(qemu_img, expected, path, tmp_path)


def test_defrag_cancel_changes_nothing(tmp_path: Path) -> None:
    path, _ = make_base(tmp_path, 24)
    state = folder_state(tmp_path)
    token = CancelToken()
    with pytest.raises(OperationCancelled, match=r"^Cancelled: nothing was changed\.$"):
        run_compact(
            plan_compact(path, defrag=True),
            progress=Recorder(token, "copying blocks", 5),
            cancel=token,
        )
    assert folder_state(tmp_path) == state


# -- refusals ------------------------------------------------------------------------------
def test_refuses_fixed_image(tmp_path: Path) -> None:
    built = build_image(tmp_path / "f.vdi", 8 * MIB, {0: pattern(1, MIB)}, fixed=True)
    plan = plan_compact(built.path)
    assert not plan.can_run
    assert plan.refusals == (
        f"'f.vdi' is a fixed-size image; compacting would break its preallocated layout. "
        f"Convert it first with 'vdictl convert {built.path} --to dynamic', which also drops "
        "its all-zero blocks.",
    )
    with pytest.raises(OperationRefused, match="fixed-size image"):
        run_compact(plan)


def test_refuses_image_open_in_another_process(tmp_path: Path) -> None:
    path, _ = make_base(tmp_path, 8)
    proc = holder(path)
    try:
        plan = plan_compact(path)
        assert any(
            r.startswith("'disk.vdi' is open in another program: python")
            and f"(process {proc.pid})" in r
            for r in plan.refusals
        ), plan.refusals
    finally:
        release(proc)
    plan = plan_compact(path)
    assert plan.can_run
    # Opened after planning: the run checks again.
    proc = holder(path)
    try:
        with pytest.raises(OperationRefused, match="is open in another program"):
            run_compact(plan)
    finally:
        release(proc)


def test_refuses_image_locked_by_another_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = make_base(tmp_path, 8)
    monkeypatch.setattr(inuse, "processes_holding", lambda paths: {})
    proc = holder(path, lock=True)
    try:
        plan = plan_compact(path)
        assert plan.refusals == (
            f"'disk.vdi' is locked by another program (a running VM, qemu or another vdigui); "
            f"close it and try again ({path}).",
        )
    finally:
        release(proc)


def test_refuses_when_the_vm_looks_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vdigui.engine import vmfolder

    path, _ = make_base(tmp_path, 8)
    monkeypatch.setattr(
        vmfolder,
        "find_running_vm_hint",
        lambda p: "The VM in 'x' looks running: process 1 (VBoxHeadless).",
    )
    plan = plan_compact(path)
    assert plan.refusals == ("The VM in 'x' looks running: process 1 (VBoxHeadless).",)


def test_refuses_missing_parent(tmp_path: Path) -> None:
    chain = make_chain(tmp_path / "vm", 8, depth=2)
    chain.images[0].path.unlink()
    plan = plan_compact(chain.leaf)
    assert len(plan.refusals) == 1 and "was not found" in plan.refusals[0]
    assert plan.refusals[0].endswith(
        "Compaction needs the whole chain to compare blocks with what the parent shows."
    )


def test_refuses_to_run_a_stale_plan(tmp_path: Path) -> None:
    path, _ = make_base(tmp_path, 8)
    plan = plan_compact(path)
    time.sleep(0.01)
    with open(path, "r+b") as f:
        f.seek(0, 2)
        f.write(b"x")
    with pytest.raises(OperationRefused, match="changed since the operation was planned"):
        run_compact(plan)


# -- cancel, verification ------------------------------------------------------------------
def test_cancel_while_scanning_changes_nothing(tmp_path: Path) -> None:
    path, _ = make_base(tmp_path, 24)
    state = folder_state(tmp_path)
    token = CancelToken()
    with pytest.raises(OperationCancelled) as exc:
        run_compact(
            plan_compact(path), progress=Recorder(token, "scanning blocks", 7), cancel=token
        )
    assert str(exc.value) == "Cancelled: nothing was changed."
    assert folder_state(tmp_path) == state


@pytest.mark.parametrize("after", [1, 3])
def test_cancel_while_moving_leaves_a_consistent_partly_compacted_image(
    tmp_path: Path, qemu_img: str, monkeypatch: pytest.MonkeyPatch, after: int
) -> None:
    from opshelpers import assert_qemu_consistent

    monkeypatch.setattr(compact, "MOVE_BATCH_BYTES", 2 * MIB)
    path, expected = make_base(tmp_path, 40, seed=3)
    plan = plan_compact(path, scan=True)
    assert plan.moves > after
    token = CancelToken()
    with pytest.raises(OperationCancelled) as exc:
        run_compact(plan, progress=Recorder(token, "moving blocks", after), cancel=token)
    assert str(exc.value) == (
        "Cancelled: the image is consistent and partly compacted; run compact again to finish."
    )
    assert ref_read([path]) == expected
    assert_qemu_consistent(qemu_img, path)
    assert files_in(tmp_path) == {path.name}
    run_compact(plan_compact(path))
    assert ref_read([path]) == expected
    assert_qemu_clean(qemu_img, path)


@pytest.mark.parametrize("where", ["moved data", "map"])
def test_verification_mismatch_is_loud_and_restores_the_map(tmp_path: Path, where: str) -> None:
    """A moved block written wrong (read back before anything points at it) or a map entry
    written wrong (the map re-read at the end) is caught; the image still reads as before."""
    path, expected = make_base(tmp_path, 24)
    before = ref_open(path)
    map_start, map_end = before.offset_blocks, before.offset_blocks + 4 * before.blocks
    select = (
        nth_write(1, min_length=MIB)
        if where == "moved data"
        else lambda offset, length: map_start <= offset < map_end
    )
    ops = FaultyOps(select)
    with (
        fileio.use(ops),
        pytest.raises(VerificationError, match=r"^Verification failed: after compaction"),
    ):
        run_compact(plan_compact(path))
    assert ops.fired
    assert ref_read([path]) == expected
    assert backup_path(path).exists()
    info, _head, block_map = read_backup(backup_path(path))
    assert info["image"] == "disk.vdi" and len(block_map) == 4 * 24
    run_compact(plan_compact(path))
    assert ref_read([path]) == expected


def test_big_virtual_size_small_memory(tmp_path: Path) -> None:
    """A 1 TiB virtual disk with a few blocks: maps are numpy arrays, nothing per block."""
    blocks = 1 << 20
    layer = {b: pattern(b, MIB) for b in (5, 70000, blocks - 1)}
    layer[12345] = bytes(MIB)
    built = build_image(tmp_path / "big.vdi", blocks * MIB, layer, slot_order="reverse")
    result = run_compact(plan_compact(built.path), verify=False)
    assert result.zero_blocks == 1 and result.size_after == ref_open(built.path).file_size
    after = ref_open(built.path)
    assert after.blocks_allocated == 3 and dense(after.entries)
    assert np.array_equal(np.flatnonzero(np.array(after.entries) < ZERO), [5, 70000, blocks - 1])


@pytest.mark.parametrize("seed", range(8))
def test_random_chains_keep_their_content(tmp_path: Path, seed: int) -> None:
    """Random layers (data, all-zero data, ZERO, FREE), slot orders and depths, small blocks."""
    import random

    from builders import build_chain, model_read, random_layers

    rng = random.Random(seed)
    bs = 64 << 10
    blocks = rng.randrange(8, 40)
    depth = rng.randrange(1, 4)
    layers = random_layers(rng, blocks, bs, depth, density=rng.uniform(0.3, 0.9))
    if depth > 1:  # some top blocks identical to what the parents show
        below = model_read(layers[:-1], blocks * bs, bs)
        for b in rng.sample(range(blocks), blocks // 5):
            layers[-1][b] = below[b * bs : (b + 1) * bs]
    chain = build_chain(
        tmp_path,
        blocks * bs,
        layers,
        block_size=bs,
        seed=seed,
        slot_order=rng.choice(["sequential", "shuffle", "reverse"]),
    )
    defrag = rng.random() < 0.3
    result = run_compact(plan_compact(chain.leaf, defrag=defrag), verify=rng.random() < 0.7)
    assert ref_read(chain.paths) == chain.expected
    after = ref_open(chain.leaf)
    assert dense(after.entries) and after.blocks_allocated == sum(
        1 for e in after.entries if e < ZERO
    )
    assert after.file_size == after.offset_data + after.blocks_allocated * bs
    top = chain.images[-1].layer
    for b, content in top.items():
        if content == "zero" or content == bytes(bs):
            assert after.entries[b] == ZERO, (b, result)
    assert files_in(tmp_path) == {p.name for p in chain.paths}


def test_a_running_compaction_holds_a_lock(tmp_path: Path) -> None:
    """A second planner (another vdigui window, another process) sees the image as locked."""
    path, expected = make_base(tmp_path, 16)
    seen: list[tuple[str, ...]] = []

    def progress(ev: Progress) -> None:
        if ev.phase == "scanning blocks" and not seen:
            seen.append(plan_compact(path).refusals)

    run_compact(plan_compact(path), progress=progress)
    assert seen == [
        (
            f"'disk.vdi' is locked by another program (a running VM, qemu or another "
            f"vdigui); close it and try again ({path}).",
        )
    ]
    assert ref_read([path]) == expected
    assert plan_compact(path).can_run


@pytest.mark.parametrize(
    "kw",
    [
        {"placement": "qemu"},
        {"placement": "packed"},
        {"version": 0x00000002},
        {"block_extra": 4096},
        {"header_size": 0x180},
    ],
    ids=["qemu", "packed", "legacy", "extra", "v1.1-0x180"],
)
@pytest.mark.parametrize("defrag", [False, True])
def test_other_layouts(tmp_path: Path, kw: dict[str, object], defrag: bool) -> None:
    """Every layout the engine reads compacts in place and defragments."""
    from builders import build_image as build

    from vdigui.engine import open_chain

    layer = {b: (bytes(MIB) if b % 3 == 0 else pattern(b, MIB)) for b in range(0, 12, 2)}
    built = build(tmp_path / "l.vdi", 14 * MIB, layer, slot_order="reverse", **kw)
    expected = model_read([built.layer], 14 * MIB, MIB)
    result = run_compact(plan_compact(built.path, defrag=defrag))
    assert result.verified and result.zero_blocks == 2
    with open_chain(built.path) as chain:
        assert chain.read(0, chain.disk_size) == expected
        assert chain.top.header.blocks_allocated == 4
        h = chain.top.header
        assert chain.top.file_size == h.offset_data + 4 * h.slot_size


def test_blocks_that_start_with_zeros_are_read_whole(tmp_path: Path, qemu_img: str) -> None:
    """The scan settles most blocks by their first bytes; one whose data starts late, or sits
    in its last byte, must still be kept, and only true zero blocks dropped."""
    late = bytearray(MIB)
    late[MIB - 1] = 7
    middle = bytearray(MIB)
    middle[compact.PROBE_BYTES] = 1
    layer = {
        0: bytes(late),
        1: bytes(MIB),
        2: pattern(2, MIB),
        3: bytes(middle),
        4: bytes(MIB),
        5: pattern(5, MIB),
    }
    built = build_image(tmp_path / "d.vdi", 8 * MIB, layer, slot_order="shuffle", seed=4)
    expected = ref_read([built.path])
    result = run_compact(plan_compact(built.path, scan=True))
    assert result.zero_blocks == 2 and result.verified
    after = ref_open(built.path)
    assert after.entries[1] == ZERO and after.entries[4] == ZERO
    assert all(after.entries[b] < ZERO for b in (0, 2, 3, 5))
    assert ref_read([built.path]) == expected
    assert_qemu_clean(qemu_img, built.path)


def test_defrag_verification_catches_a_corrupted_write(tmp_path: Path) -> None:
    """A block of the rebuilt file written wrong is read back, found, and the original kept."""
    chain = make_chain(tmp_path, 16, depth=2)
    state = folder_state(tmp_path)
    ops = FaultyOps(nth_write(2, min_length=MIB))
    with (
        fileio.use(ops),
        pytest.raises(
            VerificationError,
            match=r"^Verification failed: the rebuilt .* reads "
            r"differently \(guest block \d+ reads back",
        ),
    ):
        run_compact(plan_compact(chain.leaf, defrag=True))
    assert ops.fired
    assert folder_state(tmp_path) == state
    assert ref_read(list(chain.paths)) == chain.expected
