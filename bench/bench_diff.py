"""Benchmark of ``vdictl diff`` (issue 14). Not a test: ``python bench/bench_diff.py``.

What it measures (median of ``--runs`` runs, in-process, page cache warm): the guest-file diff
between two states of one disk whose ext4 volume holds ``--files`` files (default 100,000, in
folders of 1,000) and that differ in 1 % of them (replaced with new content by debugfs).
The later state is a differencing image holding exactly the 1 MiB blocks that differ. Target:
<= 3 s, peak memory <= 300 MiB (the process's maximum resident size, reported as measured).

Needs e2fsprogs (mke2fs, debugfs) and ~3 GiB of free space in the work folder.
"""

from __future__ import annotations

import argparse
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vdigui.engine.chain import open_paths  # noqa: E402
from vdigui.engine.guestfs.files.diff import diff_chains  # noqa: E402
from vdigui.engine.image import create_image  # noqa: E402

MIB = 1 << 20
ENV = {**os.environ, "E2FSPROGS_FAKE_TIME": "1700000000"}


def sh(*cmd: str | Path) -> None:
    subprocess.run([str(c) for c in cmd], check=True, capture_output=True, env=ENV)


def build(work: Path, count: int) -> tuple[Path, Path, int]:
    """Base image (ext4 with ``count`` files) and a child holding a 1 % change."""
    rng = random.Random(5)
    tree = work / "tree"
    per = 1000
    for d in range(-(-count // per)):
        folder = tree / f"d{d:03d}"
        folder.mkdir(parents=True)
        for i in range(min(per, count - d * per)):
            (folder / f"f{i:04d}.txt").write_bytes(os.urandom(rng.randint(10, 3000)))
    size = max(512, count // 100 * 8) * MIB
    one, two = work / "one.img", work / "two.img"
    sh(
        "mke2fs",
        "-q",
        "-F",
        "-t",
        "ext4",
        "-b",
        "4096",
        "-N",
        str(count + 1000),
        "-d",
        tree,
        one,
        f"{size // 1024}k",
    )
    shutil.copy(one, two)
    changed = rng.sample(range(count), count // 100)
    (work / "new").write_bytes(b"changed content\n" * 50)
    script = work / "cmds"
    script.write_text(
        "".join(
            f"rm /d{c // per:03d}/f{c % per:04d}.txt\n"
            f"write {work / 'new'} /d{c // per:03d}/f{c % per:04d}.txt\n"
            for c in changed
        )
    )
    sh("debugfs", "-w", "-f", script, two)
    base, child = work / "base.vdi", work / "child.vdi"
    create_image(base, size)
    _write_differing(base, one, None)
    create_image(child, parent=base)
    _write_differing(child, two, one)
    return base, child, len(changed)


def _write_differing(vdi: Path, raw: Path, previous: Path | None) -> None:
    chain = open_paths(
        [vdi] if previous is None else [vdi.with_name("base.vdi"), vdi], writable_top=True
    )
    try:
        with open(raw, "rb") as f, open(previous, "rb") if previous else open(raw, "rb") as p:
            block = 0
            while True:
                data = f.read(MIB)
                if not data:
                    break
                old = p.read(MIB) if previous else bytes(len(data))
                if data != old:
                    chain.write(block * MIB, data, durable=False)
                block += 1
        chain.top.sync()
    finally:
        chain.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-diff-", dir=args.work))
    try:
        t0 = time.monotonic()
        base, child, changed = build(work, args.files)
        print(f"built {args.files:,} files, {changed:,} changed, in {time.monotonic() - t0:.1f} s")
        times = []
        result = None
        for _ in range(args.runs):
            with open_paths([base]) as a, open_paths([base, child]) as b:
                start = time.monotonic()
                result = diff_chains(a, b)
                times.append(time.monotonic() - start)
        assert result is not None
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        found = len(result.changes)
        print(
            f"vdictl diff, {args.files:,} files, 1 % changed: median "
            f"{statistics.median(times):.2f} s (target <= 3 s); {found:,} changes "
            f"({result.stats.compared:,} files' contents read, "
            f"{result.stats.changed_blocks:,} changed blocks); peak RSS {peak:.0f} MiB "
            "(target <= 300 MiB)"
        )
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
