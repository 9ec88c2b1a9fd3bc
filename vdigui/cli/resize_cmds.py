"""``vdictl resize``: grow or shrink a disk (with its snapshots), optionally its last partition.

Plans first (read-only), prints the plan with ``--dry-run``, otherwise runs it under the crash
journal with progress on stderr; Ctrl-C cancels and rolls back. A refused resize writes
nothing. The steps the guest must take afterwards (growing its filesystem) are printed last.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from vdigui.cli.common import Context, parse_size, print_json
from vdigui.cli.ops_cmds import recover_interrupted
from vdigui.engine import format as fmt
from vdigui.engine.errors import OperationRefused, VdiError
from vdigui.engine.operations.resize import plan_resize, run_resize


def register(sub: Any) -> None:
    """Add ``resize`` to ``sub`` (an argparse sub-parsers object)."""
    p = sub.add_parser(
        "resize",
        help="grow or shrink a disk, its snapshots and (optionally) its last partition",
        description="Grow a dynamic or fixed image, or every image of a VM's disk so that each "
        "snapshot keeps its content; or shrink an image without snapshots down to the end of "
        "its last partition when the guest uses nothing past the new end. Filesystems are "
        "grown inside the guest: the steps are printed at the end.",
    )
    p.add_argument(
        "source",
        type=Path,
        metavar="SOURCE",
        help="a base image (.vdi) without snapshots, or a VM folder or its .vbox",
    )
    p.add_argument(
        "--size",
        required=True,
        metavar="SIZE",
        help="the new disk size (e.g. 40G, 100GiB, 512M), or +SIZE to grow by SIZE",
    )
    p.add_argument(
        "--disk",
        metavar="N",
        help="(VM source) which disk when the VM has several: its position in "
        "'vdictl tree', or its file name",
    )
    p.add_argument(
        "--grow-partition",
        action="store_true",
        help="also grow the last partition to the new end of the disk (MBR, "
        "logical or GPT; refused for swap and recovery partitions)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="show the plan (files, data moved, space, guest steps), write nothing",
    )
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="skip re-reading the resized images and partition table before committing",
    )
    p.add_argument(
        "--no-undo",
        action="store_true",
        help="discard the undo data when done (the resize cannot be undone then)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_resize)


def _current_size(source: Path, disk: str | None) -> int:
    """The guest disk size SOURCE has now (for '+SIZE')."""
    if source.is_dir() or source.suffix.lower() in (".vbox", ".xml"):
        from vdigui.engine.vmfolder import load_vm_folder

        vm = load_vm_folder(source)
        leaves = list(vm.current_disks())
        if disk is not None:
            leaves = [
                m
                for i, m in enumerate(leaves, start=1)
                if disk == str(i) or (m.path is not None and m.path.name == disk)
            ]
        if len(leaves) != 1 or leaves[0].path is None:
            raise VdiError(f"Say which disk of {source} to resize with --disk N.")
        return fmt.read_header(leaves[0].path).disk_size
    return fmt.read_header(source).disk_size


def new_size_from(text: str, source: Path, disk: str | None) -> int:
    """SIZE or +SIZE as bytes.

    Raises:
        VdiError: not a size.
    """
    grow_by = text.strip().startswith("+")
    try:
        value = parse_size(text.strip().lstrip("+"))
    except ValueError as exc:
        raise VdiError(f"{str(exc)[:1].upper()}{str(exc)[1:]}.") from None
    if grow_by:
        return _current_size(source, disk) + value
    return value


def cmd_resize(args: argparse.Namespace, ctx: Context) -> int:
    """vdictl resize SOURCE --size SIZE [--grow-partition] [--dry-run] [--no-verify] [--no-undo]."""
    source: Path = args.source
    if not source.exists():
        raise VdiError(f"{source} does not exist.")
    if not args.dry_run:
        recover_interrupted(source)
    size = new_size_from(args.size, source, args.disk)
    plan = plan_resize(source, size, grow_partition=args.grow_partition, disk=args.disk)
    if args.dry_run:
        if ctx.json:
            print_json(plan.to_dict())
        else:
            print("\n".join(plan.lines()))
        return 0
    if plan.nothing_to_do:
        raise OperationRefused(
            f"The disk of {source} already has {size:,} bytes; nothing was changed."
        )
    ctx.cancel_cleanly = True
    result = run_resize(
        plan,
        verify=not args.no_verify,
        keep_undo=not args.no_undo,
        progress=ctx.progress,
        cancel=ctx.token,
    )
    if ctx.json:
        print_json(
            {
                **plan.to_dict(),
                "done": True,
                "verified": result.verified,
                "undoable": result.undoable,
                "backup_dir": str(result.backup_dir),
                "notes": list(result.notes),
            }
        )
        return 0
    print("\n".join(plan.lines()))
    print("Done" + (", verified" if result.verified else "") + ".")
    if result.undoable:
        print(
            f"Undo data is in {result.backup_dir}; 'vdictl undo {plan.folder}' restores the "
            "old disk exactly (until the VM writes to it)."
        )
    else:
        print("No undo data was kept.", file=sys.stdout)
    return 0
