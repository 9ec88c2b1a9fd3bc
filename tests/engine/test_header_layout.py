"""The header layout table (engine.format's field rows): against the independent builder, the
module docstring, VdiHeader, and the block-map test is_allocated."""

from __future__ import annotations

import dataclasses
import itertools
import struct
import uuid as uuidlib

import numpy as np
import pytest
from builders import V0_2, V1_1, RawHeader
from builders import pack_header as builder_pack

from vdigui.engine import format as fmt

#: engine attribute -> the builder's name for the same field
BUILDER_NAMES = {
    "uuid": "uuid_create",
    "modify_uuid": "uuid_modify",
    "parent_uuid": "uuid_linkage",
    "parent_modify_uuid": "uuid_parent_modify",
}

LAYOUTS = {
    "v1.1+": (*fmt.PREHEADER_FIELDS, *fmt.V1PLUS_FIELDS),
    "legacy": (*fmt.PREHEADER_FIELDS, *fmt.LEGACY_FIELDS),
}


def distinct_raw_header(version: int) -> RawHeader:
    """A builder header whose every field holds a different, recognisable value."""
    return RawHeader(
        banner=b"banner text\n",
        version=version,
        header_size=0x190,
        image_type=4,
        flags=0x100,
        comment=b"a comment",
        offset_blocks=0x1111,
        offset_data=0x22222,
        legacy_geometry=(3, 5, 7, 512),
        dummy=9,
        disk_size=0x123456789A,
        block_size=1 << 20,
        block_extra=64,
        blocks=11,
        blocks_allocated=6,
        uuid_create=uuidlib.uuid4(),
        uuid_modify=uuidlib.uuid4(),
        uuid_linkage=uuidlib.uuid4(),
        uuid_parent_modify=uuidlib.uuid4(),
        lchs=(13, 16, 63, 512),
    )


@pytest.mark.parametrize(("version", "layout"), [(V1_1, "v1.1+"), (V0_2, "legacy")])
def test_every_row_reads_what_the_builder_wrote_there(version: int, layout: str) -> None:
    raw_header = distinct_raw_header(version)
    raw = builder_pack(raw_header).ljust(512, b"\0")
    assert fmt.header_layout(raw) == LAYOUTS[layout]
    for field in LAYOUTS[layout]:
        expected = getattr(raw_header, BUILDER_NAMES.get(field.name, field.name))
        items = field.unpack(raw)
        if isinstance(expected, uuidlib.UUID):
            assert uuidlib.UUID(bytes_le=items[0]) == expected, field.vbox_name
        elif isinstance(expected, bytes):
            assert items[0].rstrip(b"\0") == expected, field.vbox_name
        elif isinstance(expected, tuple):
            assert items == expected, field.vbox_name
        else:
            assert items == (expected,), field.vbox_name


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_rows_are_contiguous_and_end_where_the_map_may_start(layout: str) -> None:
    fields = LAYOUTS[layout]
    assert fields[0].offset == 0
    for before, after in itertools.pairwise(fields):
        assert before.end == after.offset, after.vbox_name
        assert before.size == struct.calcsize("<" + before.code)
    assert fmt.PREHEADER_FIELDS[-1].end == fmt.PREHEADER_SIZE
    ends = {"v1.1+": fmt.END_OF_V1PLUS, "legacy": fmt.LEGACY_MAP_OFFSET}
    assert fields[-1].end == ends[layout]
    assert fmt.V1_FIELDS[-1].end == fmt.PREHEADER_SIZE + fmt.HEADER_V1_SIZE


def test_rows_name_every_header_attribute() -> None:
    attributes = {f.name for f in dataclasses.fields(fmt.VdiHeader)}
    in_v1 = {f.name for f in LAYOUTS["v1.1+"]}
    assert in_v1 - attributes == {"signature"}
    assert attributes - in_v1 == set()
    assert {f.name for f in LAYOUTS["legacy"]} <= in_v1
    assert all(f.meaning.endswith(".") for layout in LAYOUTS.values() for f in layout)


def test_module_docstring_shows_the_tables() -> None:
    doc = fmt.__doc__ or ""
    for fields in LAYOUTS.values():
        assert fmt.field_table(fields) in doc


def test_layout_follows_the_version_and_the_bytes_present() -> None:
    raw = builder_pack(distinct_raw_header(V1_1)).ljust(512, b"\0")
    assert fmt.header_layout(b"") == ()
    assert fmt.header_layout(raw[:0x48]) == fmt.PREHEADER_FIELDS
    cut = fmt.header_layout(raw[:0x1C8])
    assert cut == (*fmt.PREHEADER_FIELDS, *fmt.V1_FIELDS)
    unknown = bytearray(raw)
    struct.pack_into("<I", unknown, 0x44, 0x00050000)
    assert fmt.header_layout(bytes(unknown)) == LAYOUTS["v1.1+"]


def test_is_allocated_on_entries_and_arrays() -> None:
    entries = np.array([0, 1, 0xFFFFFFFD, 0xFFFFFFFE, 0xFFFFFFFF], dtype="<u4")
    expected = [True, True, True, False, False]
    assert fmt.is_allocated(entries).tolist() == expected
    assert [fmt.is_allocated(int(e)) for e in entries] == expected
    assert [fmt.is_allocated(e) for e in entries] == expected
    assert all(type(fmt.is_allocated(e)) is bool for e in entries)
