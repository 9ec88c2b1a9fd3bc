"""GUI test guards: offscreen Qt, Qt warnings fail a test, no leaked threads or windows.

QT_QPA_PLATFORM is set before anything imports Qt so the tests need no display.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings, QtMsgType
from PySide6.QtWidgets import QApplication

from vdigui.gui import messages
from vdigui.gui.main_window import MainWindow

#: Qt messages that are not our bug. Keep this short and say why for each.
QT_WARNING_IGNORES = (
    # The offscreen platform plugin cannot do window-manager size hints; harmless.
    "This plugin does not support propagateSizeHints()",
    # The offscreen platform has no real clipboard/DPI/fonts databases; harmless.
    "This plugin does not support",
)


@pytest.fixture(autouse=True)
def _fail_on_qt_warnings(qtlog: object) -> Iterator[None]:
    """Any Qt warning, critical or fatal message fails the test (qt_log_level_fail=WARNING)."""
    yield
    bad = [
        r
        for r in qtlog.records  # type: ignore[attr-defined]
        if r.type in (QtMsgType.QtWarningMsg, QtMsgType.QtCriticalMsg, QtMsgType.QtFatalMsg)
        and not any(r.message.startswith(i) for i in QT_WARNING_IGNORES)
    ]
    if bad:
        pytest.fail("Qt warnings: " + "; ".join(r.message for r in bad))


@pytest.fixture
def reports(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Errors the window reported (title, sentence) instead of modal dialogs."""
    seen: list[tuple[str, str]] = []
    monkeypatch.setattr(
        messages, "reporter", lambda _parent, title, text, _details: seen.append((title, text))
    )
    return seen


@pytest.fixture
def settings(tmp_path: Path) -> QSettings:
    """A private settings file, so tests never touch the user's."""
    return QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)


@pytest.fixture
def window(
    qtbot: object, settings: QSettings, reports: list[tuple[str, str]]
) -> Iterator[MainWindow]:
    """A shown main window; at teardown: closed, workers stopped, no thread or window left."""
    before = {t.ident for t in threading.enumerate()}
    win = MainWindow(settings)
    qtbot.addWidget(win)  # type: ignore[attr-defined]
    win.resize(1200, 800)
    win.show()
    yield win
    win.close()
    assert win.workers.pool.activeThreadCount() == 0, "a worker thread is still running"
    assert not win.workers.running, "a job never delivered its terminal signal"
    leaked = [
        t
        for t in threading.enumerate()
        if t.ident not in before and not isinstance(t, threading._DummyThread)
    ]  # type: ignore[attr-defined]
    assert not leaked, f"leaked threads: {leaked}"
    app = QApplication.instance()
    assert app is not None
    stray = [
        w
        for w in QApplication.topLevelWidgets()
        if w.isVisible() and w is not win and w.windowTitle() not in ("",)
    ]
    assert not stray, f"windows left open: {[w.windowTitle() for w in stray]}"
