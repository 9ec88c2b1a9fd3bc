"""Colours and palettes: one place decides how states and layers look, light or dark.

Why a module of its own: the block map, the fragmentation plot, the legends and the tests all
need the same colour for "allocated in layer 2" or "all-zero block", and both palettes must stay
readable, so the colours are chosen here against the palette's background.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtGui import QColor, QIcon, QPalette
from PySide6.QtWidgets import QApplication, QStyle

# The hex values are declared once, in the engine's palette (vdigui/engine/palette.py), so
# the HTML report draws in exactly the app's colours.
from vdigui.engine import (  # noqa: F401  (re-exported for the views)
    ALL_ZERO_COLOUR,
    FREE_DARK,
    FREE_LIGHT,
    JUMP_COLOURS,
    JUMP_LABELS,
    LAYER_HUES,
    USE_COLOUR,
    ZERO_COLOUR,
)


def is_dark() -> bool:
    """Whether the application palette is dark (window text lighter than the window)."""
    app = QApplication.instance()
    if not isinstance(app, QApplication):
        return False
    palette = app.palette()
    return palette.color(QPalette.ColorRole.Window).lightness() < 128


def layer_colour(index: int) -> QColor:
    """The colour of chain layer ``index`` (base = 0)."""
    return QColor(LAYER_HUES[index % len(LAYER_HUES)])


def background() -> QColor:
    """The plot background: the palette's base colour."""
    app = QApplication.instance()
    if isinstance(app, QApplication):
        return app.palette().color(QPalette.ColorRole.Base)
    return QColor("#ffffff")


def free_colour() -> QColor:
    """FREE blocks: a faint tint of the background, so data stands out in both palettes."""
    return QColor(FREE_DARK) if is_dark() else QColor(FREE_LIGHT)


def foreground() -> QColor:
    """Text colour for plot axes."""
    app = QApplication.instance()
    if isinstance(app, QApplication):
        return app.palette().color(QPalette.ColorRole.WindowText)
    return QColor("#000000")


def rgba(colour: QColor | str) -> np.ndarray:
    """A colour as a float RGBA row (0..255) for numpy blending."""
    c = QColor(colour)
    return np.array([c.red(), c.green(), c.blue(), c.alpha()], dtype=np.float32)


def dark_palette() -> QPalette:
    """A dark palette for the Fusion style with enough contrast for small text."""
    p = QPalette()
    window, base, text = QColor("#2b2f33"), QColor("#1f2226"), QColor("#e8eaed")
    role = QPalette.ColorRole
    p.setColor(role.Window, window)
    p.setColor(role.WindowText, text)
    p.setColor(role.Base, base)
    p.setColor(role.AlternateBase, QColor("#272b30"))
    p.setColor(role.ToolTipBase, QColor("#3c4148"))
    p.setColor(role.ToolTipText, text)
    p.setColor(role.Text, text)
    p.setColor(role.Button, QColor("#353a40"))
    p.setColor(role.ButtonText, text)
    p.setColor(role.BrightText, QColor("#ff6b6b"))
    p.setColor(role.Highlight, QColor("#3d7dca"))
    p.setColor(role.HighlightedText, QColor("#ffffff"))
    p.setColor(role.Link, QColor("#7ab7ff"))
    p.setColor(role.PlaceholderText, QColor("#9aa0a6"))
    disabled = QPalette.ColorGroup.Disabled
    for r in (role.WindowText, role.Text, role.ButtonText):
        p.setColor(disabled, r, QColor("#80868b"))
    return p


def light_palette() -> QPalette:
    """A light palette for the Fusion style (used when the system gives none, e.g. offscreen)."""
    p = QPalette()
    role = QPalette.ColorRole
    p.setColor(role.Window, QColor("#f3f4f6"))
    p.setColor(role.WindowText, QColor("#1f2328"))
    p.setColor(role.Base, QColor("#ffffff"))
    p.setColor(role.AlternateBase, QColor("#f6f8fa"))
    p.setColor(role.ToolTipBase, QColor("#ffffe1"))
    p.setColor(role.ToolTipText, QColor("#1f2328"))
    p.setColor(role.Text, QColor("#1f2328"))
    p.setColor(role.Button, QColor("#e9ebee"))
    p.setColor(role.ButtonText, QColor("#1f2328"))
    p.setColor(role.Highlight, QColor("#2f6fbf"))
    p.setColor(role.HighlightedText, QColor("#ffffff"))
    p.setColor(role.Link, QColor("#0b5cad"))
    p.setColor(role.PlaceholderText, QColor("#6e7781"))
    # setColor(role, ...) sets every colour group, so disabled controls would look enabled.
    disabled = QPalette.ColorGroup.Disabled
    for r in (role.WindowText, role.Text, role.ButtonText):
        p.setColor(disabled, r, QColor("#9aa1a9"))
    p.setColor(disabled, role.Button, QColor("#eef0f2"))
    return p


def badge_icon(severity: str) -> QIcon:
    """The warning badge of a tree node or problem row (the style's own icons, so they match)."""
    app = QApplication.instance()
    pixmap = (
        QStyle.StandardPixmap.SP_MessageBoxCritical
        if severity == "error"
        else QStyle.StandardPixmap.SP_MessageBoxWarning
    )
    if isinstance(app, QApplication):
        return app.style().standardIcon(pixmap)
    return QIcon()
