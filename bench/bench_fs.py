"""Benchmarks of the guest-filesystem level (issue 7). Not a test: ``python bench/bench_fs.py``.

What it measures (median of ``--runs`` runs, in-process, page cache warm):

1. Usage analysis of a 4 GiB disk (GPT-less MBR: ext4 2.7 GiB with 400 MiB of files and
   deletions, NTFS 1.3 GiB with 60 MiB of files), read through its VDI. Target <= 0.2 s.
2. Usage analysis of an empty 1 TiB ext4 (one partition), through its VDI. Target <= 4 s.
3. Filesystem-aware compaction of a 1 GiB VDI whose guest is 75 % stale free space (ext4
   prefilled with a non-zero pattern, 25 % files): the result must be within 1 % of the floor
   (blocks the guest uses x block size + the header and map; used blocks that are all zero,
   e.g. never-written inode tables, are not stored at all, so the floor counts only used blocks
   holding data), and take <= 1.5x the time of plain compaction of the same image (which reads
   every block and drops nothing).

Needs e2fsprogs and ntfs-3g (mke2fs, mkntfs, ntfscp) and ~2 GiB of free space in the work
folder (default: a temporary folder; the 1 TiB disk is sparse).
"""

from __future__ import annotations

import argparse
import os
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
sys.path.insert(0, str(REPO))

from vdigui.engine.chain import open_paths  # noqa: E402
from vdigui.engine.image import create_image  # noqa: E402
from vdigui.engine.operations.compact import plan_compact, run_compact  # noqa: E402
from vdigui.engine.usage_report import GuestReader, chain_usage, usage_of_chain  # noqa: E402

MIB = 1 << 20
GIB = 1 << 30
PATTERN = b"stale guest data \xa5\x5a 0123456789 " * 64
ENV = {**os.environ, "E2FSPROGS_FAKE_TIME": "1700000000"}


def sh(*cmd: str | Path) -> None:
    subprocess.run([str(c) for c in cmd], check=True, capture_output=True, env=ENV)


def sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def prefilled(path: Path, size: int) -> Path:
    chunk = (PATTERN * (MIB // len(PATTERN) + 1))[:MIB]
    with open(path, "wb") as f:
        for _ in range(size // MIB):
            f.write(chunk)
    return path


def files(root: Path, total: int, seed: int, largest: int = 8 * MIB) -> list[Path]:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out, made = [], 0
    while made < total:
        size = int(rng.integers(4096, largest))
        path = root / f"f{len(out):04d}.bin"
        path.write_bytes(rng.bytes(size))
        out.append(path)
        made += size
    return out


def mbr(disk: Path, parts: list[tuple[int, int, str]]) -> None:
    script = "label: dos\n" + "".join(f"start={s}, size={n}, type={t}\n" for s, n, t in parts)
    subprocess.run(
        ["sfdisk", "-q", str(disk)], input=script, text=True, check=True, capture_output=True
    )


def place(disk: Path, part: Path, sector: int) -> None:
    """Copy the data regions of ``part`` into ``disk`` at ``sector`` (holes stay holes)."""
    with open(disk, "r+b") as d:
        for offset, data in data_runs(part):
            d.seek(sector * 512 + offset)
            d.write(data)


def data_runs(path: Path, chunk: int = 8 * MIB) -> list[tuple[int, bytes]]:
    fd = os.open(path, os.O_RDONLY)
    out = []
    try:
        size, pos = os.fstat(fd).st_size, 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            for at in range(start, end, chunk):
                out.append((at, os.pread(fd, min(chunk, end - at), at)))
            pos = end
    finally:
        os.close(fd)
    return out


def to_vdi(raw: Path, vdi: Path) -> Path:
    """A dynamic VDI holding ``raw``'s non-zero blocks (holes skipped)."""
    create_image(vdi, raw.stat().st_size)
    with open_paths([vdi], writable_top=True) as chain:
        for offset, data in data_runs(raw, MIB):
            base = offset - offset % MIB
            if offset != base or len(data) % MIB:
                data = chain.read(base, MIB)[: offset - base] + data
                data += bytes(-len(data) % MIB)
            for at in range(0, len(data), MIB):
                piece = data[at : at + MIB]
                if piece.count(0) != len(piece):
                    chain.write(base + at, piece, durable=False)
        chain.top.sync()
    return vdi


def median_time(fn: Callable[[], object], runs: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(runs):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


# -- the three benchmarks ---------------------------------------------------------------------
def bench_4g(work: Path, runs: int) -> str:
    disk = sparse(work / "big4g.raw", 4 * GIB)
    ext_sectors = (2764 * MIB) // 512
    ntfs_start = 2048 + ext_sectors
    ntfs_sectors = 4 * GIB // 512 - ntfs_start - 2048
    mbr(disk, [(2048, ext_sectors, "83"), (ntfs_start, ntfs_sectors, "7")])
    ext = sparse(work / "ext.img", ext_sectors * 512)
    tree = work / "tree4g"
    made = files(tree, 400 * MIB, 1)
    sh("mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-E", "nodiscard", "-d", tree, ext)
    rm = work / "rm.cmd"
    rm.write_text("".join(f"rm /{p.name}\n" for p in made[::4]))
    sh("debugfs", "-w", "-f", rm, ext)
    place(disk, ext, 2048)
    ntfs = sparse(work / "ntfs.img", ntfs_sectors * 512)
    sh(
        "mkntfs",
        "-F",
        "-f",
        "-q",
        "-c",
        "4096",
        "-p",
        str(ntfs_start),
        "-H",
        "255",
        "-S",
        "63",
        ntfs,
    )
    for p in files(work / "tree-ntfs", 60 * MIB, 2):
        sh("ntfscp", "-q", ntfs, p, p.name)
    place(disk, ntfs, ntfs_start)
    vdi = to_vdi(disk, work / "big4g.vdi")
    with open_paths([vdi]) as chain:
        seconds, usage = median_time(lambda: chain_usage(chain), runs)
        reader = GuestReader(chain)
        from vdigui.engine.guestfs import analyze_usage

        analyze_usage(reader, chain.block_size)
    kinds = [v.kind for v in usage.volumes]  # type: ignore[attr-defined]
    return (
        f"usage of a 4 GiB disk ({', '.join(kinds)}): {seconds:.3f} s "
        f"({reader.reads} block reads; target <= 0.2 s)"
    )


def bench_1t(work: Path, runs: int) -> str:
    disk = sparse(work / "t1.raw", 1 << 40)
    sectors = (1 << 40) // 512 - 2048 - 2048
    mbr(disk, [(2048, sectors, "83")])
    ext = sparse(work / "t1.img", sectors * 512)
    sh(
        "mke2fs",
        "-q",
        "-F",
        "-t",
        "ext4",
        "-E",
        "nodiscard,lazy_itable_init=1,lazy_journal_init=1",
        ext,
    )
    place(disk, ext, 2048)
    ext.unlink()
    t = time.perf_counter()
    vdi = to_vdi(disk, work / "t1.vdi")
    build = time.perf_counter() - t
    disk.unlink()
    with open_paths([vdi]) as chain:
        seconds, usage = median_time(lambda: chain_usage(chain), runs)
    used = int(usage.used_bytes.astype(np.int64).sum())  # type: ignore[attr-defined]
    return (
        f"usage of an empty 1 TiB ext4: {seconds:.2f} s (guest uses {used / GIB:.1f} GiB; "
        f"VDI {vdi.stat().st_size / MIB:.0f} MiB built in {build:.0f} s; target <= 4 s)"
    )


def bench_compact(work: Path, runs: int) -> list[str]:
    size = 1 * GIB
    disk = prefilled(work / "stale.raw", size)
    mbr(disk, [(2048, size // 512 - 2048, "83")])
    ext = prefilled(work / "stale-ext.img", size - MIB)
    sh(
        "mke2fs",
        "-q",
        "-F",
        "-t",
        "ext4",
        "-b",
        "4096",
        "-E",
        "nodiscard",
        "-d",
        files(work / "tree-stale", 210 * MIB, 3, largest=24 * MIB)[0].parent,
        ext,
    )
    with open(disk, "r+b") as d, open(ext, "rb") as e:
        d.seek(MIB)
        shutil.copyfileobj(e, d, 8 * MIB)
    pristine = to_vdi(disk, work / "stale.vdi")
    with open_paths([pristine]) as chain:
        report = usage_of_chain(chain)
        header = chain.top.header
    used = report.usage.used_bytes > 0
    used_blocks = int(np.count_nonzero(used & report.allocated & ~report.all_zero))
    floor = header.offset_data + used_blocks * header.block_size
    share = 1 - int(np.count_nonzero(used)) / len(used)

    def timed(fs_aware: bool) -> tuple[float, int]:
        times, sizes = [], []
        for _ in range(runs):
            copy = work / f"run-{fs_aware}.vdi"
            shutil.copyfile(pristine, copy)
            os.sync()  # the copy's dirty pages are not the compaction's to flush
            t = time.perf_counter()
            run_compact(plan_compact(copy, fs_aware=fs_aware))
            times.append(time.perf_counter() - t)
            sizes.append(copy.stat().st_size)
            copy.unlink()
        return statistics.median(times), sizes[-1]

    plain, plain_size = timed(False)
    aware, aware_size = timed(True)
    over = aware_size / floor - 1
    return [
        f"FS-aware compaction, 1 GiB VDI, guest {share:.0%} unused (stale): "
        f"{pristine.stat().st_size / MIB:.0f} MiB -> {aware_size / MIB:.1f} MiB; floor "
        f"{floor / MIB:.1f} MiB ({used_blocks} used blocks with data + metadata): {over:+.2%} "
        "(target within 1 %)",
        f"  time: FS-aware {aware:.2f} s vs plain {plain:.2f} s (plain leaves "
        f"{plain_size / MIB:.0f} MiB): {aware / plain:.2f}x (target <= 1.5x)",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--only", choices=("4g", "1t", "compact"), action="append")
    args = parser.parse_args()
    for tool in ("mke2fs", "debugfs", "mkntfs", "ntfscp", "sfdisk"):
        if shutil.which(tool) is None:
            print(f"bench_fs: {tool} is missing (Debian: e2fsprogs ntfs-3g fdisk)")
            return 2
    work = Path(tempfile.mkdtemp(prefix="vdigui-bench-fs-", dir=args.work))
    only = set(args.only or ("4g", "1t", "compact"))
    try:
        if "4g" in only:
            print(bench_4g(work / "a", args.runs) if (work / "a").mkdir() is None else "")
        if "1t" in only:
            print(bench_1t(work / "b", args.runs) if (work / "b").mkdir() is None else "")
        if "compact" in only:
            (work / "c").mkdir()
            for line in bench_compact(work / "c", args.runs):
                print(line)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
