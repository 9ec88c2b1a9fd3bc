"""Snapshot deletion, merges, repairs and undo: the commands that rewrite files in place.

``snapshot list``, ``snapshot delete``, ``merge``, ``repair``, ``set-uuid`` and ``undo``.
Deletion, merge and repair verify their result by default (``--no-verify`` opts out);
deletion and merge keep undo data unless ``--no-undo``, and ``undo --discard`` frees it.
Every writing command first finishes or rolls back an operation a crash or kill interrupted
in the same folder (and says which), then plans, prints the plan, and runs it with Ctrl-C
mapped to a clean cancel (rolled back before the commit point).
"""

from __future__ import annotations

import argparse
import sys
import uuid as uuidlib
from pathlib import Path
from typing import Any

from vdigui.cli.common import Context, print_json
from vdigui.engine.errors import OperationRefused
from vdigui.engine.operations import journal as jr
from vdigui.engine.operations import merge as mg
from vdigui.engine.operations import repair as rp
from vdigui.engine.units import human_size


def register(sub: Any) -> None:
    """Add this module's sub-commands to ``sub`` (an argparse sub-parsers object)."""
    snap = sub.add_parser("snapshot", help="list or delete a VM's snapshots")
    snap_sub = snap.add_subparsers(dest="snapshot_command", metavar="ACTION", required=True)
    p = snap_sub.add_parser("list", help="show the snapshot tree of a VM folder")
    p.add_argument("vm", type=Path, metavar="VMFOLDER", help="a VM folder or its .vbox file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_snapshot_list)
    p = snap_sub.add_parser("delete", help="delete a snapshot, merging its disks like VirtualBox")
    p.add_argument("vm", type=Path, metavar="VMFOLDER", help="a VM folder or its .vbox file")
    p.add_argument("snapshot", metavar="NAME|UUID", help="the snapshot to delete")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--direction", choices=("auto", "forward", "backward"), default="auto",
                   help="merge direction between two differencing images (a base is always "
                        "merged backward)")
    p.add_argument("--allow-outside", action="store_true",
                   help="allow writing or removing files outside the VM folder")
    _undo_verify_options(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_snapshot_delete)

    p = sub.add_parser("merge", help="merge a differencing image with its parent (no VM folder)")
    p.add_argument("image", type=Path, help="the differencing image")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--into-parent", action="store_true",
                       help="copy IMAGE's data into its parent and remove IMAGE")
    group.add_argument("--parent-into-this", action="store_true",
                       help="copy the parent's data into IMAGE and remove the parent")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    _undo_verify_options(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("repair", help="propose and apply fixes for an image or VM folder")
    p.add_argument("path", type=Path, metavar="PATH", help="an image, a VM folder or a .vbox")
    p.add_argument("--dry-run", action="store_true", help="print the proposed fixes only")
    p.add_argument("--yes", action="store_true", help="apply without asking")
    p.add_argument("--force", action="store_true",
                   help="also apply fixes whose evidence is weak or missing")
    p.add_argument("--choose", action="append", default=[], metavar="ID",
                   help="pick this alternative (e.g. F2) instead of the default in its group")
    p.add_argument("--search", action="append", default=[], type=Path, metavar="DIR",
                   help="folder to look in for missing registered disks (repeatable)")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the check that every state still reads the same afterwards")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_repair)

    p = sub.add_parser("set-uuid", help="give an image a new UUID (children and registry too)")
    p.add_argument("image", type=Path, help="the image whose UUID changes")
    p.add_argument("uuid", nargs="?", help="the new UUID (default: a random one)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the check that every state still reads the same afterwards")
    p.set_defaults(func=cmd_set_uuid)

    p = sub.add_parser("undo", help="undo the last repair or snapshot deletion in a folder")
    p.add_argument("vm", type=Path, metavar="VMFOLDER",
                   help="the VM folder (or the folder of the image) the change was made in")
    p.add_argument("--dry-run", action="store_true", help="say what would be restored")
    p.add_argument("--discard", action="store_true",
                   help="delete the kept undo data instead (frees its space; undo is then "
                        "no longer possible)")
    p.set_defaults(func=cmd_undo)


def _undo_verify_options(p: Any) -> None:
    p.add_argument("--no-undo", dest="keep_undo", action="store_false",
                   help="delete the merged-away files and before-images once done (frees "
                        "their space now; undo is then impossible)")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the check that the surviving disk state reads the same")


# -- helpers --------------------------------------------------------------------------------

def _folder_of(path: Path) -> Path:
    path = path.resolve()
    if path.is_dir():
        return path
    if path.suffix.lower() == ".vdi" and path.parent.name.lower() == "snapshots" and any(
            path.parent.parent.glob("*.vbox")):
        return path.parent.parent
    return path.parent


def _recover(folder: Path) -> None:
    """Finish or roll back an interrupted operation, and say which."""
    result = jr.recover_pending(folder)
    if result is not None:
        print(f"vdictl: {result.message()}", file=sys.stderr)
        for note in result.notes:
            print(f"    {note}", file=sys.stderr)


def _run(ctx: Context, func: Any, *args: Any, **kwargs: Any) -> Any:
    ctx.cancel_cleanly = True
    try:
        return func(*args, progress=ctx.progress, cancel=ctx.token, **kwargs)
    finally:
        ctx.cancel_cleanly = False


# -- snapshot list / delete -------------------------------------------------------------------

def cmd_snapshot_list(args: argparse.Namespace, ctx: Context) -> int:
    """vdictl snapshot list VMFOLDER."""
    vbox, rows = mg.list_snapshots(args.vm)
    if ctx.json:
        print_json({"vbox": str(vbox), "snapshots": [
            {"depth": r.depth, "uuid": r.uuid, "name": r.name, "current": r.current,
             "saved_state": r.saved_state, "disks": list(r.disks), "children": r.children}
            for r in rows]})
        return 0
    if not rows:
        print(f"{vbox.name}: no snapshots.")
        return 0
    for r in rows:
        flags = [f for f, on in (("current", r.current), ("saved state", r.saved_state)) if on]
        extra = f"  [{', '.join(flags)}]" if flags else ""
        print(f"{'  ' * r.depth}{r.name}  {{{r.uuid}}}{extra}")
        for disk in r.disks:
            print(f"{'  ' * r.depth}    disk: {disk}")
    return 0


def _print_merge_plan(plan: mg.MergePlan, ctx: Context) -> None:
    if ctx.json:
        print_json(plan.to_dict())
    else:
        print("\n".join(plan.describe()))


def _print_merge_result(result: mg.MergeResult, ctx: Context) -> None:
    if ctx.json:
        print_json({"plan": result.plan.to_dict(), "blocks_written": result.blocks_written,
                    "bytes_written": result.bytes_written, "seconds": round(result.seconds, 2),
                    "removed": list(result.removed), "backup_dir": str(result.backup_dir),
                    "verified": result.verified, "undoable": result.undoable})
        return
    checked = "verified" if result.verified else "not verified"
    print(f"Done: {result.plan.summary} ({result.blocks_written} blocks, "
          f"{human_size(result.bytes_written)} written, {result.seconds:.1f} s, {checked}).")
    for note in result.removed:
        print(f"    {note}")
    folder = result.plan.folder
    if result.undoable:
        print(f"Undo data ({human_size(jr.undo_data_usage(folder))}) is kept in "
              f"'{jr.backups_dir(folder)}'; 'vdictl undo {folder}' restores the previous "
              f"state, and 'vdictl undo {folder} --discard' frees that space.")
    else:
        print("No undo data was kept: this cannot be undone.")


def cmd_snapshot_delete(args: argparse.Namespace, ctx: Context) -> int:
    """vdictl snapshot delete VMFOLDER NAME|UUID [--dry-run] [--direction ...] [--no-undo]."""
    folder = _folder_of(args.vm)
    if not args.dry_run:
        _recover(folder)
    plan = mg.plan_snapshot_delete(args.vm, args.snapshot, direction=args.direction,
                                   allow_outside=args.allow_outside, keep_undo=args.keep_undo)
    if args.dry_run:
        _print_merge_plan(plan, ctx)
        return 0
    if not ctx.json:
        print("\n".join(plan.describe()))
    result = _run(ctx, mg.run_merge, plan, verify=args.verify)
    _print_merge_result(result, ctx)
    return 0


def cmd_merge(args: argparse.Namespace, ctx: Context) -> int:
    """vdictl merge IMAGE [--into-parent | --parent-into-this] [--dry-run] [--no-undo]."""
    mode = "into-parent" if args.into_parent else (
        "parent-into-this" if args.parent_into_this else "auto")
    if not args.dry_run:
        _recover(args.image.resolve().parent)
    plan = mg.plan_merge(args.image, mode=mode, keep_undo=args.keep_undo)
    if args.dry_run:
        _print_merge_plan(plan, ctx)
        return 0
    if not ctx.json:
        print("\n".join(plan.describe()))
    result = _run(ctx, mg.run_merge, plan, verify=args.verify)
    _print_merge_result(result, ctx)
    return 0


# -- repair / set-uuid / undo ----------------------------------------------------------------

def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        return False
    try:
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


def cmd_repair(args: argparse.Namespace, ctx: Context) -> int:
    """vdictl repair PATH [--dry-run] [--yes] [--force] [--choose ID] [--search DIR]."""
    folder = _folder_of(args.path)
    if not args.dry_run:
        _recover(folder)
    plan = rp.plan_repair(args.path, search_dirs=args.search, force=args.force)
    choose = set(args.choose)
    if ctx.json:
        print_json({**plan.to_dict(),
                    "selected": [f.id for f in plan.selected(choose, args.force)]})
    else:
        print("\n".join(plan.describe(choose, args.force)))
    if args.dry_run or not plan.fixes:
        return 0 if not plan.fixes else 2
    if not plan.selected(choose, args.force):
        raise OperationRefused("Every proposed fix needs --force (its evidence is weak or "
                               "missing); nothing was changed.")
    if not args.yes and not _confirm("Apply the fixes marked 'will apply'?"):
        raise OperationRefused("Not confirmed (pass --yes to apply without asking); nothing "
                               "was changed.")
    result = _run(ctx, rp.run_repair, plan, choose=choose, force=args.force,
                  verify=args.verify)
    if not ctx.json:
        print(f"Applied {', '.join(result.applied)}. Backups: '{result.backup_dir}'; "
              f"'vdictl undo {plan.folder}' reverts this repair.")
        for note in result.notes:
            print(f"    {note}")
    return 0


def cmd_set_uuid(args: argparse.Namespace, ctx: Context) -> int:
    """vdictl set-uuid IMAGE [UUID]."""
    new = None
    if args.uuid:
        try:
            new = uuidlib.UUID(args.uuid.strip("{}"))
        except ValueError:
            raise OperationRefused(f"'{args.uuid}' is not a UUID.") from None
    folder = _folder_of(args.image)
    if not args.dry_run:
        _recover(folder)
    plan = rp.plan_set_uuid(args.image, new)
    print("\n".join(plan.describe()))
    if args.dry_run:
        return 0
    result = _run(ctx, rp.run_repair, plan, verify=args.verify)
    print(f"Done. Backups: '{result.backup_dir}'; 'vdictl undo {plan.folder}' reverts it.")
    return 0


def cmd_undo(args: argparse.Namespace, ctx: Context) -> int:
    """vdictl undo VMFOLDER [--dry-run] [--discard]."""
    folder = _folder_of(args.vm)
    pending = jr.Journal.load(folder)
    if pending is not None:
        if args.dry_run:
            print(f"An interrupted operation ({pending.data.get('summary')}) would be rolled "
                  "back or completed first.")
            return 0
        _recover(folder)
        return 0
    if args.discard:
        kept = jr.undo_data_usage(folder)
        if args.dry_run:
            print(f"Would delete {human_size(kept)} of undo data in '{jr.backups_dir(folder)}'.")
            return 0
        freed = jr.discard_undo_data(folder)
        print(f"Discarded the undo data: {human_size(freed)} ({freed:,} bytes) freed; the last "
              "operation can no longer be undone.")
        return 0
    record = jr.plan_undo(folder)
    if args.dry_run:
        print(f"Would undo: {record.get('summary')} (finished {record.get('finished')}).")
        return 0
    result = jr.undo_last(folder, progress=ctx.progress)
    print(f"Undone: {result.summary}.")
    for note in result.notes:
        print(f"    {note}")
    return 0
