"""The VDI on-disk layout: constants, header parsing, validation and packing.

References:
    - VirtualBox ``src/VBox/Storage/VDICore.h`` and ``VDI.cpp`` (``vdiValidateHeader``).
    - qemu ``block/vdi.c`` (an independent reader; its quirks are noted in the docs).
    - ``shared/docs/vdi-format.md`` sections 1.1-1.13: the contract this module implements.

Field names (snake_case here, VirtualBox's names in the file):

=====================  ======================
VdiHeader              VirtualBox
=====================  ======================
header_size            cbHeader
image_type             u32Type
flags                  fFlags
comment                szComment
offset_blocks          offBlocks
offset_data            offData
legacy_geometry        LegacyGeometry (C/H/S/cbSector)
disk_size              cbDisk
block_size             cbBlock
block_extra            cbBlockExtra
blocks                 cBlocks
blocks_allocated       cBlocksAllocated
uuid                   uuidCreate
modify_uuid            uuidModify
parent_uuid            uuidLinkage
parent_modify_uuid     uuidParentModify
lchs                   LCHSGeometry (1.1+ only)
=====================  ======================

Quirks tolerated on purpose: any banner text (VDI is detected by the signature alone); header
versions 0.2 (legacy), 1.0 and 1.1; any placement of the map and data area the header describes
(512-aligned, qemu's, 1 MiB-aligned); a non-zero cbBlockExtra. UUIDs are stored in the GUID
(``bytes_le``) order VirtualBox uses, which is what the .vbox files print.
"""

from __future__ import annotations

import dataclasses
import struct
import uuid as uuidlib
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from vdigui.engine.errors import HeaderError, VdiError

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
        """"1.1", "1.0" or "0.2"."""
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
        raise HeaderError(path, "file size", _size(len(raw)),
                          f"at least {PREHEADER_SIZE} bytes for a VDI pre-header")
    banner_raw, signature, version = struct.unpack_from("<64sII", raw, 0)
    if signature != SIGNATURE:
        raise HeaderError(path, "u32Signature", f"0x{signature:08X}",
                          f"0x{SIGNATURE:08X} (this is not a VDI image)")
    banner = banner_raw.split(b"\0", 1)[0].decode("latin-1")
    if version >> 16 == 1:
        header = _parse_v1(raw, path, banner, version)
    elif version == VERSION_LEGACY:
        header = _parse_legacy(raw, path, banner, version)
    else:
        raise HeaderError(path, "u32Version", f"0x{version:08X}",
                          "a 1.x version (0x0001xxxx) or the legacy 0x00000002")
    validate_header(header, path, file_size)
    return header


def _need(raw: bytes, size: int, path: Path, what: str) -> None:
    if len(raw) < size:
        raise HeaderError(path, "file size", _size(len(raw)),
                          f"at least {size} bytes to hold a {what} header")


def _text(raw: bytes) -> str:
    # VirtualBox force-terminates the comment at byte 255.
    return raw[:255].split(b"\0", 1)[0].decode("utf-8", "replace")


def _parse_v1(raw: bytes, path: Path, banner: str, version: int) -> VdiHeader:
    _need(raw, END_OF_V1PLUS - 16, path, "version 1.x")
    header_size, image_type, flags = struct.unpack_from("<III", raw, 0x48)
    comment = _text(raw[0x54:0x154])
    (off_blocks, off_data, cyl, heads, sectors, cb_sector, dummy, disk_size, block_size,
     block_extra, blocks, allocated) = struct.unpack_from("<IIIIIIIQIIII", raw, 0x154)
    uuids = [uuid_from_disk(raw[o:o + 16]) for o in (0x188, 0x198, 0x1A8, 0x1B8)]
    if header_size < HEADER_V1_SIZE:
        raise HeaderError(path, "cbHeader", _hex(header_size),
                          f"at least {_hex(HEADER_V1_SIZE)}")
    lchs = None
    if header_size >= HEADER_V1PLUS_SIZE and version == VERSION_1_1:
        _need(raw, END_OF_V1PLUS, path, "version 1.1+")
        lchs = struct.unpack_from("<IIII", raw, 0x1C8)
    return VdiHeader(
        banner=banner, version=version, header_size=header_size,
        image_type=_image_type(image_type, path), flags=flags, comment=comment,
        offset_blocks=off_blocks, offset_data=off_data,
        legacy_geometry=(cyl, heads, sectors, cb_sector), dummy=dummy,
        disk_size=disk_size, block_size=block_size, block_extra=block_extra,
        blocks=blocks, blocks_allocated=allocated,
        uuid=uuids[0], modify_uuid=uuids[1], parent_uuid=uuids[2], parent_modify_uuid=uuids[3],
        lchs=lchs,
    )


def _parse_legacy(raw: bytes, path: Path, banner: str, version: int) -> VdiHeader:
    _need(raw, LEGACY_MAP_OFFSET, path, "legacy version 0.2")
    image_type, flags = struct.unpack_from("<II", raw, 0x48)
    comment = _text(raw[0x50:0x150])
    geometry = struct.unpack_from("<IIII", raw, 0x150)
    disk_size, block_size, blocks, allocated = struct.unpack_from("<QIII", raw, 0x160)
    uuids = [uuid_from_disk(raw[o:o + 16]) for o in (0x174, 0x184, 0x194)]
    return VdiHeader(
        banner=banner, version=version, header_size=LEGACY_HEADER_SIZE,
        image_type=_image_type(image_type, path), flags=flags, comment=comment,
        offset_blocks=LEGACY_MAP_OFFSET, offset_data=LEGACY_MAP_OFFSET + 4 * blocks,
        legacy_geometry=geometry, disk_size=disk_size, block_size=block_size, block_extra=0,
        blocks=blocks, blocks_allocated=allocated,
        uuid=uuids[0], modify_uuid=uuids[1], parent_uuid=uuids[2], parent_modify_uuid=NULL_UUID,
        lchs=None,
    )


def _image_type(value: int, path: Path) -> ImageType:
    try:
        return ImageType(value)
    except ValueError:
        raise HeaderError(path, "u32Type", str(value),
                          "1 (dynamic), 2 (fixed), 3 (undo) or 4 (differencing)") from None


def validate_header(h: VdiHeader, path: Path | str, file_size: int | None = None) -> None:
    """Apply VirtualBox's header checks (reference 1.5) plus the engine's safety limits.

    The numbered checks are VirtualBox's own, in its order; the rest keep the engine from
    trusting a header that would make it read outside the file or allocate absurd memory.
    """
    path = Path(path)
    if not h.is_legacy:
        if h.offset_blocks < MIN_OFFSET_BLOCKS_V1:  # check 2
            raise HeaderError(path, "offBlocks", _hex(h.offset_blocks),
                              f"at least {_hex(MIN_OFFSET_BLOCKS_V1)}")
        if h.offset_data < h.offset_blocks + 4 * h.blocks:  # check 3
            raise HeaderError(path, "offData", _hex(h.offset_data),
                              f"at least offBlocks + 4 x cBlocks = "
                              f"{_hex(h.offset_blocks + 4 * h.blocks)}")
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
        raise HeaderError(path, "cBlocksAllocated", str(h.blocks_allocated),
                          f"at most cBlocks = {h.blocks}")
    if h.block_extra and h.block_extra & (h.block_extra - 1):  # check 9
        raise HeaderError(path, "cbBlockExtra", str(h.block_extra), "0 or a power of two")
    if h.block_size * h.blocks < h.disk_size:  # check 10
        raise HeaderError(path, "cbDisk", _size(h.disk_size),
                          f"at most cBlocks x cbBlock = {_size(h.block_size * h.blocks)}")
    if h.uuid == NULL_UUID:  # check 11
        raise HeaderError(path, "uuidCreate", str(NULL_UUID), "a non-null UUID")
    if h.modify_uuid == NULL_UUID:  # check 12
        raise HeaderError(path, "uuidModify", str(NULL_UUID), "a non-null UUID")
    # Engine limits beyond VirtualBox's checks.
    if not MIN_BLOCK_SIZE <= h.block_size <= MAX_BLOCK_SIZE:
        raise HeaderError(path, "cbBlock", _size(h.block_size),
                          f"between {MIN_BLOCK_SIZE} bytes and 128 MiB")
    if h.block_extra > MAX_BLOCK_SIZE:
        raise HeaderError(path, "cbBlockExtra", _size(h.block_extra), "at most 128 MiB")
    if file_size is not None and h.offset_blocks + 4 * h.blocks > file_size:
        raise HeaderError(path, "cBlocks", str(h.blocks),
                          f"a block map that fits in the {file_size}-byte file "
                          f"(the map would end at byte {h.offset_blocks + 4 * h.blocks}; "
                          "the file looks truncated)")


def pack_header(h: VdiHeader) -> bytes:
    """The header bytes from 0x48 to the end of the header struct (what VirtualBox rewrites).

    The banner and pre-header are written only at creation, so they are not part of this.
    """
    if h.is_legacy:
        out = struct.pack("<II256s", int(h.image_type), h.flags, _comment_bytes(h.comment))
        out += struct.pack("<IIII", *h.legacy_geometry)
        out += struct.pack("<QIII", h.disk_size, h.block_size, h.blocks, h.blocks_allocated)
        out += uuid_to_disk(h.uuid) + uuid_to_disk(h.modify_uuid) + uuid_to_disk(h.parent_uuid)
        return out
    out = struct.pack("<III256s", h.header_size, int(h.image_type), h.flags,
                      _comment_bytes(h.comment))
    out += struct.pack("<IIIIIIIQIIII", h.offset_blocks, h.offset_data, *h.legacy_geometry,
                       h.dummy, h.disk_size, h.block_size, h.block_extra, h.blocks,
                       h.blocks_allocated)
    out += b"".join(uuid_to_disk(u) for u in (h.uuid, h.modify_uuid, h.parent_uuid,
                                              h.parent_modify_uuid))
    if h.lchs is not None:
        out += struct.pack("<IIII", *h.lchs)
    return out


def pack_preheader(banner: str, version: int = VERSION_1_1) -> bytes:
    """The 72-byte pre-header: banner, signature, version."""
    return struct.pack("<64sII", banner.encode("latin-1")[:63], SIGNATURE, version)


def _comment_bytes(comment: str) -> bytes:
    data = comment.encode("utf-8")
    if len(data) >= 256:
        raise ValueError("a VDI comment must be shorter than 256 bytes")
    return data


def align_up(value: int, alignment: int) -> int:
    """Round ``value`` up to a multiple of ``alignment``."""
    return -(-value // alignment) * alignment


def read_header(path: Path | str) -> VdiHeader:
    """Read and validate just the header of the VDI file at ``path`` (read-only, cheap)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_READ_SIZE)
            size = f.seek(0, 2)
    except OSError as exc:
        raise VdiError(f"Cannot read '{path}': {exc.strerror or exc}.") from exc
    return parse_header(raw, path, size)
