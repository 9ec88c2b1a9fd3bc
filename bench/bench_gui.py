"""Benchmark: opening a 2 TiB VM folder in the app, GUI-thread stalls, and block-map panning.

Targets (issue 3): opening a VM folder whose disk is 2 TiB with 200,000 allocated blocks under
3 snapshots, until the trees and the block map are shown, <= 1.5 s; block-map redraw while
panning at full zoom-out <= 50 ms a frame; the GUI thread never stalls > 100 ms.

Run: ``QT_QPA_PLATFORM=offscreen python bench/bench_gui.py [--runs 5]``. Prints medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "tests" / "gui")]
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from bigvm import BLOCKS, big_vm  # noqa: E402
from PySide6.QtCore import QEventLoop, QSettings, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from vdigui.gui.main_window import MainWindow  # noqa: E402


def wait_until(app: QApplication, done: object, timeout: float = 60.0) -> None:
    """Process events until ``done()`` is true."""
    end = time.perf_counter() + timeout
    while not done():  # type: ignore[operator]
        app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 5)
        if time.perf_counter() > end:
            raise TimeoutError("the window did not finish loading")


def measure_open(app: QApplication, window: MainWindow, folder: Path) -> tuple[float, float]:
    """Seconds until loaded, and the longest gap between 5 ms heartbeats (a GUI stall)."""
    gaps: list[float] = []
    last = [time.perf_counter()]

    def beat() -> None:
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    loaded = [False]
    window.idle.connect(lambda *_: loaded.__setitem__(0, True))
    heart = QTimer()
    heart.timeout.connect(beat)
    heart.start(5)
    start = last[0] = time.perf_counter()
    window.open_path(folder)
    wait_until(app, lambda: loaded[0] and not window.workers.running)
    elapsed = time.perf_counter() - start
    heart.stop()
    return elapsed, max(gaps, default=0.0)


def measure_pan(window: MainWindow, frames: int = 30) -> list[float]:
    """Seconds per redraw while panning at full zoom-out."""
    view = window.blockmap
    box = view.plot.getViewBox()
    times = []
    for step in range(frames):
        t0 = time.perf_counter()
        box.setXRange(step * 5000, BLOCKS + step * 5000, padding=0)
        view.refresh()
        view.plot.grab()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    app = QApplication.instance() or QApplication([])
    with tempfile.TemporaryDirectory() as tmp:
        folder = big_vm(Path(tmp) / "big")
        settings = QSettings(str(Path(tmp) / "settings.ini"), QSettings.Format.IniFormat)
        window = MainWindow(settings=settings)
        window.resize(1400, 900)
        window.show()
        window.tabs.setCurrentWidget(window.blockmap)
        opens, stalls = [], []
        for _ in range(args.runs):
            elapsed, stall = measure_open(app, window, folder)
            opens.append(elapsed)
            stalls.append(stall)
        pans = measure_pan(window)
        window.close()
    print(f"{'measure':<40}{'median':>10}{'min':>10}{'max':>10}  target")
    print(f"{'open 2 TiB VM folder (s)':<40}{statistics.median(opens):>10.3f}"
          f"{min(opens):>10.3f}{max(opens):>10.3f}  <= 1.5")
    print(f"{'longest GUI stall while opening (ms)':<40}{1000 * statistics.median(stalls):>10.0f}"
          f"{1000 * min(stalls):>10.0f}{1000 * max(stalls):>10.0f}  <= 100")
    print(f"{'pan frame at full zoom-out (ms)':<40}{1000 * statistics.median(pans):>10.1f}"
          f"{1000 * min(pans):>10.1f}{1000 * max(pans):>10.1f}  <= 50")


if __name__ == "__main__":
    main()
