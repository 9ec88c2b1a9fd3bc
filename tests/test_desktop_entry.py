"""``vdigui --install-desktop-entry`` / ``--uninstall-desktop-entry``, run as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import REPO, require_tool

from vdigui.gui.desktop_entry import entry_text, exec_argument


def _vdigui(*args: str, data_home: Path) -> subprocess.CompletedProcess[str]:
    """Run the installed ``vdigui`` launcher of this venv (so Exec must name it)."""
    launcher = Path(sys.executable).parent / "vdigui"
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["XDG_DATA_HOME"] = str(data_home)
    return subprocess.run(
        [str(launcher), *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def _keys(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def test_install_writes_entry_and_icon_with_absolute_exec(tmp_path: Path) -> None:
    data = tmp_path / "share"
    done = _vdigui("--install-desktop-entry", data_home=data)
    assert done.returncode == 0, done.stderr
    desktop = data / "applications" / "vdigui.desktop"
    icon = data / "icons" / "hicolor" / "scalable" / "apps" / "vdigui.svg"
    assert sorted(p for p in data.rglob("*") if p.is_file()) == sorted([desktop, icon])
    assert icon.read_bytes() == (REPO / "resources" / "vdigui.svg").read_bytes()
    keys = _keys(desktop.read_text(encoding="utf-8"))
    launcher = Path(sys.executable).parent / "vdigui"
    assert keys["Exec"] == f"{launcher} %f"
    assert keys["TryExec"] == str(launcher)
    assert keys["Icon"] == "vdigui" and keys["Type"] == "Application"
    assert "inode/directory" not in keys["MimeType"], "must not claim every folder"
    assert str(desktop) in done.stdout and str(icon) in done.stdout
    # The entry really starts this vdigui: its Exec program answers --version.
    version = subprocess.run(
        [keys["TryExec"], "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert version.stdout.startswith("vdigui ")


def test_installed_entry_passes_desktop_file_validate(tmp_path: Path) -> None:
    validate = require_tool("desktop-file-validate")
    data = tmp_path / "share"
    assert _vdigui("--install-desktop-entry", data_home=data).returncode == 0
    result = subprocess.run(
        [validate, str(data / "applications" / "vdigui.desktop")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout


@pytest.mark.parametrize("folder", ["/opt/my apps/v$1\\x%/bin", "/plain/bin"])
def test_exec_quoting_survives_odd_paths(tmp_path: Path, folder: str) -> None:
    validate = require_tool("desktop-file-validate")
    program = f"{folder}/vdigui"
    text = entry_text([program])
    path = tmp_path / "vdigui.desktop"
    path.write_text(text, encoding="utf-8")
    result = subprocess.run(
        [validate, str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout
    # Undo the two escaping layers of the spec by hand and get the path back.
    exec_value = _keys(text)["Exec"].removesuffix(" %f")
    unescaped = exec_value.replace("\\\\", "\\").replace("%%", "%")
    if unescaped.startswith('"'):
        inner = unescaped[1:-1]
        out, i = [], 0
        while i < len(inner):
            if inner[i] == "\\":
                i += 1
            out.append(inner[i])
            i += 1
        unescaped = "".join(out)
    assert unescaped == program
    assert exec_argument("/plain/bin/vdigui") == "/plain/bin/vdigui"


def test_uninstall_removes_exactly_what_install_wrote(tmp_path: Path) -> None:
    data = tmp_path / "share"
    apps = data / "applications"
    apps.mkdir(parents=True)
    neighbour = apps / "other.desktop"
    neighbour.write_text(
        "[Desktop Entry]\nType=Application\nName=Other\nExec=other\n", encoding="utf-8"
    )
    assert _vdigui("--install-desktop-entry", data_home=data).returncode == 0
    done = _vdigui("--uninstall-desktop-entry", data_home=data)
    assert done.returncode == 0, done.stderr
    assert sorted(p for p in data.rglob("*") if p.is_file()) == [neighbour]
    assert done.stdout.count("Removed ") == 2
    again = _vdigui("--uninstall-desktop-entry", data_home=data)
    assert again.returncode == 0 and "nothing removed" in again.stdout


def test_desktop_entry_options_refuse_other_arguments(tmp_path: Path) -> None:
    done = _vdigui("--install-desktop-entry", "--demo", data_home=tmp_path / "share")
    assert done.returncode == 2 and "take no other arguments" in done.stderr
    assert not (tmp_path / "share").exists()
