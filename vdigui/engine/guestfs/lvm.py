"""LVM2 physical volumes: linear logical volumes are analysed, everything else is kept whole.

The PV label and metadata area are kept, free extents are unused, and each linear LV becomes a
nested volume whose pieces are composed through the PV's own extents. Segments of any other type
(thin, RAID, mirror, snapshot, cache, striped over several PVs) or on other PVs keep their extents
whole, because the bytes on this disk alone do not tell what they mean.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .blockmap import Unsupported, View

_LABEL = b"LABELONE"
_TYPE = b"LVM2 001"
_MDA_MAGIC = b" LVM2 x[5A%r0N*>"
_MDA_HEADER_SIZE = 512
_SECTOR = 512
_MAX_TEXT = 16 << 20


def probe(view: View) -> bool:
    """True when one of the first four sectors holds an LVM2 label."""
    head = view.read(0, min(4 * _SECTOR, view.size))
    return any(
        head[i * _SECTOR : i * _SECTOR + 8] == _LABEL
        and head[i * _SECTOR + 24 : i * _SECTOR + 32] == _TYPE
        for i in range(len(head) // _SECTOR)
    )


@dataclass(slots=True)
class LogicalVolume:
    """One LV as found in the metadata, in PV-local byte pieces (lv offset, pv offset, length)."""

    name: str
    pieces: list[tuple[int, int, int]]
    linear: bool
    reason: str


@dataclass(slots=True)
class PhysicalVolume:
    """What we learned from one PV's label and metadata."""

    vg: str
    pe_start: int
    extent_size: int
    pe_count: int
    kept: list[tuple[int, int]]  # (offset, length) of label and metadata areas
    lvs: list[LogicalVolume]
    #: (pv offset, length) of extents used by LVs we cannot analyse.
    opaque: list[tuple[int, int]]


def _tokens(text: str) -> Iterator[tuple[str, str | int]]:
    pattern = re.compile(
        r'\s+|#[^\n]*|"((?:[^"\\]|\\.)*)"|([\[\]{}=,])|([-+]?\d+(?:\.\d+)?)|([A-Za-z0-9_.+\-]+)'
    )
    pos = 0
    while pos < len(text):
        m = pattern.match(text, pos)
        if not m:
            raise Unsupported("The LVM metadata text could not be parsed.")
        pos = m.end()
        if m.group(1) is not None:
            yield ("str", re.sub(r"\\(.)", r"\1", m.group(1)))
        elif m.group(2):
            yield (m.group(2), m.group(2))
        elif m.group(3):
            yield ("num", int(float(m.group(3))))
        elif m.group(4):
            yield ("id", m.group(4))


def parse_metadata(text: str) -> dict[str, Any]:
    """Parse LVM2's text format into nested dicts (sections) with str/int/list values."""
    toks = list(_tokens(text))
    pos = 0

    def value() -> str | int | list[str | int]:
        nonlocal pos
        kind, val = toks[pos]
        if kind == "[":
            pos += 1
            items: list[str | int] = []
            while toks[pos][0] != "]":
                if toks[pos][0] == ",":
                    pos += 1
                    continue
                items.append(toks[pos][1])
                pos += 1
            pos += 1
            return items
        pos += 1
        return val

    def section(top: bool) -> dict[str, Any]:
        nonlocal pos
        out: dict[str, Any] = {}
        while pos < len(toks):
            kind, val = toks[pos]
            if kind == "}":
                if top:
                    raise Unsupported("The LVM metadata text has an unbalanced brace.")
                pos += 1
                return out
            if kind != "id" or not isinstance(val, str):
                raise Unsupported("The LVM metadata text could not be parsed.")
            pos += 1
            if toks[pos][0] == "=":
                pos += 1
                out[val] = value()
            elif toks[pos][0] == "{":
                pos += 1
                out[val] = section(False)
            else:
                raise Unsupported("The LVM metadata text could not be parsed.")
        if not top:
            raise Unsupported("The LVM metadata text ends inside a section.")
        return out

    try:
        return section(True)
    except IndexError:
        raise Unsupported("The LVM metadata text is truncated.") from None


def _locns(buf: bytes, pos: int) -> tuple[list[tuple[int, int]], int]:
    out: list[tuple[int, int]] = []
    while pos + 16 <= len(buf):
        off, size = struct.unpack_from("<QQ", buf, pos)
        pos += 16
        if off == 0:
            return out, pos
        out.append((off, size))
    raise Unsupported("The LVM label is damaged.")


def read_pv(view: View) -> PhysicalVolume:
    """Read the label, the newest metadata copy and the LV layout of this PV."""
    head = view.read(0, 4 * _SECTOR)
    for i in range(4):
        sec = head[i * _SECTOR : (i + 1) * _SECTOR]
        if sec[:8] == _LABEL and sec[24:32] == _TYPE:
            break
    else:
        raise Unsupported("The LVM label vanished while reading.")
    pvh_off = struct.unpack_from("<I", sec, 20)[0]
    pvh = sec[pvh_off:]
    pv_uuid = pvh[:32].decode("ascii", "replace")
    data_areas, pos = _locns(pvh, 40)
    meta_areas, _ = _locns(pvh, pos)
    if not data_areas:
        raise Unsupported("The LVM label lists no data area.")
    if not meta_areas:
        raise Unsupported("This PV carries no metadata copy, so its volumes cannot be mapped.")
    kept = [(0, (i + 1) * _SECTOR)]
    text = None
    for mda_off, mda_size in meta_areas:
        kept.append((mda_off, mda_size))
        text = text or _read_mda_text(view, mda_off, mda_size)
    if text is None:
        raise Unsupported("No valid LVM metadata area was found.")
    meta = parse_metadata(text)
    vgs = [(k, v) for k, v in meta.items() if isinstance(v, dict) and "physical_volumes" in v]
    if len(vgs) != 1:
        raise Unsupported("The LVM metadata does not describe exactly one volume group.")
    vg_name, vg = vgs[0]
    extent = int(vg["extent_size"]) * _SECTOR
    me = None
    for pv_name, pv in vg["physical_volumes"].items():
        if str(pv.get("id", "")).replace("-", "") == pv_uuid:
            me = pv_name, pv
    if me is None or extent <= 0:
        raise Unsupported("This PV is not listed in its own volume group metadata.")
    pv_name, pv = me
    pe_start = int(pv["pe_start"]) * _SECTOR
    pe_count = int(pv["pe_count"])
    if pe_start + pe_count * extent > view.size:
        raise Unsupported("The LVM extents run past the end of the physical volume.")
    kept.append((0, pe_start))
    lvs: list[LogicalVolume] = []
    opaque: list[tuple[int, int]] = []
    for lv_name, lv in vg.get("logical_volumes", {}).items():
        if not isinstance(lv, dict):
            continue
        segs = [v for k, v in lv.items() if k.startswith("segment") and isinstance(v, dict)]
        pieces: list[tuple[int, int, int]] = []
        reason = ""
        for seg in segs:
            stype = seg.get("type")
            stripes = seg.get("stripes", [])
            start = int(seg.get("start_extent", 0)) * extent
            mine = [
                (int(stripes[j + 1]), str(stripes[j]))
                for j in range(0, len(stripes) - 1, 2)
                if str(stripes[j]) == pv_name
            ]
            count = int(seg.get("extent_count", 0))
            if stype == "striped" and int(seg.get("stripe_count", 0)) == 1 and len(stripes) == 2:
                if mine:
                    pieces.append((start, pe_start + mine[0][0] * extent, count * extent))
                else:
                    reason = "Part of this logical volume lives on another physical volume."
            else:
                reason = f"Segment type '{stype}' is not supported; its extents are kept whole."
                per = count // max(1, len(stripes) // 2) if stype == "striped" else count
                for pe, _ in mine:
                    opaque.append((pe_start + pe * extent, per * extent))
        pieces.sort()
        if reason or not pieces:
            opaque.extend((p[1], p[2]) for p in pieces)
        lvs.append(
            LogicalVolume(f"{vg_name}/{lv_name}", pieces, not reason and bool(pieces), reason)
        )
    return PhysicalVolume(vg_name, pe_start, extent, pe_count, kept, lvs, opaque)


def _read_mda_text(view: View, mda_off: int, mda_size: int) -> str | None:
    """The current metadata text from an mda ring buffer (it may wrap), or None if invalid."""
    if mda_off + mda_size > view.size or mda_size <= _MDA_HEADER_SIZE:
        return None
    hdr = view.read(mda_off, _MDA_HEADER_SIZE)
    if hdr[4:20] != _MDA_MAGIC:
        return None
    off, size = struct.unpack_from("<QQ", hdr, 40)
    if off == 0 or size == 0 or size > _MAX_TEXT or off >= mda_size:
        return None
    first = min(size, mda_size - off)
    raw = view.read(mda_off + off, first)
    if first < size:
        raw += view.read(mda_off + _MDA_HEADER_SIZE, size - first)
    return raw.rstrip(b"\0").decode("utf-8", "replace")
