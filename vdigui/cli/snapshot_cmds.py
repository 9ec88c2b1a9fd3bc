"""Snapshot deletion, merges, repairs and undo: the commands that rewrite files in place.

``snapshot list``, ``snapshot delete``, ``merge``, ``repair``, ``set-uuid`` and ``undo``.
Deletion, merge and repair verify their result by default (``--no-verify`` opts out);
deletion and merge keep undo data unless ``--no-undo``, and ``undo --discard`` frees it.
Every writing command first finishes or rolls back an operation a crash or kill interrupted
in the same folder (and says which), then plans, prints the plan, and runs it with Ctrl-C
mapped to a clean cancel: rolled back before the commit point, except that a deletion without
undo data that has begun writing in place is finished instead (see merge.run_merge).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from vdigui.cli.common import Context, print_json
from vdigui.engine.errors import OperationRefused
from vdigui.engine.format import parse_uuid
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
    p.add_argument(
        "--cost",
        action="store_true",
        help="show what deleting each snapshot frees, copies and needs, from the "
        "same plan 'snapshot delete' uses (nothing is written)",
    )
    p.add_argument(
        "--order",
        nargs="+",
        metavar="NAME",
        help="print the cheapest order to delete these snapshots (names or UUIDs), "
        "counting bytes copied plus the peak host space needed",
    )
    p.add_argument(
        "--no-undo",
        dest="keep_undo",
        action="store_false",
        help="cost the deletions as run with 'snapshot delete --no-undo' (the "
        "Frees and Frees-without-undo columns are shown either way)",
    )
    p.add_argument(
        "--rate",
        type=float,
        metavar="MIB_PER_S",
        help="copy rate for the time estimates (default: the last operation's, "
        "else measured once on this host)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_snapshot_list)
    p = snap_sub.add_parser("delete", help="delete a snapshot, merging its disks like VirtualBox")
    p.add_argument("vm", type=Path, metavar="VMFOLDER", help="a VM folder or its .vbox file")
    p.add_argument("snapshot", metavar="NAME|UUID", help="the snapshot to delete")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument(
        "--direction",
        choices=("auto", "forward", "backward"),
        default="auto",
        help="merge direction between two differencing images (a base is always merged backward)",
    )
    p.add_argument(
        "--allow-outside",
        action="store_true",
        help="allow writing or removing files outside the VM folder",
    )
    _undo_verify_options(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_snapshot_delete)

    p = sub.add_parser("merge", help="merge a differencing image with its parent (no VM folder)")
    p.add_argument("image", type=Path, help="the differencing image")
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--into-parent",
        action="store_true",
        help="copy IMAGE's data into its parent and remove IMAGE",
    )
    group.add_argument(
        "--parent-into-this",
        action="store_true",
        help="copy the parent's data into IMAGE and remove the parent",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    _undo_verify_options(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("repair", help="propose and apply fixes for an image or VM folder")
    p.add_argument("path", type=Path, metavar="PATH", help="an image, a VM folder or a .vbox")
    p.add_argument("--dry-run", action="store_true", help="print the proposed fixes only")
    p.add_argument("--yes", action="store_true", help="apply without asking")
    p.add_argument(
        "--force", action="store_true", help="also apply fixes whose evidence is weak or missing"
    )
    p.add_argument(
        "--choose",
        action="append",
        default=[],
        metavar="ID",
        help="pick this alternative (e.g. F2) instead of the default in its group",
    )
    p.add_argument(
        "--search",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="folder to look in for missing registered disks (repeatable)",
    )
    p.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip the check that every state still reads the same afterwards",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_repair)

    p = sub.add_parser("set-uuid", help="give an image a new UUID (children and registry too)")
    p.add_argument("image", type=Path, help="the image whose UUID changes")
    p.add_argument("uuid", nargs="?", help="the new UUID (default: a random one)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip the check that every state still reads the same afterwards",
    )
    p.set_defaults(func=cmd_set_uuid)

    p = sub.add_parser("undo", help="undo the last repair or snapshot deletion in a folder")
    p.add_argument(
        "vm",
        type=Path,
        metavar="VMFOLDER",
        help="the VM folder (or the folder of the image) the change was made in",
    )
    p.add_argument("--dry-run", action="store_true", help="say what would be restored")
    p.add_argument(
        "--discard",
        action="store_true",
        help="delete the kept undo data instead (frees its space; undo is then no longer possible)",
    )
    p.set_defaults(func=cmd_undo)


def _undo_verify_options(p: Any) -> None:
    p.add_argument(
        "--no-undo",
        dest="keep_undo",
        action="store_false",
        help="delete the merged-away files and before-images once done (frees "
        "their space now; undo is then impossible)",
    )
    p.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip the check that the surviving disk state reads the same",
    )


# -- helpers --------------------------------------------------------------------------------


def _folder_of(path: Path) -> Path:
    path = path.resolve()
    if path.is_dir():
        return path
    if (
        path.suffix.lower() == ".vdi"
        and path.parent.name.lower() == "snapshots"
        and any(path.parent.parent.glob("*.vbox"))
    ):
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
    """vdictl snapshot list VMFOLDER [--cost] [--order NAME...]."""
    if getattr(args, "cost", False) or getattr(args, "order", None):
        return _print_costs(args, ctx)
    vbox, rows = mg.list_snapshots(args.vm)
    if ctx.json:
        print_json(
            {
                "vbox": str(vbox),
                "snapshots": [
                    {
                        "depth": r.depth,
                        "uuid": r.uuid,
                        "name": r.name,
                        "current": r.current,
                        "saved_state": r.saved_state,
                        "disks": list(r.disks),
                        "children": r.children,
                    }
                    for r in rows
                ],
            }
        )
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


def _print_costs(args: argparse.Namespace, ctx: Context) -> int:
    """The cost map (--cost) and/or the cheapest deletion order (--order)."""
    from vdigui.engine import snapshot_cost as sc

    if args.rate is not None and args.rate <= 0:
        raise OperationRefused(f"The copy rate must be above 0 MiB/s, not {args.rate:g}.")
    rate = args.rate * (1 << 20) if args.rate is not None else None
    costs = sc.snapshot_costs(args.vm, keep_undo=args.keep_undo, rate=rate) if args.cost else []
    order = sc.best_order(args.vm, args.order, keep_undo=args.keep_undo) if args.order else None
    if ctx.json:
        listed = [c.to_dict() for c in costs]
        if order is None:
            print_json(listed)
        elif not args.cost:
            print_json(order.to_dict())
        else:
            print_json({"snapshots": listed, "order": order.to_dict()})
        return 0
    if args.cost:
        print("\n".join(cost_table(costs)))
    if order is not None:
        if args.cost:
            print()
        print("\n".join(order_lines(order)))
    return 0


#: Columns of the cost table: heading, and whether the values are right-aligned.
_COST_COLUMNS = (
    ("Snapshot", False),
    ("Only here", True),
    ("Frees (no undo)", True),
    ("Frees (undo kept)", True),
    ("Copies", True),
    ("Needs", True),
    ("Time (est.)", True),
)


def _seconds(value: float) -> str:
    if value < 1:
        return "< 1 s"
    if value < 120:
        return f"~{value:.0f} s"
    return f"~{value / 60:.0f} min"


def _cell(value: int | None) -> str:
    return "-" if value is None else human_size(value)


def cost_table(costs: list[Any]) -> list[str]:
    """The cost map as text lines: one row per snapshot, each column aligned, then notes."""
    if not costs:
        return ["No snapshots."]
    rows: list[list[str]] = []
    refused: list[str] = []
    for c in costs:
        name = "  " * c.depth + c.name + (" (current)" if c.current else "")
        if c.refused_reason is not None:
            rows.append([name, _cell(c.only_here), "refused", "-", "-", "-", "-"])
            refused.append(f"  {c.name}: {c.refused_reason}")
            continue
        rows.append(
            [
                name,
                _cell(c.only_here),
                _cell(c.frees_without_undo),
                _cell(c.frees_keeping_undo),
                _cell(c.copies),
                _cell(c.needs),
                _seconds(c.seconds_estimate or 0.0),
            ]
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, (h, _) in enumerate(_COST_COLUMNS)]

    def line(cells: list[str]) -> str:
        parts = [
            cell.rjust(w) if right else cell.ljust(w)
            for cell, w, (_, right) in zip(cells, widths, _COST_COLUMNS, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line([h for h, _ in _COST_COLUMNS])]
    out += [line(r) for r in rows]
    first = costs[0]
    mode = "with undo data kept" if first.keep_undo else "with --no-undo"
    out.append("")
    out.append(
        "Frees (no undo): what the disk files shrink by with --no-undo (or once the "
        "undo data is discarded). Frees (undo kept): what the whole folder shrinks by "
        "while undo data is kept (negative: it grows)."
    )
    out.append(
        f"Only here: data no other state reads. Copies: data the merge copies; Needs: "
        f"free host space needed while it runs ({mode})."
    )
    out.append(f"Times are estimates at {human_size(first.rate)}/s ({first.rate_source}).")
    if refused:
        out.append("Refused:")
        out += refused
    return out


def order_lines(order: Any) -> list[str]:
    """The cheapest order in words, one deletion per line."""
    how = (
        "every order tried" if order.exhaustive else "greedy: the cheapest next deletion each time"
    )
    out = [
        f"Cheapest order ({how}): copies {human_size(order.copies)}, needs at most "
        f"{human_size(order.peak)} while running, {_frees_words(order.frees)} in all."
    ]
    for number, step in enumerate(order.steps, start=1):
        out.append(
            f"  {number}. {step.name}: copies {human_size(step.copies)}, needs "
            f"{human_size(step.needs)}, {_frees_words(step.frees)}"
        )
    return out


def _frees_words(value: int) -> str:
    """What a deletion does to the folder's size, in words (undo data can make it grow)."""
    if value >= 0:
        return f"frees {human_size(value)}"
    return f"grows the folder by {human_size(-value)} (undo data)"


def _print_merge_plan(plan: mg.MergePlan, ctx: Context) -> None:
    if ctx.json:
        print_json(plan.to_dict())
    else:
        print("\n".join(plan.describe()))


def _print_merge_result(result: mg.MergeResult, ctx: Context) -> None:
    if ctx.json:
        print_json(
            {
                "plan": result.plan.to_dict(),
                "blocks_written": result.blocks_written,
                "bytes_written": result.bytes_written,
                "seconds": round(result.seconds, 2),
                "removed": list(result.removed),
                "backup_dir": str(result.backup_dir),
                "verified": result.verified,
                "undoable": result.undoable,
            }
        )
        return
    checked = "verified" if result.verified else "not verified"
    print(
        f"Done: {result.plan.summary} ({result.blocks_written} blocks, "
        f"{human_size(result.bytes_written)} written, {result.seconds:.1f} s, {checked})."
    )
    for note in result.removed:
        print(f"    {note}")
    folder = result.plan.folder
    if result.undoable:
        print(
            f"Undo data ({human_size(jr.undo_data_usage(folder))}) is kept in "
            f"'{jr.backups_dir(folder)}'; 'vdictl undo {folder}' restores the previous "
            f"state, and 'vdictl undo {folder} --discard' frees that space."
        )
    else:
        print("No undo data was kept: this cannot be undone.")


def cmd_snapshot_delete(args: argparse.Namespace, ctx: Context) -> int:
    """vdictl snapshot delete VMFOLDER NAME|UUID [--dry-run] [--direction ...] [--no-undo]."""
    folder = _folder_of(args.vm)
    if not args.dry_run:
        _recover(folder)
    plan = mg.plan_snapshot_delete(
        args.vm,
        args.snapshot,
        direction=args.direction,
        allow_outside=args.allow_outside,
        keep_undo=args.keep_undo,
    )
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
    mode = (
        "into-parent"
        if args.into_parent
        else ("parent-into-this" if args.parent_into_this else "auto")
    )
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
        print_json(
            {**plan.to_dict(), "selected": [f.id for f in plan.selected(choose, args.force)]}
        )
    else:
        print("\n".join(plan.describe(choose, args.force)))
    if args.dry_run or not plan.fixes:
        return 0 if not plan.fixes else 2
    if not plan.selected(choose, args.force):
        raise OperationRefused(
            "Every proposed fix needs --force (its evidence is weak or "
            "missing); nothing was changed."
        )
    if not args.yes and not _confirm("Apply the fixes marked 'will apply'?"):
        raise OperationRefused(
            "Not confirmed (pass --yes to apply without asking); nothing was changed."
        )
    result = _run(ctx, rp.run_repair, plan, choose=choose, force=args.force, verify=args.verify)
    if not ctx.json:
        print(
            f"Applied {', '.join(result.applied)}. Backups: '{result.backup_dir}'; "
            f"'vdictl undo {plan.folder}' reverts this repair."
        )
        for note in result.notes:
            print(f"    {note}")
    return 0


def cmd_set_uuid(args: argparse.Namespace, ctx: Context) -> int:
    """vdictl set-uuid IMAGE [UUID]."""
    new = None
    if args.uuid:
        new = parse_uuid(args.uuid)
        if new is None:
            raise OperationRefused(f"'{args.uuid}' is not a UUID.")
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
            print(
                f"An interrupted operation ({pending.data.get('summary')}) would be rolled "
                "back or completed first."
            )
            return 0
        _recover(folder)
        return 0
    if args.discard:
        kept = jr.undo_data_usage(folder)
        if args.dry_run:
            print(f"Would delete {human_size(kept)} of undo data in '{jr.backups_dir(folder)}'.")
            return 0
        freed = jr.discard_undo_data(folder)
        print(
            f"Discarded the undo data: {human_size(freed)} ({freed:,} bytes) freed; the last "
            "operation can no longer be undone."
        )
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
