"""Find runtime assets (icons, the .desktop file) in a source checkout or an installed wheel.

The assets live in the repository's top-level ``resources/`` folder; an installed package
carries a copy under ``vdigui/resources``. One helper resolves both, so no code hard-codes a
path and a test can check that every asset the code names exists.
"""

from __future__ import annotations

from importlib import resources as importlib_resources
from pathlib import Path

#: Every asset the application loads by name (a test asserts each one exists).
ASSETS = ("vdigui.svg", "vdigui.png", "vdigui.desktop")


def asset_path(name: str) -> Path:
    """The file of asset ``name``.

    Raises:
        FileNotFoundError: the asset is in neither place (a packaging bug).
    """
    with_package = importlib_resources.files("vdigui").joinpath("resources", name)
    candidate = Path(str(with_package))
    if candidate.is_file():
        return candidate
    checkout = Path(__file__).resolve().parents[2] / "resources" / name
    if checkout.is_file():
        return checkout
    raise FileNotFoundError(f"The application asset '{name}' is missing ({checkout}).")
