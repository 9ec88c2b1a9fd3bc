"""Differencing chains built by tests/builders.py: reads, resolution errors, writes into a diff."""

from __future__ import annotations

import os
import random
import struct
import uuid as uuidlib
from pathlib import Path

import pytest
from builders import (
    BANNERS,
    MIB,
    NULL,
    ZERO,
    build_chain,
    build_image,
    folder_state,
    model_read,
    pattern,
    random_layers,
)

from vdigui.engine import (
    ChainError,
    DiskChain,
    MissingParentError,
    open_chain,
    open_image,
    open_paths,
    resolve_chain,
)
from vdigui.engine.format import read_header

KIB = 1024


def entries_on_disk(path: Path) -> list[int]:
    h = read_header(path)
    raw = path.read_bytes()[h.offset_blocks : h.offset_blocks + 4 * h.blocks]
    return list(struct.unpack(f"<{h.blocks}I", raw))


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize(
    ("block_size", "kwargs"),
    [
        (MIB, {"placement": "vbox"}),
        (64 * KIB, {"placement": "qemu", "header_size": 0x180}),
        (4 * KIB, {"placement": "packed", "block_extra": 1024, "banner": BANNERS["sun"]}),
    ],
)
def test_chain_reads_match_model(tmp_path: Path, depth: int, block_size: int, kwargs: dict) -> None:
    rng = random.Random(depth * 1000 + block_size)
    blocks = 12
    disk = blocks * block_size - 1024
    ch = build_chain(
        tmp_path,
        disk,
        random_layers(rng, blocks, block_size, depth),
        block_size=block_size,
        seed=depth,
        **kwargs,
    )
    with open_chain(ch.leaf) as chain:
        assert [layer.path for layer in chain.layers] == [p.resolve() for p in ch.paths]
        assert chain.read(0, disk) == ch.expected
        assert (
            chain.read(block_size - 5, block_size + 10)
            == ch.expected[block_size - 5 : 2 * block_size + 5]
        )
    # Every prefix of the chain reads as the model of that prefix.
    for k in range(1, depth + 1):
        with open_paths(ch.paths[:k]) as chain:
            assert chain.read(0, disk) == ch.expected_upto(k)


def test_free_falls_through_and_zero_hides(tmp_path: Path) -> None:
    a, b, c = pattern(1, MIB), pattern(2, MIB), pattern(3, MIB)
    ch = build_chain(
        tmp_path,
        4 * MIB,
        [
            {0: a, 1: a, 2: a, 3: a},
            {1: b, 2: "zero"},
            {3: c},  # 0, 1, 2 FREE in the leaf
        ],
    )
    with open_chain(ch.leaf) as chain:
        assert chain.read_block(0) == a  # two FREE layers fall through to the base
        assert chain.read_block(1) == b
        assert chain.read_block(2) == bytes(MIB)  # ZERO hides the base's data
        assert chain.read_block(3) == c
        serving = chain.serving_layers().tolist()
        assert serving == [0, 1, 1, 2]
    assert ch.expected == a + b + bytes(MIB) + c


def test_zero_in_base_and_free_everywhere_read_as_zeros(tmp_path: Path) -> None:
    ch = build_chain(tmp_path, 3 * MIB, [{0: "zero"}, {}, {}])
    with open_chain(ch.leaf) as chain:
        assert chain.read(0, 3 * MIB) == bytes(3 * MIB)
        assert chain.serving_layers().tolist() == [0, -1, -1]


def test_parents_found_in_vm_and_snapshot_folders(tmp_path: Path) -> None:
    vm = tmp_path / "VM"
    snaps = vm / "Snapshots"
    snaps.mkdir(parents=True)
    base = build_image(vm / "disk.vdi", 2 * MIB, {0: pattern(0, MIB)})
    d1 = build_image(
        snaps / f"{{{uuidlib.uuid4()}}}.vdi", 2 * MIB, {1: pattern(1, MIB)}, parent=base.header
    )
    d2 = build_image(snaps / f"{{{uuidlib.uuid4()}}}.vdi", 2 * MIB, {0: "zero"}, parent=d1.header)
    with open_chain(d2.path) as chain:
        assert len(chain.layers) == 3
        assert chain.read(0, 2 * MIB) == bytes(MIB) + pattern(1, MIB)
    # Opening the base from the VM folder works too (it has no parent).
    with open_chain(base.path) as chain:
        assert len(chain.layers) == 1


def test_parent_elsewhere_needs_search_dirs(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    base = build_image(tmp_path / "a" / "base.vdi", MIB, {0: pattern(0, MIB)})
    diff = build_image(tmp_path / "b" / "diff.vdi", MIB, {}, parent=base.header)
    with pytest.raises(MissingParentError) as info:
        open_chain(diff.path)
    err = info.value
    assert "diff.vdi" in str(err) and str(base.uuid) in str(err)
    assert err.parent_uuid == str(base.uuid)
    assert err.child_path.name == "diff.vdi"
    with open_chain(diff.path, search_dirs=[tmp_path / "a"]) as chain:
        assert chain.read(0, MIB) == pattern(0, MIB)


def _assert_broken(folder: Path, leaf: Path, exc_type: type[Exception], *names: str) -> None:
    before = folder_state(folder)
    with pytest.raises(exc_type) as info:
        open_chain(leaf)
    text = str(info.value)
    for name in names:
        assert name in text, (name, text)
    assert "\n" not in text
    assert folder_state(folder) == before
    res = resolve_chain(leaf)
    assert isinstance(res.error, exc_type)
    # Each layer of a broken chain still opens on its own.
    for path in sorted(folder.glob("*.vdi")):
        with open_image(path) as img:
            assert img.header.blocks >= 1
            for b in range(img.guest_blocks):
                img.read_own_block(b)


def test_missing_parent(tmp_path: Path) -> None:
    ch = build_chain(
        tmp_path,
        2 * MIB,
        [{0: pattern(0, MIB)}, {1: pattern(1, MIB)}, {}],
        names=["base.vdi", "mid.vdi", "leaf.vdi"],
    )
    (tmp_path / "base.vdi").unlink()
    _assert_broken(tmp_path, ch.leaf, MissingParentError, "mid.vdi", str(ch.images[0].uuid))
    res = resolve_chain(ch.leaf)
    assert [p.name for p in res.paths] == ["mid.vdi", "leaf.vdi"]


def test_parent_loop(tmp_path: Path) -> None:
    ua, ub = uuidlib.uuid4(), uuidlib.uuid4()
    build_image(
        tmp_path / "a.vdi",
        2 * MIB,
        {0: pattern(0, MIB)},
        image_type=4,
        uuid_create=ua,
        uuid_linkage=ub,
    )
    build_image(
        tmp_path / "b.vdi",
        2 * MIB,
        {1: pattern(1, MIB)},
        image_type=4,
        uuid_create=ub,
        uuid_linkage=ua,
    )
    _assert_broken(tmp_path, tmp_path / "a.vdi", ChainError, "loops", "a.vdi")


def test_self_loop(tmp_path: Path) -> None:
    u = uuidlib.uuid4()
    build_image(tmp_path / "s.vdi", MIB, {}, image_type=4, uuid_create=u, uuid_linkage=u)
    _assert_broken(tmp_path, tmp_path / "s.vdi", ChainError, "s.vdi", "loop")


def test_disk_size_mismatch(tmp_path: Path) -> None:
    base = build_image(tmp_path / "base.vdi", 3 * MIB, {0: pattern(0, MIB)})
    build_image(tmp_path / "diff.vdi", 2 * MIB, {}, parent=base.header)
    _assert_broken(
        tmp_path,
        tmp_path / "diff.vdi",
        ChainError,
        "diff.vdi",
        "base.vdi",
        str(2 * MIB),
        str(3 * MIB),
    )


def test_block_size_mismatch(tmp_path: Path) -> None:
    base = build_image(tmp_path / "base.vdi", 2 * MIB, {0: pattern(0, MIB)})
    build_image(tmp_path / "diff.vdi", 2 * MIB, {}, parent=base.header, block_size=512 * KIB)
    _assert_broken(tmp_path, tmp_path / "diff.vdi", ChainError, "diff.vdi", "base.vdi")


def test_base_whose_header_says_differencing(tmp_path: Path) -> None:
    build_image(tmp_path / "orphan.vdi", MIB, {}, image_type=4)
    _assert_broken(tmp_path, tmp_path / "orphan.vdi", ChainError, "orphan.vdi", "differencing")


def test_unreadable_sibling_does_not_break_resolution(tmp_path: Path) -> None:
    ch = build_chain(tmp_path, MIB, [{0: pattern(0, MIB)}, {}])
    (tmp_path / "junk.vdi").write_bytes(b"not a vdi at all")
    with open_chain(ch.leaf) as chain:
        assert chain.read(0, MIB) == pattern(0, MIB)


# -- writes into a differencing image -----------------------------------------------------
def _diff_chain(tmp_path: Path) -> tuple[Path, Path, bytes]:
    p = pattern(7, MIB)
    ch = build_chain(
        tmp_path,
        4 * MIB,
        [{0: p, 1: p, 2: p}, {2: pattern(8, MIB)}],
        names=["base.vdi", "diff.vdi"],
    )
    return ch.paths[0], ch.paths[1], ch.expected


def test_partial_write_keeps_parent_data(tmp_path: Path) -> None:
    base, diff, expected = _diff_chain(tmp_path)
    base_before = base.read_bytes()
    with open_chain(diff, writable=True) as chain:
        assert not chain.base.writable
        chain.write(MIB + 1000, b"\x00new\x00")
    assert base.read_bytes() == base_before  # the parent is never written
    want = bytearray(expected)
    want[MIB + 1000 : MIB + 1005] = b"\x00new\x00"
    with open_chain(diff) as chain:
        assert chain.read(0, 4 * MIB) == bytes(want)
    h = read_header(diff)
    assert h.blocks_allocated == 2 and entries_on_disk(diff)[1] == 1
    slot = diff.read_bytes()[h.offset_data + MIB : h.offset_data + 2 * MIB]
    assert slot == bytes(want[MIB : 2 * MIB])  # the new block carries the parent's data


def test_all_zero_block_over_parent_data_persists_zero(tmp_path: Path) -> None:
    """VirtualBox's gh-850 bug: the ZERO marker must reach the file, not stay in memory."""
    _, diff, expected = _diff_chain(tmp_path)
    size0 = diff.stat().st_size
    with open_chain(diff, writable=True) as chain:
        chain.write(0, bytes(MIB))
        assert chain.read(0, MIB) == bytes(MIB)
    assert entries_on_disk(diff)[0] == ZERO  # reopened from the file
    assert diff.stat().st_size == size0
    with open_chain(diff) as chain:
        data = chain.read(0, 4 * MIB)
    assert data == bytes(MIB) + expected[MIB:]


def test_zero_write_spanning_blocks_in_diff(tmp_path: Path) -> None:
    _, diff, expected = _diff_chain(tmp_path)
    with open_chain(diff, writable=True) as chain:
        chain.write(MIB // 2, bytes(2 * MIB))  # half of 0, all of 1, half of 2
    want = bytearray(expected)
    want[MIB // 2 : MIB // 2 + 2 * MIB] = bytes(2 * MIB)
    with open_chain(diff) as chain:
        assert chain.read(0, 4 * MIB) == bytes(want)
    ents = entries_on_disk(diff)
    assert ents[1] == ZERO  # whole zero block: a ZERO marker, not a slot
    assert ents[0] not in (ZERO, 0xFFFFFFFF)  # partial: allocated with parent data


def test_zero_write_over_zero_parent_leaves_diff_unchanged(tmp_path: Path) -> None:
    _, diff, _ = _diff_chain(tmp_path)
    before = diff.read_bytes()
    with open_chain(diff, writable=True) as chain:
        chain.write(3 * MIB, bytes(MIB))  # parent block 3 is FREE: zeros already
    assert diff.read_bytes() == before


def test_diff_write_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, diff, _ = _diff_chain(tmp_path)
    h = read_header(diff)
    events: list[str] = []
    real_pwrite, real_fsync = os.pwrite, os.fsync

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        if offset >= h.offset_data:
            events.append("data")
        elif offset >= h.offset_blocks:
            events.append("map")
        else:
            events.append("header")
        return real_pwrite(fd, data, offset)

    def fsync(fd: int) -> None:
        events.append("fsync")
        real_fsync(fd)

    with open_chain(diff, writable=True) as chain:
        monkeypatch.setattr(os, "pwrite", pwrite)
        monkeypatch.setattr(os, "fsync", fsync)
        chain.write(MIB + 5, b"abc")
        allocate = list(events)
        events.clear()
        chain.write(0, bytes(MIB))  # a persisted ZERO entry
        zero = list(events)
        monkeypatch.undo()
    assert allocate.index("data") < allocate.index("fsync") < allocate.index("map")
    assert allocate[-1] == "fsync"
    assert zero == ["map", "fsync"]


def test_random_writes_through_chain_match_model(tmp_path: Path) -> None:
    rng = random.Random(11)
    bs = 16 * KIB
    blocks = 20
    disk = blocks * bs
    layers = random_layers(rng, blocks, bs, 3)
    ch = build_chain(tmp_path, disk, layers, block_size=bs, placement="qemu")
    want = bytearray(ch.expected)
    parents = [p.read_bytes() for p in ch.paths[:-1]]
    with open_chain(ch.leaf, writable=True) as chain:
        for _ in range(40):
            off = rng.randrange(disk - 1)
            n = rng.randrange(1, min(3 * bs, disk - off))
            data = bytes(n) if rng.random() < 0.4 else rng.randbytes(n)
            chain.write(off, data)
            want[off : off + n] = data
        assert chain.read(0, disk) == bytes(want)
    with open_chain(ch.leaf) as chain:
        assert chain.read(0, disk) == bytes(want)
    assert [p.read_bytes() for p in ch.paths[:-1]] == parents
    ents = entries_on_disk(ch.leaf)
    live = sorted(e for e in ents if e < ZERO)
    assert live == list(range(read_header(ch.leaf).blocks_allocated))


def test_null_linkage_helpers(tmp_path: Path) -> None:
    ch = build_chain(tmp_path, MIB, [{}, {}])
    assert ch.images[0].header.uuid_linkage == NULL
    assert ch.images[1].header.uuid_linkage == ch.images[0].uuid
    assert ch.images[1].header.uuid_parent_modify == ch.images[0].header.uuid_modify
    with DiskChain([open_image(ch.paths[0])]) as chain:
        assert chain.read(0, MIB) == model_read([{}], MIB, MIB)


def test_disk_size_not_multiple_of_512_is_rounded_down_like_virtualbox(tmp_path: Path) -> None:
    b = build_image(tmp_path / "odd.vdi", 4 * MIB - 100, {3: pattern(3, MIB)})
    with open_chain(b.path) as chain:
        assert chain.disk_size == 4 * MIB - 512
        assert chain.read(0, chain.disk_size) == model_read([b.layer], 4 * MIB - 512, MIB)


def test_chain_of_mixed_versions_layouts_and_extra(tmp_path: Path) -> None:
    """A v0.2 base under a qemu-laid-out 1.1 (0x180, extra 512) diff under a 1 MiB-aligned
    1.1+ diff with a packed-by-hand banner: each layer honours its own layout."""
    bs = 8 * KIB
    disk = 10 * bs
    rng = random.Random(3)
    layers = random_layers(rng, 10, bs, 3, density=0.6)
    base = build_image(
        tmp_path / "old.vdi",
        disk,
        layers[0],
        block_size=bs,
        version=0x2,
        banner=BANNERS["innotek"],
        slot_order="shuffle",
    )
    mid = build_image(
        tmp_path / "mid.vdi",
        disk,
        layers[1],
        block_size=bs,
        parent=base.header,
        placement="qemu",
        header_size=0x180,
        block_extra=512,
        slot_order="reverse",
    )
    top = build_image(
        tmp_path / "top.vdi",
        disk,
        layers[2],
        block_size=bs,
        parent=mid.header,
        placement="packed",
        banner=BANNERS["garbage"],
        slot_order="shuffle",
    )
    want = model_read([base.layer, mid.layer, top.layer], disk, bs)
    with open_chain(top.path, writable=True) as chain:
        assert [layer.header.version_text for layer in chain.layers] == ["0.2", "1.1", "1.1"]
        assert chain.read(0, disk) == want
        chain.write(bs - 1, b"\x01\x02")
        chain.write(5 * bs, bytes(bs))
    w = bytearray(want)
    w[bs - 1 : bs + 1] = b"\x01\x02"
    w[5 * bs : 6 * bs] = bytes(bs)
    with open_chain(top.path) as chain:
        assert chain.read(0, disk) == bytes(w)
