"""Linux swap areas: kept whole by default, optionally reduced to their header page.

Swap contents are worthless after a clean shutdown, but a hibernation image lives in the swap
area too and resume needs every byte of it, so a hibernation signature always keeps the area
whole.
"""

from __future__ import annotations

import struct

from .blockmap import FsResult, Marker, Unsupported, View

_PAGE_SIZES = (4096, 8192, 16384, 65536)
_SWAP_SIGS = (b"SWAPSPACE2", b"SWAP-SPACE")
_HIBERNATION_SIGS = (b"S1SUSPEND", b"S2SUSPEND", b"ULSUSPEND", b"LINHIB0001")


def detect(view: View) -> tuple[int, bytes] | None:
    """Return (page size, 10-byte signature) of a swap or hibernation area, or None."""
    for ps in _PAGE_SIZES:
        if ps > view.size:
            break
        sig = view.read(ps - 10, 10)
        if sig in _SWAP_SIGS or any(sig.startswith(h) for h in _HIBERNATION_SIGS):
            return ps, sig
    return None


def analyze(view: View, marker: Marker, res: FsResult, *, discard: bool) -> None:
    """Keep the swap area whole, or only its first page when ``discard`` is allowed."""
    res.kind = "swap"
    found = detect(view)
    if found is None:
        raise Unsupported("The swap signature vanished while reading.")
    ps, sig = found
    if ps >= 2048:
        head = view.read(0, 1068)
        (version,) = struct.unpack_from("<I", head, 1024)
        if version == 1:
            res.label = head[1052:1068].split(b"\0", 1)[0].decode("utf-8", "replace")
    if sig not in _SWAP_SIGS:
        raise Unsupported(
            "The swap area holds a hibernation image (HIBERNATED); the guest needs it to resume, "
            "so it is kept whole."
        )
    if not discard:
        raise Unsupported(
            "Swap is kept whole by default; allow discarding swap contents to drop it."
        )
    marker.used_range(0, ps)
    res.note("Swap contents will be discarded; only the swap header page is kept.")
