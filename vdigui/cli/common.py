"""Helpers shared by vdictl's command modules: output, progress rendering, sizes."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from vdigui.engine.progress import CancelToken, Progress

_UNITS = ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_size(value: int) -> str:
    """1536 -> '1.5 KiB'; exact byte counts stay available in --json output."""
    size = float(value)
    for unit in _UNITS:
        if abs(size) < 1024 or unit == _UNITS[-1]:
            return f"{int(size)} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{value} bytes"  # unreachable


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
