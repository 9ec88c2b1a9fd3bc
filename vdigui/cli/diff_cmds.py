"""``vdictl diff``: the guest files added, removed and changed between two states of a VM disk.

The states are snapshot names or UUIDs, or ``current``. Only file contents lying in blocks the
two states serve from different layers are ever read; everything else is decided from the
block maps and the filesystems' metadata (see :mod:`vdigui.engine.guestfs.files.diff`).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vdigui.cli.common import Context, is_vm_source, print_json, resolve_source
from vdigui.engine.chain import DiskChain, open_paths
from vdigui.engine.errors import VdiError
from vdigui.engine.guestfs.files import printable
from vdigui.engine.guestfs.files.diff import Change, ChangeKind, StateDiff, diff_chains
from vdigui.engine.units import human_size

_MARK = {ChangeKind.ADDED: "A", ChangeKind.REMOVED: "D", ChangeKind.CHANGED: "M"}


def register(sub: Any) -> None:
    """Add ``diff`` to ``sub`` (an argparse sub-parsers object)."""
    p = sub.add_parser(
        "diff",
        help="guest files added, removed and changed between two states",
        description="Compares the guest files of two states of a VM disk: A and B are snapshot "
        "names or UUIDs, or 'current' for the current state. Lines start with A (added in B), "
        "D (deleted in B), M (content changed) or m (only times, permissions or owner "
        "changed). File contents are read only where the two states serve blocks under the "
        "file from different layers.",
    )
    p.add_argument("source", type=Path, metavar="VMFOLDER", help="the VM folder or its .vbox file")
    p.add_argument("a", metavar="A", help="the earlier state: snapshot name or UUID, or current")
    p.add_argument("b", metavar="B", help="the later state: snapshot name or UUID, or current")
    p.add_argument(
        "--disk",
        metavar="N",
        help="which disk when the VM has several: its position in `vdictl tree`, or its file name",
    )
    p.add_argument("--volume", metavar="NAME", help="compare only this volume (p1, vg0/root)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_diff)


def state_paths(source: Path, state: str, disk: str | None) -> tuple[Path, ...]:
    """The chain files of one state of a VM disk ("current", or a snapshot name or UUID)."""
    if not is_vm_source(source):
        raise VdiError(
            f"{source} is not a VM folder or .vbox file; 'vdictl diff' compares two states of a VM."
        )
    if state == "current":
        return resolve_source(source, None, True, disk)
    return resolve_source(source, state, False, disk)


@contextlib.contextmanager
def _open(paths: tuple[Path, ...]) -> Iterator[DiskChain]:
    chain = open_paths(paths)
    try:
        yield chain
    finally:
        chain.close()


def _when(value: float | None) -> str:
    if value is None:
        return "-"
    try:
        return time.strftime("%Y-%m-%d %H:%M", time.gmtime(value))
    except (OverflowError, OSError, ValueError):
        return "?"


def _signed(delta: int) -> str:
    return ("+" if delta >= 0 else "-") + human_size(abs(delta))


def summary(diff: StateDiff) -> dict[str, int]:
    """Counts of added, removed and changed entries and the net size change in bytes."""
    return {
        "added": len(diff.by_kind(ChangeKind.ADDED)),
        "removed": len(diff.by_kind(ChangeKind.REMOVED)),
        "changed": len(diff.by_kind(ChangeKind.CHANGED)),
        "delta": sum(c.delta for c in diff.changes),
    }


def _line(c: Change) -> str:
    name = f"{c.volume}:{printable(c.path)}" + ("/" if c.kind.value == "directory" else "")
    if c.change is ChangeKind.ADDED:
        return f"A  {name}  ({_signed(c.delta)})" if c.kind.value != "directory" else f"A  {name}"
    if c.change is ChangeKind.REMOVED:
        return f"D  {name}  ({_signed(c.delta)})" if c.kind.value != "directory" else f"D  {name}"
    if not c.content_changed:
        return f"m  {name}  (modified {_when(c.mtime_a)} -> {_when(c.mtime_b)}, same content)"
    if c.size_a != c.size_b:
        return (
            f"M  {name}  {human_size(c.size_a or 0)} -> {human_size(c.size_b or 0)} "
            f"({_signed(c.delta)})"
        )
    return f"M  {name}  (same size, {human_size(c.size_b or 0)})"


def cmd_diff(args: argparse.Namespace, ctx: Context) -> int:
    """vdictl diff VMFOLDER A B [--disk N] [--volume NAME] [--json]."""
    ctx.cancel_cleanly = True
    paths_a = state_paths(args.source, args.a, args.disk)
    paths_b = state_paths(args.source, args.b, args.disk)
    with _open(paths_a) as chain_a, _open(paths_b) as chain_b:
        diff = diff_chains(
            chain_a, chain_b, volume=args.volume, progress=ctx.progress, cancel=ctx.token
        )
    totals = summary(diff)
    if ctx.json:
        s = diff.stats
        print_json(
            {
                "a": {"state": args.a, "images": [str(p) for p in paths_a]},
                "b": {"state": args.b, "images": [str(p) for p in paths_b]},
                "changes": [c.to_dict() for c in diff.changes],
                "summary": totals,
                "notes": diff.notes,
                "stats": {
                    "changed_blocks": s.changed_blocks,
                    "entries": s.entries,
                    "files_compared": s.compared,
                    "bytes_compared": s.bytes_compared,
                    "volumes_unchanged": s.volumes_skipped,
                },
            }
        )
        return 0
    for change in diff.changes:
        print(_line(change))
    for note in diff.notes:
        print(f"note: {printable(note)}")
    if diff.stats.volumes_skipped:
        print(f"Unchanged volumes (no block differs): {', '.join(diff.stats.volumes_skipped)}.")
    if not diff.changes:
        print(f"No guest files differ between '{args.a}' and '{args.b}'.")
    else:
        print(
            f"{totals['added']} added, {totals['removed']} removed, {totals['changed']} "
            f"changed; net {_signed(totals['delta'])}; contents of "
            f"{diff.stats.compared} file(s) compared."
        )
    return 0
