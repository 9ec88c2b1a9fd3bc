#!/usr/bin/env python3
"""Benchmarks of the copy pipeline (not a test): ``python bench/bench_copy.py``.

Whole processes, side by side in one run: every round runs each command of a bench once, in
an order rotated from round to round (so no command always runs first or last), timed by
hyperfine (``--runs 1`` per command per round, its ``--prepare`` removing the output and
calling ``sync`` first); the table gives medians over the rounds. bench/README.md describes
every bench and its target.

- ``export``: ``vdictl export`` against ``qemu-img convert -O raw`` (plain and ``-t
  writeback``), images holding 1 GiB and 8 GiB of data in shuffled slot order.
- ``clone``: ``vdictl clone`` (verified) and ``--no-verify`` against ``qemu-img convert -O
  vdi`` (plain and ``-t writeback``), same images.
- ``compact``: in-place ``vdictl compact`` (verified and ``--no-verify``) of a 4 GiB image
  with 25 % of its blocks all zero, against ``cat IMAGE > /dev/null``, warm and cold cache.
- ``ratios``: verified against unverified for convert, defrag and the filesystem-aware
  compact and clone.
- ``memory``: peak RSS of every command, also on a 2 TiB virtual disk.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from builders import MIB, pattern  # noqa: E402

from vdigui.engine import format as fmt  # noqa: E402
from vdigui.engine.format import BLOCK_FREE, ImageType  # noqa: E402
from vdigui.engine.image import new_header, write_new_image  # noqa: E402

GIB = 1 << 30
DROP_CACHES = Path("/proc/sys/vm/drop_caches")


# -- tools --------------------------------------------------------------------------------------
def vdictl() -> str:
    beside = Path(sys.executable).with_name("vdictl")
    found = str(beside) if beside.exists() else shutil.which("vdictl")
    if not found:
        raise SystemExit("vdictl is not installed (pip install -e .)")
    return found


def require(tool: str, debian: str) -> str:
    found = shutil.which(tool)
    if not found:
        raise SystemExit(f"{tool} is needed (Debian: apt-get install {debian})")
    return found


def can_drop_caches() -> bool:
    """Whether this process may empty the page cache (root, writable /proc/sys/vm)."""
    return os.geteuid() == 0 and os.access(DROP_CACHES, os.W_OK)


def settle(*warm: Path) -> None:
    """Start a bench from the same memory state: flush, empty the page cache (when root), then
    read ``warm`` into it. Without this, a page cache filled by earlier runs makes every new
    write reclaim memory first, which showed here as CPU time varying two- to threefold."""
    os.sync()
    if can_drop_caches():
        DROP_CACHES.write_text("3\n")
    for path in warm:
        with open(path, "rb", buffering=0) as f:
            while f.read(8 << 20):
                pass


#: Compiles vdigui (argv[1]), the standard library and vdictl's dependencies into the
#: bytecode cache named by PYTHONPYCACHEPREFIX (test suites and GUI toolkits left out).
_COMPILE_ALL = r"""
import compileall, importlib.util, os, re, sys, sysconfig
skip = r"[/\\](test|tests|idlelib|tkinter|turtledemo|lib2to3|ensurepip)[/\\]"
compileall.compile_dir(sysconfig.get_paths()["stdlib"], quiet=2, workers=0,
                       rx=re.compile(skip.replace("ensurepip", "ensurepip|site-packages")))
for name in ("numpy", "xxhash", "defusedxml"):
    folder = os.path.dirname(importlib.util.find_spec(name).origin)
    compileall.compile_dir(folder, quiet=2, workers=0, rx=re.compile(skip))
compileall.compile_dir(sys.argv[1], quiet=2, workers=0)
"""

#: The environment every timed command runs in (set by :func:`use_bytecode_cache`).
RUN_ENV: dict[str, str] | None = None


def use_bytecode_cache(folder: Path) -> None:
    """Run vdictl as an installed package runs: from compiled bytecode.

    pip compiles a package's modules when it installs it; a development checkout run with
    ``PYTHONDONTWRITEBYTECODE`` set (as the team's shells are) compiles every module from
    source in every process instead, which added about 60 ms to each vdictl run here (190 ms
    against 131 ms for a ``compact --dry-run``). The bench compiles vdigui once into a private
    folder (``PYTHONPYCACHEPREFIX``, nothing is written into the repository) and times the
    commands with that cache.
    """
    global RUN_ENV
    cache = folder / "pycache"
    env = dict(os.environ, PYTHONPYCACHEPREFIX=str(cache))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    # With a prefix Python looks for every module's bytecode there only, so the standard
    # library and the dependencies are compiled into it too (a few seconds, once).
    subprocess.run(
        [sys.executable, "-c", _COMPILE_ALL, str(REPO / "vdigui")],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    RUN_ENV = env


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f}/{five:.2f}"


# -- building inputs ----------------------------------------------------------------------------
def build_stream(
    path: Path,
    blocks: int,
    content: Callable[[int], bytes],
    seed: int,
    stored: list[int] | None = None,
    disk_blocks: int | None = None,
) -> Path:
    """A dynamic image whose guest blocks ``stored`` (default: all) hold ``content(block)``,
    in shuffled slot order, written block by block (memory stays small at any size)."""
    if path.exists():
        return path
    disk_blocks = disk_blocks or blocks
    header = new_header(disk_blocks * MIB, image_type=ImageType.DYNAMIC)
    tmp = path.with_name(path.name + ".building")
    tmp.unlink(missing_ok=True)
    write_new_image(tmp, header)
    order = list(range(blocks)) if stored is None else list(stored)
    random.Random(seed).shuffle(order)
    block_map = np.full(header.blocks, BLOCK_FREE, dtype="<u4")
    fd = os.open(tmp, os.O_RDWR)
    try:
        for slot, block in enumerate(order):
            os.pwrite(fd, content(block), header.slot_offset(slot))
            block_map[block] = slot
        os.pwrite(fd, block_map.tobytes(), header.offset_blocks)
        os.pwrite(
            fd, fmt.pack_header(header.replace(blocks_allocated=len(order))), fmt.PREHEADER_SIZE
        )
        os.ftruncate(fd, header.expected_file_size(len(order)))
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.rename(path)
    return path


def build_data_image(path: Path, gib: int) -> Path:
    """``gib`` GiB of non-zero data, every block stored, slots shuffled (as VirtualBox leaves
    them after a guest wrote in random order)."""
    return build_stream(path, gib * 1024, lambda b: pattern(b, MIB), seed=1)


def build_compact_image(path: Path, gib: int, zero_share: float = 0.25) -> Path:
    """``gib`` GiB allocated, ``zero_share`` of the blocks all zero, scattered, slots shuffled."""
    blocks = gib * 1024
    zero = set(random.Random(7).sample(range(blocks), int(blocks * zero_share)))
    empty = bytes(MIB)
    return build_stream(path, blocks, lambda b: empty if b in zero else pattern(b, MIB), seed=8)


def build_fs_image(folder: Path) -> Path | None:
    """A 2 GiB ext4 disk (no partition table) with 600 MiB of files, 400 MiB of them deleted
    again (stale data the guest does not use), as a dynamic VDI. None without the tools."""
    path = folder / "fs.vdi"
    if path.exists():
        return path
    mkfs, debugfs, qemu = (shutil.which(t) for t in ("mkfs.ext4", "debugfs", "qemu-img"))
    if not (mkfs and debugfs and qemu):
        return None
    raw = folder / "fs.raw"
    with open(raw, "wb") as f:
        f.truncate(2 * GIB)
    subprocess.run([mkfs, "-q", "-F", "-E", "nodiscard", str(raw)], check=True)
    rng = np.random.default_rng(3)
    for name, mib in (("keep", 200), ("gone1", 200), ("gone2", 200)):
        data = folder / name
        data.write_bytes(rng.bytes(mib * MIB))
        subprocess.run(
            [debugfs, "-w", "-R", f"write {data} {name}", str(raw)], check=True, capture_output=True
        )
        data.unlink()
    for name in ("gone1", "gone2"):
        subprocess.run(
            [debugfs, "-w", "-R", f"rm {name}", str(raw)], check=True, capture_output=True
        )
    subprocess.run([qemu, "convert", "-f", "raw", "-O", "vdi", str(raw), str(path)], check=True)
    raw.unlink()
    return path


def build_huge_image(path: Path, data_mib: int = 64) -> Path:
    """A 2 TiB dynamic disk with ``data_mib`` blocks of data spread over it (memory bench)."""
    blocks = 2 * 1024 * 1024
    chosen = random.Random(11).sample(range(blocks), data_mib)
    return build_stream(path, blocks, lambda b: pattern(b, MIB), seed=11, stored=chosen)


# -- running side by side -----------------------------------------------------------------------
def alternate(
    commands: dict[str, str], prepare: dict[str, str], rounds: int, work: Path
) -> dict[str, dict[str, float]]:
    """Run every command once per round, in an order rotated each round; medians per command.

    Returns {name: {"wall": median s, "cpu": median user+sys s, "min": s, "max": s}}.
    """
    hyperfine = require("hyperfine", "hyperfine")
    names = list(commands)
    walls: dict[str, list[float]] = {n: [] for n in names}
    cpus: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        out = work / "hyperfine.json"
        cmd = [hyperfine, "--runs", "1", "--style", "none", "--export-json", str(out)]
        for n in order:
            cmd += ["--prepare", prepare[n]]
        for n in order:
            cmd += [f"--command-name={n}", commands[n]]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=RUN_ENV)
        for res in json.loads(out.read_text())["results"]:
            if any(code != 0 for code in res.get("exit_codes", [0])):
                raise SystemExit(f"{res['command']} failed")
            walls[res["command"]].append(res["times"][0])
            cpus[res["command"]].append(res["user"] + res["system"])
    return {
        n: {
            "wall": statistics.median(walls[n]),
            "cpu": statistics.median(cpus[n]),
            "min": min(walls[n]),
            "max": max(walls[n]),
        }
        for n in names
    }


def show(
    title: str,
    stats: dict[str, dict[str, float]],
    checks: list[tuple[str, str, float]],
    rounds: int,
    started_load: str,
) -> list[str]:
    """Print one table and the target checks (name over reference <= limit)."""
    print(f"\n## {title} ({rounds} rounds, load {started_load} -> {load()})")
    print(f"{'command':36s} {'median s':>9s} {'min':>7s} {'max':>7s} {'cpu s':>7s}")
    for name, s in stats.items():
        print(f"{name:36s} {s['wall']:9.3f} {s['min']:7.3f} {s['max']:7.3f} {s['cpu']:7.3f}")
    lines = []
    for name, ref, limit in checks:
        ratio = stats[name]["wall"] / stats[ref]["wall"]
        verdict = "met" if ratio <= limit else f"MISSED by {100 * (ratio / limit - 1):.0f} %"
        line = f"  {name} / {ref} = {ratio:.2f} (target <= {limit:g}): {verdict}"
        print(line)
        lines.append(f"{title}: {line.strip()}")
    return lines


def prep(*steps: str) -> str:
    return " && ".join(steps)


# -- the benches --------------------------------------------------------------------------------
def bench_export_clone(folder: Path, gib: int, rounds: int) -> list[str]:
    qemu = require("qemu-img", "qemu-utils")
    img = build_data_image(folder / f"data{gib}g.vdi", gib)
    raw, vdi = folder / "out.raw", folder / "out.vdi"
    v = vdictl()
    clean = prep(f"rm -f {raw} {vdi}", "sync")
    settle(img)
    start = load()
    export = {
        "vdictl export": f"{v} export {img} {raw}",
        "qemu-img convert -O raw": f"{qemu} convert -f vdi -O raw {img} {raw}",
        "qemu-img convert -t writeback -O raw": (
            f"{qemu} convert -t writeback -f vdi -O raw {img} {raw}"
        ),
    }
    stats = alternate(export, dict.fromkeys(export, clean), rounds, folder)
    lines = show(
        f"export, {gib} GiB of data",
        stats,
        [
            ("vdictl export", "qemu-img convert -t writeback -O raw", 1.0),
            ("vdictl export", "qemu-img convert -O raw", 1.5),
        ],
        rounds,
        start,
    )
    settle(img)
    start = load()
    clone = {
        "vdictl clone": f"{v} clone {img} {vdi}",
        "vdictl clone --no-verify": f"{v} clone --no-verify {img} {vdi}",
        "qemu-img convert -O vdi": f"{qemu} convert -f vdi -O vdi {img} {vdi}",
        "qemu-img convert -t writeback -O vdi": (
            f"{qemu} convert -t writeback -f vdi -O vdi {img} {vdi}"
        ),
    }
    stats = alternate(clone, dict.fromkeys(clone, clean), rounds, folder)
    lines += show(
        f"clone, {gib} GiB of data",
        stats,
        [
            ("vdictl clone", "qemu-img convert -t writeback -O vdi", 1.0),
            ("vdictl clone", "vdictl clone --no-verify", 1.25),
        ],
        rounds,
        start,
    )
    for path in (raw, vdi):
        path.unlink(missing_ok=True)
    return lines


def bench_compact(folder: Path, gib: int, rounds: int, cold: bool) -> list[str]:
    base = build_compact_image(folder / f"compact{gib}g.vdi", gib)
    work = folder / "work.vdi"
    v = vdictl()
    steps = [f"cp --sparse=never {base} {work}", "sync"]
    if cold:
        steps.append(f"echo 3 > {DROP_CACHES}")
    fresh = prep(*steps)
    commands = {
        "vdictl compact": f"{v} compact {work}",
        "vdictl compact --no-verify": f"{v} compact --no-verify {work}",
        "cat IMAGE > /dev/null": f"cat {work} > /dev/null",
    }
    settle()
    start = load()
    stats = alternate(commands, dict.fromkeys(commands, fresh), rounds, folder)
    which = "cold" if cold else "warm"
    lines = show(
        f"compact in place, {gib} GiB, 25 % zero blocks, {which} cache",
        stats,
        [
            ("vdictl compact", "cat IMAGE > /dev/null", 1.5),
            ("vdictl compact", "vdictl compact --no-verify", 1.25),
        ],
        rounds,
        start,
    )
    work.unlink(missing_ok=True)
    return lines


def bench_ratios(folder: Path, rounds: int) -> list[str]:
    """Verified against unverified for the operations not benched above."""
    v = vdictl()
    lines: list[str] = []
    data = build_data_image(folder / "data1g.vdi", 1)
    comp = build_compact_image(folder / "compact1g.vdi", 1)
    work, out = folder / "work.vdi", folder / "out.vdi"
    cases = [
        ("convert to fixed, 1 GiB of data", data, "convert {w} --to fixed"),
        ("defrag, 1 GiB, 25 % zero", comp, "compact --defrag {w}"),
    ]
    fs = build_fs_image(folder)
    if fs is not None:
        cases += [
            ("fs-aware compact, 2 GiB ext4", fs, "compact --fs-aware {w}"),
            ("fs-aware clone, 2 GiB ext4", fs, "clone --fs-aware {w} " + str(out)),
        ]
    else:
        print("\n(fs-aware ratios skipped: mkfs.ext4, debugfs and qemu-img are needed)")
    for title, source, args in cases:
        base = args.format(w=work)
        verb, rest = base.split(" ", 1)
        commands = {"verified": f"{v} {base}", "unverified": f"{v} {verb} --no-verify {rest}"}
        fresh = prep(f"rm -f {out}", f"cp --sparse=always {source} {work}", "sync")
        settle(source)
        start = load()
        stats = alternate(commands, dict.fromkeys(commands, fresh), rounds, folder)
        lines += show(title, stats, [("verified", "unverified", 1.25)], rounds, start)
    for path in (work, out):
        path.unlink(missing_ok=True)
    return lines


def peak_rss_mib(cmd: list[str]) -> float:
    """Peak RSS of one run of ``cmd`` (GNU time's %M, from a small parent)."""
    gnu_time = shutil.which("time") or "/usr/bin/time"
    proc = subprocess.run([gnu_time, "-f", "%M", *cmd], capture_output=True, text=True, env=RUN_ENV)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr}")
    return int(proc.stderr.strip().splitlines()[-1]) / 1024


def bench_memory(folder: Path) -> list[str]:
    v = vdictl()
    huge = build_huge_image(folder / "huge2t.vdi")
    data = build_data_image(folder / "data1g.vdi", 1)
    comp = build_compact_image(folder / "compact1g.vdi", 1)
    work, out, raw = folder / "work.vdi", folder / "out.vdi", folder / "out.raw"
    rows: list[tuple[str, float]] = []
    for label, source in (("1 GiB data", data), ("2 TiB virtual", huge)):
        for what, cmd in (
            ("export", [v, "export", str(source), str(raw)]),
            ("clone", [v, "clone", str(source), str(out)]),
            ("clone --fixed", [v, "clone", "--fixed", str(source), str(out)]),
        ):
            if what == "clone --fixed" and source == huge:
                continue  # 2 TiB of preallocated space
            raw.unlink(missing_ok=True)
            out.unlink(missing_ok=True)
            rows.append((f"{what} ({label})", peak_rss_mib(cmd)))
    for label, source in (("1 GiB, 25 % zero", comp), ("2 TiB virtual", huge)):
        for what, args in (
            ("compact", ["compact"]),
            ("compact --defrag", ["compact", "--defrag"]),
            ("convert --to fixed", ["convert", "--to", "fixed"]),
        ):
            if what.startswith("convert") and source == huge:
                continue
            shutil.copyfile(source, work)
            rows.append((f"{what} ({label})", peak_rss_mib([v, *args, str(work)])))
    for path in (work, out, raw):
        path.unlink(missing_ok=True)
    print(f"\n## peak memory (load {load()})")
    lines = []
    for name, mib in rows:
        verdict = "met" if mib <= 150 else "MISSED"
        print(f"  {name:40s} {mib:7.1f} MiB (target <= 150): {verdict}")
        lines.append(f"memory: {name} {mib:.1f} MiB: {verdict}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dir",
        type=Path,
        help="where to build the images (default: a "
        "temporary folder under /tmp, removed at the end unless --keep)",
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds per bench (default 5)")
    parser.add_argument("--sizes", default="1,8", help="GiB of data for export/clone (1,8)")
    parser.add_argument("--compact-gib", type=int, default=4)
    parser.add_argument(
        "--only",
        default="export,compact,ratios,memory",
        help="comma-separated: export (and clone), compact, ratios, memory",
    )
    parser.add_argument("--keep", action="store_true", help="keep the built images")
    args = parser.parse_args()
    wanted = set(args.only.split(","))
    folder = args.dir or Path(tempfile.mkdtemp(prefix="vdigui-bench-", dir="/tmp"))
    folder.mkdir(parents=True, exist_ok=True)
    use_bytecode_cache(folder)
    t0 = time.perf_counter()
    summary: list[str] = []
    print(
        f"# vdigui copy benchmarks ({time.strftime('%Y-%m-%d %H:%M:%S %Z')}, "
        f"{os.cpu_count()} CPUs, images in {folder}; vdigui bytecode cached in {folder}/pycache)"
    )
    try:
        if "export" in wanted or "clone" in wanted:
            for gib in (int(x) for x in args.sizes.split(",")):
                summary += bench_export_clone(folder, gib, args.rounds)
        if "compact" in wanted:
            summary += bench_compact(folder, args.compact_gib, args.rounds, cold=False)
            if can_drop_caches():
                summary += bench_compact(folder, args.compact_gib, args.rounds, cold=True)
            else:
                print("\n(cold-cache compact skipped: emptying the page cache needs root)")
                summary.append("compact cold cache: not permitted (needs root)")
        if "ratios" in wanted:
            summary += bench_ratios(folder, args.rounds)
        if "memory" in wanted:
            summary += bench_memory(folder)
    finally:
        if args.dir is None and not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"\n# summary ({time.perf_counter() - t0:.0f} s, load {load()})")
    for line in summary:
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
