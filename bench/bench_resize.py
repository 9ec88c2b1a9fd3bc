"""Benchmark: ``vdictl resize`` of a 2 TiB dynamic image, whole processes, plus peak memory.

Targets (issue 15):

- growing a 2 TiB dynamic image when no data must move: <= 0.5 s (median wall time of the
  whole ``vdictl resize`` process, Python start-up included);
- growing when the block map area must grow (the first data blocks are copied to the end of
  the file, as VirtualBox's ``vdiResize`` does): <= 1.2 x a plain copy of the moved blocks
  (``dd`` of exactly those slots to the end of a copy of the same image, ``conv=fsync``),
  run side by side, alternating;
- peak memory (RSS of the vdictl process, GNU ``time -f %M``) <= 150 MiB in both.

Usage: ``python bench/bench_resize.py [--rounds 7] [--data-mib 256] [--grow-tib 8]
[--dir DIR] [--keep]``

The images are built once (VirtualBox's layout: header, map at 1 MiB, data from the next MiB;
1 MiB blocks, ``--data-mib`` blocks of data spread over the disk in shuffled slot order):

- *no move*: a disk of 2 TiB less 1 GiB grown to 2 TiB. Its map area (rounded up to a MiB,
  as VirtualBox creates it) already has room for the 1,024 new entries, so no data moves:
  the resize writes the header, the longer map and its journal, and verifies;
- *map grows*: a 2 TiB disk grown to ``--grow-tib`` TiB (default 8): the map grows by 4 MiB
  per TiB, 24 MiB here, so the first 24 data slots (24 MiB) are copied to the end of the
  file before the longer map overwrites them. Besides the copy, the run writes the new map
  (as large as the moved data: one slot of map per 256 GiB of disk) and saves the bytes it
  overwrites as undo data, so about three times the moved bytes are written.

Each timed run starts from a fresh copy of the source image in a folder of its own
(``--prepare``: remove the folder, ``cp``, ``sync``), so the undo data of the previous run is
gone. The load average is printed with every table; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import bench_copy as bc  # noqa: E402

from vdigui.engine import format as fmt  # noqa: E402

MIB = 1 << 20
GIB = 1 << 30
TIB = 1 << 40
MEMORY_LIMIT_MIB = 150


def build(path: Path, disk_blocks: int, data_mib: int, seed: int) -> Path:
    """A dynamic image of ``disk_blocks`` MiB with ``data_mib`` blocks of data spread over it."""
    chosen = random.Random(seed).sample(range(disk_blocks), data_mib)
    return bc.build_stream(
        path,
        disk_blocks,
        lambda b: bc.pattern(b, MIB),
        seed=seed,
        stored=chosen,
        disk_blocks=disk_blocks,
    )


def fresh(work: Path, source: Path) -> str:
    """The --prepare step: a fresh copy of ``source`` alone in ``work``."""
    return bc.prep(
        f"rm -rf '{work}'",
        f"mkdir -p '{work}'",
        f"cp --sparse=always '{source}' '{work}/disk.vdi'",
        "sync",
    )


def peak_mib(command: list[str], prepare: str) -> float:
    """Peak RSS (MiB) of ``command`` after ``prepare``, from GNU time (-f %M, KiB)."""
    subprocess.run(prepare, shell=True, check=True)
    time_tool = bc.require("/usr/bin/time", "time")
    done = subprocess.run(
        [time_tool, "-f", "%M", *command], capture_output=True, text=True, env=bc.RUN_ENV
    )
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {done.stderr.strip()}")
    return int(done.stderr.strip().splitlines()[-1]) / 1024


def moved_slots(image: Path, new_size: int) -> tuple[int, int, int]:
    """(first data byte, slots the longer map displaces, file size) of ``image``."""
    header = fmt.read_header(image)
    new_blocks = -(-new_size // header.block_size)
    needed = header.offset_blocks + 4 * new_blocks
    k = max(0, -(-(needed - header.offset_data) // header.slot_size))
    return header.offset_data, min(k, header.blocks_allocated), image.stat().st_size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--data-mib", type=int, default=256)
    parser.add_argument("--grow-tib", type=int, default=8)
    parser.add_argument("--dir", type=Path, help="build (and keep) the images here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    started = bc.load()
    folder = args.dir or Path(tempfile.mkdtemp(prefix="bench-resize-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        bc.use_bytecode_cache(folder)
        vdictl = bc.vdictl()
        blocks = 2 * TIB // MIB
        small = build(folder / "no-move.vdi", blocks - GIB // MIB, args.data_mib, 15)
        big = build(folder / "map-grows.vdi", blocks, args.data_mib, 16)
        summary: list[str] = []

        # 1. no data moves: vdictl alone, against the 0.5 s target.
        work = folder / "w-nomove"
        target = 2 * TIB
        stats = bc.alternate(
            {"vdictl resize (no move)": f"'{vdictl}' resize '{work}/disk.vdi' --size {target}"},
            {"vdictl resize (no move)": fresh(work, small)},
            args.rounds,
            folder,
        )
        wall = stats["vdictl resize (no move)"]["wall"]
        bc.show("grow 2 TiB less 1 GiB -> 2 TiB, no data moves", stats, [], args.rounds, started)
        verdict = "met" if wall <= 0.5 else f"MISSED by {100 * (wall / 0.5 - 1):.0f} %"
        line = f"grow to 2 TiB, no data moves: median {wall:.3f} s (target <= 0.5 s): {verdict}"
        print("  " + line)
        summary.append(line)

        # 2. the map area grows: vdictl against dd of the moved slots, alternating.
        new_size = args.grow_tib * TIB
        first, k, end = moved_slots(big, new_size)
        work_v, work_d = folder / "w-grow", folder / "w-dd"
        dd = bc.require("dd", "coreutils")
        commands = {
            "vdictl resize (map grows)": f"'{vdictl}' resize '{work_v}/disk.vdi' --size {new_size}",
            "dd of the moved slots": f"'{dd}' if='{work_d}/disk.vdi' of='{work_d}/disk.vdi' "
            f"bs=1M skip={first // MIB} seek={end // MIB} count={k} "
            "conv=notrunc,fsync status=none",
        }
        prepare = {
            "vdictl resize (map grows)": fresh(work_v, big),
            "dd of the moved slots": fresh(work_d, big),
        }
        stats = bc.alternate(commands, prepare, args.rounds, folder)
        summary += bc.show(
            f"grow 2 TiB -> {args.grow_tib} TiB: {k} slots ({k} MiB) move",
            stats,
            [("vdictl resize (map grows)", "dd of the moved slots", 1.2)],
            args.rounds,
            started,
        )

        # 3. peak memory of both resizes.
        print(f"\n## peak memory (target <= {MEMORY_LIMIT_MIB} MiB)")
        for name, where, source, size in (
            ("no move", work, small, target),
            ("map grows", work_v, big, new_size),
        ):
            mib = peak_mib(
                [vdictl, "resize", str(where / "disk.vdi"), "--size", str(size)],
                fresh(where, source),
            )
            verdict = (
                "met"
                if mib <= MEMORY_LIMIT_MIB
                else f"MISSED by {100 * (mib / MEMORY_LIMIT_MIB - 1):.0f} %"
            )
            line = f"peak RSS, vdictl resize ({name}): {mib:.1f} MiB: {verdict}"
            print("  " + line)
            summary.append(line)
        print(f"\n## summary (load at start {started}, at end {bc.load()})")
        for line in summary:
            print("  " + line)
        (folder / "summary.json").write_text(
            json.dumps(
                {
                    "load_start": started,
                    "load_end": bc.load(),
                    "lines": summary,
                    "median_no_move_s": wall,
                    "medians": {n: s["wall"] for n, s in stats.items()},
                },
                indent=2,
            )
        )
    finally:
        if args.dir is None and not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
