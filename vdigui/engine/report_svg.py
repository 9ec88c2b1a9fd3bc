"""The report's pictures as inline SVG, drawn from the report dict alone (no Qt, no files).

Why SVG text rather than PNG: it needs no imaging library in the engine, stays sharp when the
reader zooms, carries a hover title per cell (the counts behind its colour, as the app's
tooltips do), and is plain text inside the one HTML file. Colours come from
:mod:`vdigui.engine.palette`, the same values the app draws with.

The block map follows the app's honest-heatmap rule: a cell that holds any block of a class
shows it (tinted at least :data:`MIN_TINT` of the way to the class colour, deeper with the
log of its count), and a cell holding several classes is split into stacked bands, one per
class, so nothing a cell holds vanishes and mixed cells read as mixed.

Every text that came from a file (image names) is escaped here; callers pass raw strings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from typing import Any

from vdigui.engine.palette import (
    CATEGORY_COLOURS,
    FREE_LIGHT,
    JUMP_COLOURS,
    JUMP_LABELS,
    ZERO_COLOUR,
    layer_hue,
)
from vdigui.engine.units import human_size

#: How far from the background towards its class colour a cell holding one block is tinted
#: (the app's block map uses the same rule, ``vdigui/gui/blockstates.py``).
MIN_TINT = 0.5
_LABEL_W = 190
_ROW_H = 20
_ROW_GAP = 4
_MAP_W = 768


def _rgb(colour: str) -> tuple[int, int, int]:
    c = colour.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def _hex(rgb: Sequence[float]) -> str:
    return "#" + "".join(f"{max(0, min(255, round(v))):02x}" for v in rgb)


def tint(colour: str, amount: float, background: str = FREE_LIGHT) -> str:
    """``colour`` blended over ``background`` by ``amount`` (0 = background, 1 = colour)."""
    bg, fg = _rgb(background), _rgb(colour)
    return _hex([b + (f - b) * amount for b, f in zip(bg, fg, strict=True)])


def cell_bands(counts: Sequence[int], colours: Sequence[str]) -> list[tuple[str, int]]:
    """(colour, class) of each band of a cell, bottom first; empty for a background cell.

    Class 0 is the background. A class holding ``n`` of the cell's ``total`` blocks is
    tinted ``MIN_TINT + (1 - MIN_TINT) * log(n) / log(total)``; a cell of one class only gets
    exactly its colour.
    """
    total = sum(counts)
    bands = []
    for cls in range(1, len(counts)):
        n = counts[cls]
        if n <= 0:
            continue
        depth = 1.0 if n >= total or total <= 1 else math.log(n) / math.log(total)
        bands.append((tint(colours[cls], MIN_TINT + (1.0 - MIN_TINT) * depth), cls))
    return bands


def _row_colours(row: dict[str, Any]) -> list[str]:
    if row["kind"] == "layer":
        return [FREE_LIGHT, ZERO_COLOUR, layer_hue(int(row["layer"]))]
    layers = len(row["classes"]) - 2
    return [FREE_LIGHT, ZERO_COLOUR, *(layer_hue(i) for i in range(layers))]


def _class_words(row: dict[str, Any], cls: int) -> str:
    name = str(row["classes"][cls])
    if row["kind"] == "layer":
        return {"free": "free", "zero": "zero entries", "data": "data"}.get(name, name)
    if cls == 0:
        return "read as zeros (no layer)"
    if cls == 1:
        return "zero entries"
    return f"from {name}"


def block_map_svg(disk: dict[str, Any]) -> str:
    """The block map of one disk: one row per layer (base at the bottom), "guest sees" on top."""
    rows = list(disk["block_map"])
    ordered = [r for r in rows if r["kind"] == "served"] + [
        r for r in reversed(rows) if r["kind"] == "layer"
    ]
    k = int(disk["cell_blocks"])
    blocks = int(disk["blocks"])
    cells = max(1, -(-blocks // k)) if blocks else 1
    cell_w = _MAP_W / cells
    height = len(ordered) * (_ROW_H + _ROW_GAP) + 18
    width = _LABEL_W + _MAP_W + 4
    out = [
        f'<svg class="blockmap" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="Block map of {escape(str(disk["label"]))}">'
    ]
    for r, row in enumerate(ordered):
        y = r * (_ROW_H + _ROW_GAP)
        label = str(row["label"])
        short = label if len(label) <= 28 else label[:12] + "…" + label[-14:]
        out.append(
            f'<text x="{_LABEL_W - 6}" y="{y + _ROW_H - 6}" text-anchor="end">'
            f"<title>{escape(label)}</title>{escape(short)}</text>"
        )
        out.append(
            f'<rect x="{_LABEL_W}" y="{y}" width="{_MAP_W}" height="{_ROW_H}" fill="{FREE_LIGHT}"/>'
        )
        colours = _row_colours(row)
        counts = row["counts"]
        start = 0
        while start < len(counts):
            end = start + 1
            while end < len(counts) and counts[end] == counts[start]:
                end += 1
            bands = cell_bands(counts[start], colours)
            first, last = start * k, min(end * k, blocks) - 1
            words = ", ".join(
                f"{n:,} {_class_words(row, c)}" for c, n in enumerate(counts[start]) if n
            )
            title = escape(f"blocks {first:,}–{last:,}: {words}")
            x = _LABEL_W + start * cell_w
            w = (end - start) * cell_w
            if not bands:
                out.append(
                    f'<rect x="{x:.2f}" y="{y}" width="{w:.2f}" height="{_ROW_H}" '
                    f'fill="{FREE_LIGHT}"><title>{title}</title></rect>'
                )
            else:
                band_h = _ROW_H / len(bands)
                for b, (colour, _cls) in enumerate(bands):
                    by = y + _ROW_H - (b + 1) * band_h
                    out.append(
                        f'<rect x="{x:.2f}" y="{by:.2f}" width="{w:.2f}" '
                        f'height="{band_h:.2f}" fill="{colour}">'
                        f"<title>{title}</title></rect>"
                    )
            start = end
    axis_y = len(ordered) * (_ROW_H + _ROW_GAP) + 12
    out.append(f'<text x="{_LABEL_W}" y="{axis_y}">block 0</text>')
    out.append(
        f'<text x="{_LABEL_W + _MAP_W}" y="{axis_y}" text-anchor="end">'
        f"block {max(blocks - 1, 0):,}</text>"
    )
    scale = (
        "1 cell = 1 block"
        if k == 1
        else (f"1 cell = {k:,} blocks ({human_size(k * int(disk['block_size']))})")
    )
    out.append(
        f'<text x="{_LABEL_W + _MAP_W / 2}" y="{axis_y}" text-anchor="middle">'
        f"{escape(scale)}</text>"
    )
    out.append("</svg>")
    return "".join(out)


def block_map_legend(disk: dict[str, Any]) -> list[tuple[str, str]]:
    """(colour, words) of the block map's legend."""
    items = [
        (FREE_LIGHT, "free (reads through, or zeros)"),
        (ZERO_COLOUR, "zero entry (hides the parent)"),
    ]
    for row in disk["block_map"]:
        if row["kind"] == "layer":
            items.append((layer_hue(int(row["layer"])), f"data in {row['label']}"))
    items.append((tint(layer_hue(0), MIN_TINT), "paler: few blocks of the cell"))
    return items


def frag_svg(layer: dict[str, Any]) -> str:
    """One layer's fragmentation picture: guest block (across) against slot in the file (up)."""
    grid: list[str] = layer["grid"]
    height = len(grid)
    width = len(grid[0]) if grid else 0
    cw, ch = 4, 3
    pw, ph = width * cw, height * ch
    left, bottom = 56, 16
    total_w, total_h = left + pw + 4, ph + bottom + 4
    out = [
        f'<svg class="frag" width="{total_w}" height="{total_h}" '
        f'viewBox="0 0 {total_w} {total_h}" role="img" '
        f'aria-label="Fragmentation of {escape(str(layer["label"]))}">',
        f'<rect x="{left}" y="0" width="{pw}" height="{ph}" fill="{FREE_LIGHT}"/>',
    ]
    for r, line in enumerate(grid):
        c = 0
        while c < width:
            ch_ = line[c]
            end = c + 1
            while end < width and line[end] == ch_:
                end += 1
            if ch_ != ".":
                cls = int(ch_)
                out.append(
                    f'<rect x="{left + c * cw}" y="{r * ch}" width="{(end - c) * cw}" '
                    f'height="{ch}" fill="{JUMP_COLOURS[cls]}"/>'
                )
            c = end
    out.append(f'<text x="{left - 4}" y="10" text-anchor="end">slot {layer["slots"]:,}</text>')
    out.append(f'<text x="{left - 4}" y="{ph}" text-anchor="end">slot 0</text>')
    out.append(f'<text x="{left}" y="{ph + 13}">guest block 0</text>')
    out.append(f'<text x="{left + pw}" y="{ph + 13}" text-anchor="end">last guest block</text>')
    out.append("</svg>")
    return "".join(out)


def frag_legend() -> list[tuple[str, str]]:
    """(colour, words) of the fragmentation legend (seek distance to reach each block)."""
    return list(zip(JUMP_COLOURS, JUMP_LABELS, strict=True))


def space_bar_svg(categories: dict[str, int], width: int = 900, height: int = 26) -> str:
    """A stacked bar of bytes by space category (hover: exact bytes)."""
    total = sum(categories.values())
    out = [
        f'<svg class="spacebar" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="Space by category">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="{FREE_LIGHT}"/>',
    ]
    x = 0.0
    for name, value in categories.items():
        if value <= 0 or total <= 0:
            continue
        w = width * value / total
        colour = CATEGORY_COLOURS.get(name, "#8C8C8C")
        title = escape(f"{name}: {human_size(value)} ({value:,} bytes)")
        out.append(
            f'<rect x="{x:.2f}" y="0" width="{max(w, 1):.2f}" height="{height}" '
            f'fill="{colour}"><title>{title}</title></rect>'
        )
        x += w
    out.append("</svg>")
    return "".join(out)


__all__ = [
    "MIN_TINT",
    "block_map_legend",
    "block_map_svg",
    "cell_bands",
    "frag_legend",
    "frag_svg",
    "space_bar_svg",
    "tint",
]
