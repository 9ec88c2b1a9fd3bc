"""``python -m vdigui``: start the desktop application (the CLI is ``python -m vdigui.cli``)."""

from __future__ import annotations

from vdigui.gui.app import main

if __name__ == "__main__":
    raise SystemExit(main())
