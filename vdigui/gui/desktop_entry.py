"""Put vdigui where Linux desktops look for applications (``vdigui --install-desktop-entry``).

Why a command instead of packaging data files: ``pip install`` into a virtual environment puts
nothing under ``~/.local/share`` (wheel data files land inside the venv, where no desktop
looks), and the shipped ``Exec=vdigui`` only works when that venv is on the desktop session's
PATH, which it almost never is. So the command writes a user-level entry whose Exec line names
the absolute path of the vdigui that is running, plus the icon under the hicolor theme, and
``--uninstall-desktop-entry`` removes exactly those two files again.

The locations follow the XDG Base Directory and Desktop Entry specifications:
``$XDG_DATA_HOME/applications/vdigui.desktop`` and
``$XDG_DATA_HOME/icons/hicolor/scalable/apps/vdigui.svg`` (``XDG_DATA_HOME`` defaults to
``~/.local/share``). This module imports no Qt, so it works without a display.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from vdigui.engine import fileio
from vdigui.gui.resources import asset_path

APP_ID = "vdigui"
#: Characters that force an Exec argument into double quotes (Desktop Entry spec, "The Exec
#: key": space, tab, newline and the shell's reserved characters).
_RESERVED = set(" \t\n\"'\\><~|&;$*?#()`")


@dataclass(frozen=True, slots=True)
class EntryPaths:
    """Where the desktop entry and its icon go."""

    desktop: Path
    icon: Path

    @property
    def files(self) -> tuple[Path, Path]:
        """Both files, desktop entry first."""
        return (self.desktop, self.icon)


def data_home() -> Path:
    """``$XDG_DATA_HOME``, or ``~/.local/share`` when it is unset, empty or relative."""
    value = os.environ.get("XDG_DATA_HOME", "")
    if value and Path(value).is_absolute():
        return Path(value)
    return Path.home() / ".local" / "share"


def entry_paths(base: Path | None = None) -> EntryPaths:
    """The two files under ``base`` (default: :func:`data_home`)."""
    root = base if base is not None else data_home()
    return EntryPaths(
        root / "applications" / f"{APP_ID}.desktop",
        root / "icons" / "hicolor" / "scalable" / "apps" / f"{APP_ID}.svg",
    )


def running_command() -> list[str]:
    """The absolute command line that starts this very vdigui.

    The ``vdigui`` launcher when that is what runs (or the one installed beside this Python,
    as in a venv), else this Python with ``-m vdigui``.
    """
    argv0 = sys.argv[0] if sys.argv else ""
    # absolute(), not resolve(): a venv's python is a symlink to the system one, and
    # following it would start vdigui outside the venv.
    if argv0 and Path(argv0).name == APP_ID and Path(argv0).is_file():
        return [str(Path(argv0).absolute())]
    beside = Path(sys.executable).parent / APP_ID
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside.absolute())]
    return [str(Path(sys.executable).absolute()), "-m", APP_ID]


def exec_argument(arg: str) -> str:
    """``arg`` written for an Exec key: quoted when needed, then escaped as a string value.

    Two layers, as the spec defines them: inside double quotes, ``"``, ````` ``, ``$`` and
    ``\\`` take a backslash; then the whole value goes through the general string escaping
    (a backslash is written ``\\\\``); a literal ``%`` is ``%%``.
    """
    arg = arg.replace("%", "%%")
    if any(c in _RESERVED for c in arg):
        inner = "".join("\\" + c if c in '"`$\\' else c for c in arg)
        arg = f'"{inner}"'
    return arg.replace("\\", "\\\\")


def entry_text(command: list[str]) -> str:
    """The .desktop file for ``command``: the shipped template with absolute Exec/TryExec."""
    template = asset_path(f"{APP_ID}.desktop").read_text(encoding="utf-8")
    exec_line = " ".join(exec_argument(a) for a in command) + " %f"
    out = []
    for line in template.splitlines():
        if line.startswith("Exec="):
            out.append(f"Exec={exec_line}")
            # TryExec hides the entry once this vdigui is gone (a deleted venv), instead of
            # leaving a launcher that fails silently. It takes a plain path, not a command.
            out.append("TryExec=" + command[0].replace("\\", "\\\\"))
        elif line.startswith("TryExec="):
            continue
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def install(base: Path | None = None, command: list[str] | None = None) -> EntryPaths:
    """Write the desktop entry and the icon (replacing earlier ones); returns where."""
    paths = entry_paths(base)
    text = entry_text(command or running_command())
    icon = asset_path(f"{APP_ID}.svg").read_bytes()
    for path, data in ((paths.icon, icon), (paths.desktop, text.encode("utf-8"))):
        fileio.makedirs(path.parent)
        fileio.write_file_atomic(path, data, mode=0o644)
    return paths


def uninstall(base: Path | None = None) -> list[Path]:
    """Remove the files :func:`install` writes (and nothing else); returns those removed."""
    removed = []
    for path in entry_paths(base).files:
        if path.is_file() or path.is_symlink():
            fileio.unlink(path, missing_ok=True)
            fileio.fsync_dir(path.parent)
            removed.append(path)
    return removed


def install_command() -> int:
    """``vdigui --install-desktop-entry``: install and say where; exit status."""
    try:
        paths = install()
    except OSError as exc:
        print(
            f"vdigui: error: cannot install the desktop entry: {exc.strerror or exc} "
            f"({exc.filename or data_home()}).",
            file=sys.stderr,
        )
        return 1
    print(f"Installed {paths.desktop}")
    print(f"Installed {paths.icon}")
    print(
        f"It starts {' '.join(running_command())}; remove both with "
        "'vdigui --uninstall-desktop-entry'."
    )
    return 0


def uninstall_command() -> int:
    """``vdigui --uninstall-desktop-entry``: remove and say what; exit status."""
    try:
        removed = uninstall()
    except OSError as exc:
        print(
            f"vdigui: error: cannot remove the desktop entry: {exc.strerror or exc} "
            f"({exc.filename}).",
            file=sys.stderr,
        )
        return 1
    if not removed:
        print(f"No vdigui desktop entry is installed under {data_home()}; nothing removed.")
    for path in removed:
        print(f"Removed {path}")
    return 0
