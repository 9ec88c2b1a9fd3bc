"""Words and numbers for people: sizes, medium types, UUID roles and header fields.

Why here and not in the engine: these are explanations written for the GUI's hover texts and
Overview tab (what a field *means* for the user), not facts about the format. The header field
table records where each field sits so the hex dump can highlight it; it mirrors the layouts in
``shared/docs/vdi-format.md`` section 1 (v1.1 header at 0x48, legacy 0.2 header).
"""

from __future__ import annotations

import struct
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass

from vdigui.engine import human_size


def parse_offset(text: str) -> int:
    """A byte offset typed by a user: '123456', '0x1E240', '1.5G', '512 MiB', '4k'.

    Raises:
        ValueError: with a sentence saying what is accepted.
    """
    raw = text.strip().replace("_", "").replace(",", "").replace(" ", "")
    if not raw:
        raise ValueError("Type a byte offset, e.g. 1048576, 0x100000 or 1.5G.")
    if raw.lower().startswith("0x"):
        try:
            return int(raw, 16)
        except ValueError:
            raise ValueError(f"'{text}' is not a hexadecimal number.") from None
    units = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "s": 512}
    lowered = raw.lower().removesuffix("b").removesuffix("i")
    number = lowered.rstrip("kmgts")
    unit = lowered[len(number):]
    if unit not in units:
        raise ValueError(f"'{text}' is not an offset (examples: 1048576, 0x100000, 1.5G, "
                         "2048s for sectors).")
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"'{text}' is not an offset (examples: 1048576, 0x100000, 1.5G, "
                         "2048s for sectors).") from None
    if value < 0:
        raise ValueError("An offset cannot be negative.")
    return int(value * units[unit])


MEDIUM_TYPE_MEANINGS = {
    "Normal": "the usual kind: snapshots freeze it and the VM writes to a differencing "
              "image on top.",
    "Immutable": "never written: VirtualBox attaches it through a differencing image that is "
                 "reset (emptied) at every power-on, so changes are lost when the VM starts.",
    "Writethrough": "written directly and left out of snapshots: taking or restoring a "
                    "snapshot does not change what is on this disk.",
    "Shareable": "attached to several VMs at once and left out of snapshots; it must be a "
                 "fixed-size image.",
    "Readonly": "attached read-only (typical for DVD images); never written.",
    "MultiAttach": "each VM that attaches it gets its own differencing image, which is kept "
                   "across power-ons.",
}


def medium_type_meaning(medium_type: str) -> str:
    """What a registry medium type means for the user."""
    return MEDIUM_TYPE_MEANINGS.get(medium_type, "a medium type this version of vdigui does "
                                                 "not know.")


UUID_ROLES = (
    ("UUID (uuidCreate)", "uuid",
     "This image's identity. The .vbox registry lists the image under it, and a differencing "
     "image names it as its parent."),
    ("Last-modify UUID (uuidModify)", "modify_uuid",
     "Changes when VirtualBox writes to the image; children remember the value they were "
     "made against."),
    ("Parent UUID (uuidLinkage)", "parent_uuid",
     "The identity of the parent this differencing image reads through to (null for a base "
     "disk). vdigui finds the parent by this UUID, never by file name."),
    ("Parent-modify UUID (uuidParentModify)", "parent_modify_uuid",
     "The parent's last-modify UUID when this image was created; a different value means the "
     "parent was written since (VirtualBox does not check it)."),
)


def uuid_text(value: uuidlib.UUID) -> str:
    """A UUID as VirtualBox prints it, null spelled out."""
    if value.int == 0:
        return "null (00000000-0000-0000-0000-000000000000)"
    return f"{{{value}}}"


# -- header fields ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Field:
    """One header field for the annotated hex dump.

    Attributes:
        offset: byte offset in the file.
        size: bytes.
        name: VirtualBox's name.
        meaning: what it is for, in words.
        decode: bytes -> the value as people read it.
    """

    offset: int
    size: int
    name: str
    meaning: str
    decode: Callable[[bytes], str]


def _u32(raw: bytes) -> str:
    value = struct.unpack("<I", raw)[0]
    return f"{value} (0x{value:X})"


def _u64(raw: bytes) -> str:
    value = struct.unpack("<Q", raw)[0]
    return f"{value} bytes ({human_size(value)})"


def _size32(raw: bytes) -> str:
    value = struct.unpack("<I", raw)[0]
    return f"{value} bytes ({human_size(value)})"


def _text(raw: bytes) -> str:
    text = raw.split(b"\0", 1)[0].decode("latin-1").replace("\n", "\\n")
    return f'"{text}"' if text else "(empty)"


def _uuid(raw: bytes) -> str:
    return uuid_text(uuidlib.UUID(bytes_le=bytes(raw)))


def _signature(raw: bytes) -> str:
    value = struct.unpack("<I", raw)[0]
    verdict = "a VDI image" if value == 0xBEDA107F else "NOT a VDI signature"
    return f"0x{value:08X} ({verdict})"


def _version(raw: bytes) -> str:
    value = struct.unpack("<I", raw)[0]
    return f"{value >> 16}.{value & 0xFFFF} (0x{value:08X})"


def _type(raw: bytes) -> str:
    value = struct.unpack("<I", raw)[0]
    names = {1: "dynamic", 2: "fixed", 3: "undo", 4: "differencing"}
    return f"{value} ({names.get(value, 'unknown')})"


def _offset(raw: bytes) -> str:
    value = struct.unpack("<I", raw)[0]
    return f"0x{value:X} ({human_size(value)} into the file)"


def _geometry(raw: bytes) -> str:
    c, h, s, b = struct.unpack("<IIII", raw)
    return f"{c} cylinders, {h} heads, {s} sectors, {b}-byte sectors"


def _flags(raw: bytes) -> str:
    value = struct.unpack("<I", raw)[0]
    return f"0x{value:X}" + (" (none)" if value == 0 else "")


_PRE = (
    Field(0x00, 64, "szFileInfo (banner)", "Free text for people; VirtualBox ignores it.", _text),
    Field(0x40, 4, "u32Signature", "Marks the file as a VDI image: must be 0xBEDA107F.",
          _signature),
    Field(0x44, 4, "u32Version", "Header version: 1.1 today, 0.2 for very old images.",
          _version),
)

V1_FIELDS = (
    *_PRE,
    Field(0x48, 4, "cbHeader", "Size of the header structure that follows.", _size32),
    Field(0x4C, 4, "u32Type", "Image type: dynamic grows as the guest writes, fixed is "
          "preallocated, differencing stores changes over a parent.", _type),
    Field(0x50, 4, "fFlags", "Image flags; normally zero.", _flags),
    Field(0x54, 256, "szComment", "The image description (VBoxManage --description).", _text),
    Field(0x154, 4, "offBlocks", "Where the block map starts in the file.", _offset),
    Field(0x158, 4, "offData", "Where the first data block starts in the file.", _offset),
    Field(0x15C, 16, "LegacyGeometry", "Old disk geometry; unused by modern guests.",
          _geometry),
    Field(0x16C, 4, "u32Dummy", "Unused (was the translation mode).", _u32),
    Field(0x170, 8, "cbDisk", "The virtual disk size the guest sees.", _u64),
    Field(0x178, 4, "cbBlock", "Size of one block: the unit of allocation (1 MiB normally).",
          _size32),
    Field(0x17C, 4, "cbBlockExtra", "Extra bytes stored before each block; normally zero.",
          _size32),
    Field(0x180, 4, "cBlocks", "Number of blocks the virtual disk has (map entries).", _u32),
    Field(0x184, 4, "cBlocksAllocated", "Blocks that have a slot in this file; the next new "
          "block goes to this slot.", _u32),
    Field(0x188, 16, "uuidCreate", UUID_ROLES[0][2], _uuid),
    Field(0x198, 16, "uuidModify", UUID_ROLES[1][2], _uuid),
    Field(0x1A8, 16, "uuidLinkage", UUID_ROLES[2][2], _uuid),
    Field(0x1B8, 16, "uuidParentModify", UUID_ROLES[3][2], _uuid),
    Field(0x1C8, 16, "LCHSGeometry", "Logical geometry reported to the guest BIOS (1.1+).",
          _geometry),
)

LEGACY_FIELDS = (
    *_PRE,
    Field(0x48, 4, "u32Type", "Image type.", _type),
    Field(0x4C, 4, "fFlags", "Image flags.", _flags),
    Field(0x50, 256, "szComment", "The image description.", _text),
    Field(0x150, 16, "Geometry", "Disk geometry.", _geometry),
    Field(0x160, 8, "cbDisk", "The virtual disk size the guest sees.", _u64),
    Field(0x168, 4, "cbBlock", "Size of one block.", _size32),
    Field(0x16C, 4, "cBlocks", "Number of blocks.", _u32),
    Field(0x170, 4, "cBlocksAllocated", "Blocks that have a slot in this file.", _u32),
    Field(0x174, 16, "uuidCreate", UUID_ROLES[0][2], _uuid),
    Field(0x184, 16, "uuidModify", UUID_ROLES[1][2], _uuid),
    Field(0x194, 16, "uuidLinkage", UUID_ROLES[2][2], _uuid),
)


def header_fields(raw: bytes) -> tuple[Field, ...]:
    """The field table that matches the header version in ``raw`` (v1 when unknown)."""
    if len(raw) >= 0x48 and struct.unpack_from("<I", raw, 0x44)[0] == 0x00000002:
        return tuple(f for f in LEGACY_FIELDS if f.offset + f.size <= len(raw))
    return tuple(f for f in V1_FIELDS if f.offset + f.size <= len(raw))


def field_at(fields: tuple[Field, ...], offset: int) -> Field | None:
    """The field covering byte ``offset``."""
    return next((f for f in fields if f.offset <= offset < f.offset + f.size), None)
