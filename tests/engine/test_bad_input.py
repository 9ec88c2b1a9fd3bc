"""The bad-input matrix: every broken file gives its clear error and nothing is written.

Also the real VDIs of the samples folder (written by VirtualBox) open with the right fields.
"""

from __future__ import annotations

import gzip
import shutil
import struct
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path

import pytest
from builders import (
    MIB,
    NULL,
    V0_2,
    build_chain,
    build_image,
    folder_state,
    model_read,
    pattern,
)

from vdigui.engine import (
    ChainError,
    DiskChain,
    HeaderError,
    ImageCorruptError,
    VdiError,
    open_chain,
    open_image,
    read_header,
    resolve_chain,
)


def _every_way_of_opening(path: Path) -> list[Callable[[], object]]:
    def chain_read() -> object:
        with open_chain(path) as chain:
            return chain.read(0, chain.disk_size)

    def image_rw() -> object:
        with open_image(path, writable=True):
            return None

    return [lambda: read_header(path), lambda: open_image(path).close(), image_rw, chain_read]


def assert_refused(path: Path, exc_type: type[VdiError], *needles: str) -> VdiError:
    """Every way of opening ``path`` raises ``exc_type`` naming the file; nothing changes."""
    before = folder_state(path.parent)
    caught = None
    for attempt in _every_way_of_opening(path):
        with pytest.raises(exc_type) as info:
            attempt()
        text = str(info.value)
        assert path.name in text, text
        for needle in needles:
            assert needle in text, (needle, text)
        assert "\n" not in text and text.endswith(".")
        caught = info.value
    res = resolve_chain(path)
    assert isinstance(res.error, exc_type)
    assert folder_state(path.parent) == before
    assert caught is not None
    return caught


# -- the 12 header checks of reference 1.5 ------------------------------------------------
FOUR = 4 * MIB  # disk of the cases below: 4 blocks of 1 MiB, map at 1 MiB, data at 2 MiB

HEADER_CASES: list[tuple[str, dict[str, object], str, str]] = [
    ("1-cbHeader", {"header_size": 0x17F}, "cbHeader", "0x17F"),
    ("1-cbHeader-zero", {"header_size": 0}, "cbHeader", "0x0"),
    ("2-offBlocks", {"offset_blocks": 0x1C0}, "offBlocks", "0x1C0"),
    ("3-offData", {"offset_data": MIB + 12}, "offData", "0x10000C"),
    ("4-u32Type-0", {"image_type": 0}, "u32Type", "0"),
    ("4-u32Type-5", {"image_type": 5}, "u32Type", "5"),
    ("5-fFlags", {"flags": 0x2}, "fFlags", "0x2"),
    ("5-fFlags-high", {"flags": 0x400}, "fFlags", "0x400"),
    ("6-LCHS-cbSector", {"lchs": (1023, 16, 63, 4096)}, "cbSector", "4096"),
    ("7-cbDisk", {"disk_size": 0}, "cbDisk", "0"),
    ("7-cbBlock-zero", {"block_size": 0}, "cbBlock", "0"),
    ("7-cBlocks", {"blocks": 0}, "cBlocks", "0"),
    ("7-cbBlock-pow2", {"block_size": 3 * MIB}, "cbBlock", str(3 * MIB)),
    ("8-cBlocksAllocated", {"blocks_allocated": 5}, "cBlocksAllocated", "5"),
    ("9-cbBlockExtra", {"block_extra": 3}, "cbBlockExtra", "3"),
    ("10-cbDisk", {"disk_size": FOUR + 512}, "cbDisk", str(FOUR + 512)),
    ("11-uuidCreate", {"uuid_create": NULL}, "uuidCreate", str(NULL)),
    ("12-uuidModify", {"uuid_modify": NULL}, "uuidModify", str(NULL)),
]


@pytest.mark.parametrize(
    ("overrides", "field", "value"), [c[1:] for c in HEADER_CASES], ids=[c[0] for c in HEADER_CASES]
)
def test_header_check(tmp_path: Path, overrides: dict[str, object], field: str, value: str) -> None:
    b = build_image(tmp_path / "bad.vdi", FOUR, {0: pattern(0, MIB)}, override=overrides)
    err = assert_refused(b.path, HeaderError, field, value)
    assert isinstance(err, HeaderError)
    assert field in err.field
    assert err.value == value or value in err.value


LEGACY_CASES: list[tuple[str, dict[str, object], str, str]] = [
    ("4-u32Type", {"image_type": 7}, "u32Type", "7"),
    ("7-cbDisk", {"disk_size": 0}, "cbDisk", "0"),
    ("8-cBlocksAllocated", {"blocks_allocated": 9}, "cBlocksAllocated", "9"),
    ("10-cbDisk", {"disk_size": FOUR + 512}, "cbDisk", str(FOUR + 512)),
    ("11-uuidCreate", {"uuid_create": NULL}, "uuidCreate", str(NULL)),
    ("12-uuidModify", {"uuid_modify": NULL}, "uuidModify", str(NULL)),
]


@pytest.mark.parametrize(
    ("overrides", "field", "value"), [c[1:] for c in LEGACY_CASES], ids=[c[0] for c in LEGACY_CASES]
)
def test_legacy_header_check(
    tmp_path: Path, overrides: dict[str, object], field: str, value: str
) -> None:
    b = build_image(
        tmp_path / "old.vdi", FOUR, {0: pattern(0, MIB)}, version=V0_2, override=overrides
    )
    assert_refused(b.path, HeaderError, field, value)


@pytest.mark.parametrize("signature", [0, 0xBEDA1070, 0x7F10DABE])
def test_wrong_signature(tmp_path: Path, signature: int) -> None:
    b = build_image(tmp_path / "sig.vdi", MIB, signature=signature)
    assert_refused(b.path, HeaderError, "u32Signature", f"0x{signature:08X}")


def test_unsupported_version(tmp_path: Path) -> None:
    b = build_image(tmp_path / "ver.vdi", MIB, version=0x00020001)
    assert_refused(b.path, HeaderError, "u32Version", "0x00020001")


@pytest.mark.parametrize(
    "content",
    [b"", b"x", b"<<< Oracle VirtualBox Disk Image >>>\n", b"\x00" * 4096, b"QFI\xfb" + bytes(508)],
)
def test_not_a_vdi(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "junk.vdi"
    p.write_bytes(content)
    assert_refused(p, HeaderError)


# -- truncated files ----------------------------------------------------------------------
@pytest.mark.parametrize("cut", [0, 40, 0x47, 0x48, 0x100, 0x1C0, 0x1D0, 0x200, MIB, MIB + 7])
def test_truncated_in_header_or_map(tmp_path: Path, cut: int) -> None:
    b = build_image(tmp_path / "cut.vdi", FOUR, {0: pattern(0, MIB), 2: pattern(2, MIB)})
    with open(b.path, "r+b") as f:
        f.truncate(cut)
    assert_refused(b.path, HeaderError, "file")


def test_truncated_legacy_map(tmp_path: Path) -> None:
    b = build_image(tmp_path / "cut.vdi", 64 * MIB, {}, version=V0_2)
    with open(b.path, "r+b") as f:
        f.truncate(0x1A4 + 40)
    assert_refused(b.path, HeaderError, "cBlocks")


def test_truncated_in_data_area(tmp_path: Path) -> None:
    b = build_image(
        tmp_path / "cut.vdi", FOUR, {0: pattern(0, MIB), 2: pattern(2, MIB)}, slot_order="reverse"
    )  # block 2 -> slot 0, block 0 -> slot 1
    with open(b.path, "r+b") as f:
        f.truncate(2 * MIB + MIB + 100)  # slot 1 is cut short
    before = folder_state(tmp_path)
    with open_chain(b.path) as chain:
        assert chain.read_block(2) == pattern(2, MIB)
        with pytest.raises(ImageCorruptError) as info:
            chain.read(0, FOUR)
    text = str(info.value)
    assert "block 0" in text and "slot 1" in text and "cut.vdi" in text
    assert folder_state(tmp_path) == before


# -- block map problems -------------------------------------------------------------------
def test_map_entry_past_eof(tmp_path: Path) -> None:
    b = build_image(
        tmp_path / "eof.vdi", FOUR, {0: pattern(0, MIB), 1: pattern(1, MIB)}, poke={3: 1000}
    )
    assert b.unreadable == {3}
    before = folder_state(tmp_path)
    with open_chain(b.path) as chain:
        assert chain.read(0, 2 * MIB) == pattern(0, MIB) + pattern(1, MIB)
        with pytest.raises(ImageCorruptError) as info:
            chain.read(3 * MIB, 10)
    text = str(info.value)
    assert "block 3" in text and "slot 1000" in text and "eof.vdi" in text
    assert folder_state(tmp_path) == before


def test_map_entry_past_eof_in_a_parent(tmp_path: Path) -> None:
    ch = build_chain(
        tmp_path, FOUR, [{0: pattern(0, MIB)}, {1: pattern(1, MIB)}], names=["base.vdi", "diff.vdi"]
    )
    with open(ch.paths[0], "r+b") as f:
        f.seek(MIB + 4 * 2)
        f.write(struct.pack("<I", 77))
    before = folder_state(tmp_path)
    with open_chain(ch.leaf) as chain, pytest.raises(ImageCorruptError) as info:
        chain.read(0, FOUR)
    assert "base.vdi" in str(info.value) and "slot 77" in str(info.value)
    assert folder_state(tmp_path) == before


def test_map_entry_at_huge_slot_does_not_overflow(tmp_path: Path) -> None:
    b = build_image(tmp_path / "big.vdi", FOUR, {0: pattern(0, MIB)})
    with open(b.path, "r+b") as f:
        f.seek(MIB)
        f.write(struct.pack("<I", 0xFFFFFFFD))
    with open_image(b.path) as img, pytest.raises(ImageCorruptError, match="slot 4294967293"):
        img.read_own_block(0)


def test_duplicate_slots_read_like_virtualbox(tmp_path: Path) -> None:
    # VirtualBox does not validate duplicates on a normal open: both blocks show the slot.
    b = build_image(
        tmp_path / "dup.vdi",
        FOUR,
        {0: pattern(0, MIB), 1: pattern(1, MIB)},
        slot_order="reverse",
        poke={3: 0},
    )  # block 1 and block 3 share slot 0
    before = folder_state(tmp_path)
    with open_chain(b.path) as chain:
        assert chain.read_block(3) == chain.read_block(1) == pattern(1, MIB)
        assert chain.read(0, FOUR) == model_read([b.layer], FOUR, MIB)
    assert folder_state(tmp_path) == before


def test_parent_loop_writes_nothing(tmp_path: Path) -> None:
    ua, ub = uuidlib.uuid4(), uuidlib.uuid4()
    build_image(
        tmp_path / "a.vdi", MIB, {0: pattern(0, MIB)}, image_type=4, uuid_create=ua, uuid_linkage=ub
    )
    build_image(tmp_path / "b.vdi", MIB, {}, image_type=4, uuid_create=ub, uuid_linkage=ua)
    before = folder_state(tmp_path)
    for leaf in ("a.vdi", "b.vdi"):
        with pytest.raises(ChainError, match="loops") as info:
            open_chain(tmp_path / leaf, writable=True)
        assert leaf in str(info.value)
    assert folder_state(tmp_path) == before


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(VdiError, match=r"nope\.vdi"):
        open_image(tmp_path / "nope.vdi")
    with pytest.raises(VdiError, match=r"nope\.vdi"):
        read_header(tmp_path / "nope.vdi")
    assert resolve_chain(tmp_path / "nope.vdi").error is not None


def test_directory_instead_of_file(tmp_path: Path) -> None:
    d = tmp_path / "dir.vdi"
    d.mkdir()
    with pytest.raises(VdiError):
        open_image(d)


# -- real VirtualBox files ----------------------------------------------------------------
def test_sample_sun_xvm_512_aligned(samples: Path, tmp_path: Path) -> None:
    src = samples / "windoze_1.3-era_sun-xvm_empty-10G.vdi"
    p = tmp_path / "Windoze.vdi"
    shutil.copyfile(src, p)
    before = folder_state(tmp_path)
    h = read_header(p)
    assert h.banner == "<<< Sun xVM VirtualBox Disk Image >>>\n"
    assert h.version_text == "1.1"
    assert h.image_type.label == "dynamic"
    assert h.disk_size == 10 * 1024 * MIB
    assert (h.block_size, h.blocks, h.blocks_allocated) == (MIB, 10240, 0)
    assert (h.offset_blocks, h.offset_data) == (512, 41472)
    assert str(h.uuid).startswith("af4dca4f-")
    assert h.parent_uuid == NULL
    with open_chain(p) as chain:
        assert chain.read(0, 4096) == bytes(4096)
        assert chain.read(10 * 1024 * MIB - 512, 512) == bytes(512)
    assert folder_state(tmp_path) == before


def test_sample_windows10_base_and_diff(samples: Path, tmp_path: Path) -> None:
    vm = tmp_path / "Windows 10"
    (vm / "Snapshots").mkdir(parents=True)
    base = vm / "Windows 10.vdi"
    diff = vm / "Snapshots" / "{0b77d7b1-a7f9-4bc4-953a-f50c2d3ade39}.vdi"
    for name, dest in [
        ("windows10_1.15-windows_base-dynamic-empty.vdi.gz", base),
        ("windows10_1.15-windows_diff-0b77d7b1.vdi.gz", diff),
    ]:
        with gzip.open(samples / name) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out)
    before = folder_state(vm)
    hb, hd = read_header(base), read_header(diff)
    assert hb.banner == "<<< Oracle VM VirtualBox Disk Image >>>\n"
    assert (hb.version_text, hb.header_size, hb.image_type.label) == ("1.1", 0x190, "dynamic")
    assert hb.disk_size == 32_702_611_456
    assert (hb.blocks, hb.blocks_allocated) == (31188, 0)
    assert (hb.offset_blocks, hb.offset_data) == (MIB, 2 * MIB)
    assert str(hb.uuid) == "99414d56-0b0c-4ae6-b3aa-65a52bcfda9e"
    assert str(hb.modify_uuid).startswith("520eaa7d-")
    assert hd.image_type.label == "differencing"
    assert str(hd.uuid) == "0b77d7b1-a7f9-4bc4-953a-f50c2d3ade39"
    assert hd.parent_uuid == hb.uuid
    assert hd.parent_modify_uuid == hb.modify_uuid
    with open_chain(diff) as chain:
        assert [layer.path.name for layer in chain.layers] == [base.name, diff.name]
        assert chain.read(0, 8192) == bytes(8192)
        assert int(chain.serving_layers().max()) == -1
    with DiskChain([open_image(diff)]) as alone:
        assert alone.top.is_differencing
    assert folder_state(vm) == before


@pytest.mark.parametrize("seed", range(25))
def test_random_map_damage_reads_and_checks(tmp_path: Path, seed: int) -> None:
    """Duplicates and past-EOF entries: readable blocks match the model, the others fail
    with ImageCorruptError naming block and slot, and check reports exactly these blocks."""
    import random

    from vdigui.engine.check import check_image

    rng = random.Random(seed)
    bs = 4096
    blocks = 16
    layer: dict = {b: pattern(rng.randrange(999), bs) for b in range(blocks) if rng.random() < 0.6}
    n_slots = len(layer)
    poke: dict[int, int] = {}
    for b in rng.sample(range(blocks), rng.randrange(0, 4)):
        if n_slots and rng.random() < 0.5:
            poke[b] = rng.randrange(n_slots)  # shares a slot (a duplicate)
        else:
            poke[b] = n_slots + rng.randrange(0, 5)  # past the end of the file
    b = build_image(
        tmp_path / "r.vdi",
        blocks * bs,
        layer,
        block_size=bs,
        placement="qemu",
        slot_order="shuffle",
        seed=seed,
        poke=poke,
    )
    before = folder_state(tmp_path)
    with open_chain(b.path) as chain:
        for block in range(blocks):
            if block in b.unreadable:
                with pytest.raises(ImageCorruptError) as info:
                    chain.read_block(block)
                assert f"block {block}" in str(info.value)
                assert f"slot {b.entries[block]}" in str(info.value)
            else:
                assert (
                    chain.read(block * bs, bs)
                    == model_read([b.layer], blocks * bs, bs)[block * bs : (block + 1) * bs]
                )
        findings = check_image(chain.top)
    kinds = {f.kind: set(f.blocks) for f in findings}
    assert kinds.get("slot-past-eof", set()) == set(b.unreadable)
    live = [e for e in b.entries if e < 0xFFFFFFFE]
    has_dup = len(live) != len(set(live))
    assert ("duplicate-slot" in kinds) == has_dup
    if not has_dup and not b.unreadable:
        assert not [f for f in findings if f.severity == "error"]
    assert folder_state(tmp_path) == before
