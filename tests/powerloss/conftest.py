"""Fixtures of the power-loss tests: a fixed tmpfs folder per test, the summary table."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
for sub in ("engine/operations", "engine/merge", "engine/guestfs"):
    if str(HERE.parent / sub) not in sys.path:
        sys.path.insert(0, str(HERE.parent / sub))


@pytest.fixture
def shm_root() -> Iterator[Path]:
    """A folder on tmpfs when there is one. Journal records hold absolute paths, so every
    crash state is materialised at this same place, one after the other."""
    shm = Path("/dev/shm")
    top = Path(tempfile.mkdtemp(prefix="vdigui-powerloss-", dir=shm if shm.is_dir() else None))
    try:
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _fresh_summary() -> None:
    """One summary table per session (crashsim.SUMMARY_FILE; each test appends its line)."""
    from crashsim import SUMMARY_FILE

    SUMMARY_FILE.unlink(missing_ok=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The crash states materialised per operation, in this session (also in
    crashsim.SUMMARY_FILE)."""
    from crashsim import SUMMARY_LINES

    if SUMMARY_LINES:
        terminalreporter.section("power-loss crash states per operation")
        for line in SUMMARY_LINES:
            terminalreporter.write_line(line)
        total = sum(int(line.split("states")[1].split()[0]) for line in SUMMARY_LINES)
        terminalreporter.write_line(f"total crash states checked: {total}")
