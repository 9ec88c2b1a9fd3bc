"""Kill -9 a real vdictl at a chosen file-changing call (through kill_driver.py) and prove it.

The total number of calls comes from an uninterrupted run of the same command on an
identical copy; kill points are chosen strictly below it, and every killed run must end by
SIGKILL with exactly N-1 calls done. A run that exits by itself is reported as a failure
("finished before the kill"), never accepted.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

DRIVER = Path(__file__).resolve().with_name("kill_driver.py")
REPO = DRIVER.parents[2]


def run_driver(args: list[str], kill_at: int, count_file: Path) -> tuple[int, int, str]:
    """(return code, file-changing calls done, stderr) of one driver run."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(DRIVER), str(count_file), str(kill_at), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    done = int(count_file.read_text() or 0) if count_file.exists() else -1
    return proc.returncode, done, proc.stderr


def total_calls(args: list[str], count_file: Path) -> int:
    """File-changing calls of an uninterrupted run (which must succeed)."""
    code, done, err = run_driver(args, 0, count_file)
    assert code == 0, err
    assert done > 2, f"the command changed almost nothing ({done} calls)"
    return done


def kill_points(total: int, count: int, seed: int) -> list[int]:
    """``count`` kill points spread over 2..total (call N is killed before it runs)."""
    candidates = list(range(2, total + 1))
    if len(candidates) <= count:
        return candidates
    rng = random.Random(seed)
    step = len(candidates) / count
    return sorted(
        {
            candidates[min(len(candidates) - 1, int(i * step + rng.random() * step))]
            for i in range(count)
        }
    )


def kill_mid(args: list[str], kill_at: int, count_file: Path) -> int:
    """Run and kill at call ``kill_at``; asserts the kill landed there; returns calls done."""
    code, done, err = run_driver(args, kill_at, count_file)
    assert code == -signal.SIGKILL, (
        f"the command finished before the kill at call {kill_at} (exit {code}, {done} calls "
        f"done): this run proves nothing\n{err}"
    )
    assert done == kill_at - 1, f"killed after {done} calls, expected {kill_at - 1}"
    return done
