"""The VDI on-disk layout: constants, header parsing, validation and packing.

References:
    - VirtualBox ``src/VBox/Storage/VDICore.h`` and ``VDI.cpp`` (``vdiValidateHeader``).
    - qemu ``block/vdi.c`` (an independent reader; its quirks are noted in the docs).
    - ``docs/vdi-format.md`` sections 1.1-1.13: the contract this module implements.

The header layout is declared once, as the field tables below (``PREHEADER_FIELDS``,
``V1_FIELDS`` + ``LCHS_FIELD``, ``LEGACY_FIELDS``); parsing, packing, these tables and the
app's annotated hex view all read them, and tests/engine/test_format.py checks that the tables
here match. Offsets are file offsets; ``signature`` is checked, not kept.

Version 1.x (LCHSGeometry only in 1.1 with cbHeader >= 0x190):

======  ====  ======  ==================  ================
Offset  Size  Struct  VdiHeader           VirtualBox
======  ====  ======  ==================  ================
0x000   64    64s     banner              szFileInfo
0x040   4     I       signature           u32Signature
0x044   4     I       version             u32Version
0x048   4     I       header_size         cbHeader
0x04C   4     I       image_type          u32Type
0x050   4     I       flags               fFlags
0x054   256   256s    comment             szComment
0x154   4     I       offset_blocks       offBlocks
0x158   4     I       offset_data         offData
0x15C   16    4I      legacy_geometry     LegacyGeometry
0x16C   4     I       dummy               u32Dummy
0x170   8     Q       disk_size           cbDisk
0x178   4     I       block_size          cbBlock
0x17C   4     I       block_extra         cbBlockExtra
0x180   4     I       blocks              cBlocks
0x184   4     I       blocks_allocated    cBlocksAllocated
0x188   16    16s     uuid                uuidCreate
0x198   16    16s     modify_uuid         uuidModify
0x1A8   16    16s     parent_uuid         uuidLinkage
0x1B8   16    16s     parent_modify_uuid  uuidParentModify
0x1C8   16    4I      lchs                LCHSGeometry
======  ====  ======  ==================  ================

Legacy version 0.2 (the block map follows at 0x1A4; no offsets, no uuidParentModify):

======  ====  ======  ================  ================
Offset  Size  Struct  VdiHeader         VirtualBox
======  ====  ======  ================  ================
0x000   64    64s     banner            szFileInfo
0x040   4     I       signature         u32Signature
0x044   4     I       version           u32Version
0x048   4     I       image_type        u32Type
0x04C   4     I       flags             fFlags
0x050   256   256s    comment           szComment
0x150   16    4I      legacy_geometry   Geometry
0x160   8     Q       disk_size         cbDisk
0x168   4     I       block_size        cbBlock
0x16C   4     I       blocks            cBlocks
0x170   4     I       blocks_allocated  cBlocksAllocated
0x174   16    16s     uuid              uuidCreate
0x184   16    16s     modify_uuid       uuidModify
0x194   16    16s     parent_uuid       uuidLinkage
======  ====  ======  ================  ================

Quirks tolerated on purpose: any banner text (VDI is detected by the signature alone); header
versions 0.2 (legacy), 1.0 and 1.1; any placement of the map and data area the header describes
(512-aligned, qemu's, 1 MiB-aligned); a non-zero cbBlockExtra. UUIDs are stored in the GUID
(``bytes_le``) order VirtualBox uses, which is what the .vbox files print.
"""

from __future__ import annotations

import dataclasses
import os
import re
import struct
import uuid as uuidlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum, IntEnum
from pathlib import Path
from typing import Any, overload

import numpy as np
import numpy.typing as npt

from vdigui.engine import sniff
from vdigui.engine.errors import HeaderError, NotVdiImageError, VdiError

SIGNATURE = 0xBEDA107F
VERSION_1_1 = 0x00010001
VERSION_1_0 = 0x00010000
VERSION_LEGACY = 0x00000002
PREHEADER_SIZE = 0x48
HEADER_V1_SIZE = 0x180
HEADER_V1PLUS_SIZE = 0x190
#: First offset a v1 block map may start at (0x48 + 0x180), VirtualBox check 2.
MIN_OFFSET_BLOCKS_V1 = PREHEADER_SIZE + HEADER_V1_SIZE
#: End of the 1.1+ header (LCHS included); an upgrade to 0x190 is only safe above this.
END_OF_V1PLUS = PREHEADER_SIZE + HEADER_V1PLUS_SIZE
LEGACY_HEADER_SIZE = 348
LEGACY_MAP_OFFSET = PREHEADER_SIZE + LEGACY_HEADER_SIZE
#: Bytes read to parse any header (v1.1+ ends at 0x1D8).
HEADER_READ_SIZE = 512

BLOCK_FREE = 0xFFFFFFFF
BLOCK_ZERO = 0xFFFFFFFE
#: Map entries below this are slot numbers.
FIRST_SPECIAL = BLOCK_ZERO

MIB = 1 << 20
DATA_ALIGN = MIB
DEFAULT_BLOCK_SIZE = MIB
#: Block sizes the engine accepts. VirtualBox 7.2+ rejects < 128 KiB; smaller blocks are
#: accepted for reading because older tools wrote them and they are harmless to read.
MIN_BLOCK_SIZE = 512
MAX_BLOCK_SIZE = 128 * MIB
BANNER = "<<< Oracle VirtualBox Disk Image >>>\n"
NULL_UUID = uuidlib.UUID(int=0)

_VALID_FLAG_BITS = 0x100 | 0x10000 | 0x20000


class ImageType(IntEnum):
    """u32Type values."""

    DYNAMIC = 1
    FIXED = 2
    UNDO = 3
    DIFFERENCING = 4

    @property
    def label(self) -> str:
        """The lowercase word used in JSON and the UI."""
        return {1: "dynamic", 2: "fixed", 3: "undo", 4: "differencing"}[int(self)]


@overload
def is_allocated(entries: int | np.integer[Any]) -> bool: ...


@overload
def is_allocated(entries: npt.NDArray[Any]) -> npt.NDArray[np.bool_]: ...


def is_allocated(entries: int | np.integer[Any] | npt.NDArray[Any]) -> bool | npt.NDArray[np.bool_]:
    """Whether block-map ``entries`` name a slot (not free, not zero): true below 0xFFFFFFFE.

    One place for the comparison the map's encoding implies (docs/vdi-format.md §1.8). One
    entry (an ``int`` or a numpy integer) gives a ``bool``; an array gives a boolean array of
    the same shape.
    """
    if isinstance(entries, np.ndarray):
        return entries < FIRST_SPECIAL
    return bool(entries < FIRST_SPECIAL)


# -- the header layout, declared once ------------------------------------------------------
#
# Parsing, packing, the module docstring's tables and the app's annotated hex view all read
# these rows, so an offset or a size is written down exactly once.


class FieldKind(Enum):
    """What a header field holds: tells a viewer how to show it (parsing uses the code)."""

    TEXT = "text"
    SIGNATURE = "signature"
    VERSION = "version"
    SIZE = "size"  # a byte count
    COUNT = "count"  # a plain number
    IMAGE_TYPE = "image type"
    FLAGS = "flags"
    OFFSET = "offset"  # a byte offset into the file
    GEOMETRY = "geometry"  # cylinders, heads, sectors, bytes per sector
    UUID = "uuid"  # 16 bytes in GUID (bytes_le) order


@dataclass(frozen=True, slots=True)
class HeaderField:
    """One field of the on-disk header: where it sits, how it is stored and what it means.

    Attributes:
        name: the :class:`VdiHeader` attribute it fills ("signature" is checked, not kept).
        vbox_name: VirtualBox's name for it (``VDICore.h``).
        offset: byte offset in the file.
        code: its :mod:`struct` code (little-endian); the size follows from it.
        kind: what it holds, for viewers.
        meaning: what it is for, in words for people (the app's hover text).
    """

    name: str
    vbox_name: str
    offset: int
    code: str
    kind: FieldKind
    meaning: str

    @property
    def size(self) -> int:
        """Bytes the field occupies."""
        return struct.calcsize("<" + self.code)

    @property
    def end(self) -> int:
        """The file offset just past the field."""
        return self.offset + self.size

    def unpack(self, raw: bytes) -> tuple[Any, ...]:
        """The field's raw values from ``raw`` (file bytes from offset 0)."""
        return struct.unpack_from("<" + self.code, raw, self.offset)


#: What each field is for, by attribute (shared by the 1.x and the legacy layouts).
_MEANINGS = {
    "banner": "The banner: free text for people; VirtualBox ignores it.",
    "signature": "Marks the file as a VDI image: must be 0xBEDA107F.",
    "version": "Header version: 1.1 today, 0.2 for very old images.",
    "header_size": "Size of the header structure that follows.",
    "image_type": "Image type: dynamic grows as the guest writes, fixed is preallocated, "
    "differencing stores changes over a parent.",
    "flags": "Image flags; normally zero.",
    "comment": "The image description (VBoxManage --description).",
    "offset_blocks": "Where the block map starts in the file.",
    "offset_data": "Where the first data block starts in the file.",
    "legacy_geometry": "Old disk geometry; unused by modern guests.",
    "dummy": "Unused (was the translation mode).",
    "disk_size": "The virtual disk size the guest sees.",
    "block_size": "Size of one block: the unit of allocation (1 MiB normally).",
    "block_extra": "Extra bytes stored before each block; normally zero.",
    "blocks": "Number of blocks the virtual disk has (map entries).",
    "blocks_allocated": "Blocks that have a slot in this file; the next new block goes to "
    "this slot.",
    "uuid": "This image's identity. The .vbox registry lists the image under it, and a "
    "differencing image names it as its parent.",
    "modify_uuid": "Changes when VirtualBox writes to the image; children remember the value "
    "they were made against.",
    "parent_uuid": "The identity of the parent this differencing image reads through to (null "
    "for a base disk). vdigui finds the parent by this UUID, never by file name.",
    "parent_modify_uuid": "The parent's last-modify UUID when this image was created; a "
    "different value means the parent was written since (VirtualBox "
    "does not check it).",
    "lchs": "Logical geometry reported to the guest BIOS (1.1+ only).",
}


def _field(name: str, vbox_name: str, offset: int, code: str, kind: FieldKind) -> HeaderField:
    return HeaderField(name, vbox_name, offset, code, kind, _MEANINGS[name])


_K = FieldKind

#: The pre-header every version shares (VDIPREHEADER).
PREHEADER_FIELDS = (
    _field("banner", "szFileInfo", 0x00, "64s", _K.TEXT),
    _field("signature", "u32Signature", 0x40, "I", _K.SIGNATURE),
    _field("version", "u32Version", 0x44, "I", _K.VERSION),
)

#: The 1.x header after the pre-header (VDIHEADER1), without the 1.1+ LCHS geometry.
V1_FIELDS = (
    _field("header_size", "cbHeader", 0x48, "I", _K.SIZE),
    _field("image_type", "u32Type", 0x4C, "I", _K.IMAGE_TYPE),
    _field("flags", "fFlags", 0x50, "I", _K.FLAGS),
    _field("comment", "szComment", 0x54, "256s", _K.TEXT),
    _field("offset_blocks", "offBlocks", 0x154, "I", _K.OFFSET),
    _field("offset_data", "offData", 0x158, "I", _K.OFFSET),
    _field("legacy_geometry", "LegacyGeometry", 0x15C, "4I", _K.GEOMETRY),
    _field("dummy", "u32Dummy", 0x16C, "I", _K.COUNT),
    _field("disk_size", "cbDisk", 0x170, "Q", _K.SIZE),
    _field("block_size", "cbBlock", 0x178, "I", _K.SIZE),
    _field("block_extra", "cbBlockExtra", 0x17C, "I", _K.SIZE),
    _field("blocks", "cBlocks", 0x180, "I", _K.COUNT),
    _field("blocks_allocated", "cBlocksAllocated", 0x184, "I", _K.COUNT),
    _field("uuid", "uuidCreate", 0x188, "16s", _K.UUID),
    _field("modify_uuid", "uuidModify", 0x198, "16s", _K.UUID),
    _field("parent_uuid", "uuidLinkage", 0x1A8, "16s", _K.UUID),
    _field("parent_modify_uuid", "uuidParentModify", 0x1B8, "16s", _K.UUID),
)

#: The LCHS geometry a 1.1 header with cbHeader >= 0x190 adds (VDIHEADER1PLUS).
LCHS_FIELD = _field("lchs", "LCHSGeometry", 0x1C8, "4I", _K.GEOMETRY)

#: The whole 1.1+ header after the pre-header.
V1PLUS_FIELDS = (*V1_FIELDS, LCHS_FIELD)

#: The legacy 0.2 header after the pre-header (VDIHEADER0): no offsets, no parent-modify UUID.
LEGACY_FIELDS = (
    _field("image_type", "u32Type", 0x48, "I", _K.IMAGE_TYPE),
    _field("flags", "fFlags", 0x4C, "I", _K.FLAGS),
    _field("comment", "szComment", 0x50, "256s", _K.TEXT),
    _field("legacy_geometry", "Geometry", 0x150, "4I", _K.GEOMETRY),
    _field("disk_size", "cbDisk", 0x160, "Q", _K.SIZE),
    _field("block_size", "cbBlock", 0x168, "I", _K.SIZE),
    _field("blocks", "cBlocks", 0x16C, "I", _K.COUNT),
    _field("blocks_allocated", "cBlocksAllocated", 0x170, "I", _K.COUNT),
    _field("uuid", "uuidCreate", 0x174, "16s", _K.UUID),
    _field("modify_uuid", "uuidModify", 0x184, "16s", _K.UUID),
    _field("parent_uuid", "uuidLinkage", 0x194, "16s", _K.UUID),
)

_PREHEADER_CODE = "<" + "".join(f.code for f in PREHEADER_FIELDS)


def header_layout(raw: bytes) -> tuple[HeaderField, ...]:
    """The fields of the header in ``raw`` (file bytes from offset 0) that ``raw`` holds whole.

    The pre-header, then the legacy layout when the version says 0.2, else the 1.1+ layout
    (also for an unknown version or a file too short to say: a viewer shows what is there).
    """
    legacy = len(raw) >= PREHEADER_SIZE and PREHEADER_FIELDS[2].unpack(raw)[0] == VERSION_LEGACY
    fields = (*PREHEADER_FIELDS, *(LEGACY_FIELDS if legacy else V1PLUS_FIELDS))
    return tuple(f for f in fields if f.end <= len(raw))


def field_table(fields: Sequence[HeaderField]) -> str:
    """``fields`` as the reStructuredText table the module docstring shows (a test compares)."""
    rows = [("Offset", "Size", "Struct", "VdiHeader", "VirtualBox")]
    rows += [(f"0x{f.offset:03X}", str(f.size), f.code, f.name, f.vbox_name) for f in fields]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))

    rule = line(["=" * width for width in widths])
    lines = [rule, line(rows[0]), rule, *(line(row) for row in rows[1:]), rule]
    return "\n".join(text.rstrip() for text in lines)


@dataclass(frozen=True, slots=True)
class VdiHeader:
    """A parsed and validated VDI header. Values only: no file handle lives here."""

    banner: str
    version: int
    header_size: int
    image_type: ImageType
    flags: int
    comment: str
    offset_blocks: int
    offset_data: int
    legacy_geometry: tuple[int, int, int, int]
    disk_size: int
    block_size: int
    block_extra: int
    blocks: int
    blocks_allocated: int
    uuid: uuidlib.UUID
    modify_uuid: uuidlib.UUID
    parent_uuid: uuidlib.UUID
    parent_modify_uuid: uuidlib.UUID
    lchs: tuple[int, int, int, int] | None
    dummy: int = 0

    @property
    def version_text(self) -> str:
        """ "1.1", "1.0" or "0.2"."""
        return f"{self.version >> 16}.{self.version & 0xFFFF}"

    @property
    def is_legacy(self) -> bool:
        """Whether this is a version 0.x header (no offsets, no parent-modify UUID)."""
        return self.version == VERSION_LEGACY

    @property
    def is_differencing(self) -> bool:
        """VirtualBox treats any image with a non-null uuidLinkage as differencing."""
        return self.parent_uuid != NULL_UUID or self.image_type == ImageType.DIFFERENCING

    @property
    def slot_size(self) -> int:
        """Bytes one physical slot occupies (extra prefix + block)."""
        return self.block_extra + self.block_size

    @property
    def map_size(self) -> int:
        """Bytes the block map occupies."""
        return 4 * self.blocks

    def slot_offset(self, slot: int) -> int:
        """File offset of the guest data of physical slot ``slot`` (after the extra prefix)."""
        return self.offset_data + slot * self.slot_size + self.block_extra

    def expected_file_size(self, allocated: int | None = None) -> int:
        """File size of a healthy image holding ``allocated`` slots (default: blocks_allocated)."""
        count = self.blocks_allocated if allocated is None else allocated
        return self.offset_data + count * self.slot_size

    def replace(self, **changes: object) -> VdiHeader:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def uuid_from_disk(raw: bytes) -> uuidlib.UUID:
    """Decode a 16-byte on-disk UUID (GUID byte order, as IPRT stores it)."""
    return uuidlib.UUID(bytes_le=bytes(raw))


def uuid_to_disk(value: uuidlib.UUID) -> bytes:
    """Encode a UUID the way VirtualBox stores it on disk."""
    return value.bytes_le


_UUID_TEXT = re.compile(
    r"[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?"
    r"[0-9A-Fa-f]{12}"
)


def parse_uuid(text: str | None) -> uuidlib.UUID | None:
    """A UUID written as text (settings files, the command line, the app), or None.

    Accepts what VirtualBox writes (``{xxxxxxxx-xxxx-...}``) and what people type (without
    braces, any case, surrounding spaces, without dashes); anything else is None rather than
    an error, because callers usually try a UUID first and a name or path next (a snapshot
    named "1234" is not a UUID). The one parser of UUID text in vdigui.
    """
    if not text:
        return None
    candidate = text.strip().strip("{}")
    if not _UUID_TEXT.fullmatch(candidate):
        return None
    return uuidlib.UUID(candidate)


def _hex(value: int) -> str:
    return f"0x{value:X}"


def _size(value: int) -> str:
    return f"{value} bytes"


def parse_header(raw: bytes, path: Path | str, file_size: int | None = None) -> VdiHeader:
    """Parse and validate the first bytes of a file as a VDI header.

    Args:
        raw: at least the first 512 bytes of the file (fewer only if the file is shorter).
        path: the file, for error messages.
        file_size: the file's size; when given, the block map must lie inside the file.

    Raises:
        HeaderError: naming the field, its value and what was expected.
    """
    path = Path(path)
    if len(raw) < PREHEADER_SIZE:
        raise HeaderError(
            path,
            "file size",
            _size(len(raw)),
            f"at least {PREHEADER_SIZE} bytes for a VDI pre-header",
            lead="is too short to be a VDI image",
        )
    banner_raw, signature, version = struct.unpack_from(_PREHEADER_CODE, raw, 0)
    if signature != SIGNATURE:
        raise HeaderError(
            path,
            "u32Signature",
            f"0x{signature:08X}",
            f"0x{SIGNATURE:08X} (this is not a VDI image)",
        )
    banner = banner_raw.split(b"\0", 1)[0].decode("latin-1")
    if version >> 16 == 1:
        header = _parse_v1(raw, path, banner, version)
    elif version == VERSION_LEGACY:
        header = _parse_legacy(raw, path, banner, version)
    else:
        raise HeaderError(
            path,
            "u32Version",
            f"0x{version:08X}",
            "a 1.x version (0x0001xxxx) or the legacy 0x00000002",
        )
    validate_header(header, path, file_size)
    return header


def _need(raw: bytes, size: int, path: Path, what: str) -> None:
    if len(raw) < size:
        raise HeaderError(
            path,
            "file size",
            _size(len(raw)),
            f"at least {size} bytes to hold a {what} header",
            lead="is truncated (its header is cut short)",
        )


def _text(raw: bytes) -> str:
    # VirtualBox force-terminates the comment at byte 255.
    return raw[:255].split(b"\0", 1)[0].decode("utf-8", "replace")


def _unpack(fields: Sequence[HeaderField], raw: bytes) -> dict[str, Any]:
    """Each field's value by attribute: an int, a tuple of ints, bytes, or a UUID."""
    values: dict[str, Any] = {}
    for f in fields:
        items = f.unpack(raw)
        if f.kind is FieldKind.UUID:
            values[f.name] = uuid_from_disk(items[0])
        else:
            values[f.name] = items[0] if len(items) == 1 else items
    return values


def _parse_v1(raw: bytes, path: Path, banner: str, version: int) -> VdiHeader:
    _need(raw, V1_FIELDS[-1].end, path, "version 1.x")
    values = _unpack(V1_FIELDS, raw)
    header_size = values["header_size"]
    if header_size < HEADER_V1_SIZE:
        raise HeaderError(path, "cbHeader", _hex(header_size), f"at least {_hex(HEADER_V1_SIZE)}")
    lchs = None
    if header_size >= HEADER_V1PLUS_SIZE and version == VERSION_1_1:
        _need(raw, LCHS_FIELD.end, path, "version 1.1+")
        lchs = LCHS_FIELD.unpack(raw)
    values["image_type"] = _image_type(values["image_type"], path)
    values["comment"] = _text(values["comment"])
    return VdiHeader(banner=banner, version=version, lchs=lchs, **values)


def _parse_legacy(raw: bytes, path: Path, banner: str, version: int) -> VdiHeader:
    _need(raw, LEGACY_FIELDS[-1].end, path, "legacy version 0.2")
    values = _unpack(LEGACY_FIELDS, raw)
    values["image_type"] = _image_type(values["image_type"], path)
    values["comment"] = _text(values["comment"])
    return VdiHeader(
        banner=banner,
        version=version,
        header_size=LEGACY_HEADER_SIZE,
        offset_blocks=LEGACY_MAP_OFFSET,
        offset_data=LEGACY_MAP_OFFSET + 4 * values["blocks"],
        block_extra=0,
        parent_modify_uuid=NULL_UUID,
        lchs=None,
        **values,
    )


def _image_type(value: int, path: Path) -> ImageType:
    try:
        return ImageType(value)
    except ValueError:
        raise HeaderError(
            path, "u32Type", str(value), "1 (dynamic), 2 (fixed), 3 (undo) or 4 (differencing)"
        ) from None


def validate_header(h: VdiHeader, path: Path | str, file_size: int | None = None) -> None:
    """Apply VirtualBox's header checks (docs/vdi-format.md §1.5) plus the engine's safety limits.

    The numbered checks are VirtualBox's own, in its order; the rest keep the engine from
    trusting a header that would make it read outside the file or allocate absurd memory.
    """
    path = Path(path)
    if not h.is_legacy:
        if h.offset_blocks < MIN_OFFSET_BLOCKS_V1:  # check 2
            raise HeaderError(
                path, "offBlocks", _hex(h.offset_blocks), f"at least {_hex(MIN_OFFSET_BLOCKS_V1)}"
            )
        if h.offset_data < h.offset_blocks + 4 * h.blocks:  # check 3
            raise HeaderError(
                path,
                "offData",
                _hex(h.offset_data),
                f"at least offBlocks + 4 x cBlocks = {_hex(h.offset_blocks + 4 * h.blocks)}",
            )
    if h.flags & ~(_VALID_FLAG_BITS >> 8):  # check 5
        raise HeaderError(path, "fFlags", _hex(h.flags), "a combination of 0x1, 0x100 and 0x200")
    if h.lchs is not None and h.lchs[3] != 512:  # check 6
        raise HeaderError(path, "LCHSGeometry.cbSector", str(h.lchs[3]), "512")
    if h.disk_size == 0:  # check 7
        raise HeaderError(path, "cbDisk", "0", "a non-zero disk size")
    if h.block_size == 0 or h.block_size & (h.block_size - 1):
        raise HeaderError(path, "cbBlock", str(h.block_size), "a power of two")
    if h.blocks == 0:
        raise HeaderError(path, "cBlocks", "0", "at least 1")
    if h.blocks_allocated > h.blocks:  # check 8
        raise HeaderError(
            path, "cBlocksAllocated", str(h.blocks_allocated), f"at most cBlocks = {h.blocks}"
        )
    if h.block_extra and h.block_extra & (h.block_extra - 1):  # check 9
        raise HeaderError(path, "cbBlockExtra", str(h.block_extra), "0 or a power of two")
    if h.block_size * h.blocks < h.disk_size:  # check 10
        raise HeaderError(
            path,
            "cbDisk",
            _size(h.disk_size),
            f"at most cBlocks x cbBlock = {_size(h.block_size * h.blocks)}",
        )
    if h.uuid == NULL_UUID:  # check 11
        raise HeaderError(path, "uuidCreate", str(NULL_UUID), "a non-null UUID")
    if h.modify_uuid == NULL_UUID:  # check 12
        raise HeaderError(path, "uuidModify", str(NULL_UUID), "a non-null UUID")
    # Engine limits beyond VirtualBox's checks.
    if not MIN_BLOCK_SIZE <= h.block_size <= MAX_BLOCK_SIZE:
        raise HeaderError(
            path, "cbBlock", _size(h.block_size), f"between {MIN_BLOCK_SIZE} bytes and 128 MiB"
        )
    if h.block_extra > MAX_BLOCK_SIZE:
        raise HeaderError(path, "cbBlockExtra", _size(h.block_extra), "at most 128 MiB")
    if file_size is not None and h.offset_blocks + 4 * h.blocks > file_size:
        raise HeaderError(
            path,
            "cBlocks",
            str(h.blocks),
            f"a block map that fits in the {file_size}-byte file "
            f"(the map would end at byte {h.offset_blocks + 4 * h.blocks})",
            lead="is truncated or damaged (its block map does not fit)",
        )


def pack_header(h: VdiHeader) -> bytes:
    """The header bytes from 0x48 to the end of the header struct (what VirtualBox rewrites).

    The banner and pre-header are written only at creation, so they are not part of this.
    """
    if h.is_legacy:
        fields: Sequence[HeaderField] = LEGACY_FIELDS
    else:
        fields = V1PLUS_FIELDS if h.lchs is not None else V1_FIELDS
    start = fields[0].offset
    out = bytearray(fields[-1].end - start)
    for f in fields:
        value = getattr(h, f.name)
        if f.kind is FieldKind.UUID:
            items: tuple[Any, ...] = (uuid_to_disk(value),)
        elif f.name == "comment":
            items = (_comment_bytes(value),)
        else:
            items = value if isinstance(value, tuple) else (value,)
        struct.pack_into("<" + f.code, out, f.offset - start, *items)
    return bytes(out)


def pack_preheader(banner: str, version: int = VERSION_1_1) -> bytes:
    """The 72-byte pre-header: banner, signature, version."""
    return struct.pack(_PREHEADER_CODE, banner.encode("latin-1")[:63], SIGNATURE, version)


def _comment_bytes(comment: str) -> bytes:
    data = comment.encode("utf-8")
    if len(data) >= 256:
        raise ValueError("a VDI comment must be shorter than 256 bytes")
    return data


def align_up(value: int, alignment: int) -> int:
    """Round ``value`` up to a multiple of ``alignment``."""
    return -(-value // alignment) * alignment


def read_header(path: Path | str) -> VdiHeader:
    """Read and validate just the header of the VDI file at ``path`` (read-only, cheap).

    Anything but a regular file is refused before it is opened (a FIFO would block), and a
    file that is not a VDI at all is named for what it is (:mod:`vdigui.engine.sniff`).
    """
    path = Path(path)
    fd = sniff.open_regular(path)
    try:
        size = os.fstat(fd).st_size
        raw = os.pread(fd, HEADER_READ_SIZE, 0)
        return parse_header_of_file(fd, raw, path, size)
    except OSError as exc:
        raise VdiError(f"Cannot read {path}: {exc.strerror or exc}.") from exc
    finally:
        os.close(fd)


def parse_header_of_file(fd: int, raw: bytes, path: Path, size: int) -> VdiHeader:
    """:func:`parse_header` for an open file: a non-VDI file is named for what it is.

    Raises:
        NotVdiImageError: no VDI signature (or too short for one); says what the file is.
        HeaderError: a VDI header that fails a check.
    """
    try:
        return parse_header(raw, path, size)
    except HeaderError as exc:
        if exc.field not in ("u32Signature", "file size") or (
            exc.field == "file size" and len(raw) >= PREHEADER_SIZE
        ):
            raise
        tail = os.pread(fd, 512, max(0, size - 512)) if size >= 512 else b""
        head = raw + (
            os.pread(fd, 0x8800 - len(raw), len(raw)) if len(raw) == HEADER_READ_SIZE else b""
        )
        identity = sniff.identify_bytes(head, tail, size)
        message = sniff.not_vdi_sentence(path, identity)
        if message is None:
            if exc.field == "file size":
                message = (
                    f"{path} is too short to be a VDI image: the file has {size} "
                    f"bytes, and a VDI header alone takes "
                    f"{PREHEADER_SIZE + HEADER_V1_SIZE}."
                )
            else:
                message = (
                    f"{path} is not a VDI image: header field u32Signature is "
                    f"{exc.value}, expected 0x{SIGNATURE:08X} (the VDI signature)."
                )
        raise NotVdiImageError(
            path, exc.field, exc.value, exc.expected, message, identity.what if identity else ""
        ) from None
