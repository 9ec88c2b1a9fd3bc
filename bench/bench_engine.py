#!/usr/bin/env python3
"""Engine benchmarks for issue 2 (not a test): ``python bench/bench_engine.py``.

(a) ``vdictl export`` of an image holding 1 GiB of data against ``qemu-img convert -O raw`` of
    the same file, alternating runs, median time ratio (target <= 1.0).
(b) ``vdictl info`` and ``vdictl frag`` as fresh processes on the leaf of a 3-deep chain of
    2 TiB dynamic images, each layer with 200,000 allocated blocks in shuffled slot order: wall
    time including Python start (target <= 0.5 s) and peak RSS (target <= 150 MiB).

The images are written with tests/builders.py (headers and maps directly; the data slots of (b)
are sparse holes), under --dir (default: a temporary folder, removed afterwards).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from builders import (  # noqa: E402
    FREE,
    MIB,
    RawHeader,
    RawImage,
    build_image,
    pattern,
    place,
    write_raw,
)

TIB = 1 << 40


def vdictl() -> list[str]:
    exe = shutil.which("vdictl")
    return [exe] if exe else [sys.executable, "-m", "vdigui.cli"]


def measure(cmd: list[str]) -> tuple[float, float, float]:
    """Run ``cmd``; (wall seconds, peak RSS MiB, CPU seconds user+system) of that process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        err = proc.stderr.read().decode() if proc.stderr else ""
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {err}")
    if proc.stderr:
        proc.stderr.close()
    cpu = usage.ru_utime + usage.ru_stime
    return wall, usage.ru_maxrss / 1024, cpu  # ru_maxrss is KiB on Linux


# -- (a) export vs qemu-img convert -------------------------------------------------------
def build_data_image(path: Path, gib: int) -> None:
    blocks = gib * 1024
    layer = {b: pattern(b, MIB) for b in range(blocks)}
    build_image(path, blocks * MIB, layer, placement="vbox", slot_order="shuffle", seed=1)


def bench_export(folder: Path, runs: int, gib: int) -> dict[str, object]:
    qemu = shutil.which("qemu-img")
    if qemu is None:
        raise SystemExit("qemu-img is needed for bench (a) (Debian: apt-get install qemu-utils)")
    img = folder / "data1g.vdi"
    t0 = time.perf_counter()
    build_data_image(img, gib)
    print(
        f"built {img.name} ({gib} GiB of data, shuffled slots) in {time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    out = folder / "out.raw"
    # qemu-img convert's default cache mode for the target is "unsafe": it never flushes.
    # vdictl export fsyncs its output before renaming it into place, so "-t writeback" (flush
    # at close) is the like-for-like reference; both ratios are reported.
    times: dict[str, list[float]] = {"vdictl": [], "qemu": [], "qemu -t writeback": []}
    cpus: dict[str, list[float]] = {name: [] for name in times}
    convert = [qemu, "convert", "-f", "vdi", "-O", "raw", str(img), str(out)]
    for i in range(runs):
        order = list(times)
        if i % 2:
            order.reverse()
        for name in order:
            out.unlink(missing_ok=True)
            subprocess.run(["sync"], check=False)  # start each run with no dirty pages
            if name == "vdictl":
                wall, _, cpu = measure([*vdictl(), "export", str(img), str(out)])
            elif name == "qemu":
                wall, _, cpu = measure(convert)
            else:
                wall, _, cpu = measure([*convert[:2], "-t", "writeback", *convert[2:]])
            times[name].append(wall)
            cpus[name].append(cpu)
            print(f"  run {i + 1} {name:17s} {wall:6.2f} s wall, {cpu:5.2f} s CPU", flush=True)
    out.unlink(missing_ok=True)
    img.unlink()
    med = {k: statistics.median(v) for k, v in times.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpus.items()}
    return {
        "times": times,
        "median": med,
        "cpu": cpu_med,
        "ratio": med["vdictl"] / med["qemu"],
        "ratio_flush": med["vdictl"] / med["qemu -t writeback"],
    }


# -- (b) info and frag on a 2 TiB, 3-deep chain -------------------------------------------
def build_big_chain(folder: Path, allocated: int, depth: int = 3) -> Path:
    disk = 2 * TIB
    blocks = disk // MIB
    rng = np.random.default_rng(20261128)
    parent: RawHeader | None = None
    path = folder
    for level in range(depth):
        h = RawHeader(
            disk_size=disk, blocks=blocks, block_size=MIB, image_type=1 if parent is None else 4
        )
        if parent is not None:
            h.uuid_linkage = parent.uuid_create
            h.uuid_parent_modify = parent.uuid_modify
        h = place(h, "vbox")
        h.blocks_allocated = allocated
        entries = np.full(blocks, FREE, dtype="<u4")
        where = rng.choice(blocks, size=allocated, replace=False)  # guest blocks, any order
        entries[where] = rng.permutation(allocated).astype("<u4")  # shuffled slots
        zero = rng.choice(np.flatnonzero(entries == FREE), size=1000, replace=False)
        entries[zero] = 0xFFFFFFFE
        path = folder / ("base.vdi" if level == 0 else f"{{{h.uuid_create}}}.vdi")
        write_raw(path, RawImage(h, [], [None] * allocated, map_bytes=entries.tobytes()))
        parent = h
    return path


def bench_big(folder: Path, runs: int, allocated: int) -> dict[str, dict[str, list[float]]]:
    t0 = time.perf_counter()
    leaf = build_big_chain(folder, allocated)
    print(
        f"built a 3-deep chain of 2 TiB images, {allocated} shuffled blocks each, in "
        f"{time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    results: dict[str, dict[str, list[float]]] = {}
    for cmd in ("info", "frag"):
        walls: list[float] = []
        rss: list[float] = []
        for _ in range(runs):
            wall, peak, _cpu = measure([*vdictl(), cmd, str(leaf)])
            walls.append(wall)
            rss.append(peak)
        results[cmd] = {"wall": walls, "rss": rss}
        print(f"  vdictl {cmd}: " + ", ".join(f"{w:.3f} s" for w in walls), flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dir",
        type=Path,
        help="where to build the images (default: a temp "
        "folder on the same filesystem as /tmp; needs ~2.5 GiB free)",
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per tool (default 3)")
    parser.add_argument("--gib", type=int, default=1, help="GiB of data for bench (a)")
    parser.add_argument(
        "--blocks", type=int, default=200_000, help="allocated blocks per layer for bench (b)"
    )
    parser.add_argument("--only", choices=["export", "big"], help="run one bench only")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="vdigui-bench-", dir=args.dir))
    random.seed(0)
    try:
        rows: list[tuple[str, str, str, str]] = []
        if args.only in (None, "big"):
            big = bench_big(folder, max(args.runs, 3), args.blocks)
            for cmd, r in big.items():
                wall, peak = statistics.median(r["wall"]), max(r["rss"])
                rows.append(
                    (
                        f"vdictl {cmd}, 2 TiB x 3 layers",
                        f"{wall:.3f} s (median; best {min(r['wall']):.3f} s)",
                        f"{peak:.1f} MiB peak RSS",
                        "ok" if wall <= 0.5 and peak <= 150 else "MISSED (0.5 s, 150 MiB)",
                    )
                )
        if args.only in (None, "export"):
            exp = bench_export(folder, args.runs, args.gib)
            med = exp["median"]
            assert isinstance(med, dict)
            times, cpu = exp["times"], exp["cpu"]
            assert isinstance(times, dict) and isinstance(cpu, dict)
            for key, label in (("ratio", "qemu"), ("ratio_flush", "qemu -t writeback")):
                ratio = float(exp[key])  # type: ignore[arg-type]
                best = min(times["vdictl"]) / min(times[label])
                rows.append(
                    (
                        f"export {args.gib} GiB: vdictl / {label.replace('qemu', 'qemu-img')}",
                        f"{med['vdictl']:.2f} s / {med[label]:.2f} s (medians; CPU "
                        f"{cpu['vdictl']:.2f} s / {cpu[label]:.2f} s)",
                        f"ratio {ratio:.2f} (best-of-runs ratio {best:.2f})",
                        "ok" if ratio <= 1.0 else "MISSED (<= 1.0)",
                    )
                )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    width = [max(len(r[i]) for r in rows) for i in range(4)]
    print()
    load = os.getloadavg()[0]
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, runs={args.runs}, "
        f"load average {load:.1f} at the end (figures are only meaningful near 0)"
    )
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, width, strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
