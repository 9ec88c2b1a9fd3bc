#!/usr/bin/env python3
"""Benchmark of listing and copying out guest files (issue 14). Not a test:
``python bench/bench_files.py``.

Whole processes against The Sleuth Kit and debugfs on the raw image of the same ext4 volume,
side by side: every round runs each command of a bench once, in an order rotated from round
to round, timed by hyperfine (``bench_copy.alternate``); the tables give medians over the
rounds. vdictl runs from compiled bytecode, as an installed package does
(``bench_copy.use_bytecode_cache``).

- ``list``: ``vdictl ls IMG -R`` against ``fls -r -o 0 RAW``, an ext4 volume of ``--files``
  files (default 100,000, folders of 1,000; the volume ``bench_diff.py`` builds, written on
  the whole disk, so its offset is 0). Targets: <= 1.0 x fls and <= 2 s. Also the engine's
  own walk in process (median of the rounds; no start-up).
- ``list-ntfs``: the same against an NTFS volume of the same tree (``mkntfs -F -Q`` on the
  whole disk, the tree copied in through an ntfs-3g FUSE mount), after checking that both
  listings hold the same user files and folders (NTFS metadata files, which fls lists and
  vdigui hides, are not counted).
- ``get``: ``vdictl get IMG /big.bin OUT`` against ``icat`` of the same inode, a 1 GiB file
  (``--big-mib``) of random bytes, plain and followed by ``sync FILE`` (vdictl flushes what
  it writes; icat does not).
- ``tree``: ``vdictl get IMG / OUT`` against ``debugfs -R "rdump / OUT"``, the whole
  ``list`` volume (``--tree-rounds``, default 1: vdictl flushes every file it writes), plain
  and followed by ``sync``.
- ``memory``: the peak RSS (GNU time) of one run of each vdictl command and its reference.

Needs e2fsprogs (mke2fs, debugfs), sleuthkit (fls, icat), hyperfine, GNU time, ntfs-3g
(mkntfs, ntfs-3g and FUSE, for ``list-ntfs``) and about 12 GiB of free space in the work
folder (``--dir`` keeps the images there for the next run).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_copy  # noqa: E402
import bench_diff  # noqa: E402
from bench_copy import REPO, alternate, load, peak_rss_mib, prep, require, show, vdictl  # noqa: E402

sys.path.insert(0, str(REPO))

from vdigui.engine.chain import open_paths  # noqa: E402
from vdigui.engine.guestfs.files import list_volumes, open_namespace  # noqa: E402
from vdigui.engine.image import create_image  # noqa: E402
from vdigui.engine.usage_report import GuestReader  # noqa: E402

MIB = 1 << 20
#: The user entries of both volumes: the tree's top folders and everything below them.
USER_PATH = re.compile(r"^/d\d{3}(/|$)")


# -- inputs -------------------------------------------------------------------------------------
def build_tree(work: Path, files: int) -> tuple[Path, Path]:
    """The ``bench_diff.py`` volume: (VDI, raw ext4 image), built once per folder."""
    vdi, raw = work / "base.vdi", work / "one.img"
    marker = work / f"built-{files}"
    if not marker.exists():
        for leftover in ("tree", "base.vdi", "child.vdi", "one.img", "two.img"):
            path = work / leftover
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        bench_diff.build(work, files)
        # Only the base state is listed here; the rest of bench_diff's build is not needed.
        for extra in ("child.vdi", "two.img"):
            (work / extra).unlink(missing_ok=True)
        shutil.rmtree(work / "tree", ignore_errors=True)
        marker.touch()
    return vdi, raw


def build_ntfs(work: Path, files: int) -> tuple[Path, Path]:
    """The same tree on an NTFS volume: (VDI, raw image), built once per folder.

    The tree comes from ``bench_diff.build`` (run in a scratch folder, its ext4 images thrown
    away); mkntfs formats the whole raw image (no partition table, offset 0) and the tree is
    copied in through an ntfs-3g FUSE mount. ntfs-3g runs in the foreground (``no_detach``)
    so the build waits for it to exit, having written everything, after the unmount.
    """
    vdi, raw = work / "ntfs.vdi", work / "ntfs.img"
    marker = work / f"built-ntfs-{files}"
    if marker.exists():
        return vdi, raw
    scratch, mnt = work / "ntfs-src", work / "ntfs-mnt"
    for path in (scratch, vdi, raw):
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    scratch.mkdir()
    bench_diff.build(scratch, files)
    # Small files stay in their 1 KiB MFT record, the rest take 4 KiB clusters.
    size = max(256, files // 100 * 2) * MIB
    with open(raw, "wb") as f:
        f.truncate(size)
    bench_diff.sh(require("mkntfs", "ntfs-3g"), "-F", "-Q", "-q", raw)
    mnt.mkdir(exist_ok=True)
    log = open(work / "ntfs-3g.log", "wb")  # noqa: SIM115 (closed after the daemon exits)
    daemon = subprocess.Popen(
        [require("ntfs-3g", "ntfs-3g"), "-o", "no_detach", raw, mnt], stdout=log, stderr=log
    )
    try:
        for _ in range(100):
            if os.path.ismount(mnt):
                break
            if daemon.poll() is not None:
                raise SystemExit(f"ntfs-3g could not mount {raw} (see {work / 'ntfs-3g.log'})")
            time.sleep(0.1)
        else:
            raise SystemExit(f"ntfs-3g did not mount {raw}")
        bench_diff.sh("cp", "-r", "--", f"{scratch / 'tree'}/.", mnt)
    finally:
        if os.path.ismount(mnt):
            bench_diff.sh("umount", mnt)
        elif daemon.poll() is None:  # never mounted: nothing of the copy to write back
            daemon.terminate()
        code = daemon.wait(timeout=600)
        log.close()
        if code != 0:
            raise SystemExit(f"ntfs-3g failed on {raw} (see {work / 'ntfs-3g.log'})")
    mnt.rmdir()
    shutil.rmtree(scratch)
    create_image(vdi, size)
    bench_diff._write_differing(vdi, raw, None)
    marker.touch()
    return vdi, raw


def build_big(work: Path, mib: int) -> tuple[Path, Path, int]:
    """An ext4 volume holding one ``mib`` MiB file of random bytes: (VDI, raw, its inode)."""
    vdi, raw = work / "big.vdi", work / "big.img"
    marker = work / f"built-big-{mib}"
    if not marker.exists():
        vdi.unlink(missing_ok=True)
        tree = work / "bigtree"
        tree.mkdir(exist_ok=True)
        with open(tree / "big.bin", "wb") as f:
            for _ in range(mib // 8):
                f.write(os.urandom(8 * MIB))
        size = (mib + mib // 4 + 64) * MIB
        bench_diff.sh(
            "mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-d", tree, raw, f"{size // 1024}k"
        )
        shutil.rmtree(tree)
        create_image(vdi, size)
        bench_diff._write_differing(vdi, raw, None)
        marker.touch()
    listing = subprocess.run(
        [require("fls", "sleuthkit"), str(raw)], check=True, capture_output=True, text=True
    ).stdout
    found = re.search(r"r/r (\d+):\tbig\.bin$", listing, re.M)
    if not found:
        raise SystemExit(f"fls does not list big.bin in {raw}")
    return vdi, raw, int(found.group(1))


# -- benches ------------------------------------------------------------------------------------
def engine_walk(vdi: Path, rounds: int) -> tuple[float, int]:
    """Median seconds of the engine's walk of the whole volume in process, and its entries."""
    times, count = [], 0
    for _ in range(rounds):
        with open_paths([vdi]) as chain:
            start = time.monotonic()
            reader = GuestReader(chain)
            volume = next(v for v in list_volumes(reader) if v.readable)
            ns = open_namespace(reader, volume)
            count = sum(len(entries) for _path, entries in ns.walk("/"))
            times.append(time.monotonic() - start)
    return statistics.median(times), count


def user_paths_vdictl(vdi: Path) -> set[str]:
    """The user entries ``vdictl ls -R`` lists (folders end in ``/``, as it prints them)."""
    out = subprocess.run(
        [vdictl(), "ls", str(vdi), "-R"], check=True, capture_output=True, text=True
    ).stdout
    paths, folder = set(), "/"
    for line in out.splitlines():
        if line.startswith("/") and line.endswith(":"):
            folder = line[:-1]
        elif line:
            path = f"{folder.rstrip('/')}/{line}"
            if USER_PATH.match(path):
                paths.add(path)
    return paths


def user_paths_fls(raw: Path) -> set[str]:
    """The allocated user entries ``fls -r -p`` lists (full paths; folders get a ``/``)."""
    out = subprocess.run(
        [require("fls", "sleuthkit"), "-r", "-p", "-o", "0", str(raw)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    paths = set()
    for line in out.splitlines():
        kind, _, rest = line.partition(" ")
        if rest.startswith("*"):  # deleted
            continue
        name = "/" + rest.split(":\t", 1)[1]
        if USER_PATH.match(name):
            paths.add(name + "/" if kind.startswith("d/") else name)
    return paths


def check_listings(vdi: Path, raw: Path) -> str:
    """Compare the user files and folders of both listings; stop the bench if they differ."""
    ours, theirs = user_paths_vdictl(vdi), user_paths_fls(raw)
    folders = sum(p.endswith("/") for p in ours)
    if ours != theirs:
        only_ours, only_fls = sorted(ours - theirs), sorted(theirs - ours)
        raise SystemExit(
            f"The listings differ: {len(ours):,} entries from vdictl, {len(theirs):,} from "
            f"fls; only vdictl: {only_ours[:5]}, only fls: {only_fls[:5]}"
        )
    return f"{len(ours) - folders:,} files and {folders:,} folders, the same in both listings"


def compare(
    title: str, stats: dict[str, dict[str, float]], pairs: list[tuple[str, str]]
) -> list[str]:
    """Print the ratios of median times that have no target (``show`` checks targets)."""
    lines = []
    for name, ref in pairs:
        line = f"{name} / {ref} = {stats[name]['wall'] / stats[ref]['wall']:.2f} (no target)"
        print(f"  {line}")
        lines.append(f"{title}: {line}")
    return lines


def bench_list(work: Path, vdi: Path, raw: Path, rounds: int, fs: str = "ext4") -> list[str]:
    started = load()
    title = f"list every file ({fs})"
    fls = require("fls", "sleuthkit")
    stats = alternate(
        {
            "vdictl ls -R": f"{vdictl()} ls {vdi} -R",
            "fls -r": f"{fls} -r -o 0 {raw}",
        },
        {"vdictl ls -R": "true", "fls -r": "true"},
        rounds,
        work,
    )
    lines = show(title, stats, [("vdictl ls -R", "fls -r", 1.0)], rounds, started)
    wall = stats["vdictl ls -R"]["wall"]
    verdict = "met" if wall <= 2.0 else f"MISSED by {100 * (wall / 2.0 - 1):.0f} %"
    print(f"  vdictl ls -R = {wall:.3f} s (target <= 2 s): {verdict}")
    lines.append(f"{title}: vdictl ls -R = {wall:.3f} s (target <= 2 s): {verdict}")
    walk, count = engine_walk(vdi, rounds)
    ratio = walk / stats["fls -r"]["wall"]
    print(f"  engine walk in process: {walk:.3f} s for {count:,} entries ({ratio:.2f} x fls -r)")
    lines.append(f"{title}: engine walk {walk:.3f} s ({ratio:.2f} x fls -r, for reference)")
    return lines


def bench_get(work: Path, vdi: Path, raw: Path, inode: int, rounds: int) -> list[str]:
    """The big file (``--big-mib``; named "1 GiB" after the default) against icat."""
    started = load()
    out = work / "out-get"
    icat = require("icat", "sleuthkit")
    target = out / "big.bin"
    fresh = prep(f"rm -rf {out}", f"mkdir -p {out}", "sync")
    # hyperfine runs each command through a shell (and subtracts the shell's start-up).
    stats = alternate(
        {
            "vdictl get 1 GiB": f"{vdictl()} get {vdi} /big.bin {out}",
            "icat": f"{icat} -o 0 {raw} {inode} > {target}",
            "icat + sync FILE": f"{icat} -o 0 {raw} {inode} > {target} && sync {target}",
        },
        dict.fromkeys(("vdictl get 1 GiB", "icat", "icat + sync FILE"), fresh),
        rounds,
        work,
    )
    shutil.rmtree(out, ignore_errors=True)
    show("extract one big file", stats, [], rounds, started)
    return compare(
        "extract one big file",
        stats,
        [("vdictl get 1 GiB", "icat + sync FILE"), ("vdictl get 1 GiB", "icat")],
    )


def bench_tree(work: Path, vdi: Path, raw: Path, rounds: int) -> list[str]:
    started = load()
    out = work / "out-tree"
    debugfs = require("debugfs", "e2fsprogs")
    fresh = prep(f"rm -rf {out}", f"mkdir -p {out}", "sync")
    rdump = f"{debugfs} -R 'rdump / {out}' {raw}"
    stats = alternate(
        {
            "vdictl get tree": f"{vdictl()} get {vdi} / {out}",
            "debugfs rdump": rdump,
            "debugfs rdump + sync": f"{rdump} && sync",
        },
        dict.fromkeys(("vdictl get tree", "debugfs rdump", "debugfs rdump + sync"), fresh),
        rounds,
        work,
    )
    shutil.rmtree(out, ignore_errors=True)
    show("extract every file", stats, [], rounds, started)
    return compare(
        "extract every file",
        stats,
        [("vdictl get tree", "debugfs rdump + sync"), ("vdictl get tree", "debugfs rdump")],
    )


def bench_memory(
    work: Path,
    tree: tuple[Path, Path],
    big: tuple[Path, Path, int] | None,
    tree_too: bool,
    ntfs: tuple[Path, Path] | None = None,
) -> list[str]:
    print(f"\n## peak memory (load {load()})")
    vdi, raw = tree
    fls = require("fls", "sleuthkit")
    runs: list[tuple[str, list[str], str | None]] = [
        ("vdictl ls -R", [vdictl(), "ls", str(vdi), "-R"], None),
        ("fls -r", [fls, "-r", "-o", "0", str(raw)], None),
    ]
    if ntfs is not None:
        nvdi, nraw = ntfs
        runs += [
            ("vdictl ls -R (NTFS)", [vdictl(), "ls", str(nvdi), "-R"], None),
            ("fls -r (NTFS)", [fls, "-r", "-o", "0", str(nraw)], None),
        ]
    if big is not None:
        bvdi, braw, inode = big
        out = work / "out-mem"
        runs += [
            ("vdictl get 1 GiB", [vdictl(), "get", str(bvdi), "/big.bin", str(out)], str(out)),
            # icat writes to standard output: GNU time's own output goes to stderr.
            ("icat 1 GiB", ["sh", "-c", f"icat -o 0 {braw} {inode} > /dev/null"], None),
        ]
    if tree_too:
        out = work / "out-mem"
        runs.append(("vdictl get tree", [vdictl(), "get", str(vdi), "/", str(out)], str(out)))
    lines = []
    for name, cmd, clean in runs:
        if clean:
            shutil.rmtree(clean, ignore_errors=True)
        peak = peak_rss_mib(cmd)
        if clean:
            shutil.rmtree(clean, ignore_errors=True)
        print(f"{name:24s} {peak:8.1f} MiB")
        lines.append(f"peak memory: {name} {peak:.1f} MiB")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--big-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of list and get")
    parser.add_argument("--tree-rounds", type=int, default=1)
    parser.add_argument(
        "--only",
        default="list,list-ntfs,get,tree,memory",
        help="comma-separated: list,list-ntfs,get,tree,memory",
    )
    parser.add_argument("--dir", type=Path, default=None, help="build (and keep) images here")
    args = parser.parse_args()
    only = set(args.only.split(","))
    for tool, debian in (("hyperfine", "hyperfine"), ("fls", "sleuthkit"), ("mke2fs", "e2fsprogs")):
        require(tool, debian)
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        work = args.dir
    else:
        work = Path(tempfile.mkdtemp(prefix="bench-files-"))
    try:
        t0 = time.monotonic()
        tree = build_tree(work, args.files) if only & {"list", "tree", "memory"} else None
        ntfs = build_ntfs(work, args.files) if "list-ntfs" in only else None
        big = build_big(work, args.big_mib) if only & {"get", "memory"} else None
        print(f"inputs ready in {time.monotonic() - t0:.1f} s (load {load()})")
        bench_copy.use_bytecode_cache(work)
        summary: list[str] = []
        if "list" in only and tree is not None:
            summary += bench_list(work, *tree, args.rounds)
        if ntfs is not None:
            agree = check_listings(*ntfs)
            print(f"NTFS listings: {agree}")
            summary.append(f"list every file (NTFS): {agree}")
            summary += bench_list(work, *ntfs, args.rounds, "NTFS")
        if "get" in only and big is not None:
            summary += bench_get(work, *big, args.rounds)
        if "tree" in only and tree is not None:
            summary += bench_tree(work, *tree, args.tree_rounds)
        if "memory" in only and tree is not None:
            summary += bench_memory(work, tree, big, "tree" in only, ntfs)
        print("\n## summary")
        for line in summary:
            print(f"- {line}")
        return 0
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
