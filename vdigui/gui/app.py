"""Start vdigui: command line, QApplication, error hooks, palettes, and the screenshot mode.

``vdigui [PATH] [--demo [--clean]] [--screenshot OUT.png [--select NAME] [--tab TAB] [--size WxH]
[--wizard KIND [--target NAME] --page PAGE]] [--install-desktop-entry | --uninstall-desktop-entry]``

The screenshot mode renders the window offscreen (no display needed), waits until loading and
analysis have finished, writes the PNG and exits 0; the README's pictures come from it. It uses
a throw-away settings file so a user's saved geometry never changes a screenshot, and it prints
errors instead of opening dialogs nobody could click.

Commands that need no window (``--demo --clean``, the desktop entry) and the check that a
display exists all run before Qt is imported: without a display, Qt's xcb plugin aborts the
process with advice about reinstalling libraries, which is wrong and frightening.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from vdigui import __version__

TABS = ("overview", "header", "blockmap", "fragmentation", "space", "files")
WIZARDS = ("compact", "clone", "delete-snapshot", "repair", "resize")
WIZARD_PAGES = ("intro", "options", "preview", "run", "result")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (argparse exits with a usage message on errors)."""
    parser = argparse.ArgumentParser(
        prog="vdigui", description="Inspect VirtualBox VM folders and VDI disk images."
    )
    parser.add_argument(
        "path", nargs="?", type=Path, help="a VM folder, a .vbox file or a .vdi image to open"
    )
    parser.add_argument(
        "--demo", action="store_true", help="build (once, in the cache folder) and open a demo VM"
    )
    parser.add_argument(
        "--screenshot",
        type=Path,
        metavar="OUT.png",
        help="render the window offscreen to OUT.png and exit",
    )
    parser.add_argument(
        "--select", metavar="NAME", help="with --screenshot: select this snapshot or image first"
    )
    parser.add_argument(
        "--tab", choices=TABS, default="overview", help="with --screenshot: the tab to show"
    )
    parser.add_argument(
        "--size",
        default="1400x900",
        metavar="WxH",
        help="with --screenshot: the window size in pixels",
    )
    parser.add_argument(
        "--wizard",
        choices=WIZARDS,
        help="with --screenshot: render a page of this operation's wizard "
        "(with real plan data; nothing is written)",
    )
    parser.add_argument(
        "--target",
        metavar="NAME",
        help="with --wizard: the snapshot or image to act on (default: the first suitable one)",
    )
    parser.add_argument(
        "--page", choices=WIZARD_PAGES, default="intro", help="with --wizard: the page to render"
    )
    parser.add_argument(
        "--clean",
        action="store_true",
        help="with --demo: remove the demo folder built in the cache folder and exit",
    )
    entry = parser.add_mutually_exclusive_group()
    entry.add_argument(
        "--install-desktop-entry",
        action="store_true",
        help="add vdigui to the desktop's application menu (a .desktop file "
        "and an icon under $XDG_DATA_HOME, default ~/.local/share) and exit",
    )
    entry.add_argument(
        "--uninstall-desktop-entry",
        action="store_true",
        help="remove what --install-desktop-entry added and exit",
    )
    parser.add_argument(
        "--theme",
        choices=("system", "light", "dark"),
        help="colour palette (default: the last one chosen, else system)",
    )
    parser.add_argument("--version", action="version", version=f"vdigui {__version__}")
    args = parser.parse_args(argv)
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
        if width < 200 or height < 150:
            raise ValueError
    except ValueError:
        parser.error(f"--size must look like 1400x900 (at least 200x150), not '{args.size}'")
    args.width, args.height = width, height
    if args.screenshot is None and (args.select or args.tab != "overview"):
        parser.error("--select and --tab only apply with --screenshot")
    if args.screenshot is not None and args.path is None and not args.demo:
        parser.error("--screenshot needs a PATH or --demo")
    if args.wizard is None and (args.target or args.page != "intro"):
        parser.error("--target and --page only apply with --wizard")
    if args.wizard is not None and args.screenshot is None:
        parser.error("--wizard only applies with --screenshot")
    if args.clean and (not args.demo or args.path is not None or args.screenshot is not None):
        parser.error("--clean only applies with --demo (and nothing else)")
    if (args.install_desktop_entry or args.uninstall_desktop_entry) and (
        args.path is not None or args.demo or args.screenshot is not None
    ):
        parser.error(
            "--install-desktop-entry and --uninstall-desktop-entry take no other arguments"
        )
    return args


def display_missing(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether a window could not be shown: X11/Wayland system, no display, no platform chosen.

    Only on systems where Qt needs X11 or Wayland (not macOS or Windows); an explicit
    QT_QPA_PLATFORM (offscreen, vnc, eglfs...) is the user's choice and is trusted.
    """
    if os.name != "posix" or sys.platform == "darwin":
        return False
    if environ.get("QT_QPA_PLATFORM"):
        return False
    return not (environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"))


def _clean_demo() -> int:
    """``vdigui --demo --clean``: remove the cached demo and say how much space that freed."""
    from vdigui.engine import default_cache_folder, human_size, remove_demo

    folder = default_cache_folder() / "demo"
    try:
        freed = remove_demo()
    except OSError as exc:
        print(
            f"vdigui: error: cannot remove the demo folder {folder}: "
            f"{exc.strerror or exc} ({exc.filename}).",
            file=sys.stderr,
        )
        return 1
    if freed is None:
        print(f"No demo to remove: {folder} does not exist.")
    else:
        print(f"Removed the demo folder {folder}, freeing {human_size(freed)}.")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the application; returns the exit status."""
    args = parse_args(argv)
    if args.clean:
        return _clean_demo()
    if args.install_desktop_entry or args.uninstall_desktop_entry:
        from vdigui.gui import desktop_entry

        return (
            desktop_entry.install_command()
            if args.install_desktop_entry
            else desktop_entry.uninstall_command()
        )
    if args.screenshot is not None:
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    elif display_missing():
        what = (
            shlex.quote(str(args.path))
            if args.path is not None
            else "--demo"
            if args.demo
            else "PATH"
        )
        print(
            "vdigui: error: No display found (DISPLAY and WAYLAND_DISPLAY are not set), so "
            f"there is nowhere to show the window; to get a picture instead, run: vdigui "
            f"{what} --screenshot vdigui.png",
            file=sys.stderr,
        )
        return 1

    # Qt is imported only now, so `vdigui --help` works without a display and quickly.
    from PySide6.QtCore import QSettings, Qt
    from PySide6.QtGui import QGuiApplication, QIcon
    from PySide6.QtWidgets import QApplication

    from vdigui.gui import messages
    from vdigui.gui.main_window import MainWindow, apply_theme
    from vdigui.gui.resources import asset_path

    QGuiApplication.setHighDpiScaleFactorRoundingPolicy(
        Qt.HighDpiScaleFactorRoundingPolicy.PassThrough
    )
    app = QApplication.instance() or QApplication(sys.argv[:1])
    assert isinstance(app, QApplication)
    app.setApplicationName("vdigui")
    app.setOrganizationName("vdigui")
    app.setApplicationVersion(__version__)
    app.setDesktopFileName("vdigui")
    for name in ("vdigui.svg", "vdigui.png"):
        try:
            app.setWindowIcon(QIcon(str(asset_path(name))))
            break
        except FileNotFoundError:
            continue

    if args.screenshot is not None:
        _quiet_offscreen_notes()
        scratch = tempfile.TemporaryDirectory(prefix="vdigui-shot-")
        settings = QSettings(str(Path(scratch.name) / "settings.ini"), QSettings.Format.IniFormat)
        messages.reporter = _print_error
    else:
        scratch = None
        settings = QSettings()
        messages.install_hooks()
    theme = args.theme or str(settings.value("theme", "system"))
    apply_theme(theme if args.screenshot is None or args.theme else "light")

    if args.wizard is not None:
        status = _wizard_screenshot(args)
        if scratch is not None:
            scratch.cleanup()
        return status
    window = MainWindow(settings)
    if args.screenshot is not None:
        status = _screenshot(app, window, args)
        window.close()
        if scratch is not None:
            scratch.cleanup()
        return status
    window.show()
    _quit_on_ctrl_c(app, window)
    if args.demo:
        window.open_demo()
    elif args.path is not None:
        window.open_path(args.path)
    return app.exec()


def _quit_on_ctrl_c(app: object, window: object) -> None:
    """Let Ctrl+C in the terminal close the window (saving its state) instead of being lost.

    Python runs signal handlers only between bytecodes, and Qt's event loop is C++, so a
    light timer gives the interpreter a chance to notice the signal.
    """
    import signal

    from PySide6.QtCore import QTimer

    signal.signal(signal.SIGINT, lambda *_args: window.close())  # type: ignore[attr-defined]
    timer = QTimer(app)  # type: ignore[arg-type]
    timer.timeout.connect(lambda: None)
    timer.start(250)


def _quiet_offscreen_notes() -> None:
    """Drop the offscreen plugin's "does not support ..." notes; print every other message.

    They say the headless platform cannot move or raise windows, which is true and harmless,
    and they would clutter the output of scripts that make the README's pictures.
    """
    from PySide6.QtCore import QtMsgType, qInstallMessageHandler

    def handler(kind: QtMsgType, _context: object, message: str) -> None:
        if message.startswith("This plugin does not support"):
            return
        print(message, file=sys.stderr)

    qInstallMessageHandler(handler)


def _print_error(_parent: object, title: str, text: str, _details: str) -> None:
    print(f"vdigui: error: {title}: {text}", file=sys.stderr)


def _wizard_screenshot(args: argparse.Namespace) -> int:
    """Render one wizard page (``--wizard``) with real plan data; never writes to the disks."""
    from vdigui.engine import VdiError, build_demo_vm
    from vdigui.gui.wizards import render_wizard_screenshot

    source = build_demo_vm() if args.demo else args.path
    try:
        render_wizard_screenshot(
            args.wizard, source, args.target, args.page, args.screenshot, (args.width, args.height)
        )
    except (VdiError, OSError, ValueError) as exc:
        print(f"vdigui: error: {exc}", file=sys.stderr)
        return 1
    print(args.screenshot)
    return 0


def _screenshot(app: object, window: object, args: argparse.Namespace) -> int:
    """Load, select, switch tab, wait for idle, grab, save."""
    from PySide6.QtCore import QEventLoop, QTimer

    from vdigui.engine import build_demo_vm
    from vdigui.gui.main_window import MainWindow

    assert isinstance(window, MainWindow)
    window.resize(args.width, args.height)
    window.show()
    path = build_demo_vm() if args.demo else args.path
    window.session_loaded.connect(lambda _s: None)

    def wait_idle(timeout_ms: int = 60000) -> bool:
        loop = QEventLoop()
        timer = QTimer()
        timer.setSingleShot(True)
        timer.timeout.connect(loop.quit)
        window.idle.connect(loop.quit)
        timer.start(timeout_ms)
        loop.exec()
        window.idle.disconnect(loop.quit)
        return timer.isActive()

    window.open_path(path)
    if not wait_idle():
        print("vdigui: error: loading did not finish within 60 s", file=sys.stderr)
        return 1
    if window.session is None:
        return 1
    if args.select:
        if not window.select_by_name(args.select):
            # No picture of the wrong selection: a script would publish it as if it were right.
            print(
                f"vdigui: error: No snapshot or disk image named '{args.select}' in {path} "
                "(give a snapshot name, an image file name or a UUID); no PNG was written.",
                file=sys.stderr,
            )
            return 1
        if window.workers.running and not wait_idle():
            return 1
    if args.tab == "files":  # added after the others: found by widget, not position
        window.tabs.setCurrentWidget(window.files)
    else:
        window.tabs.setCurrentIndex(TABS.index(args.tab))
    # Showing a tab may start work of its own (the Space tab counts on a worker): wait for it.
    if window.busy and not wait_idle():
        print("vdigui: error: the tab did not finish loading within 60 s", file=sys.stderr)
        return 1
    # Let layouts settle and pyqtgraph's debounced redraw run before grabbing.
    for _ in range(5):
        loop = QEventLoop()
        QTimer.singleShot(40, loop.quit)
        loop.exec()
    if args.tab == "blockmap":
        window.blockmap.refresh()
    image = window.grab().toImage()
    out = args.screenshot
    out.parent.mkdir(parents=True, exist_ok=True)
    if image.width() != args.width or image.height() != args.height:
        from PySide6.QtCore import Qt

        image = image.scaled(
            args.width,
            args.height,
            Qt.AspectRatioMode.IgnoreAspectRatio,
            Qt.TransformationMode.SmoothTransformation,
        )
    # PySide6's stubs type the format as bytes, but the binding accepts only str.
    if not image.save(str(out), "PNG"):  # type: ignore[call-overload]
        print(f"vdigui: error: cannot write {out}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
