"""Byte counts in words, shared by vdictl and the app so both say sizes the same way."""

from __future__ import annotations

_UNITS = ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_size(value: float) -> str:
    """1536 -> '1.5 KiB' (binary units, one decimal); exact counts belong in --json output."""
    size = float(value)
    for unit in _UNITS[:-1]:
        if abs(size) < 1024:
            return f"{int(size)} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} {_UNITS[-1]}"
