"""Snapshot deletion, merges, repairs and undo: the commands that rewrite files in place.

``snapshot list``, ``snapshot delete``, ``merge``, ``repair``, ``set-uuid`` and ``undo``.
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
    p.add_argument("vm", type=Path, metavar="VMFOLDER")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_snapshot_list)
    p = snap_sub.add_parser("delete", help="delete a snapshot, merging its disks like VirtualBox")
    p.add_argument("vm", type=Path, metavar="VMFOLDER")
    p.add_argument("snapshot", metavar="NAME|UUID")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--direction", choices=("auto", "forward", "backward"), default="auto",
                   help="merge direction between two differencing images (a base is always "
                        "merged backward)")
    p.add_argument("--allow-outside", action="store_true",
                   help="allow writing or removing files outside the VM folder")
    p.add_argument("--verify", action="store_true",
                   help="hash the surviving disk state before and after (reads it twice)")
    p.add_argument("--reclaim", action="store_true",
                   help="afterwards compact the merged-into images to free the blocks kept "
                        "for undo (undo is then no longer possible)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_snapshot_delete)

    p = sub.add_parser("merge", help="merge a differencing image with its parent (no VM folder)")
    p.add_argument("image", type=Path)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--into-parent", action="store_true",
                       help="copy IMAGE's data into its parent and remove IMAGE")
    group.add_argument("--parent-into-this", action="store_true",
                       help="copy the parent's data into IMAGE and remove the parent")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("repair", help="propose and apply fixes for an image or VM folder")
    p.add_argument("path", type=Path, metavar="PATH")
    p.add_argument("--dry-run", action="store_true", help="print the proposed fixes only")
    p.add_argument("--yes", action="store_true", help="apply without asking")
    p.add_argument("--force", action="store_true",
                   help="also apply fixes whose evidence is weak or missing")
    p.add_argument("--choose", action="append", default=[], metavar="ID",
                   help="pick this alternative (e.g. F2) instead of the default in its group")
    p.add_argument("--search", action="append", default=[], type=Path, metavar="DIR",
                   help="folder to look in for missing registered disks (repeatable)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_repair)

    p = sub.add_parser("set-uuid", help="give an image a new UUID (children and registry too)")
    p.add_argument("image", type=Path)
    p.add_argument("uuid", nargs="?", help="the new UUID (default: a random one)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.set_defaults(func=cmd_set_uuid)

    p = sub.add_parser("undo", help="undo the last repair or snapshot deletion in a folder")
    p.add_argument("vm", type=Path, metavar="VMFOLDER")
    p.add_argument("--dry-run", action="store_true", help="say what would be restored")
    p.set_defaults(func=cmd_undo)


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
                    "removed": list(result.removed), "backup_dir": str(result.backup_dir)})
        return
    print(f"Done: {result.plan.summary} ({result.blocks_written} blocks, "
          f"{human_size(result.bytes_written)} written, {result.seconds:.1f} s).")
    for note in result.removed:
        print(f"    {note}")
    print(f"Backups and the removed files are in '{result.backup_dir}'; "
          f"'vdictl undo {result.plan.folder}' restores the previous state, and deleting that "
          "folder frees the space.")


def cmd_snapshot_delete(args: argparse.Namespace, ctx: Context) -> int:
    """vdictl snapshot delete VMFOLDER NAME|UUID [--dry-run] [--direction ...]."""
    folder = _folder_of(args.vm)
    if not args.dry_run:
        _recover(folder)
    plan = mg.plan_snapshot_delete(args.vm, args.snapshot, direction=args.direction,
                                   allow_outside=args.allow_outside)
    if args.dry_run:
        _print_merge_plan(plan, ctx)
        return 0
    if not ctx.json:
        print("\n".join(plan.describe()))
    result = _run(ctx, mg.run_merge, plan, verify=args.verify)
    _print_merge_result(result, ctx)
    _after_merge(plan, ctx, reclaim=args.reclaim)
    return 0


def _after_merge(plan: mg.MergePlan, ctx: Context, *, reclaim: bool) -> None:
    """Say how much space undo keeps, or reclaim it with the compact operation."""
    kept = mg.kept_for_undo(plan)
    if not kept:
        return
    if not reclaim:
        if not ctx.json:
            for path, size in kept:
                print(f"'{path.name}' keeps {human_size(size)} of replaced blocks so that undo "
                      f"works; 'vdictl compact {path}' (or --reclaim) frees them.")
        return
    from vdigui.engine.operations.compact import plan_compact, run_compact
    for path, size in kept:
        result = _run(ctx, run_compact, plan_compact(path))
        if not ctx.json:
            print(f"Reclaimed {human_size(result.size_before - result.size_after)} in "
                  f"'{path.name}' (expected {human_size(size)}); undo is no longer possible.")


def cmd_merge(args: argparse.Namespace, ctx: Context) -> int:
    """vdictl merge IMAGE [--into-parent | --parent-into-this] [--dry-run]."""
    mode = "into-parent" if args.into_parent else (
        "parent-into-this" if args.parent_into_this else "auto")
    if not args.dry_run:
        _recover(args.image.resolve().parent)
    plan = mg.plan_merge(args.image, mode=mode)
    if args.dry_run:
        _print_merge_plan(plan, ctx)
        return 0
    if not ctx.json:
        print("\n".join(plan.describe()))
    result = _run(ctx, mg.run_merge, plan)
    _print_merge_result(result, ctx)
    _after_merge(plan, ctx, reclaim=False)
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
    result = _run(ctx, rp.run_repair, plan, choose=choose, force=args.force)
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
    result = _run(ctx, rp.run_repair, plan)
    print(f"Done. Backups: '{result.backup_dir}'; 'vdictl undo {plan.folder}' reverts it.")
    return 0


def cmd_undo(args: argparse.Namespace, ctx: Context) -> int:
    """vdictl undo VMFOLDER [--dry-run]."""
    folder = _folder_of(args.vm)
    pending = jr.Journal.load(folder)
    if pending is not None:
        if args.dry_run:
            print(f"An interrupted operation ({pending.data.get('summary')}) would be rolled "
                  "back or completed first.")
            return 0
        _recover(folder)
        return 0
    record = jr.plan_undo(folder)
    if args.dry_run:
        print(f"Would undo: {record.get('summary')} (finished {record.get('finished')}).")
        return 0
    result = jr.undo_last(folder)
    print(f"Undone: {result.summary}.")
    for note in result.notes:
        print(f"    {note}")
    return 0
