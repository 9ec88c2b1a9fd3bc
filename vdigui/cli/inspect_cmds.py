"""Read-only and creating commands: info, map, check, tree, frag, export, create."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vdigui.cli.common import Context, human_size, print_json
from vdigui.engine import VdiImage, open_image
from vdigui.engine.format import BLOCK_FREE, BLOCK_ZERO


def register(sub: Any) -> None:
    """Add this module's sub-commands to ``sub`` (an argparse sub-parsers object)."""
    p = sub.add_parser("info", help="show an image's header and block counts")
    p.add_argument("image", type=Path)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)


def image_info(image: VdiImage) -> dict[str, Any]:
    """The ``vdictl info --json`` document for one image."""
    h = image.header
    entries = image.block_map[: image.guest_blocks]
    zero = int((entries == BLOCK_ZERO).sum())
    free = int((entries == BLOCK_FREE).sum())
    return {
        "file": str(image.path),
        "version": h.version_text,
        "header_size": h.header_size,
        "type": h.image_type.label,
        "banner": h.banner.strip(),
        "comment": h.comment,
        "disk_size": h.disk_size,
        "block_size": h.block_size,
        "block_extra": h.block_extra,
        "blocks": h.blocks,
        "blocks_allocated": h.blocks_allocated,
        "offset_blocks": h.offset_blocks,
        "offset_data": h.offset_data,
        "uuid": str(h.uuid),
        "modify_uuid": str(h.modify_uuid),
        "parent_uuid": str(h.parent_uuid),
        "parent_modify_uuid": str(h.parent_modify_uuid),
        "lchs": list(h.lchs) if h.lchs else None,
        "file_size": image.file_size,
        "counts": {"allocated": len(entries) - zero - free, "zero": zero, "free": free},
    }


def cmd_info(args: argparse.Namespace, ctx: Context) -> int:
    """vdictl info IMAGE [--json]."""
    with open_image(args.image) as image:
        info = image_info(image)
    if ctx.json:
        print_json(info)
        return 0
    c = info["counts"]
    rows = [
        ("File", info["file"]),
        ("Format", f"VDI {info['version']} (header {info['header_size']:#x} bytes)"),
        ("Type", info["type"]),
        ("Virtual size", f"{human_size(info['disk_size'])} ({info['disk_size']} bytes)"),
        ("Size on disk", f"{human_size(info['file_size'])} ({info['file_size']} bytes)"),
        ("Block size", f"{human_size(info['block_size'])}"
                       + (f" + {info['block_extra']} extra" if info["block_extra"] else "")),
        ("Blocks", f"{info['blocks']} ({c['allocated']} allocated, {c['zero']} zero, "
                   f"{c['free']} free; header says {info['blocks_allocated']} allocated)"),
        ("Layout", f"block map at {info['offset_blocks']:#x}, data at {info['offset_data']:#x}"),
        ("UUID", info["uuid"]),
        ("Last modified UUID", info["modify_uuid"]),
        ("Parent UUID", info["parent_uuid"]),
        ("Parent modify UUID", info["parent_modify_uuid"]),
    ]
    if info["comment"]:
        rows.append(("Comment", info["comment"]))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0
