"""Benchmarks of clone and compact (issue 4). Not a test: run ``python bench/bench_ops.py``.

What it measures, each as the median of >= 3 alternating runs on this machine:

1. Clone of an image holding 1 GiB of data (slots shuffled, 10 % of the allocated blocks all
   zero) against ``qemu-img convert -O vdi`` of the same file, page cache warm for both.
   vdigui is timed in-process (engine call) and as a whole process (Python start included);
   with verification (the default) and with --no-verify (qemu does not verify).
2. Compact in place of an image with 4 GiB allocated, 25 % of the blocks all zero and
   scattered, against ``cat file > /dev/null`` in the same cache state (warm: file in the page
   cache; cold: evicted with posix_fadvise DONTNEED), and the bytes it wrote against
   moved blocks x block size + metadata.
3. Peak memory (ru_maxrss of the child process) of both, including a 2 TiB virtual disk.

Every vdigui run happens in a child process (``--child``) so its peak memory is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vdigui.engine import format as fmt  # noqa: E402
from vdigui.engine.format import BLOCK_FREE, ImageType  # noqa: E402
from vdigui.engine.image import new_header, write_new_image  # noqa: E402

MIB = 1 << 20
GIB = 1 << 30


# -- building inputs --------------------------------------------------------------------------
def build(path: Path, disk_size: int, blocks: dict[int, bytes | None], order: list[int]) -> None:
    """Write a dynamic image: ``blocks`` maps guest block -> data (None = all zero, stored).

    ``order`` gives the guest blocks in slot order (shuffled or sequential).
    """
    header = new_header(disk_size, image_type=ImageType.DYNAMIC)
    write_new_image(path, header)
    block_map = np.full(header.blocks, BLOCK_FREE, dtype="<u4")
    zero = bytes(MIB)
    fd = os.open(path, os.O_RDWR)
    try:
        for slot, block in enumerate(order):
            data = blocks[block]
            os.pwrite(fd, zero if data is None else data, header.slot_offset(slot))
            block_map[block] = slot
        os.pwrite(fd, block_map.tobytes(), header.offset_blocks)
        os.pwrite(fd, fmt.pack_header(header.replace(blocks_allocated=len(order))),
                  fmt.PREHEADER_SIZE)
        os.ftruncate(fd, header.expected_file_size(len(order)))
    finally:
        os.close(fd)


def random_blocks(count: int, zero_share: float, seed: int, spread: int) -> dict[int, bytes | None]:
    """``count`` blocks spread over ``spread`` guest blocks, ``zero_share`` of them all zero."""
    rng = random.Random(seed)
    gen = np.random.default_rng(seed)
    chosen = sorted(rng.sample(range(spread), count))
    zeros = set(rng.sample(chosen, int(count * zero_share)))
    return {b: None if b in zeros else gen.bytes(MIB) for b in chosen}


# -- measuring ---------------------------------------------------------------------------------
TIME = shutil.which("time") or "/usr/bin/time"


def measure(cmd: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (KiB) and stdout of one child process.

    The child runs under GNU ``time -f %M`` (getrusage of its child): a process forked from
    this big Python process would otherwise inherit this process's RSS into its peak figure.
    """
    use_time = Path(TIME).exists()
    full = [TIME, "-f", "%M", *cmd] if use_time else cmd
    t0 = time.perf_counter()
    proc = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed: {err}")
    if use_time:
        peak = int(err.strip().splitlines()[-1])
    else:
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, peak, out


def child(op: str, args: list[str], verify: bool) -> None:
    """Run one operation in this (child) process and print timing and I/O figures as JSON."""
    from vdigui.engine.operations.clone import plan_clone, run_clone
    from vdigui.engine.operations.compact import plan_compact, run_compact

    t0 = time.perf_counter()
    extra: dict[str, object] = {}
    if op == "clone":
        result = run_clone(plan_clone(args[0], args[1]), verify=verify)
        extra["stored"] = result.stored_blocks
    else:
        plan = plan_compact(args[0])
        result = run_compact(plan, verify=verify)
        extra["moved"] = result.moved_blocks
        extra["zero"] = result.zero_blocks
    seconds = time.perf_counter() - t0
    io = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    print(json.dumps({"seconds": seconds, "wchar": int(io["wchar"]),
                      "write_bytes": int(io["write_bytes"]), **extra}))


def vdigui_cmd(op: str, *args: str, verify: bool = True) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()),
            *(() if verify else ("--no-verify",)), "--child", op, *args]


def evict(path: Path) -> None:
    """Drop ``path`` from the page cache (clean pages only, so sync first)."""
    os.sync()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def warm(path: Path) -> float:
    """Read ``path`` like ``cat file > /dev/null``; returns the seconds it took."""
    t0 = time.perf_counter()
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


# -- the benchmarks ----------------------------------------------------------------------------
def bench_clone(work: Path, runs: int, rows: list[tuple[str, ...]]) -> None:
    src = work / "clone-src.vdi"
    blocks = random_blocks(1138, 0.10, seed=1, spread=1536)  # 1 GiB of data + 10 % zeros
    order = list(blocks)
    random.Random(2).shuffle(order)
    build(src, 1536 * MIB, blocks, order)
    del blocks  # a forked child's peak RSS starts from the parent's
    warm(src)
    dest = work / "clone-out.vdi"
    times: dict[str, list[float]] = {"qemu": [], "qemu-wb": [], "engine": [], "engine-nv": [],
                                     "proc": [], "proc-nv": []}
    rss: dict[str, int] = {}
    for _ in range(runs):
        for kind in ("qemu", "qemu-wb", "vdigui", "vdigui-nv"):
            dest.unlink(missing_ok=True)
            os.sync()
            if kind.startswith("qemu"):
                # qemu-img's default destination cache mode ("unsafe") never flushes the
                # result; "-t writeback" flushes it once at the end, as vdigui does.
                cache = ["-t", "writeback"] if kind == "qemu-wb" else []
                wall, peak, _ = measure(["qemu-img", "convert", *cache, "-O", "vdi", str(src),
                                         str(dest)])
                times[kind].append(wall)
                rss["qemu"] = max(rss.get("qemu", 0), peak)
            else:
                verify = kind == "vdigui"
                wall, peak, out = measure(vdigui_cmd("clone", str(src), str(dest),
                                                     verify=verify))
                suffix = "" if verify else "-nv"
                times["engine" + suffix].append(json.loads(out)["seconds"])
                times["proc" + suffix].append(wall)
                rss[kind] = max(rss.get(kind, 0), peak)
    dest.unlink(missing_ok=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows.append(("clone 1 GiB data (shuffled, 10 % zero) vs qemu-img convert",
                 f"qemu {med['qemu']:.2f} s (default, result not flushed), "
                 f"{med['qemu-wb']:.2f} s (-t writeback, flushed like vdigui)"))
    for label, key in (("vdigui engine, verified", "engine"), ("vdigui process, verified", "proc"),
                       ("vdigui engine, --no-verify", "engine-nv"),
                       ("vdigui process, --no-verify", "proc-nv")):
        rows.append((f"  {label}", f"{med[key]:.2f} s  ratio {med[key] / med['qemu']:.2f} "
                                   f"(vs flushed qemu {med[key] / med['qemu-wb']:.2f})"))
    rows.append(("  peak RSS", f"vdigui {rss['vdigui'] // 1024} MiB (--no-verify "
                               f"{rss['vdigui-nv'] // 1024} MiB), qemu {rss['qemu'] // 1024} MiB"))
    src.unlink()


def bench_compact(work: Path, runs: int, rows: list[tuple[str, ...]]) -> None:
    pristine = work / "compact-src.vdi"
    count = 4096
    blocks = random_blocks(count, 0.25, seed=3, spread=count)  # 4 GiB allocated, 25 % zero
    build(pristine, count * MIB, blocks, sorted(blocks))
    del blocks
    img = work / "compact.vdi"
    results: dict[str, list[float]] = {}
    figures: dict[str, object] = {}
    for _ in range(runs):
        for cache in ("warm", "cold"):
            for verify in (True, False):
                shutil.copyfile(pristine, img)
                os.sync()
                if cache == "cold":
                    evict(img)
                    cat = warm(img)
                    evict(img)
                else:
                    warm(img)
                    cat = warm(img)
                wall, peak, out = measure(vdigui_cmd("compact", str(img), verify=verify))
                info = json.loads(out)
                key = f"{cache}-{'v' if verify else 'nv'}"
                results.setdefault(key + "-cat", []).append(cat)
                results.setdefault(key + "-engine", []).append(info["seconds"])
                results.setdefault(key + "-proc", []).append(wall)
                figures[key] = (info, peak)
    img.unlink(missing_ok=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    rows.append(("compact 4 GiB allocated, 25 % zero scattered, vs cat file", ""))
    for cache in ("warm", "cold"):
        for verify, tag in ((True, "verified"), (False, "--no-verify")):
            key = f"{cache}-{'v' if verify else 'nv'}"
            cat, eng, proc = med[key + "-cat"], med[key + "-engine"], med[key + "-proc"]
            rows.append((f"  {cache} cache, {tag}",
                         f"cat {cat:.2f} s, engine {eng:.2f} s (ratio {eng / cat:.2f}), "
                         f"process {proc:.2f} s"))
    info, peak = figures["warm-nv"]  # type: ignore[misc]
    moved = int(info["moved"])
    metadata = 4 * count * 2 + 4096  # map written once + map backup + header writes
    rows.append(("  bytes written", f"{info['wchar']} (moved {moved} x 1 MiB = {moved * MIB}; "
                                    f"budget with metadata {moved * MIB + metadata}); "
                                    f"zero blocks dropped {info['zero']}"))
    rows.append(("  peak RSS", f"verified {figures['warm-v'][1] // 1024} MiB, "  # type: ignore[index]
                               f"--no-verify {peak // 1024} MiB"))
    pristine.unlink()


def bench_huge(work: Path, rows: list[tuple[str, ...]]) -> None:
    """2 TiB virtual size: memory must not grow with the virtual size."""
    blocks_total = (2 << 40) // MIB
    blocks = random_blocks(256, 0.25, seed=4, spread=blocks_total)
    order = list(blocks)
    random.Random(5).shuffle(order)
    src = work / "huge.vdi"
    build(src, blocks_total * MIB, blocks, order)
    del blocks
    dest = work / "huge-clone.vdi"
    wall_c, rss_c, _ = measure(vdigui_cmd("clone", str(src), str(dest), verify=False))
    dest.unlink()
    wall_k, rss_k, _ = measure(vdigui_cmd("compact", str(src), verify=False))
    rows.append(("2 TiB virtual (256 blocks), --no-verify",
                 f"clone {wall_c:.1f} s / {rss_c // 1024} MiB peak, compact {wall_k:.1f} s / "
                 f"{rss_k // 1024} MiB peak"))
    src.unlink()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--no-verify", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=3, help="alternating runs per figure")
    parser.add_argument("--dir", type=Path, default=None,
                        help="work folder (default: a temporary folder in /var/tmp); needs "
                        "about 10 GiB")
    parser.add_argument("--only", choices=("clone", "compact", "huge"), action="append")
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1:], verify=not args.no_verify)
        return 0
    work = Path(tempfile.mkdtemp(prefix="vdigui-bench-", dir=args.dir or "/var/tmp"))
    rows: list[tuple[str, ...]] = []
    only = set(args.only or ("clone", "compact", "huge"))
    try:
        if "clone" in only:
            bench_clone(work, args.runs, rows)
        if "compact" in only:
            bench_compact(work, args.runs, rows)
        if "huge" in only:
            bench_huge(work, rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    width = max(len(r[0]) for r in rows)
    print(f"vdigui bench_ops on {os.cpu_count()} CPU(s), medians of {args.runs} runs")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
