"""Helpers shared by vdictl's command modules: output, progress rendering, sizes."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vdigui.engine.chain import resolve_chain
from vdigui.engine.errors import VdiError
from vdigui.engine.progress import CancelToken, Progress


def parse_size(text: str) -> int:
    """'64M', '2G', '1TiB', '512K', '1048576' -> bytes (binary units).

    Raises:
        ValueError: the text is not a size.
    """
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
    raw = text.strip().upper().removesuffix("B").removesuffix("I")
    number = raw.rstrip("KMGTP")
    unit = raw[len(number):]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in units or value < 0:
        raise ValueError(f"'{text}' is not a size (examples: 64M, 2G, 1T)")
    return int(value * units[unit])


def print_json(value: Any) -> None:
    """Print ``value`` as indented JSON on stdout."""
    json.dump(value, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


@dataclass
class Context:
    """What every command receives besides its arguments."""

    token: CancelToken
    json: bool = False
    #: True while an operation polls ``token``: Ctrl-C then cancels it at the next block
    #: instead of interrupting at once.
    cancel_cleanly: bool = False
    _last: float = field(default=0.0)

    def progress(self, event: Progress) -> None:
        """Render progress on stderr when it is a terminal (at most 10 updates a second)."""
        if not sys.stderr.isatty():
            return
        now = time.monotonic()
        if now - self._last < 0.1 and event.done != event.total:
            return
        self._last = now
        pct = f"{100 * event.done // event.total:3d}%" if event.total else "   "
        sys.stderr.write(f"\r{pct} {event.phase} {event.done}/{event.total or '?'}\x1b[K")
        if event.total and event.done >= event.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """SOURCE as an image, or a VM folder with --snapshot NAME / --current (export, clone)."""
    parser.add_argument("source", type=Path,
                        help="an image (read through its chain) or a VM folder / .vbox")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--snapshot", metavar="NAME", help="the disk as snapshot NAME froze it")
    which.add_argument("--current", action="store_true", help="the disk in the current state")
    parser.add_argument("--disk", metavar="N", help="which disk when the VM has several "
                        "(its position in `vdictl tree`, or its file name)")


def resolve_source(source: Path, snapshot: str | None, current: bool,
                   disk: str | None = None) -> tuple[Path, ...]:
    """The chain files (base first) a SOURCE argument names.

    Raises:
        VdiError: the chain is broken, or a VM folder was given without --snapshot/--current.
    """
    if source.is_dir() or source.suffix.lower() == ".vbox":
        return _resolve_vm_source(source, snapshot, current, disk)
    if snapshot is not None or current:
        raise VdiError(f"--snapshot and --current need a VM folder, but '{source}' is an image.")
    if not source.exists():
        raise VdiError(f"'{source}' does not exist.")
    resolution = resolve_chain(source)
    if resolution.error is not None:
        raise resolution.error
    return resolution.paths


def _resolve_vm_source(folder: Path, snapshot: str | None, current: bool,
                       disk: str | None) -> tuple[Path, ...]:
    from vdigui.engine.vmfolder import load_vm_folder  # only VM-folder sources need the parser

    if snapshot is None and not current:
        raise VdiError(f"'{folder}' is a VM folder: say which state with --snapshot NAME or "
                       "--current.")
    vm = load_vm_folder(folder)
    if snapshot is not None:
        node = vm.snapshot_by_name_or_uuid(snapshot)
        leaves = vm.disk_for_snapshot(node)
        where = f"snapshot '{node.name}'"
    else:
        leaves = vm.current_disks()
        where = "the current state"
    leaves = list(leaves)
    if not leaves:
        raise VdiError(f"{where} of '{folder}' has no hard disk attached.")
    if disk is not None:
        chosen = [m for i, m in enumerate(leaves, start=1)
                  if disk == str(i) or (m.path is not None and m.path.name == disk)]
        if not chosen:
            raise VdiError(f"--disk {disk} matches none of the {len(leaves)} disk(s) of {where}.")
        leaves = chosen
    if len(leaves) > 1:
        raise VdiError(f"{where} of '{folder}' has {len(leaves)} disks; choose one with --disk "
                       f"1..{len(leaves)}.")
    return tuple(vm.chain_for(leaves[0]))
