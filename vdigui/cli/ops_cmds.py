"""Commands that change images: compact, clone, convert; and ``usage``, their guest-side preview.

Each command plans first (fast, read-only), prints the plan with ``--dry-run``, and otherwise
runs it with progress on stderr. While an operation runs, Ctrl-C cancels it at the next block
(exit status 130) and the message says what state the data is in. Before planning, each of
them finishes or rolls back an interrupted snapshot deletion (or merge, repair, undo) in the
VM folder the image belongs to: planning on a half-merged chain would describe files that are
about to change.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import uuid as uuidlib
from pathlib import Path
from typing import Any

import numpy as np

from vdigui.cli.common import Context, add_source_arguments, print_json, resolve_source
from vdigui.engine.check import require_sound
from vdigui.engine.errors import OperationCancelled, OperationRefused
from vdigui.engine.guestfs import ReclaimForecast, UsageMap
from vdigui.engine.operations import journal
from vdigui.engine.operations.clone import ClonePlan, CloneResult, plan_clone, run_clone
from vdigui.engine.operations.compact import (
    CompactPlan,
    CompactResult,
    plan_compact,
    run_compact,
)
from vdigui.engine.operations.convert import ConvertPlan, ConvertResult, plan_convert, run_convert
from vdigui.engine.operations.preflight import (
    check_writable_inputs,
    find_leftovers,
    sweep_leftovers,
)
from vdigui.engine.operations.verify import DIGEST_NAME
from vdigui.engine.units import human_size
from vdigui.engine.usage_report import BlockUseSummary, UsageReport, usage_report, vm_folder_of


def register(sub: Any) -> None:
    """Add compact, clone and convert to ``sub`` (an argparse sub-parsers object)."""
    p = sub.add_parser(
        "compact",
        help="shrink an image in place by dropping all-zero blocks",
        description="Drop all-zero blocks (and, in a differencing image, blocks identical to "
        "the parent), close the holes and truncate the file. UUIDs stay the same. Refuses "
        "fixed images and images in use.",
    )
    p.add_argument("image", type=Path, help="the image to compact in place")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="read the image and show what would change, without changing it",
    )
    p.add_argument(
        "--defrag",
        action="store_true",
        help="also put the blocks in guest order (rebuilds the file beside it)",
    )
    _fs_flags(p, "drop")
    _common_flags(p)
    p.set_defaults(func=cmd_compact)

    p = sub.add_parser(
        "clone",
        help="copy a disk (flattening its chain) into a new standalone image",
        description="The clone is a base image holding what the guest sees, dynamic unless "
        "--fixed, with a new UUID unless --keep-uuid. DEST must not exist.",
    )
    add_source_arguments(p)
    p.add_argument("dest", type=Path, help="the new image (must not exist)")
    p.add_argument("--fixed", action="store_true", help="preallocate the whole disk")
    p.add_argument(
        "--keep-uuid",
        action="store_true",
        help="keep the source's UUID (never register both with VirtualBox)",
    )
    p.add_argument("--dry-run", action="store_true", help="show the plan only")
    _fs_flags(p, "leave out")
    _common_flags(p)
    p.set_defaults(func=cmd_clone)

    p = sub.add_parser(
        "convert",
        help="convert an image between fixed and dynamic, keeping its UUIDs",
        description="The new layout is built beside the image, verified and swapped in "
        "atomically; the file name and UUIDs stay, so the VM keeps working.",
    )
    p.add_argument("image", type=Path, help="the image to convert (kept under its name)")
    p.add_argument(
        "--to", required=True, choices=("fixed", "dynamic"), help="the storage layout wanted"
    )
    p.add_argument("--dry-run", action="store_true", help="show the plan only")
    _common_flags(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser(
        "usage",
        help="what the guest's filesystems use, and what compaction would reclaim",
        description="Reads the partition table and the filesystems' own allocation maps "
        "(ext2/3/4, NTFS, FAT, LVM2, swap) of the disk as SOURCE shows it, and forecasts what "
        "filesystem-aware compaction of its last image would reclaim. By default it reads "
        "only headers, block maps and filesystem metadata, so it is quick on any size of "
        "disk; --scan-zeros also reads every block the image stores, to count the all-zero "
        "ones plain compaction would drop. Changes nothing.",
    )
    add_source_arguments(p)
    p.add_argument(
        "--scan-zeros",
        action="store_true",
        help="also read every stored block to count the all-zero ones (slower: "
        "reads the image's data)",
    )
    p.add_argument(
        "--discard-swap", action="store_true", help="count swap contents (not its header) as unused"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_usage)

    p = sub.add_parser(
        "clean",
        help="remove temporary files interrupted vdigui operations left behind",
        description="Removes the hidden .NAME.vdigui-tmp... files an interrupted operation "
        "(e.g. compact --defrag killed half-way) left in a folder; 'vdictl check' lists them. "
        "A temporary file an operation running now is writing is never removed. Every "
        "writing vdictl command does this in its folder anyway.",
    )
    p.add_argument(
        "folder", type=Path, metavar="PATH", help="the folder, or an image or .vbox file in it"
    )
    p.add_argument("--dry-run", action="store_true", help="list what would be removed")
    p.set_defaults(func=cmd_clean)


def _fs_flags(p: argparse.ArgumentParser, verb: str) -> None:
    p.add_argument(
        "--fs-aware",
        action="store_true",
        help=f"also {verb} blocks the guest's filesystems do not use (read from "
        "their allocation maps; volumes not understood are kept whole)",
    )
    p.add_argument(
        "--discard-swap",
        action="store_true",
        help="with --fs-aware: also drop swap contents (keeps the swap header; "
        "never for a hibernation image)",
    )


def _common_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="skip re-reading the result to prove the guest content is unchanged",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")


# -- rendering ------------------------------------------------------------------------------
def to_jsonable(value: Any) -> Any:
    """Plans and results as plain JSON values (paths and UUIDs as text, arrays as lists)."""
    if isinstance(value, UsageMap):
        return usage_jsonable(value)
    if isinstance(value, ReclaimForecast):
        return {
            **{f.name: getattr(value, f.name) for f in dataclasses.fields(value)},
            "bytes_plain": value.bytes_plain(),
            "bytes_fs_aware": value.bytes_fs_aware(),
        }
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
        for name in ("can_run", "bytes_reclaimed", "nothing_to_do"):
            if hasattr(value, name):
                out[name] = getattr(value, name)
        return out
    if isinstance(value, np.ndarray):
        return [int(v) for v in value]
    if isinstance(value, (Path, uuidlib.UUID)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    return value


def _size(value: int) -> str:
    return f"{human_size(value)} ({value} bytes)"


def usage_jsonable(usage: UsageMap, disk_size: int | None = None) -> dict[str, Any]:
    """A usage map as JSON: volumes, notes and the per-block summary (not every block)."""
    size = disk_size if disk_size is not None else len(usage.used_bytes) * usage.block_size
    summary = BlockUseSummary.of(usage, size)
    return {
        "block_size": usage.block_size,
        "volumes": [
            {f.name: to_jsonable(getattr(v, f.name)) for f in dataclasses.fields(v)}
            for v in usage.volumes
        ],
        "notes": list(usage.notes),
        "blocks": dataclasses.asdict(summary),
    }


def _volume_line(v: Any) -> str:
    what = v.kind + (f" '{v.label}'" if v.label else "")
    use = (
        "kept whole"
        if v.kept_whole or v.used is None
        else f"{human_size(v.used)} used, {human_size(v.free or 0)} free"
    )
    return f"{v.partition:<22} {what:<22} {human_size(v.size):>10}  {use}"


def print_volumes(usage: UsageMap) -> None:
    """The guest's volumes, one a line, each with the reasons it is kept whole."""
    print("Volumes:")
    for v in usage.volumes:
        print(f"  {_volume_line(v)}")
        for note in v.notes:
            print(f"      {note}")
    for note in usage.notes:
        print(f"  Note: {note}")


def kept_whole_lines(usage: UsageMap) -> list[str]:
    """Every volume kept whole, with why (what --dry-run must explain)."""
    out = []
    for v in usage.volumes:
        if v.kept_whole:
            why = " ".join(v.notes) or "its contents are not understood."
            out.append(f"{v.partition} ({v.kind}, {human_size(v.size)}) is kept whole: {why}")
    return out


def forecast_rows(fc: ReclaimForecast, *, zeros_scanned: bool = True) -> list[tuple[str, str]]:
    """The reclaim forecast as (label, value) rows (zero figures only when scanned)."""
    bs = fc.block_size
    if not zeros_scanned:
        return [
            ("Stored blocks", f"{fc.allocated_blocks} ({human_size(fc.allocated_blocks * bs)})"),
            ("Zero blocks alone", "not counted (--scan-zeros reads the stored blocks)"),
            (
                "FS-aware",
                f"{fc.fs_unused_blocks} block(s) unused by the guest, reclaims at "
                f"least {human_size(fc.bytes_fs_aware())} (compact --fs-aware)",
            ),
            (
                "Stays: partly used",
                f"at most {fc.partly_used_blocks} block(s) holding "
                f"{human_size(fc.partly_used_free_bytes)} of free space",
            ),
        ]
    return [
        ("Stored blocks", f"{fc.allocated_blocks} ({human_size(fc.allocated_blocks * bs)})"),
        (
            "Zero blocks alone",
            f"{fc.zero_blocks} block(s), reclaims {human_size(fc.bytes_plain())} (plain compact)",
        ),
        (
            "FS-aware",
            f"+{fc.fs_unused_blocks} unused by the guest, reclaims "
            f"{human_size(fc.bytes_fs_aware())} (compact --fs-aware)",
        ),
        (
            "Stays: partly used",
            f"{fc.partly_used_blocks} block(s) holding "
            f"{human_size(fc.partly_used_free_bytes)} of free space "
            "(defragmenting inside the guest could add this)",
        ),
    ]


def print_usage_report(report: UsageReport) -> None:
    """The human-readable ``vdictl usage`` output."""
    s = report.summary
    bs = report.usage.block_size
    uses = report.guest_uses
    if uses is not None:
        used_text = f"{human_size(uses)} ({100 * uses / max(1, report.disk_size):.1f} %)"
    elif report.stored_blocks == 0:
        used_text = "unknown (nothing is stored on this disk yet)"
    else:
        used_text = "unknown (some contents are not understood; see Volumes; they are kept whole)"
    rows = [
        ("Disk", " <- ".join(p.name for p in reversed(report.paths))),
        ("Virtual size", _size(report.disk_size)),
        ("Guest uses", used_text),
        (
            "Blocks",
            f"{s.blocks} of {human_size(bs)}: {s.full} full, {s.partly} partly used, "
            f"{s.unused} unused"
            + ("" if report.understood else " (not-understood volumes count as full)"),
        ),
        *forecast_rows(report.forecast, zeros_scanned=report.zeros_scanned),
    ]
    _rows("Guest usage", rows, (), ())
    print_volumes(report.usage)


def _rows(
    title: str, rows: list[tuple[str, str]], warnings: tuple[str, ...], refusals: tuple[str, ...]
) -> None:
    print(title)
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    for w in warnings:
        print(f"Warning: {w}")
    for r in refusals:
        print(f"Refused: {r}")


def _warn(warnings: tuple[str, ...]) -> None:
    for w in warnings:
        print(f"vdictl: warning: {w}", file=sys.stderr)


def _verified(verified: bool | None, digest: str | None) -> str:
    if verified:
        return f"verified (guest {DIGEST_NAME} {digest})" if digest else "verified"
    return "not verified (--no-verify)" if digest is None else "nothing to verify"


def print_compact_plan(plan: CompactPlan) -> None:
    """The human-readable compaction plan (``--dry-run``)."""
    mode = "rebuilt in guest order beside it, then swapped in" if plan.defrag else "in place"
    repairs = "none"
    if plan.out_of_range.size or plan.cross_linked.size:
        repairs = (
            f"{plan.out_of_range.size} past the end of the file, "
            f"{plan.cross_linked.size} cross-linked (-> FREE)"
        )
    if plan.scanned:
        assert plan.zero_blocks is not None and plan.parent_blocks is not None
        zero = f"{plan.zero_blocks.size} -> ZERO"
        same = f"{plan.parent_blocks.size} -> FREE"
    else:
        zero = same = "not scanned (--dry-run reads the data)"
    rows = [
        (
            "File now",
            f"{_size(plan.file_size)}, {plan.slots_in_file} slot(s), "
            f"cBlocksAllocated {plan.blocks_allocated}",
        ),
        ("Map repairs", repairs),
        ("All-zero blocks", zero),
    ]
    if plan.differencing:
        rows.append(("Same as parent", same))
    if plan.fs_aware:
        rows.append(
            (
                "Unused by guest",
                f"{plan.fs_blocks.size} -> ZERO" if plan.fs_blocks is not None else "not scanned",
            )
        )
    rows += [
        ("Blocks rewritten" if plan.defrag else "Slots to move", str(plan.moves)),
        (
            "Size afterwards",
            f"{_size(plan.size_after)}, reclaims {human_size(plan.bytes_reclaimed)}",
        ),
        (
            "Host space",
            f"{human_size(plan.space_needed)} needed, {human_size(plan.space_free)} free",
        ),
    ]
    if plan.nothing_to_do:
        rows.append(("Result", "already compact: nothing to do"))
    if plan.forecast is not None:
        rows += forecast_rows(plan.forecast)
    title = f"Plan: compact {plan.path} ({mode}{', filesystem-aware' if plan.fs_aware else ''})"
    _rows(title, rows, plan.warnings, plan.refusals)
    if plan.usage is not None:
        print_volumes(plan.usage)
        kept = kept_whole_lines(plan.usage)
        print("Kept whole:" if kept else "Kept whole: nothing (every volume was understood)")
        for line in kept:
            print(f"  {line}")


def print_clone_plan(plan: ClonePlan) -> None:
    """The human-readable clone plan."""
    kind = "fixed" if plan.fixed else "dynamic"
    rows = [
        ("Source", " <- ".join(p.name for p in reversed(plan.chain_paths))),
        ("Destination", f"{plan.dest} ({kind}, standalone base)"),
        ("UUID", f"{plan.uuid}" + (" (the source's)" if plan.keep_uuid else " (new)")),
        ("Virtual size", _size(plan.disk_size)),
        (
            "Blocks with data",
            f"{plan.data_blocks} of {plan.guest_blocks} (all-zero ones are not stored)"
            if not plan.fixed
            else f"{plan.data_blocks} of {plan.guest_blocks}",
        ),
        *(
            [("Unused by guest", f"{plan.fs_blocks} block(s) with data left out (--fs-aware)")]
            if plan.fs_aware
            else []
        ),
        ("Clone size", ("" if plan.fixed else "at most ") + _size(plan.output_size)),
        (
            "Host space",
            f"{human_size(plan.space_needed)} needed, {human_size(plan.space_free)} free",
        ),
    ]
    _rows("Plan: clone", rows, plan.warnings, plan.refusals)
    if plan.usage is not None:
        for line in kept_whole_lines(plan.usage):
            print(f"  {line}")


def print_convert_plan(plan: ConvertPlan) -> None:
    """The human-readable conversion plan."""
    rows = [
        ("Image", f"{plan.path} ({plan.from_type} -> {plan.to}; name and UUIDs kept)"),
        ("Virtual size", _size(plan.disk_size)),
        ("Blocks with data", str(plan.data_blocks)),
        ("Size now", _size(plan.size_before)),
        ("Size afterwards", ("" if plan.to == "fixed" else "at most ") + _size(plan.size_after)),
        (
            "Host space",
            f"{human_size(plan.space_needed)} needed while both exist, "
            f"{human_size(plan.space_free)} free",
        ),
    ]
    _rows("Plan: convert", rows, plan.warnings, plan.refusals)


def _emit_plan(ctx: Context, plan: Any, printer: Any) -> int:
    if ctx.json:
        print_json({"plan": to_jsonable(plan)})
    else:
        printer(plan)
    return 0 if plan.can_run else 1


def _emit_result(ctx: Context, result: Any, text: str) -> int:
    if ctx.json:
        print_json({"result": to_jsonable(result)})
    else:
        print(text)
    return 0


# -- commands -------------------------------------------------------------------------------
def recover_interrupted(path: Path) -> None:
    """Finish or roll back an interrupted journaled operation in ``path``'s VM folder.

    The one place compact, clone and convert do this (``path`` is the image, or the VM
    folder / .vbox a SOURCE names); what happened goes to stderr.
    """
    path = Path(path)
    folder = (
        path
        if path.is_dir()
        else path.parent
        if path.suffix.lower() == ".vbox"
        else vm_folder_of(path) or path.absolute().parent
    )
    if not journal.journal_path(folder).exists():
        return
    result = journal.recover_pending(folder)
    if result is not None:
        print(f"vdictl: {result.message()}", file=sys.stderr)
        for note in result.notes:
            print(f"    {note}", file=sys.stderr)


def cmd_compact(args: argparse.Namespace, ctx: Context) -> int:
    """vdictl compact IMAGE [--dry-run] [--defrag] [--fs-aware [--discard-swap]]."""
    recover_interrupted(args.image)
    ctx.cancel_cleanly = True  # a --dry-run scan is cancellable too
    plan = plan_compact(
        args.image,
        defrag=args.defrag,
        scan=args.dry_run,
        progress=ctx.progress,
        cancel=ctx.token,
        fs_aware=args.fs_aware,
        discard_swap=args.discard_swap,
    )
    if args.dry_run:
        return _emit_plan(ctx, plan, print_compact_plan)
    if plan.refusals:
        raise OperationRefused(" ".join(plan.refusals))
    _warn(plan.warnings)
    sweep_before_writing(args.image)
    try:
        result: CompactResult = run_compact(
            plan, progress=ctx.progress, cancel=ctx.token, verify=not args.no_verify
        )
    except KeyboardInterrupt:
        # A second Ctrl-C interrupts at once, possibly between two writes: every such point
        # leaves a consistent image, but "nothing was changed" would not be true.
        if plan.defrag:
            raise OperationCancelled(
                "Interrupted: the image is either unchanged or completely "
                "rebuilt; it is consistent either way."
            ) from None
        raise OperationCancelled(
            "Interrupted: the image is consistent but may be partly "
            "compacted; run compact again to finish."
        ) from None
    if not result.changed:
        text = f"{result.path.name} is already compact; nothing was changed."
    else:
        how = "Defragmented" if result.defragmented else "Compacted"
        parent = f", {result.parent_blocks} same as the parent" if result.parent_blocks else ""
        text = (
            f"{how} {result.path.name}: {human_size(result.size_before)} -> "
            f"{human_size(result.size_after)} (reclaimed "
            f"{human_size(result.bytes_reclaimed)}); {result.zero_blocks} all-zero "
            f"block(s) dropped{parent}"
            + (f", {result.fs_blocks} unused by the guest dropped" if plan.fs_aware else "")
            + f", {result.moved_blocks} "
            f"{'rewritten' if result.defragmented else 'moved'}"
            + (
                f", {result.sanitised_blocks} bad map entries cleared"
                if result.sanitised_blocks
                else ""
            )
            + f"; {_verified(result.verified, result.hash)}."
        )
    return _emit_result(ctx, result, text)


def cmd_clone(args: argparse.Namespace, ctx: Context) -> int:
    """vdictl clone SOURCE DEST [--fixed] [--keep-uuid] [--snapshot NAME | --current]."""
    recover_interrupted(args.source)
    paths = resolve_source(args.source, args.snapshot, args.current, args.disk)
    plan = plan_clone(
        paths,
        args.dest,
        fixed=args.fixed,
        keep_uuid=args.keep_uuid,
        fs_aware=args.fs_aware,
        discard_swap=args.discard_swap,
    )
    if args.dry_run:
        return _emit_plan(ctx, plan, print_clone_plan)
    if plan.refusals:
        raise OperationRefused(" ".join(plan.refusals))
    _warn(plan.warnings)
    sweep_before_writing(args.dest)
    ctx.cancel_cleanly = True
    result: CloneResult = run_clone(
        plan, progress=ctx.progress, cancel=ctx.token, verify=not args.no_verify
    )
    text = (
        f"Cloned to {result.dest}: {'fixed' if plan.fixed else 'dynamic'}, "
        f"{human_size(result.file_size)}, {result.stored_blocks} block(s) of data"
        + (f" ({result.fs_blocks} unused by the guest left out)" if plan.fs_aware else "")
        + ", UUID "
        f"{result.uuid}; {_verified(result.verified, result.hash)}."
    )
    return _emit_result(ctx, result, text)


def cmd_convert(args: argparse.Namespace, ctx: Context) -> int:
    """vdictl convert IMAGE --to fixed|dynamic."""
    recover_interrupted(args.image)
    plan = plan_convert(args.image, args.to)
    if args.dry_run:
        return _emit_plan(ctx, plan, print_convert_plan)
    if plan.refusals:
        raise OperationRefused(" ".join(plan.refusals))
    _warn(plan.warnings)
    sweep_before_writing(args.image)
    ctx.cancel_cleanly = True
    result: ConvertResult = run_convert(
        plan, progress=ctx.progress, cancel=ctx.token, verify=not args.no_verify
    )
    text = (
        f"Converted {result.path.name} to {result.to}: {human_size(result.size_before)} -> "
        f"{human_size(result.size_after)}; {_verified(result.verified, result.hash)}."
    )
    return _emit_result(ctx, result, text)


def cmd_usage(args: argparse.Namespace, ctx: Context) -> int:
    """vdictl usage SOURCE [--snapshot NAME | --current] [--discard-swap] [--json]."""
    paths = resolve_source(args.source, args.snapshot, args.current, args.disk)
    ctx.cancel_cleanly = True
    require_sound(paths)
    report = usage_report(
        paths,
        discard_swap=args.discard_swap,
        progress=ctx.progress,
        cancel=ctx.token,
        scan_zeros=args.scan_zeros,
    )
    if ctx.json:
        forecast_doc = to_jsonable(report.forecast)
        if not report.zeros_scanned:
            forecast_doc["zero_blocks"] = None
            forecast_doc["bytes_plain"] = None
        print_json(
            {
                "paths": [str(p) for p in report.paths],
                "disk_size": report.disk_size,
                "guest_uses": report.guest_uses,
                "stored_blocks": report.stored_blocks,
                "zeros_scanned": report.zeros_scanned,
                "usage": usage_jsonable(report.usage, report.disk_size),
                "forecast": forecast_doc,
            }
        )
    else:
        print_usage_report(report)
    return 0


def cmd_clean(args: argparse.Namespace, ctx: Context) -> int:
    """vdictl clean PATH [--dry-run]: remove leftover temporary files (never one in use)."""
    target = Path(args.folder)
    folder = target if target.is_dir() else target.absolute().parent
    if not folder.is_dir():
        raise OperationRefused(f"{folder} is not a folder.")
    folders = [folder]
    if (folder / "Snapshots").is_dir():
        folders.append(folder / "Snapshots")
    if args.dry_run:
        found = [p for f in folders for p, _ in find_leftovers(f, removable_only=True)]
        for path in found:
            print(f"Would remove {path}")
        if not found:
            print(f"No leftover temporary files in {folder}.")
        return 0
    check_writable_inputs([], folder=folder)
    removed = [p for f in folders for p in sweep_leftovers(f)]
    for path in removed:
        print(f"Removed {path}")
    if not removed:
        print(f"No leftover temporary files in {folder}.")
    return 0


def sweep_before_writing(*paths: Path) -> None:
    """Remove leftovers of interrupted operations in the folders a command will write in."""
    for folder in dict.fromkeys(Path(p).resolve().parent for p in paths):
        for removed in sweep_leftovers(folder):
            print(
                f"vdictl: removed {removed.name}, a temporary file an interrupted operation "
                "left behind.",
                file=sys.stderr,
            )
