"""Clone: flattening, layout, identity, refusals, cancel and failure leave nothing behind."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest
from builders import MIB, build_image, folder_state, pattern
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
    sha,
)

from vdigui.engine import (
    NULL_UUID,
    OperationCancelled,
    OperationRefused,
    VerificationError,
    fileio,
)
from vdigui.engine.operations import clone
from vdigui.engine.operations.clone import plan_clone, run_clone
from vdigui.engine.operations.verify import GuestDigest
from vdigui.engine.progress import CancelToken


def test_clone_of_a_base_is_dynamic_in_guest_order_without_zero_blocks(
    tmp_path: Path, qemu_img: str
) -> None:
    src_dir, out_dir = tmp_path / "src", tmp_path / "out"
    out_dir.mkdir()
    path, expected = make_base(src_dir, 40, comment=b"a comment", lchs=(80, 16, 63, 512))
    source_state = folder_state(src_dir)
    source = ref_open(path)
    rec = Recorder()
    plan = plan_clone(path, out_dir / "copy.vdi")
    assert plan.can_run and not plan.warnings and plan.uuid != source.uuid
    result = run_clone(plan, progress=rec)
    dest = out_dir / "copy.vdi"
    out = ref_open(dest)
    assert folder_state(src_dir) == source_state  # the source was only read
    assert ref_read([dest]) == expected
    assert_qemu_clean(qemu_img, dest)
    assert_qemu_same(qemu_img, expected, dest, tmp_path)
    nonzero = [b for b in range(40) if expected[b * MIB : (b + 1) * MIB] != bytes(MIB)]
    assert [e for e in out.entries if e < ZERO] == list(range(len(nonzero)))
    assert [b for b, e in enumerate(out.entries) if e < ZERO] == nonzero
    assert all(out.entries[b] == FREE for b in range(40) if b not in nonzero)
    assert out.blocks_allocated == len(nonzero) == result.stored_blocks
    assert out.file_size == out.offset_data + len(nonzero) * MIB == result.file_size
    assert out.image_type == 1 and out.parent_uuid == NULL_UUID
    assert out.uuid == plan.uuid == result.uuid and out.uuid != source.uuid
    assert out.modify_uuid == result.modify_uuid
    assert out.modify_uuid not in (source.modify_uuid, source.uuid, NULL_UUID)
    assert out.comment == b"a comment" and out.lchs == (80, 16, 63, 512)
    assert result.verified is True and result.hash == sha(expected)
    assert files_in(out_dir) == {"copy.vdi"}
    rec.assert_sane()
    assert {e.phase for e in rec.events} == {"copying blocks"}


def test_clone_flattens_a_chain(tmp_path: Path, qemu_img: str) -> None:
    chain = make_chain(tmp_path / "vm", 32, depth=3)
    states = folder_state(tmp_path / "vm")
    dest = tmp_path / "flat.vdi"
    result = run_clone(plan_clone(chain.leaf, dest))
    assert folder_state(tmp_path / "vm") == states
    assert ref_read([dest]) == chain.expected
    assert_qemu_clean(qemu_img, dest)
    assert_qemu_same(qemu_img, chain.expected, dest, tmp_path)
    out = ref_open(dest)
    assert out.parent_uuid == NULL_UUID and out.image_type == 1
    assert result.hash == sha(chain.expected)


def test_clone_of_chain_paths_given_explicitly(tmp_path: Path) -> None:
    chain = make_chain(tmp_path / "vm", 16, depth=2)
    dest = tmp_path / "mid.vdi"
    # Only the base: what the disk looked like before the snapshot.
    run_clone(plan_clone([chain.images[0].path], dest))
    assert ref_read([dest]) == chain.expected_upto(1)


def test_fixed_clone(tmp_path: Path, qemu_img: str) -> None:
    path, expected = make_base(tmp_path / "src", 24)
    dest = tmp_path / "fixed.vdi"
    plan = plan_clone(path, dest, fixed=True)
    result = run_clone(plan)
    out = ref_open(dest)
    assert out.image_type == 2 and out.entries == list(range(24))
    assert out.file_size == out.offset_data + 24 * MIB == plan.output_size == result.file_size
    assert ref_read([dest]) == expected
    assert_qemu_clean(qemu_img, dest)
    assert_qemu_same(qemu_img, expected, dest, tmp_path)


def test_keep_uuid_warns(tmp_path: Path) -> None:
    path, _ = make_base(tmp_path / "src", 8)
    source = ref_open(path)
    plan = plan_clone(path, tmp_path / "same.vdi", keep_uuid=True)
    assert plan.warnings == (
        f"The clone keeps the source's UUID {{{source.uuid}}}: VirtualBox refuses two disks "
        "with one UUID, so never register the clone and the source at the same time.",
    )
    run_clone(plan)
    out = ref_open(tmp_path / "same.vdi")
    assert out.uuid == source.uuid and out.modify_uuid != source.modify_uuid


# -- refusals ------------------------------------------------------------------------------
def test_refuses_existing_dest_and_missing_folder(tmp_path: Path) -> None:
    path, _ = make_base(tmp_path, 8)
    other = tmp_path / "other.vdi"
    other.write_bytes(b"keep me")
    plan = plan_clone(path, other)
    assert plan.refusals == (
        f"'{other}' already exists; vdigui never overwrites a file with a "
        "clone. Choose another name or remove it first.",
    )
    with pytest.raises(OperationRefused):
        run_clone(plan)
    assert other.read_bytes() == b"keep me"
    assert plan_clone(path, path).refusals == (
        "'disk.vdi' is the source itself; choose another name for the clone.",
    )
    missing = tmp_path / "nope" / "x.vdi"
    assert plan_clone(path, missing).refusals == (f"The folder '{missing.parent}' does not exist.",)


def test_dest_appearing_after_planning_is_not_overwritten(tmp_path: Path) -> None:
    path, _ = make_base(tmp_path, 8)
    dest = tmp_path / "late.vdi"
    plan = plan_clone(path, dest)
    dest.write_bytes(b"someone else's")
    with pytest.raises(OperationRefused, match="already exists"):
        run_clone(plan)
    assert dest.read_bytes() == b"someone else's"
    assert files_in(tmp_path) == {"disk.vdi", "late.vdi"}


def test_refuses_when_space_is_short(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = make_base(tmp_path, 8)
    monkeypatch.setattr(clone, "free_space", lambda folder: 1 << 20)
    plan = plan_clone(path, tmp_path / "c.vdi", fixed=True)
    assert plan.refusals == (
        f"Not enough free space in '{tmp_path}' for the clone 'c.vdi': 10.0 MiB needed, "
        "1.0 MiB free.",
    )


def test_refuses_a_source_another_process_writes(tmp_path: Path) -> None:
    path, _ = make_base(tmp_path, 8)
    proc = holder(path)  # opened read-write
    try:
        plan = plan_clone(path, tmp_path / "c.vdi")
        assert len(plan.refusals) == 1 and "is open in another program" in plan.refusals[0]
    finally:
        release(proc)


# -- cancel, failure, verification ---------------------------------------------------------
@pytest.mark.parametrize(
    ("phase", "after"), [("copying blocks", 1), ("copying blocks", 9), ("copying blocks", 16)]
)
def test_cancel_leaves_nothing_behind(tmp_path: Path, phase: str, after: int) -> None:
    path, _ = make_base(tmp_path, 16)
    state = folder_state(tmp_path)
    token = CancelToken()
    with pytest.raises(OperationCancelled) as exc:
        run_clone(
            plan_clone(path, tmp_path / "c.vdi"),
            progress=Recorder(token, phase, after),
            cancel=token,
        )
    assert str(exc.value) == "Cancelled: nothing was changed and no clone was left behind."
    assert folder_state(tmp_path) == state


def test_write_failure_leaves_nothing_behind(tmp_path: Path) -> None:
    path, _ = make_base(tmp_path, 16)
    state = folder_state(tmp_path)
    plan = plan_clone(path, tmp_path / "c.vdi")
    ops = FaultyOps(nth_write(5), fail=OSError(errno.ENOSPC, "No space left on device"))
    with fileio.use(ops), pytest.raises(OSError, match="No space left"):
        run_clone(plan)
    assert ops.fired
    assert folder_state(tmp_path) == state


@pytest.mark.parametrize("where", ["data", "map"])
def test_verification_mismatch_deletes_the_clone(tmp_path: Path, where: str) -> None:
    """A block written wrong, or a map written wrong, is caught by reading the output back."""
    path, _ = make_base(tmp_path, 8)
    state = folder_state(tmp_path)
    # The map is written twice: all FREE when the file is created, then the real one.
    select = nth_write(1, min_length=MIB) if where == "data" else nth_write(2, offset=MIB)
    ops = FaultyOps(select)
    with (
        fileio.use(ops),
        pytest.raises(
            VerificationError,
            match=r"^Verification failed: the clone of 'disk\.vdi' "
            r"does not read back as the source",
        ) as exc,
    ):
        run_clone(plan_clone(path, tmp_path / "c.vdi"))
    assert ops.fired
    expected = (
        "the block map read back differs from the one written"
        if where == "map"
        else "guest block 0 reads back differently"
    )
    assert expected in str(exc.value)
    assert folder_state(tmp_path) == state


def test_corrupted_write_is_missed_without_verify(tmp_path: Path) -> None:
    """The same damage with --no-verify goes unnoticed: the check above is what finds it."""
    path, expected = make_base(tmp_path, 8)
    with fileio.use(FaultyOps(nth_write(1, min_length=MIB))):
        run_clone(plan_clone(path, tmp_path / "c.vdi"), verify=False)
    assert ref_read([tmp_path / "c.vdi"]) != expected


def test_no_verify(tmp_path: Path) -> None:
    path, expected = make_base(tmp_path, 8)
    result = run_clone(plan_clone(path, tmp_path / "c.vdi"), verify=False)
    assert result.verified is None and result.hash is None
    assert ref_read([tmp_path / "c.vdi"]) == expected


def test_guest_digest_matches_its_definition_with_a_partial_last_block(tmp_path: Path) -> None:
    size = 5 * MIB + 3 * 512
    layer = {0: pattern(1, MIB), 5: pattern(2, MIB), 3: bytes(MIB)}
    built = build_image(tmp_path / "odd.vdi", size, layer)
    expected = ref_read([built.path])
    assert len(expected) == size
    result = run_clone(plan_clone(built.path, tmp_path / "c.vdi"))
    assert result.hash == sha(expected) and result.verified
    assert ref_read([tmp_path / "c.vdi"]) == expected
    # Blocks added in any order (a scan reads in physical order), zero blocks left out, the
    # bytes past the disk end of the last block ignored.
    digest = GuestDigest(size, MIB)
    for b in reversed(range(6)):
        data = expected[b * MIB : (b + 1) * MIB]
        if data != bytes(len(data)):
            digest.add(b, data.ljust(MIB, b"\xee"))
    assert digest.hexdigest() == sha(expected)


def test_unreadable_source_block_is_refused_and_fails_cleanly(tmp_path: Path) -> None:
    from builders import RawImage, write_raw

    from vdigui.engine import ImageCorruptError
    from vdigui.engine.chain import open_paths
    from vdigui.engine.operations._rewrite import source_spec

    built = build_image(tmp_path / "bad.vdi", 8 * MIB, {0: pattern(0, MIB), 1: pattern(1, MIB)})
    entries = list(built.entries)
    entries[5] = 9  # past the end of the file
    write_raw(built.path, RawImage(built.header, entries, built.raw.slots))
    state = folder_state(tmp_path)
    plan = plan_clone(built.path, tmp_path / "c.vdi")
    assert plan.refusals
    with pytest.raises(OperationRefused):
        run_clone(plan)
    # Below the plan, the copy itself refuses to read past the end before writing anything.
    with open_paths([built.path]) as chain:
        layer, entry = chain.serving()
        with pytest.raises(ImageCorruptError, match="past the end"):
            source_spec(chain, np.array([0, 1, 5]), layer, entry)
    assert folder_state(tmp_path) == state
