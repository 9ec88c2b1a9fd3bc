"""Words for people: typed offsets, medium types, UUID roles, short names and tooltips.

Why here and not in the engine: these are explanations written for the GUI's hover texts and
Overview tab (what a medium type or a UUID *means* for the user), not facts about the format.
The header's field layout is the engine's (``vdigui.engine.header_layout``).
"""

from __future__ import annotations

import html
import uuid as uuidlib


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
    unit = lowered[len(number) :]
    if unit not in units:
        raise ValueError(
            f"'{text}' is not an offset (examples: 1048576, 0x100000, 1.5G, 2048s for sectors)."
        )
    try:
        value = float(number)
    except ValueError:
        raise ValueError(
            f"'{text}' is not an offset (examples: 1048576, 0x100000, 1.5G, 2048s for sectors)."
        ) from None
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
    return MEDIUM_TYPE_MEANINGS.get(
        medium_type, "a medium type this version of vdigui does not know."
    )


UUID_ROLES = (
    (
        "UUID (uuidCreate)",
        "uuid",
        "This image's identity. The .vbox registry lists the image under it, and a differencing "
        "image names it as its parent.",
    ),
    (
        "Last-modify UUID (uuidModify)",
        "modify_uuid",
        "Changes when VirtualBox writes to the image; children remember the value they were "
        "made against.",
    ),
    (
        "Parent UUID (uuidLinkage)",
        "parent_uuid",
        "The identity of the parent this differencing image reads through to (null for a base "
        "disk). vdigui finds the parent by this UUID, never by file name.",
    ),
    (
        "Parent-modify UUID (uuidParentModify)",
        "parent_modify_uuid",
        "The parent's last-modify UUID when this image was created; a different value means the "
        "parent was written since (VirtualBox does not check it).",
    ),
)


def uuid_text(value: uuidlib.UUID) -> str:
    """A UUID as VirtualBox prints it, null spelled out."""
    if value.int == 0:
        return "null (00000000-0000-0000-0000-000000000000)"
    return f"{{{value}}}"


def short_uuid(value: uuidlib.UUID) -> str:
    """A UUID shortened for a table cell ("{9bb9d102…}"); the tooltip carries it whole.

    The first eight hex digits tell the UUIDs of a VM apart in practice, the same way the
    image names are shortened ("{9bb9d102…}.vdi").
    """
    if value.int == 0:
        return "null"
    return f"{{{str(value)[:8]}…}}"


def short_file_name(name: str) -> str:
    """A file name with a UUID shortened ("{9bb9d102…}.vdi"); other names unchanged."""
    if name.startswith("{") and "}" in name and len(name) > 30:
        return name[:9] + "…}" + name[name.index("}") + 1 :]
    return name


def tooltip_html(text: str) -> str:
    """Plain text as a rich-text tooltip, so Qt wraps a long sentence instead of drawing one
    line wider than the screen."""
    return "<p>" + html.escape(text).replace("\n", "<br>") + "</p>"
