"""``vdictl settings``: a VM's disk attachments and their discard settings, and changing them."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from vdigui.cli.common import Context, print_json
from vdigui.engine.operations import discard as dc
from vdigui.engine.operations.journal import recover_pending
from vdigui.engine.vmfolder import load_vm_folder


def register(sub: Any) -> None:
    """Add ``settings`` to ``sub`` (an argparse sub-parsers object)."""
    p = sub.add_parser(
        "settings", help="show a VM's disk attachments and turn discard (TRIM) on or off"
    )
    p.add_argument("vm", type=Path, metavar="VMFOLDER", help="a VM folder or its .vbox file")
    p.add_argument(
        "--discard",
        choices=("on", "off"),
        help="turn discard and the solid-state flag on for every eligible disk, "
        "or discard off (the VM must be powered off)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the change, write nothing")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_settings)


def cmd_settings(args: argparse.Namespace, ctx: Context) -> int:
    """vdictl settings VMFOLDER [--discard on|off] [--dry-run] [--json]."""
    if args.discard is None:
        vm = load_vm_folder(args.vm)
        atts = dc.attachment_settings(vm)
        if ctx.json:
            print_json(
                {
                    "vm": vm.name,
                    "vbox": str(vm.settings_path),
                    "attachments": [a.to_dict() for a in atts],
                }
            )
            return 0
        _print_attachments(vm.name, atts, args.vm)
        if vm.state_file is not None:
            print(
                "The VM holds a saved state: VirtualBox (and vdigui) change its disk "
                "settings only after it is shut down or the saved state is discarded."
            )
        return 0
    turn_on = args.discard == "on"
    if not args.dry_run:
        folder = load_vm_folder(args.vm).folder
        result = recover_pending(folder)
        if result is not None:
            print(f"vdictl: {result.message()}", file=sys.stderr)
    plan = dc.plan_discard(args.vm, turn_on)
    if args.dry_run:
        if ctx.json:
            print_json(plan.to_dict())
        else:
            print("\n".join(plan.lines()))
        return 0
    done = dc.run_discard(plan, progress=ctx.progress)
    if ctx.json:
        print_json(
            {
                **plan.to_dict(),
                "changed": done.changed,
                "backup_dir": str(done.backup_dir) if done.backup_dir else None,
            }
        )
        return 0
    print("\n".join(plan.lines()))
    if done.changed:
        print(f"Saved. Backup in {done.backup_dir}; 'vdictl undo {args.vm}' restores it.")
        if turn_on:
            print("Next, inside the guest:")
            for step in dc.DISCARD_GUEST_STEPS:
                print(f"  - {step}")
    return 0


def _print_attachments(name: str, atts: list[dc.DiskAttachment], where: Path) -> None:
    if not atts:
        print(f"{name}: no hard disks attached in the current state.")
        return
    print(f"{name}: hard disks of the current state")
    rows = [
        (
            a.where,
            a.bus,
            a.path.name if a.path else (a.medium or "?"),
            "on" if a.discard else "off",
            "yes" if a.nonrotational else "no",
            a.support.value,
        )
        for a in atts
    ]
    head = ("Attachment", "Bus", "Image", "Discard", "SSD", "Bus can discard")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for row in [head, *rows]:
        line = "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        print(f"  {line}".rstrip())
    for a in atts:
        print(f"  {a.where}: {a.advice}")
    if any(a.eligible and not a.discard for a in atts):
        print(
            f"Turn discard on with 'vdictl settings {shlex.quote(str(where))} --discard on' "
            "(VM powered off)."
        )
