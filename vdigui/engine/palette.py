"""The colours of block states, chain layers, seek distances and space categories, once.

Why in the engine: the app (``vdigui/gui/theme.py``) and the HTML report
(:mod:`vdigui.engine.report_html`) draw the same pictures, and a reader who compares a report
with the app must find "data in layer 2" or "all-zero block" in the same colour in both. The
engine may not import Qt, so the hex values live here and the GUI theme takes them from here.
"""

from __future__ import annotations

#: Hues for chain layers, base first (a colour-blind-friendly qualitative set, Okabe-Ito).
LAYER_HUES = (
    "#0072B2",
    "#009E73",
    "#CC79A7",
    "#E69F00",
    "#56B4E9",
    "#D55E00",
    "#F0E442",
    "#7F3C8D",
)
#: A ZERO map entry (reads as zeros; in a differencing image it hides the parent).
ZERO_COLOUR = "#9AA5B1"
#: An allocated block whose bytes are all zero (what compaction drops).
ALL_ZERO_COLOUR = "#E0442B"
#: FREE blocks in the light and the dark palette: a faint tint of the background.
FREE_LIGHT = "#e9ecef"
FREE_DARK = "#3a3f44"
#: A block the guest's filesystems use completely (the block map's "Guest uses" row).
USE_COLOUR = "#7F3C8D"
#: Seek distance classes of the fragmentation view, in order, and their names.
JUMP_COLOURS = ("#2CA25F", "#A1D99B", "#FEC44F", "#F03B20", "#7A0177")
JUMP_LABELS = ("in order", "2–16 slots", "17–256", "257–4096", "over 4096")
#: Space-account categories (:class:`vdigui.engine.space_account.Category` values), as the
#: app's Space view draws them: data the guest uses as in the block map's "Guest uses" row,
#: all-zero blocks as in the block map, the rest in hues the block map does not use for data.
CATEGORY_COLOURS = {
    "header_and_map": "#4A5560",
    "guest_data": USE_COLOUR,
    "guest_unused": "#CBB3D4",
    "zero_blocks": ALL_ZERO_COLOUR,
    "hidden": "#A0522D",
    "slack": "#D3D8DD",
    "undo_data": "#17A2B8",
    "virtualbox_other": "#F2C14E",
    "unknown": "#8E979F",
}


def layer_hue(index: int) -> str:
    """The hex colour of chain layer ``index`` (base = 0)."""
    return LAYER_HUES[index % len(LAYER_HUES)]


__all__ = [
    "ALL_ZERO_COLOUR",
    "CATEGORY_COLOURS",
    "FREE_DARK",
    "FREE_LIGHT",
    "JUMP_COLOURS",
    "JUMP_LABELS",
    "LAYER_HUES",
    "USE_COLOUR",
    "ZERO_COLOUR",
    "layer_hue",
]
