"""The snapshot cost map on a big chain: ``vdictl snapshot list --cost`` and the cheapest order.

The VM is tests/gui/bigvm.py's: a sparse 2 TiB base with 200,000 shuffled blocks under three
snapshots (2,000 blocks each). The cost map plans every deletion twice (with and without undo
data), reading only headers and block maps; the cheapest order plans every order of the
three snapshots on a sparse shadow of the folder. Not a timed test: run it by hand.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "gui"))

from bigvm import big_vm  # noqa: E402

from vdigui.engine import best_order, snapshot_costs  # noqa: E402

#: What the app can wait for on a worker without the columns looking stuck.
TARGET_SECONDS = 1.0


def main() -> int:
    folder = Path(tempfile.mkdtemp(prefix="vdigui-bench-cost-"))
    try:
        vm = folder / "vm"
        big_vm(vm)
        cli = [
            sys.executable,
            "-m",
            "vdigui.cli",
            "snapshot",
            "list",
            str(vm),
            "--cost",
            "--json",
            "--rate",
            "200",
        ]
        walls = []
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run(cli, check=True, capture_output=True)
            walls.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        costs = snapshot_costs(vm, rate=200 << 20)
        engine = time.perf_counter() - t0
        t0 = time.perf_counter()
        order = best_order(vm, [c.name for c in costs if c.refused_reason is None])
        ordering = time.perf_counter() - t0
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"load {os.getloadavg()[0]:.2f}")
    wall = statistics.median(walls)
    print(
        f"vdictl snapshot list --cost --json, 2 TiB x 3 snapshots: {wall:.3f} s (median of 3) "
        f"{'ok' if wall <= TARGET_SECONDS else f'MISSED ({TARGET_SECONDS} s)'}"
    )
    print(f"snapshot_costs in process: {engine:.3f} s")
    print(
        f"best_order of {len(order.order)} snapshots ({order.tried} orders planned): "
        f"{ordering:.3f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
