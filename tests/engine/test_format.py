"""Header parsing against files from the independent builder: versions, banners, placements."""

from __future__ import annotations

import struct
import uuid as uuidlib
from pathlib import Path

import pytest
from builders import BANNERS, MIB, V0_2, V1_0, V1_1, build_image, pattern

from vdigui.engine import format as fmt
from vdigui.engine.errors import HeaderError
from vdigui.engine.format import ImageType, parse_header, read_header


@pytest.mark.parametrize(
    ("version", "header_size", "placement"),
    [
        (V1_1, 0x190, "vbox"),
        (V1_1, 0x190, "qemu"),
        (V1_1, 0x190, "packed"),
        (V1_1, 0x180, "vbox"),
        (V1_1, 0x180, "qemu"),
        (V1_1, 0x180, "packed"),
        (V1_0, 0x180, "qemu"),
        (V1_0, 0x190, "vbox"),
        (V0_2, 0, "legacy"),
    ],
)
def test_header_fields_match_the_builder(
    tmp_path: Path, version: int, header_size: int, placement: str
) -> None:
    b = build_image(
        tmp_path / "x.vdi",
        5 * MIB - 512,
        {1: pattern(1, MIB), 3: "zero"},
        version=version,
        header_size=header_size,
        placement=placement,
        comment=b"hello \xc3\xa9",
    )  # type: ignore[arg-type]
    h = read_header(b.path)
    raw = b.header
    assert h.version == version
    assert h.version_text == {V1_1: "1.1", V1_0: "1.0", V0_2: "0.2"}[version]
    assert h.is_legacy == (version == V0_2)
    assert h.disk_size == 5 * MIB - 512
    assert h.block_size == MIB
    assert h.blocks == 5
    assert h.blocks_allocated == 1
    assert h.offset_blocks == raw.map_offset
    assert h.offset_data == raw.data_offset
    assert h.uuid == raw.uuid_create
    assert h.modify_uuid == raw.uuid_modify
    assert h.parent_uuid == fmt.NULL_UUID
    assert h.comment == "hello é"
    assert h.image_type is ImageType.DYNAMIC
    if version == V0_2:
        assert h.offset_blocks == 0x1A4
        assert h.offset_data == 0x1A4 + 4 * 5
        assert h.block_extra == 0
        assert h.lchs is None
    else:
        assert h.header_size == header_size
        # LCHS exists only for minor 1 with a 0x190 header (reference 1.3).
        has_lchs = version == V1_1 and header_size >= 0x190
        assert (h.lchs is not None) == has_lchs


@pytest.mark.parametrize("banner", sorted(BANNERS))
def test_any_banner_is_accepted(tmp_path: Path, banner: str) -> None:
    b = build_image(tmp_path / "x.vdi", MIB, banner=BANNERS[banner])
    h = read_header(b.path)
    assert h.uuid == b.uuid


def test_uuids_are_read_in_guid_byte_order(tmp_path: Path) -> None:
    # Raw bytes from reference 1.12: a qemu-written v4 UUID shows its version nibble only
    # when read as bytes_le.
    raw = bytes.fromhex("80c12a1a0060e84b8a9a0123456789ab")
    u = uuidlib.UUID(bytes_le=raw)
    b = build_image(tmp_path / "x.vdi", MIB, uuid_create=u)
    data = b.path.read_bytes()
    assert data[0x188:0x198] == raw
    h = read_header(b.path)
    assert str(h.uuid) == "1a2ac180-6000-4be8-8a9a-0123456789ab"
    assert h.uuid.version == 4


@pytest.mark.parametrize("image_type", [1, 2, 3, 4])
def test_each_image_type(tmp_path: Path, image_type: int) -> None:
    b = build_image(tmp_path / "x.vdi", MIB, image_type=image_type)
    h = read_header(b.path)
    assert int(h.image_type) == image_type
    assert h.image_type.label == ["dynamic", "fixed", "undo", "differencing"][image_type - 1]
    # A non-null linkage makes an image differencing whatever u32Type says.
    assert h.is_differencing == (image_type == 4)


def test_linkage_makes_an_image_differencing(tmp_path: Path) -> None:
    b = build_image(tmp_path / "x.vdi", MIB, image_type=1, uuid_linkage=uuidlib.uuid4())
    assert read_header(b.path).is_differencing


@pytest.mark.parametrize("flags", [0, 1, 0x100, 0x200, 0x301])
def test_valid_flags(tmp_path: Path, flags: int) -> None:
    b = build_image(tmp_path / "x.vdi", MIB, flags=flags)
    assert read_header(b.path).flags == flags


@pytest.mark.parametrize(
    ("block_size", "extra"), [(512, 0), (4096, 512), (64 * 1024, 16), (2 * MIB, 0), (MIB, 1 << 20)]
)
def test_block_sizes_and_extra(tmp_path: Path, block_size: int, extra: int) -> None:
    b = build_image(
        tmp_path / "x.vdi",
        4 * block_size,
        block_size=block_size,
        block_extra=extra,
        placement="qemu",
    )
    h = read_header(b.path)
    assert (h.block_size, h.block_extra) == (block_size, extra)
    assert h.slot_size == block_size + extra
    assert h.slot_offset(3) == h.offset_data + 3 * (block_size + extra) + extra


def test_larger_cblocks_than_needed_is_legal(tmp_path: Path) -> None:
    b = build_image(tmp_path / "x.vdi", 2 * MIB, blocks=7)
    assert read_header(b.path).blocks == 7


def test_comment_is_cut_at_byte_255(tmp_path: Path) -> None:
    b = build_image(tmp_path / "x.vdi", MIB, comment=b"a" * 256)
    assert read_header(b.path).comment == "a" * 255


@pytest.mark.parametrize(("version", "header_size"), [(V1_1, 0x190), (V1_1, 0x180), (V0_2, 0)])
def test_pack_header_reproduces_the_bytes_on_disk(
    tmp_path: Path, version: int, header_size: int
) -> None:
    b = build_image(
        tmp_path / "x.vdi",
        3 * MIB,
        {0: pattern(0, MIB)},
        version=version,
        header_size=header_size,
        placement="qemu",
        comment=b"c",
        lchs=(1023, 16, 63, 512),
        legacy_geometry=(1, 2, 3, 512),
        dummy=7,
    )
    data = b.path.read_bytes()
    h = parse_header(data[:512], b.path, len(data))
    packed = fmt.pack_header(h)
    assert data[0x48 : 0x48 + len(packed)] == packed
    assert fmt.pack_preheader(h.banner, h.version) == data[:0x48]
    if version == V1_1:
        assert h.legacy_geometry == (1, 2, 3, 512)
        assert h.dummy == 7
        if header_size == 0x190:
            assert h.lchs == (1023, 16, 63, 512)


def test_header_error_names_file_field_value_expected(tmp_path: Path) -> None:
    b = build_image(tmp_path / "bad name.vdi", MIB, image_type=9)
    with pytest.raises(HeaderError) as info:
        read_header(b.path)
    err = info.value
    assert (err.field, err.value) == ("u32Type", "9")
    text = str(err)
    assert "bad name.vdi" in text and "u32Type" in text and "9" in text
    assert text.endswith(".") and "\n" not in text


def test_signature_is_checked_not_banner(tmp_path: Path) -> None:
    b = build_image(tmp_path / "x.vdi", MIB, signature=0x12345678)
    with pytest.raises(HeaderError, match="u32Signature"):
        read_header(b.path)


@pytest.mark.parametrize("version", [0x00000001, 0x00000003, 0x00020000, 0x00000000])
def test_unsupported_versions(tmp_path: Path, version: int) -> None:
    b = build_image(tmp_path / "x.vdi", MIB, version=version)
    with pytest.raises(HeaderError, match="u32Version") as info:
        read_header(b.path)
    assert f"0x{version:08X}" in str(info.value)


def test_minor_versions_above_one_read_as_v1(tmp_path: Path) -> None:
    b = build_image(tmp_path / "x.vdi", MIB, version=0x00010002)
    h = read_header(b.path)
    assert h.version_text == "1.2"
    assert h.lchs is None  # LCHS is read for minor 1 only


def test_uuid_helpers_round_trip() -> None:
    u = uuidlib.uuid4()
    assert fmt.uuid_from_disk(fmt.uuid_to_disk(u)) == u
    assert fmt.uuid_to_disk(u) == u.bytes_le


def test_parse_header_on_short_input_is_a_header_error() -> None:
    for n in (0, 10, 0x47, 0x48, 0x100, 0x1C7):
        raw = bytearray(n)
        if n >= 0x48:
            struct.pack_into("<II", raw, 0x40, fmt.SIGNATURE, fmt.VERSION_1_1)
        with pytest.raises(HeaderError):
            parse_header(bytes(raw), "short.vdi")
