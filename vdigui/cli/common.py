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
from vdigui.engine.sniff import require_regular_file


def parse_size(text: str) -> int:
    """'64M', '2G', '1TiB', '512K', '1048576' -> bytes (binary units).

    Raises:
        ValueError: the text is not a size.
    """
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
    raw = text.strip().upper().removesuffix("B").removesuffix("I")
    number = raw.rstrip("KMGTP")
    unit = raw[len(number) :]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in units or value < 0:
        raise ValueError(f"'{text}' is not a size (examples: 64M, 2G, 1T)")
    return int(value * units[unit])


def print_json(value: Any) -> None:
    """Print ``value`` as indented JSON on stdout (non-ASCII names stay readable text)."""
    json.dump(value, sys.stdout, indent=2, sort_keys=False, ensure_ascii=False)
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
    _tty: bool | None = field(default=None)  # asked once: an ioctl per event adds up

    def progress(self, event: Progress) -> None:
        """Render progress on stderr when it is a terminal (at most 10 updates a second)."""
        if self._tty is None:
            self._tty = sys.stderr.isatty()
        if not self._tty:
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


def add_source_arguments(
    parser: argparse.ArgumentParser, *, dest: str = "source", metavar: str = "SOURCE"
) -> None:
    """SOURCE as an image, or a VM folder / .vbox with --snapshot NAME / --current / --disk N.

    Every inspecting command (info, map, frag, check, usage, export) and clone take the same
    forms, so a user learns them once.
    """
    parser.add_argument(
        dest,
        type=Path,
        metavar=metavar,
        help="an image (read through its chain), or a VM folder or its .vbox "
        "file together with --snapshot NAME, --current or --disk N",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--snapshot",
        metavar="NAME",
        help="(VM source) the disk as snapshot NAME (or UUID) froze it",
    )
    which.add_argument(
        "--current", action="store_true", help="(VM source) the disk in the current state"
    )
    parser.add_argument(
        "--disk",
        metavar="N",
        help="(VM source) which disk when the VM has "
        "several: its position in `vdictl tree`, or its file name",
    )


def is_vm_source(source: Path) -> bool:
    """Whether SOURCE names a VM (a folder, a .vbox, or a pre-1.7 machine .xml)."""
    return source.is_dir() or source.suffix.lower() in (".vbox", ".xml")


def vm_words(source: Path) -> str:
    """How to call a VM source in a sentence: a .vbox is never "a VM folder"."""
    if source.is_dir():
        return f"the VM folder {source}"
    return f"the VM settings file {source}"


def resolve_source(
    source: Path, snapshot: str | None, current: bool, disk: str | None = None
) -> tuple[Path, ...]:
    """The chain files (base first) a SOURCE argument names.

    Raises:
        VdiError: the chain is broken, or a VM was given without --snapshot/--current/--disk.
    """
    if is_vm_source(source):
        return _resolve_vm_source(source, snapshot, current, disk)
    _image_only(source, snapshot, current, disk)
    resolution = resolve_chain(source)
    if resolution.error is not None:
        raise resolution.error
    return resolution.paths


def source_image(
    source: Path, snapshot: str | None, current: bool, disk: str | None = None
) -> Path:
    """The one image a SOURCE names: the image itself, or the chosen VM disk's top image.

    An image is taken as it is (its parents need not be found: info and map show one file).
    """
    if is_vm_source(source):
        return _resolve_vm_source(source, snapshot, current, disk)[-1]
    _image_only(source, snapshot, current, disk)
    return source


def _image_only(source: Path, snapshot: str | None, current: bool, disk: str | None) -> None:
    if snapshot is not None or current or disk is not None:
        raise VdiError(
            f"--snapshot, --current and --disk choose a disk of a VM, but {source} "
            "is an image; give the VM folder or its .vbox file instead."
        )
    require_regular_file(source)


def _resolve_vm_source(
    folder: Path, snapshot: str | None, current: bool, disk: str | None
) -> tuple[Path, ...]:
    from vdigui.engine.vmfolder import load_vm_folder  # only VM-folder sources need the parser

    vm = load_vm_folder(folder)
    if snapshot is not None:
        node = vm.snapshot_by_name_or_uuid(snapshot)
        leaves = list(vm.disk_for_snapshot(node))
        where = f"snapshot '{node.name}' of {vm_words(folder)}"
    else:
        if not current and disk is None:
            what = "a VM folder" if folder.is_dir() else "a VM settings file"
            raise VdiError(
                f"{folder} is {what}: say which disk with --current, --snapshot NAME or --disk N."
            )
        leaves = list(vm.current_disks())
        where = f"the current state of {vm_words(folder)}"
    if not leaves:
        raise VdiError(f"{where[0].upper()}{where[1:]} has no hard disk attached.")
    if disk is not None:
        chosen = [
            m
            for i, m in enumerate(leaves, start=1)
            if disk == str(i) or (m.path is not None and m.path.name == disk)
        ]
        if not chosen:
            raise VdiError(f"--disk {disk} matches none of the {len(leaves)} disk(s) of {where}.")
        leaves = chosen
    if len(leaves) > 1:
        raise VdiError(
            f"{where[0].upper()}{where[1:]} has {len(leaves)} disks; choose one "
            f"with --disk 1..{len(leaves)}."
        )
    return tuple(vm.chain_for(leaves[0]))
