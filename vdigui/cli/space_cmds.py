"""``vdictl space``: where the space of a VM folder (or one image) goes, and what frees it.

The accounting lives in :mod:`vdigui.engine.space_account`; this module only prints it. Every
byte of every file is in exactly one category, so each file's figures add up to its size; the
host allocation is shown beside it because sparse images cost the host less than their size.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vdigui.cli.common import Context, print_json
from vdigui.engine.space_account import ACTIONS, CATEGORIES, SpaceAccount, account_space
from vdigui.engine.units import human_size


def register(sub: Any) -> None:
    """Add ``space`` to ``sub`` (an argparse sub-parsers object)."""
    p = sub.add_parser(
        "space",
        help="where the space of a VM folder or image goes, and what frees it",
        description="Accounts every byte of every file of a VM folder (or of one image): "
        "header and map, data the guest uses, blocks its filesystems do not use, all-zero "
        "blocks, blocks hidden by later layers (kept only for a snapshot), slack, undo data, "
        "VirtualBox's own files and anything unknown, with the action that frees each. Reads "
        "headers, block maps and the guest filesystems' allocation maps only (quick on any "
        "size); --scan-zeros also reads the stored blocks to find every all-zero one. "
        "Changes nothing.",
    )
    p.add_argument(
        "target",
        type=Path,
        metavar="VMFOLDER|IMAGE",
        help="a VM folder (or its .vbox file), or one VDI image",
    )
    p.add_argument(
        "--scan-zeros",
        action="store_true",
        help="also read the stored blocks to find the all-zero ones (slower)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_space)


def cmd_space(args: argparse.Namespace, ctx: Context) -> int:
    """vdictl space VMFOLDER|IMAGE [--scan-zeros] [--json]."""
    ctx.cancel_cleanly = True
    account = account_space(
        args.target, scan_zeros=args.scan_zeros, progress=ctx.progress, cancel=ctx.token
    )
    if ctx.json:
        print_json(account.to_dict())
    else:
        print_account(account)
    return 0


def _size(value: int) -> str:
    return f"{human_size(value)} ({value:,} bytes)"


def print_account(account: SpaceAccount) -> None:
    """The human form: per file the non-zero categories, then the totals with their actions."""
    root = account.root if account.root.is_dir() else account.root.parent
    for f in account.files:
        try:
            name = f.path.relative_to(root.resolve())
        except ValueError:
            name = f.path
        print(f"{name}: {_size(f.size)}, {human_size(f.allocated)} on the host")
        for c in CATEGORIES:
            if f.categories[c]:
                print(f"  {c.value:<17} {_size(f.categories[c])}")
        for note in f.notes:
            print(f"  note: {note}")
    total = account.total
    print(
        f"Total: {len(account.files)} file(s), {_size(account.size)}, "
        f"{human_size(account.allocated)} on the host"
    )
    for c in CATEGORIES:
        if total[c]:
            print(f"  {c.value:<17} {_size(total[c])}; frees it: {ACTIONS[c]}")
    for note in account.notes:
        print(f"Note: {note}")
