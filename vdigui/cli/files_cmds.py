"""Guest files: ls, cat, get, find and where, on any state of a disk, without booting it.

SOURCE is an image (read through its chain) or a VM folder / .vbox with --snapshot NAME,
--current or --disk N, as for every inspecting command. A PATH may start with the volume it is
on (``p2:/etc/hostname``); without one, the disk's only ext, FAT or NTFS filesystem is
meant. The readers live in :mod:`vdigui.engine.guestfs.files`; docs/guest-files.md describes them.
"""

from __future__ import annotations

import argparse
import contextlib
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vdigui.cli.common import Context, add_source_arguments, print_json, resolve_source
from vdigui.engine.analysis import HostExtents, host_extents, locate
from vdigui.engine.chain import DiskChain, open_paths
from vdigui.engine.errors import GuestPathError, OperationRefused, VdiError
from vdigui.engine.guestfs.files import (
    BaseNamespace,
    Entry,
    EntryKind,
    GuestVolume,
    choose_volume,
    list_volumes,
    open_namespace,
    printable,
    split_volume_path,
)
from vdigui.engine.guestfs.files.extract import plan_extract, run_extract
from vdigui.engine.units import human_size
from vdigui.engine.usage_report import GuestReader

_VOLUME_HELP = (
    "a path inside the guest; put the volume in front when the disk holds "
    "several filesystems: pN: for partition N (p2:/etc), VG/LV: for an LVM "
    "volume, disk: for a disk without a partition table"
)


def _intermixed(sub: Any, name: str, **kwargs: Any) -> Any:
    """``sub.add_parser`` whose options may come between positionals.

    ``vdictl ls VM --snapshot S1 p1:/etc`` must work; plain argparse gives the optional PATH
    nothing as soon as it meets SOURCE alone, then calls ``p1:/etc`` unrecognised.
    """
    base = sub._parser_class

    class Intermixed(base):  # type: ignore[valid-type,misc]
        _mixing = False

        def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
            if self._mixing:  # the intermixed parse calls back in: parse plainly then
                return super().parse_known_args(args, namespace)
            self._mixing = True
            try:
                return self.parse_known_intermixed_args(args, namespace)
            finally:
                self._mixing = False

    sub._parser_class = Intermixed
    try:
        return sub.add_parser(name, **kwargs)
    finally:
        sub._parser_class = base


def register(sub: Any) -> None:
    """Add ls, cat, get, find and where to ``sub`` (an argparse sub-parsers object)."""
    p = _intermixed(
        sub,
        "ls",
        help="list a folder of the guest's files (any snapshot)",
        description="Lists a folder inside the guest disk, read-only. Without "
        "PATH on a disk with several filesystems, lists the volumes.",
    )
    add_source_arguments(p)
    p.add_argument("path", nargs="?", metavar="PATH", help=_VOLUME_HELP)
    p.add_argument(
        "-l",
        dest="long",
        action="store_true",
        help="long form: kind and permissions (or FAT attributes), links, owner, "
        "size, modification time (UTC), name and link target",
    )
    p.add_argument(
        "-R", dest="recursive", action="store_true", help="list sub-folders too, depth first"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser(
        "cat",
        help="write a guest file's bytes to standard output",
        description="Symbolic links inside the guest are followed (inside the same volume).",
    )
    add_source_arguments(p)
    p.add_argument("path", metavar="PATH", help=_VOLUME_HELP)
    p.set_defaults(func=cmd_cat)

    p = sub.add_parser(
        "get",
        help="copy guest files or folders out to a host folder",
        description="Copies each PATH into the folder DEST (created if "
        "missing) as DEST/NAME, keeping modification times; a volume root "
        "(p1:/) is copied as its contents. Guest symbolic links become host "
        "links with the same target and are never followed. Nothing is "
        "written when any name cannot be created, a link inside DEST is in the "
        "way, or a file exists (without --force). Exit status 1 then.",
    )
    add_source_arguments(p)
    p.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="guest files or folders to copy (" + _VOLUME_HELP + ")",
    )
    p.add_argument("dest", type=Path, metavar="DEST", help="the host folder to copy into")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace files that already exist in DEST (folders are never removed)",
    )
    p.set_defaults(func=cmd_get)

    p = sub.add_parser(
        "find",
        help="find guest files by name or glob",
        description="PATTERN is a shell glob (*, ?, [abc]) matched against "
        "names, or against whole paths when it holds a '/'. Prefix it with a "
        "volume (p2:*.conf) to search one volume; otherwise every readable "
        "volume is searched. FAT names match regardless of case.",
    )
    add_source_arguments(p)
    p.add_argument("pattern", metavar="PATTERN", help="glob, e.g. '*.log' or 'p1:/etc/*'")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_find)

    p = sub.add_parser(
        "where",
        help="where a guest file's bytes live: guest, VDI and host",
        description="Shows the file's extents inside the guest volume and "
        "disk, then for each VDI block under them the image file serving it, "
        "its slot and offset in that file, and the host filesystem's extents "
        "there (FIEMAP, Linux).",
    )
    add_source_arguments(p)
    p.add_argument("path", metavar="PATH", help=_VOLUME_HELP)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_where)


# -- opening --------------------------------------------------------------------------
class _Guest:
    """The chain of a SOURCE, its merged reader and the namespaces opened so far."""

    def __init__(self, args: argparse.Namespace) -> None:
        paths = resolve_source(args.source, args.snapshot, args.current, args.disk)
        self.chain: DiskChain = open_paths(paths)
        self.reader = GuestReader(self.chain)
        self.volumes = list_volumes(self.reader)
        self._open: dict[str, BaseNamespace] = {}

    def close(self) -> None:
        self.chain.close()

    def namespace(self, volume: GuestVolume | str | None) -> BaseNamespace:
        vol = volume if isinstance(volume, GuestVolume) else choose_volume(self.volumes, volume)
        ns = self._open.get(vol.name)
        if ns is None:
            ns = self._open[vol.name] = open_namespace(self.reader, vol)
            for note in ns.notes:
                print(f"vdictl: note: {vol.name}: {note}", file=sys.stderr)
        return ns

    def at(self, text: str) -> tuple[BaseNamespace, str]:
        name, path = split_volume_path(text)
        return self.namespace(name), path


@contextlib.contextmanager
def _guest(args: argparse.Namespace) -> Iterator[_Guest]:
    guest = _Guest(args)
    try:
        yield guest
    finally:
        guest.close()


# -- formatting -----------------------------------------------------------------------
def _when(value: float | None) -> str:
    if value is None:
        return "-"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(value))
    except (OverflowError, OSError, ValueError):
        return "?"


def _perm(entry: Entry) -> str:
    if entry.mode is not None:
        return stat.filemode(entry.mode)
    attrs = entry.attributes or 0
    kind = "d" if entry.is_dir else "-"
    return kind + "".join(
        c if attrs & bit else "-" for c, bit in (("r", 0x01), ("h", 0x02), ("s", 0x04), ("a", 0x20))
    )


def entry_dict(entry: Entry, volume: str) -> dict[str, Any]:
    """The JSON form of an entry."""
    return {
        "volume": volume,
        "path": entry.path,
        "name": entry.name,
        "kind": entry.kind.value,
        "size": entry.size,
        "mtime": entry.mtime,
        "atime": entry.atime,
        "ctime": entry.ctime,
        "btime": entry.btime,
        "mode": entry.mode,
        "attributes": entry.attributes,
        "uid": entry.uid,
        "gid": entry.gid,
        "id": entry.id,
        "nlink": entry.nlink,
        "target": None if entry.target is None else printable(entry.target),
        "name_note": entry.name_note or None,
    }


def _line(entry: Entry, long: bool, shown: str | None = None) -> str:
    name = shown if shown is not None else entry.name
    if entry.kind is EntryKind.DIRECTORY and not long:
        name += "/"
    if not long:
        return name
    owner = "-" if entry.uid is None else f"{entry.uid}:{entry.gid}"
    link = f" -> {printable(entry.target or '')}" if entry.kind is EntryKind.SYMLINK else ""
    return (
        f"{_perm(entry):<10} {entry.nlink:>3} {owner:>11} {entry.size:>12} "
        f"{_when(entry.mtime)} {name}{link}"
    )


# -- commands -------------------------------------------------------------------------
def cmd_ls(args: argparse.Namespace, ctx: Context) -> int:
    """vdictl ls SOURCE [PATH] [-l] [-R] [--json]."""
    with _guest(args) as guest:
        if args.path is None and sum(v.readable for v in guest.volumes) != 1:
            return _list_volumes(guest, ctx)
        ns, path = guest.at(args.path or "/")
        top = ns.resolve(path, follow=True)
        out: list[dict[str, Any]] = []
        if not top.is_dir:
            if ctx.json:
                print_json([entry_dict(top, ns.volume)])
            else:
                print(_line(top, args.long, top.path))
            return 0
        problems: list[str] = []
        listing: Iterator[tuple[str, list[Entry]]]
        if args.recursive:
            listing = ns.walk(top.path, onerror=lambda p, e: problems.append(str(e)))
        else:
            listing = iter([(top.path, ns.children(top))])
        first = True
        for dirpath, entries in listing:
            entries = sorted(entries, key=lambda e: e.name)
            if ctx.json:
                out.extend(entry_dict(e, ns.volume) for e in entries)
                continue
            if args.recursive:
                print(("" if first else "\n") + f"{dirpath}:")
            first = False
            for e in entries:
                print(_line(e, args.long))
        if ctx.json:
            print_json(out)
        for problem in problems:
            print(f"vdictl: warning: {problem}", file=sys.stderr)
        return 1 if problems else 0


def _list_volumes(guest: _Guest, ctx: Context) -> int:
    rows: list[dict[str, Any]] = []
    for v in guest.volumes:
        label = ""
        kind = v.kind
        if v.readable:
            try:
                ns = guest.namespace(v)
                kind, label = ns.kind, ns.label
            except VdiError as exc:  # a damaged volume is shown, not fatal
                kind = f"{v.kind} (unreadable: {exc})"
        rows.append(
            {
                "volume": v.name,
                "partition": v.partition,
                "kind": kind,
                "label": label,
                "start": v.start,
                "size": v.size,
                "readable": v.readable,
            }
        )
    if ctx.json:
        print_json(rows)
        return 0
    if not rows:
        print("The disk holds no partitions or filesystems.")
    for r in rows:
        label = f" '{printable(r['label'])}'" if r["label"] else ""
        print(f"{r['volume']}:  {r['kind']}{label}, {human_size(r['size'])} ({r['partition']})")
    return 0


def cmd_cat(args: argparse.Namespace, ctx: Context) -> int:
    """vdictl cat SOURCE PATH."""
    with _guest(args) as guest:
        ns, path = guest.at(args.path)
        entry = ns.resolve(path, follow=True)
        if entry.is_dir:
            raise GuestPathError(f"{entry.path} in {ns.volume} is a folder; use 'vdictl ls'.")
        out = sys.stdout.buffer
        for piece in ns.iter_read(entry):
            ctx.token.raise_if_cancelled("Cancelled.")
            out.write(piece)
        out.flush()
    return 0


def cmd_get(args: argparse.Namespace, ctx: Context) -> int:
    """vdictl get SOURCE PATH... DEST [--force]."""
    ctx.cancel_cleanly = True
    with _guest(args) as guest:
        sources = []
        for text in args.paths:
            ns, path = guest.at(text)
            sources.append((ns, ns.resolve(path, follow=False)))
        plan = plan_extract(sources, args.dest, force=args.force)
        for where, note in plan.renamed:
            print(
                f"vdictl: note: {printable(where)}: {note}; saved under an escaped name.",
                file=sys.stderr,
            )
        if plan.problems:
            raise OperationRefused(plan.refusal())
        for where, why in plan.skipped:
            print(f"vdictl: note: {printable(where)} skipped: {why}.", file=sys.stderr)
        result = run_extract(plan, progress=ctx.progress, cancel=ctx.token)
    print(
        f"Extracted {result.files} file(s), {result.links} link(s) and {result.folders} "
        f"folder(s), {human_size(result.bytes)}, to {args.dest}.",
        file=sys.stderr,
    )
    return 0


def cmd_find(args: argparse.Namespace, ctx: Context) -> int:
    """vdictl find SOURCE PATTERN [--json]."""
    with _guest(args) as guest:
        name, pattern = (
            split_volume_path(args.pattern) if ":" in args.pattern else (None, args.pattern)
        )
        if name is not None:
            targets = [choose_volume(guest.volumes, name)]
        else:
            targets = [v for v in guest.volumes if v.readable]
            if not targets:
                choose_volume(guest.volumes, None)  # raises the plain explanation
        several = len(targets) > 1
        found: list[dict[str, Any]] = []
        for vol in targets:
            ns = guest.namespace(vol)
            for entry in ns.find(pattern):
                if ctx.json:
                    found.append(entry_dict(entry, ns.volume))
                else:
                    print(f"{ns.volume}:{entry.path}" if several else entry.path)
        if ctx.json:
            print_json(found)
    return 0


def cmd_where(args: argparse.Namespace, ctx: Context) -> int:
    """vdictl where SOURCE PATH [--json]."""
    with _guest(args) as guest:
        ns, path = guest.at(args.path)
        entry = ns.resolve(path, follow=True)
        extents = ns.extents(entry)
        chain = guest.chain
        bs = chain.block_size
        rows: list[dict[str, Any]] = []
        hosts: dict[Path, HostExtents] = {}
        for ext in extents:
            row: dict[str, Any] = {
                "file_offset": ext.file_offset,
                "length": ext.length,
                "kind": ext.kind.value,
                "volume_offset": ext.volume_offset,
                "disk_offset": ext.disk_offset,
                "blocks": [],
            }
            if ext.disk_offset is not None:
                pos, end = ext.disk_offset, ext.disk_offset + ext.length
                while pos < end:
                    take = min(end - pos, bs - pos % bs)
                    loc = locate(chain, pos)
                    piece: dict[str, Any] = {
                        "disk_offset": pos,
                        "length": take,
                        "block": loc.block,
                        "layer": loc.layer,
                        "image": None if loc.path is None else str(loc.path),
                        "state": loc.state,
                        "slot": loc.slot,
                        "image_offset": loc.file_offset,
                        "host": [],
                    }
                    if loc.path is not None and loc.file_offset is not None:
                        he = hosts.get(loc.path)
                        if he is None:
                            he = hosts[loc.path] = host_extents(loc.path)
                        piece["host"] = _host_pieces(he, loc.file_offset, take)
                    row["blocks"].append(piece)
                    pos += take
            rows.append(row)
        if ctx.json:
            print_json(
                {
                    "volume": ns.volume,
                    "path": entry.path,
                    "size": entry.size,
                    "extents": rows,
                    "host_notes": {str(p): h.reason for p, h in hosts.items() if not h.available},
                }
            )
            return 0
        print(f"{ns.volume}:{entry.path}: {entry.size:,} bytes in {len(rows)} extent(s)")
        for r in rows:
            where = (
                ""
                if r["disk_offset"] is None
                else f" at volume byte {r['volume_offset']:,}, disk byte {r['disk_offset']:,}"
            )
            print(f"  file {r['file_offset']:,}+{r['length']:,} {r['kind']}{where}")
            for b in r["blocks"]:
                if b["image"] is None:
                    print(f"    VDI block {b['block']}: no image stores it (reads as zeros)")
                    continue
                layer = f"layer {b['layer']} {Path(b['image']).name}"
                if b["state"] != "allocated":
                    print(f"    VDI block {b['block']}: {layer} marks it {b['state']}")
                    continue
                print(
                    f"    VDI block {b['block']}: {layer}, slot {b['slot']}, image byte "
                    f"{b['image_offset']:,}+{b['length']:,}"
                )
                for h in b["host"]:
                    print(
                        f"      host: file byte {h['logical']:,} -> disk byte "
                        f"{h['physical']:,}, {h['length']:,} bytes"
                    )
        for p, h in hosts.items():
            if not h.available:
                print(f"Host extents of {p.name} are not available: {h.reason}.")
    return 0


def _host_pieces(he: HostExtents, offset: int, length: int) -> list[dict[str, int]]:
    """The host extents under image bytes ``[offset, offset+length)``."""
    out: list[dict[str, int]] = []
    if not he.available:
        return out
    end = offset + length
    for x in he.extents:
        lo, hi = max(offset, x.logical), min(end, x.logical + x.length)
        if lo < hi:
            out.append({"logical": lo, "physical": x.physical + lo - x.logical, "length": hi - lo})
    return out
