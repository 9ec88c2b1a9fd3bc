"""The copy pipeline (engine/copier.py): placement, zero detection, read-back, and the export.

Expected bytes come from the test's own model (plain Python slicing of the source files) and
from qemu-img (``compare`` of an export against the VDI, ``check`` of clones); corruption is
made real with a FileOps that flips a byte of one write on its way to the file.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import pytest
import xxhash
from builders import MIB, build_image, folder_state, pattern
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opshelpers import (
    FaultyOps,
    assert_qemu_clean,
    assert_qemu_same_raw,
    make_base,
    make_chain,
    nth_write,
    ref_read,
)

from vdigui.engine import OperationCancelled, VerificationError, copier, fileio, open_chain
from vdigui.engine.copier import (
    CopySpec,
    TempOutput,
    copy_blocks,
    nonzero_rows,
    read_blocks,
)
from vdigui.engine.export import export_raw
from vdigui.engine.operations.clone import plan_clone, run_clone
from vdigui.engine.operations.verify import GuestDigest, digest_of_raw
from vdigui.engine.progress import CancelToken

BS = 4096  # small blocks keep the property tests fast; the pipeline does not care


def _source(folder: Path, blocks: list[bytes], name: str = "src.bin") -> tuple[Path, int]:
    path = folder / name
    path.write_bytes(b"".join(blocks))
    return path, os.open(path, os.O_RDONLY)


def _blocks(draw_zero: list[bool], seed: int, size: int = BS) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for zero in draw_zero:
        if zero:
            out.append(bytes(size))
        else:
            raw = bytearray(size)
            # Non-zero somewhere, sometimes only past the head the fast check looks at.
            where = rng.choice([0, size // 2, size - 1])
            raw[where] = rng.randrange(1, 256)
            out.append(bytes(raw))
    return out


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    zeros=st.lists(st.booleans(), min_size=0, max_size=40),
    order=st.randoms(use_true_random=False),
    dense=st.booleans(),
    verify=st.booleans(),
    read_blocks_per_request=st.integers(1, 9),
)
def test_copy_places_every_non_zero_block_and_reads_it_back(
    tmp_path: Path,
    zeros: list[bool],
    order: random.Random,
    dense: bool,
    verify: bool,
    read_blocks_per_request: int,
) -> None:
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    data = _blocks(zeros, seed=len(zeros))
    _, fd = _source(folder, data)
    try:
        jobs = list(range(len(data)))
        order.shuffle(jobs)
        if order.random() < 0.5:
            jobs.sort()  # adjacent slots: coalesced reads
        spec = CopySpec(
            [fd], np.zeros(len(jobs), dtype=np.int32), np.array(jobs, dtype=np.int64) * BS, BS
        )
        dst = None if dense else np.arange(len(jobs), dtype=np.int64)[::-1].copy() * BS + BS
        out = TempOutput(folder / ".out.vdigui-tmp-1")
        try:
            outcome = copy_blocks(
                spec,
                out.fd,
                dst=dst,
                dense_base=3 * BS,
                verify=verify,
                read_bytes=read_blocks_per_request * BS,
            )
            raw = (folder / ".out.vdigui-tmp-1").read_bytes()
        finally:
            out.discard()
    finally:
        os.close(fd)
    assert outcome.mismatch is None
    expected_written = [data[j] != bytes(BS) for j in jobs]
    assert outcome.written.tolist() == expected_written
    assert outcome.stored == sum(expected_written)
    slot = 0
    for i, j in enumerate(jobs):
        if not expected_written[i]:
            assert outcome.dst[i] == -1
            continue
        at = 3 * BS + slot * BS if dense else int(dst[i])  # type: ignore[index]
        slot += 1
        assert outcome.dst[i] == at
        assert raw[at : at + BS] == data[j]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.sampled_from([0, 1, 7, 511, 4095]), max_size=6), st.integers(1, 5))
def test_nonzero_rows_matches_a_plain_scan(marks: list[int], count: int) -> None:
    buf = bytearray(count * BS)
    for k, at in enumerate(marks):
        buf[(k % count) * BS + at] = 1
    expected = [any(buf[r * BS : (r + 1) * BS]) for r in range(count)]
    assert nonzero_rows(memoryview(buf), count, BS).tolist() == expected


@pytest.mark.parametrize(("threaded", "mapped"), [(False, True), (False, False), (True, True)])
def test_a_byte_flipped_on_its_way_to_the_file_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threaded: bool, mapped: bool
) -> None:
    monkeypatch.setattr(copier, "VERIFY_THREAD", threaded)
    monkeypatch.setattr(copier, "READBACK_MAPPED", mapped)
    data = [pattern(i, BS) for i in range(12)]
    _, fd = _source(tmp_path, data)
    try:
        spec = CopySpec([fd], np.zeros(12, dtype=np.int32), np.arange(12, dtype=np.int64) * BS, BS)
        out = TempOutput(tmp_path / ".o.vdigui-tmp-1")
        try:
            with fileio.use(FaultyOps(nth_write(6, min_length=BS))) as ops:
                outcome = copy_blocks(spec, out.fd, verify=True)
            assert ops.fired
            assert outcome.mismatch == 5  # the sixth block written
            raw = (tmp_path / ".o.vdigui-tmp-1").read_bytes()
            assert raw[5 * BS] == data[5][0] ^ 1  # the damage is really in the file
        finally:
            out.discard()
    finally:
        os.close(fd)


def test_cancel_and_read_order(tmp_path: Path) -> None:
    data = [pattern(i, BS) for i in range(30)]
    _, fd = _source(tmp_path, data)
    try:
        order = np.array(random.Random(3).sample(range(30), 30), dtype=np.int64)
        spec = CopySpec([fd], np.zeros(30, dtype=np.int32), order * BS, BS)
        seen: list[bytes] = []
        read_blocks(
            spec,
            lambda b: seen.extend(bytes(b.data[i * BS : (i + 1) * BS]) for i in range(b.count)),
            read_bytes=4 * BS,
        )
        assert seen == [data[i] for i in order]
        token = CancelToken()
        token.cancel()
        with pytest.raises(OperationCancelled, match="stop"):
            read_blocks(spec, lambda b: None, cancel=token, cancel_message="stop")
    finally:
        os.close(fd)


def test_guest_digest_any_order_equals_its_definition() -> None:
    size = 5 * BS + 700
    raw = b"".join(pattern(i, BS) if i % 2 else bytes(BS) for i in range(6))[:size]
    digest = GuestDigest(size, BS)
    for block in (5, 1, 3):
        digest.add(block, raw[block * BS : (block + 1) * BS].ljust(BS, b"\x55"))
    outer = xxhash.xxh3_128()
    for start in range(0, size, BS):
        outer.update(xxhash.xxh3_128(raw[start : start + BS]).digest())
    assert digest.hexdigest() == outer.hexdigest() == digest_of_raw(raw, BS)


# -- export: the pipeline end to end ----------------------------------------------------------
def test_export_of_a_chain_matches_its_clone_under_qemu(tmp_path: Path, qemu_img: str) -> None:
    chain = make_chain(tmp_path, 24)
    out = tmp_path / "disk.raw"
    with open_chain(chain.leaf) as c:
        result = export_raw(c, out)
    assert result.verified is True
    assert out.read_bytes() == chain.expected
    assert result.data_blocks + result.hole_blocks == 24
    # qemu-img cannot open differencing VDIs: it checks the flattened clone and compares it.
    clone = tmp_path / "flat.vdi"
    run_clone(plan_clone(chain.leaf, clone))
    assert_qemu_clean(qemu_img, clone)
    assert_qemu_same_raw(qemu_img, out, clone)


def test_export_of_a_base_is_sparse_and_matches_qemu(tmp_path: Path, qemu_img: str) -> None:
    path, expected = make_base(tmp_path, 32, seed=5)
    out = tmp_path / "disk.raw"
    with open_chain(path) as c:
        result = export_raw(c, out)
    assert out.read_bytes() == expected
    assert_qemu_same_raw(qemu_img, out, path)
    nonzero = sum(expected[b * MIB : (b + 1) * MIB] != bytes(MIB) for b in range(32))
    assert result.data_blocks == nonzero
    assert out.stat().st_blocks * 512 <= nonzero * MIB + 64 * 1024  # holes stay holes


def test_export_verification_catches_a_corrupted_write(tmp_path: Path) -> None:
    path, _ = make_base(tmp_path, 16, seed=2)
    state = folder_state(tmp_path)
    ops = FaultyOps(nth_write(3, min_length=MIB))
    with (
        open_chain(path) as c,
        fileio.use(ops),
        pytest.raises(
            VerificationError,
            match=r"^Verification failed: guest block \d+ of the export "
            r"'disk\.raw' reads back differently",
        ),
    ):
        export_raw(c, tmp_path / "disk.raw")
    assert ops.fired
    assert folder_state(tmp_path) == state  # nothing left behind


def test_export_without_verify_keeps_the_damage(tmp_path: Path) -> None:
    path, expected = make_base(tmp_path, 16, seed=2)
    with open_chain(path) as c, fileio.use(FaultyOps(nth_write(3, min_length=MIB))):
        result = export_raw(c, tmp_path / "disk.raw", verify=False)
    assert result.verified is None
    assert (tmp_path / "disk.raw").read_bytes() != expected


def test_export_partial_last_block(tmp_path: Path, qemu_img: str) -> None:
    size = 3 * MIB + 512
    built = build_image(tmp_path / "odd.vdi", size, {0: pattern(1, MIB), 3: pattern(2, MIB)})
    out = tmp_path / "odd.raw"
    with open_chain(built.path) as c:
        export_raw(c, out)
    assert out.stat().st_size == size
    assert out.read_bytes() == ref_read([built.path])
    assert_qemu_same_raw(qemu_img, out, built.path)
