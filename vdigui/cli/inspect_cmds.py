"""Read-only and creating commands: info, map, check, tree, frag, export, create."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vdigui.cli.common import (
    Context,
    add_source_arguments,
    is_vm_source,
    parse_size,
    print_json,
    resolve_source,
    source_image,
)
from vdigui.engine import VdiError, VdiImage, create_image, open_image, open_paths
from vdigui.engine.analysis import FragStats, analyze, host_extents
from vdigui.engine.check import check_path, damage_sentence, require_sound
from vdigui.engine.export import export_raw
from vdigui.engine.format import BLOCK_FREE, BLOCK_ZERO, is_allocated
from vdigui.engine.operations.preflight import check_writable_inputs, sweep_leftovers
from vdigui.engine.units import human_size

if TYPE_CHECKING:
    from vdigui.engine.chain import DiskChain
    from vdigui.engine.vmfolder import Medium, SnapshotNode, VmFolder


def register(sub: Any) -> None:
    """Add this module's sub-commands to ``sub`` (an argparse sub-parsers object)."""
    p = sub.add_parser(
        "info",
        help="show an image's header and block counts",
        description="Exit status: 0 shown, 1 could not read it (not a VDI, "
        "truncated, damaged header).",
    )
    add_source_arguments(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "map",
        help="show where every guest block is stored",
        description="Exit status: 0 shown, 1 could not read it or its map is "
        "damaged (entries past the end of the file, shared or out-of-range "
        "slots; 'vdictl check' lists them).",
    )
    add_source_arguments(p)
    p.add_argument("--json", action="store_true", help="one entry per guest block")
    p.set_defaults(func=cmd_map)

    p = sub.add_parser(
        "check",
        help="check an image, its chain or a VM folder (read-only)",
        description="Exit status: 0 clean, 2 problems found, 1 could not check "
        "(e.g. the file is not a VDI). A VM folder or .vbox without --snapshot, "
        "--current or --disk is checked whole.",
    )
    add_source_arguments(p, dest="path", metavar="PATH")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "tree",
        help="the snapshot tree and the medium tree of a VM folder",
        description="Problems are marked with '!' and listed at the end; exit "
        "status 2 when there are errors.",
    )
    p.add_argument("vmfolder", type=Path, metavar="VM", help="a VM folder or its .vbox file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_tree)

    p = sub.add_parser(
        "frag",
        help="fragmentation figures of an image and its chain",
        description="Exit status: 0 shown, 1 could not read it or its map is damaged.",
    )
    add_source_arguments(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_frag)

    p = sub.add_parser("export", help="write the guest-visible disk as a raw image (sparse)")
    add_source_arguments(p)
    p.add_argument("out", type=Path, help="the raw file to write (must not exist)")
    p.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip reading every written run back and comparing it",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("create", help="create a new dynamic, fixed or differencing image")
    p.add_argument("out", type=Path, help="the new image file (must not exist)")
    p.add_argument("--size", help="virtual size, e.g. 64M, 20G (not with --parent)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--fixed", action="store_true", help="preallocate the whole disk")
    kind.add_argument("--parent", type=Path, help="create a differencing image over PARENT")
    p.set_defaults(func=cmd_create)


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


def _source_image(args: argparse.Namespace) -> Path:
    return source_image(args.source, args.snapshot, args.current, args.disk)


def _end_damaged(problem: str | None) -> int:
    """After the output: a damaged map ends the command with one line and status 1."""
    if problem is None:
        return 0
    sys.stdout.flush()
    print(f"vdictl: error: {problem}", file=sys.stderr)
    return 1


def cmd_info(args: argparse.Namespace, ctx: Context) -> int:
    """vdictl info SOURCE [--json]; status 1 after the output when the map is damaged."""
    with open_image(_source_image(args)) as image:
        info = image_info(image)
        problem = damage_sentence(image)
    if ctx.json:
        print_json(info)
        return _end_damaged(problem)
    c = info["counts"]
    rows = [
        ("File", info["file"]),
        ("Format", f"VDI {info['version']} (header {info['header_size']:#x} bytes)"),
        ("Type", info["type"]),
        ("Virtual size", f"{human_size(info['disk_size'])} ({info['disk_size']} bytes)"),
        ("Size on disk", f"{human_size(info['file_size'])} ({info['file_size']} bytes)"),
        (
            "Block size",
            f"{human_size(info['block_size'])}"
            + (f" + {info['block_extra']} extra" if info["block_extra"] else ""),
        ),
        (
            "Blocks",
            f"{info['blocks']} ({c['allocated']} allocated, {c['zero']} zero, "
            f"{c['free']} free; header says {info['blocks_allocated']} allocated)",
        ),
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
    return _end_damaged(problem)


def _runs(entries: np.ndarray) -> list[tuple[int, int, str]]:
    """Fold a map into (first block, last block, text) runs for the text output."""

    def label(entry: int) -> str:
        if entry == BLOCK_FREE:
            return "free"
        if entry == BLOCK_ZERO:
            return "zero"
        return f"slot {entry}"

    runs: list[tuple[int, int, str]] = []
    start = 0
    n = entries.size
    while start < n:
        first = int(entries[start])
        end = start + 1
        if not is_allocated(first):
            while end < n and int(entries[end]) == first:
                end += 1
            runs.append((start, end - 1, label(first)))
        else:
            while end < n and int(entries[end]) == first + (end - start):
                end += 1
            text = label(first) if end - start == 1 else f"slots {first}-{first + end - start - 1}"
            runs.append((start, end - 1, text))
        start = end
    return runs


def cmd_map(args: argparse.Namespace, ctx: Context) -> int:
    """vdictl map SOURCE [--json]; status 1 after the output when the map is damaged."""
    path = _source_image(args)
    with open_image(path) as image:
        entries = image.block_map[: image.guest_blocks].copy()
        block_size = image.header.block_size
        problem = damage_sentence(image)
    if ctx.json:
        print_json(
            {
                "file": str(path),
                "block_size": block_size,
                "blocks": [
                    e if slot else ("zero" if e == BLOCK_ZERO else "free")
                    for e, slot in zip(
                        entries.tolist(), is_allocated(entries).tolist(), strict=True
                    )
                ],
            }
        )
        return _end_damaged(problem)
    for first, last, text in _runs(entries):
        where = f"block {first}" if first == last else f"blocks {first}-{last}"
        print(f"{where}: {text}")
    return _end_damaged(problem)


def cmd_check(args: argparse.Namespace, ctx: Context) -> int:
    """vdictl check PATH [--json]: 0 clean, 2 problems, 1 could not check."""
    target = args.path
    if is_vm_source(target) and (args.snapshot is not None or args.current or args.disk):
        target = resolve_source(target, args.snapshot, args.current, args.disk)[-1]
    report = check_path(target)
    if ctx.json:
        print_json(
            {
                "clean": report.clean,
                "findings": [
                    {
                        "severity": f.severity,
                        "kind": f.kind,
                        "file": str(f.path),
                        "message": f.message,
                        "blocks": list(f.blocks),
                    }
                    for f in report.findings
                ],
            }
        )
    elif report.clean:
        print(f"{target}: no problems found.")
    else:
        for f in report.findings:
            print(f"{f.severity}: {f.message}")
    return 0 if report.clean else 2


def _frag_dict(stats: FragStats) -> dict[str, Any]:
    return {
        "allocated": stats.allocated,
        "discontinuities": stats.discontinuities,
        "longest_run": stats.longest_run,
        "in_order_share": round(stats.in_order_share, 6),
        "mean_jump": round(stats.mean_jump, 3),
    }


def cmd_frag(args: argparse.Namespace, ctx: Context) -> int:
    """vdictl frag SOURCE [--json]: fragmentation of each layer's file and of the chain."""
    paths = resolve_source(args.source, args.snapshot, args.current, args.disk)
    require_sound(paths)
    with open_paths(paths) as chain:
        analysis = analyze(chain)
    layers: list[dict[str, Any]] = []
    for path, frag in zip(analysis.paths, analysis.layer_frag, strict=True):
        host = host_extents(path)
        layers.append(
            {
                "file": str(path),
                **_frag_dict(frag),
                "host_extents": host.count if host.available else None,
                "host_extents_note": host.reason,
            }
        )
    c = _frag_dict(analysis.chain_frag)
    doc = {"layers": layers, "chain": c}
    if ctx.json:
        print_json(doc)
        return 0
    for layer in layers:
        extents = (
            f"{layer['host_extents']} host extent(s)"
            if layer["host_extents"] is not None
            else f"host extents not available: {layer['host_extents_note']}"
        )
        print(
            f"{Path(layer['file']).name}: {layer['allocated']} blocks, "
            f"{layer['discontinuities']} discontinuities, longest run {layer['longest_run']}, "
            f"{100 * layer['in_order_share']:.1f}% in order, mean jump "
            f"{layer['mean_jump']:.1f} slots; {extents}"
        )
    print(
        f"chain: a sequential read of the guest disk reads {c['allocated']} blocks and jumps "
        f"{c['discontinuities']} times (longest run {c['longest_run']}, "
        f"{100 * c['in_order_share']:.1f}% in order)."
    )
    return 0


def cmd_export(args: argparse.Namespace, ctx: Context) -> int:
    """vdictl export SOURCE OUT.raw [--snapshot NAME | --current]."""
    paths = resolve_source(args.source, args.snapshot, args.current, args.disk)
    require_sound(paths)  # before anything is written: a damaged map exports garbage
    out_folder = args.out.absolute().parent
    if args.out.exists() or args.out.is_symlink():
        raise VdiError(f"{args.out} already exists; export never overwrites a file.")
    with open_paths(paths) as chain:
        check_writable_inputs([], folder=out_folder, needed=_export_bytes(chain))
    sweep_leftovers(out_folder)
    ctx.cancel_cleanly = True
    with open_paths(paths) as chain:
        result = export_raw(
            chain, args.out, progress=ctx.progress, cancel=ctx.token, verify=args.verify
        )
    print(
        f"Wrote {args.out}: {human_size(result.disk_size)}, {result.data_blocks} block(s) of "
        f"data, {result.hole_blocks} left sparse."
    )
    return 0


def _export_bytes(chain: DiskChain) -> int:
    """Host bytes a sparse export may need: the blocks some layer stores data for."""
    stored = np.zeros(chain.guest_blocks, dtype=bool)
    for layer in chain.layers:
        stored |= layer.allocated_mask()[: chain.guest_blocks]
    return int(stored.sum()) * chain.block_size


def cmd_create(args: argparse.Namespace, ctx: Context) -> int:
    """vdictl create OUT.vdi --size SIZE [--fixed | --parent PARENT.vdi]."""
    if args.parent is None and not args.size:
        raise VdiError("vdictl create needs --size (or --parent for a differencing image).")
    if args.parent is not None and args.size:
        raise VdiError("A differencing image takes its size from its parent; drop --size.")
    size = 0
    if args.size:
        try:
            size = parse_size(args.size)
        except ValueError as exc:
            raise VdiError(f"--size {exc}.") from None
    folder = args.out.absolute().parent
    check_writable_inputs([], folder=folder, needed=size if args.fixed else 0)
    sweep_leftovers(folder)
    header = create_image(args.out, size, fixed=args.fixed, parent=args.parent)
    print(
        f"Created {args.out}: {header.image_type.label}, {human_size(header.disk_size)}, "
        f"UUID {header.uuid}."
    )
    return 0


def _mark(vm: VmFolder, uuid: Any, path: Path | None) -> str:
    problems = vm.problems_for(uuid, path)
    return "  ! " + " ! ".join(p.message for p in problems) if problems else ""


def _print_snapshots(vm: VmFolder, node: SnapshotNode, depth: int) -> None:
    current = node.uuid == vm.current_snapshot_uuid
    when = node.timestamp.strftime("%Y-%m-%d %H:%M") if node.timestamp else "no date"
    disks = ", ".join(_medium_label(vm, m) for m in vm.disk_for_snapshot(node))
    print(
        f"{'  ' * depth}- {node.name} ({when}){' [current snapshot]' if current else ''}"
        f"{' [online]' if node.state_file else ''}: {disks or 'no disks'}"
    )
    for child in node.children:
        _print_snapshots(vm, child, depth + 1)
    if current:
        disks = ", ".join(_medium_label(vm, m) for m in vm.current_disks())
        modified = " (modified)" if vm.current_state_modified else ""
        print(f"{'  ' * (depth + 1)}- Current State{modified}: {disks or 'no disks'}")


def _medium_label(vm: VmFolder, medium: Medium) -> str:
    name = medium.path.name if medium.path is not None else medium.location
    return name


def _print_media(vm: VmFolder, uuid: Any, depth: int) -> None:
    medium = vm.media[uuid]
    extra = [medium.format]
    if medium.parent_uuid is None:
        extra.append(medium.type)
    if medium.auto_reset:
        extra.append("autoReset")
    if not medium.inspectable:
        extra.append("not inspectable")
    print(
        f"{'  ' * depth}- {_medium_label(vm, medium)} {{{medium.uuid}}} ({', '.join(extra)})"
        f"{_mark(vm, medium.uuid, medium.path)}"
    )
    for child in medium.children:
        if child in vm.media:
            _print_media(vm, child, depth + 1)


def cmd_tree(args: argparse.Namespace, ctx: Context) -> int:
    """vdictl tree VMFOLDER [--json]: exit 2 when errors were found."""
    from vdigui.engine.vmfolder import load_vm_folder  # only tree needs the XML parser here

    vm = load_vm_folder(args.vmfolder)
    if ctx.json:
        print_json(vm.to_dict())
        return 2 if vm.errors else 0
    print(f"{vm.name} ({vm.settings_path.name}, settings {vm.settings_version})")
    if vm.root_snapshot is None:
        # No snapshot tree to hang the state on: the state on its own line, no "(none)"
        # with a state under it.
        disks = ", ".join(_medium_label(vm, m) for m in vm.current_disks())
        print(f"Current State (no snapshots): {disks or 'no disks'}")
    else:
        print("Snapshots:")
        _print_snapshots(vm, vm.root_snapshot, 1)
    print("Media (registry):")
    for uuid in vm.registry_tree:
        if uuid in vm.media:
            _print_media(vm, uuid, 1)
    if vm.problems:
        print(f"Problems ({len(vm.problems)}):")
        for problem in vm.problems:
            print(f"  {problem.severity}: {problem.message}")
    return 2 if vm.errors else 0
