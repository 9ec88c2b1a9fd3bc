"""One image: reads over every layout, writes with VirtualBox's allocation rules, creation."""

from __future__ import annotations

import os
import random
import struct
from pathlib import Path

import pytest
from builders import (
    BANNERS,
    FREE,
    MIB,
    V0_2,
    V1_0,
    ZERO,
    build_image,
    model_read,
    pattern,
)

from vdigui.engine import DiskChain, ImageCorruptError, VdiError, create_image, open_image
from vdigui.engine.format import ImageType, read_header

KIB = 1024


def read_all(path: Path) -> bytes:
    with DiskChain([open_image(path)]) as chain:
        return chain.read(0, chain.disk_size)


def entries_on_disk(path: Path) -> list[int]:
    h = read_header(path)
    raw = path.read_bytes()[h.offset_blocks : h.offset_blocks + 4 * h.blocks]
    return list(struct.unpack(f"<{h.blocks}I", raw))


@pytest.mark.parametrize(
    ("kwargs", "block_size"),
    [
        ({"placement": "vbox"}, MIB),
        ({"placement": "qemu", "header_size": 0x180, "banner": BANNERS["qemu"]}, MIB),
        ({"placement": "packed"}, 64 * KIB),
        ({"placement": "qemu", "block_extra": 512}, 4 * KIB),
        ({"placement": "vbox", "block_extra": 4096}, 512),
        ({"version": V1_0, "header_size": 0x180, "placement": "qemu"}, 2 * MIB),
        ({"version": V0_2, "banner": BANNERS["sun-xvm"]}, 8 * KIB),
        ({"fixed": True, "placement": "qemu"}, 32 * KIB),
    ],
)
@pytest.mark.parametrize("order", ["sequential", "shuffle", "reverse"])
def test_read_matches_model(tmp_path: Path, kwargs: dict, block_size: int, order: str) -> None:
    rng = random.Random(len(str(kwargs)) + block_size)
    blocks = 9
    disk = blocks * block_size - 512  # odd: the last block is partial
    layer: dict = {}
    for b in range(blocks):
        r = rng.random()
        if r < 0.5:
            layer[b] = pattern(rng.randrange(1000), block_size)
        elif r < 0.7:
            layer[b] = "zero"
    b = build_image(
        tmp_path / "x.vdi", disk, layer, block_size=block_size, slot_order=order, seed=3, **kwargs
    )
    expected = model_read([b.layer], disk, block_size)
    assert read_all(b.path) == expected
    with DiskChain([open_image(b.path)]) as chain:
        # Ranges across block boundaries, inside one block, zero-length, the very end.
        for off, n in [
            (0, 1),
            (block_size - 3, 7),
            (block_size // 2, 3 * block_size),
            (disk - 1, 1),
            (disk, 0),
            (0, disk),
            (5 * block_size + 1, 511),
        ]:
            assert chain.read(off, n) == expected[off : off + n], (off, n)


def test_extra_prefix_is_skipped(tmp_path: Path) -> None:
    b = build_image(
        tmp_path / "x.vdi",
        2 * 4096,
        {0: b"\x77" * 4096, 1: b"\x55" * 4096},
        block_size=4096,
        block_extra=512,
        extra_fill=0xEE,
        placement="qemu",
        slot_order="reverse",
    )
    assert read_all(b.path) == b"\x77" * 4096 + b"\x55" * 4096


def test_read_outside_disk_is_refused(tmp_path: Path) -> None:
    b = build_image(tmp_path / "x.vdi", 2 * MIB)
    with DiskChain([open_image(b.path)]) as chain:
        for off, n in [(-1, 1), (2 * MIB, 1), (0, 2 * MIB + 1)]:
            with pytest.raises(VdiError):
                chain.read(off, n)


def test_slot_past_eof_raises_naming_block_and_slot(tmp_path: Path) -> None:
    b = build_image(tmp_path / "x.vdi", 4 * MIB, {0: pattern(0, MIB)})
    with open(b.path, "r+b") as f:  # point block 2 at slot 5, past the end of the file
        f.seek(b.header.offset_blocks + 8)
        f.write(struct.pack("<I", 5))
    with open_image(b.path) as img:
        assert not img.slot_in_file(5)
        with pytest.raises(ImageCorruptError) as info:
            img.read_own_block(2)
        text = str(info.value)
        assert "block 2" in text and "slot 5" in text and "x.vdi" in text
        assert img.read_own_block(0) == pattern(0, MIB)


def test_crash_tail_is_tolerated(tmp_path: Path) -> None:
    b = build_image(tmp_path / "x.vdi", 4 * MIB, {1: pattern(1, MIB)}, tail=b"\xab" * 70000)
    assert read_all(b.path) == model_read([b.layer], 4 * MIB, MIB)


def test_open_is_read_only_by_default(tmp_path: Path) -> None:
    b = build_image(tmp_path / "x.vdi", 2 * MIB)
    before = b.path.read_bytes()
    with DiskChain([open_image(b.path)]) as chain:
        assert not chain.top.writable
        with pytest.raises(VdiError, match="read-only"):
            chain.write(0, b"x")
    assert b.path.read_bytes() == before


# -- writes into a base image -------------------------------------------------------------
def test_partial_write_allocates_next_slot_zero_padded(tmp_path: Path) -> None:
    b = build_image(
        tmp_path / "x.vdi",
        8 * MIB,
        {5: pattern(5, MIB), 2: pattern(2, MIB)},
        placement="qemu",
        slot_order="reverse",
    )
    size0 = b.path.stat().st_size
    with DiskChain([open_image(b.path, writable=True)]) as chain:
        chain.write(3 * MIB + 100, b"hello")
    h = read_header(b.path)
    assert h.blocks_allocated == 3
    entries = entries_on_disk(b.path)
    assert entries[3] == 2  # slot = previous cBlocksAllocated
    assert b.path.stat().st_size == size0 + MIB
    expected = bytearray(model_read([b.layer], 8 * MIB, MIB))
    expected[3 * MIB + 100 : 3 * MIB + 105] = b"hello"
    assert read_all(b.path) == bytes(expected)
    slot = b.path.read_bytes()[h.offset_data + 2 * MIB : h.offset_data + 3 * MIB]
    assert slot == bytes(100) + b"hello" + bytes(MIB - 105)


def test_zero_write_into_free_base_block_changes_nothing(tmp_path: Path) -> None:
    b = build_image(tmp_path / "x.vdi", 4 * MIB, {0: pattern(0, MIB), 2: "zero"})
    before = b.path.read_bytes()
    with DiskChain([open_image(b.path, writable=True)]) as chain:
        chain.write(MIB, bytes(MIB))  # FREE
        chain.write(2 * MIB + 7, bytes(1000))  # ZERO
    assert b.path.read_bytes() == before


def test_write_into_allocated_block_is_in_place(tmp_path: Path) -> None:
    b = build_image(
        tmp_path / "x.vdi", 4 * MIB, {0: pattern(0, MIB), 1: pattern(1, MIB)}, slot_order="reverse"
    )
    with DiskChain([open_image(b.path, writable=True)]) as chain:
        chain.write(MIB - 2, b"ABCD")  # spans blocks 0 and 1
        chain.write(MIB + 10, bytes(MIB - 10))  # zeros into an allocated block stay data
    assert read_header(b.path).blocks_allocated == 2
    assert entries_on_disk(b.path)[:2] == [1, 0]
    expected = bytearray(model_read([b.layer], 4 * MIB, MIB))
    expected[MIB - 2 : MIB + 2] = b"ABCD"
    expected[MIB + 10 : 2 * MIB] = bytes(MIB - 10)
    assert read_all(b.path) == bytes(expected)


def test_nonzero_write_into_zero_block_allocates(tmp_path: Path) -> None:
    b = build_image(tmp_path / "x.vdi", 4 * MIB, {2: "zero"})
    with DiskChain([open_image(b.path, writable=True)]) as chain:
        chain.write(2 * MIB + 5, b"\x01")
    assert entries_on_disk(b.path)[2] == 0
    data = read_all(b.path)
    assert data[2 * MIB + 5] == 1 and data.count(0) == 4 * MIB - 1


def test_write_in_legacy_and_extra_layouts(tmp_path: Path) -> None:
    for name, kw in [
        ("v0.vdi", {"version": V0_2}),
        ("ex.vdi", {"block_extra": 512, "placement": "packed"}),
    ]:
        b = build_image(tmp_path / name, 4 * 4096, {1: pattern(1, 4096)}, block_size=4096, **kw)  # type: ignore[arg-type]
        with DiskChain([open_image(b.path, writable=True)]) as chain:
            chain.write(4096 * 3 - 1, b"\x09\x08")
        expected = bytearray(model_read([b.layer], 4 * 4096, 4096))
        expected[4096 * 3 - 1 : 4096 * 3 + 1] = b"\x09\x08"
        assert read_all(b.path) == bytes(expected)
        assert read_header(b.path).blocks_allocated == 3


def test_write_refuses_to_cross_link_after_crash_state_c(tmp_path: Path) -> None:
    # Map entry written but header not (reference 2.5 (c)): entry == cBlocksAllocated.
    b = build_image(
        tmp_path / "x.vdi", 4 * MIB, {0: pattern(0, MIB), 1: pattern(1, MIB)}, blocks_allocated=1
    )
    assert read_all(b.path) == model_read([b.layer], 4 * MIB, MIB)  # still readable
    before = b.path.read_bytes()
    with (
        DiskChain([open_image(b.path, writable=True)]) as chain,
        pytest.raises(ImageCorruptError, match="cross-linked"),
    ):
        chain.write(3 * MIB, b"new")
    assert b.path.read_bytes() == before


def test_write_after_crash_state_a_reuses_orphan_tail(tmp_path: Path) -> None:
    b = build_image(tmp_path / "x.vdi", 4 * MIB, {0: pattern(0, MIB)}, tail=b"\xaa" * MIB)
    with DiskChain([open_image(b.path, writable=True)]) as chain:
        chain.write(2 * MIB, b"\x01" * 10)
    assert entries_on_disk(b.path)[2] == 1
    assert read_all(b.path)[2 * MIB : 3 * MIB] == b"\x01" * 10 + bytes(MIB - 10)


def test_write_order_data_then_flush_then_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = build_image(tmp_path / "x.vdi", 4 * MIB, {0: pattern(0, MIB)})
    h = b.header
    events: list[tuple[str, int, int]] = []
    real_pwrite, real_fsync = os.pwrite, os.fsync

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        events.append(("write", offset, len(data)))
        return real_pwrite(fd, data, offset)

    def fsync(fd: int) -> None:
        events.append(("fsync", 0, 0))
        real_fsync(fd)

    with DiskChain([open_image(b.path, writable=True)]) as chain:
        monkeypatch.setattr(os, "pwrite", pwrite)
        monkeypatch.setattr(os, "fsync", fsync)
        chain.write(3 * MIB + 1, b"x")
        monkeypatch.undo()
    kinds = []
    for kind, off, _n in events:
        if kind == "fsync":
            kinds.append("fsync")
        elif off >= h.offset_data:
            kinds.append("data")
        elif off >= h.offset_blocks:
            kinds.append("map")
        else:
            kinds.append("header")
    first_meta = min(i for i, k in enumerate(kinds) if k in ("map", "header"))
    data_at = kinds.index("data")
    assert data_at < first_meta
    assert "fsync" in kinds[data_at:first_meta], kinds
    assert kinds[-1] == "fsync", kinds
    assert {"map", "header"} <= set(kinds)


# -- creation -----------------------------------------------------------------------------
def test_create_dynamic_layout(tmp_path: Path) -> None:
    p = tmp_path / "new.vdi"
    create_image(p, 300 * MIB + 512)
    data = p.read_bytes()
    h = read_header(p)
    assert struct.unpack_from("<II", data, 0x40) == (0xBEDA107F, 0x00010001)
    assert data[:64].rstrip(b"\0").endswith(b">>>\n")
    assert h.header_size == 0x190
    assert h.lchs is not None and h.lchs[3] == 512
    assert h.image_type is ImageType.DYNAMIC
    assert (h.offset_blocks, h.offset_data) == (MIB, 2 * MIB)
    assert h.blocks == 301 and h.blocks_allocated == 0
    assert h.uuid.version == 4 and h.modify_uuid.version == 4 and h.uuid != h.modify_uuid
    assert len(data) == 2 * MIB
    assert set(entries_on_disk(p)) == {FREE}
    assert not any(data[0x1D8:MIB])  # padding is zero
    assert read_all(p) == bytes(300 * MIB + 512)
    assert list(tmp_path.iterdir()) == [p]  # no temp files left


def test_create_fixed_layout(tmp_path: Path) -> None:
    p = tmp_path / "fixed.vdi"
    create_image(p, 3 * MIB, fixed=True)
    h = read_header(p)
    assert h.image_type is ImageType.FIXED
    assert h.blocks_allocated == 3
    assert entries_on_disk(p) == [0, 1, 2]
    assert p.stat().st_size == 2 * MIB + 3 * MIB


def test_create_differencing_records_parent_uuids(tmp_path: Path) -> None:
    base = build_image(tmp_path / "base.vdi", 6 * MIB, {1: pattern(1, MIB)})
    p = tmp_path / "diff.vdi"
    create_image(p, parent=base.path)
    h = read_header(p)
    assert h.image_type is ImageType.DIFFERENCING
    assert h.parent_uuid == base.header.uuid_create
    assert h.parent_modify_uuid == base.header.uuid_modify
    assert h.disk_size == 6 * MIB
    assert h.uuid not in (base.header.uuid_create, h.modify_uuid)


def test_create_refuses_existing_file_and_bad_sizes(tmp_path: Path) -> None:
    p = tmp_path / "x.vdi"
    p.write_bytes(b"keep")
    with pytest.raises(VdiError, match="already exists"):
        create_image(p, MIB)
    assert p.read_bytes() == b"keep"
    for size in (0, 1000, -512):
        with pytest.raises(VdiError):
            create_image(tmp_path / f"s{size}.vdi", size)
    assert sorted(q.name for q in tmp_path.iterdir()) == ["x.vdi"]


def test_created_image_written_and_reopened(tmp_path: Path) -> None:
    p = tmp_path / "x.vdi"
    create_image(p, 8 * MIB, block_size=64 * KIB)
    rng = random.Random(5)
    expected = bytearray(8 * MIB)
    with DiskChain([open_image(p, writable=True)]) as chain:
        for _ in range(30):
            off = rng.randrange(8 * MIB - 70000)
            data = rng.randbytes(rng.randrange(1, 70000))
            chain.write(off, data)
            expected[off : off + len(data)] = data
    assert read_all(p) == bytes(expected)
    h = read_header(p)
    ents = entries_on_disk(p)
    live = sorted(e for e in ents if e not in (FREE, ZERO))
    assert live == list(range(h.blocks_allocated))  # dense and distinct
    assert p.stat().st_size == h.offset_data + h.blocks_allocated * h.block_size


@pytest.mark.parametrize("block_size", [64 * KIB, 2 * MIB])
def test_create_differencing_over_parent_with_other_block_size(
    tmp_path: Path, block_size: int
) -> None:
    """The new diff must form a readable chain with its parent (same block size)."""
    base = build_image(
        tmp_path / "base.vdi",
        4 * block_size,
        {1: pattern(1, block_size)},
        block_size=block_size,
        placement="qemu",
    )
    p = tmp_path / "diff.vdi"
    create_image(p, parent=base.path)
    assert read_header(p).block_size == block_size
    from vdigui.engine import open_chain

    with open_chain(p, writable=True) as chain:
        chain.write(block_size + 3, b"xyz")
    with open_chain(p) as chain:
        got = chain.read(0, 4 * block_size)
    want = bytearray(model_read([base.layer], 4 * block_size, block_size))
    want[block_size + 3 : block_size + 6] = b"xyz"
    assert got == bytes(want)
