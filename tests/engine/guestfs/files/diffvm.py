"""A VM folder with three states whose guest files differ in known ways, for the diff tests.

The disk holds an ext4 partition (p1) and a FAT16 one (p2), built with mke2fs -d and mtools.
Each later state is a copy of the previous raw disk changed with debugfs, mtools, or by
overwriting bytes of a file in place at the blocks ``debugfs blocks`` reports; the VM builder
(tests/engine/merge/vmbuild.py) then writes exactly the 1 MiB blocks that differ into the new
layer. The expected changes are this module's own record of what it did, never the engine's.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(REPO / "tests" / "engine" / "merge"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fsbuild import MiB, debugfs, debugfs_blocks, make_tree, mkext, need, partitioned, run  # noqa: E402
from vmbuild import VmBuilder  # noqa: E402

DISK = 48 * MiB
EXT_BLOCK = 4096


@dataclass
class DiffVm:
    """The VM, the raw disk of each state, and what changed from one state to the next.

    ``steps[("S1", "S2")]`` maps ``(volume, path)`` to ``(change, content_changed)``.
    ``written[("S1", "S2")]`` is the set of 1 MiB blocks written into the later layer.
    """

    folder: Path
    tree: Path
    raws: dict[str, Path]
    exts: dict[str, Path]
    fats: dict[str, Path]
    starts: list[int]
    steps: dict[tuple[str, str], dict[tuple[str, str], tuple[str, bool]]] = field(
        default_factory=dict
    )
    written: dict[tuple[str, str], set[int]] = field(default_factory=dict)
    states: tuple[str, ...] = ("S1", "S2", "current")

    def expected(self, a: str, b: str) -> dict[tuple[str, str], tuple[str, bool]]:
        """The changes from state ``a`` to a later state ``b`` (or back, swapped)."""
        order = list(self.states)
        ia, ib = order.index(a), order.index(b)
        if ia > ib:
            fwd = self.expected(b, a)
            swap = {"added": "removed", "removed": "added", "changed": "changed"}
            return {k: (swap[c], cc) for k, (c, cc) in fwd.items()}
        out: dict[tuple[str, str], tuple[str, bool]] = {}
        for i in range(ia, ib):
            for key, (change, content) in self.steps[(order[i], order[i + 1])].items():
                if key in out and out[key][0] == "added" and change == "removed":
                    del out[key]
                elif key in out and out[key][0] == "added":
                    continue
                else:
                    prev = out.get(key)
                    out[key] = (change, content or (prev is not None and prev[1]))
        return out

    def changed_blocks(self, a: str, b: str) -> set[int]:
        order = list(self.states)
        ia, ib = sorted((order.index(a), order.index(b)))
        out: set[int] = set()
        for i in range(ia, ib):
            out |= self.written[(order[i], order[i + 1])]
        return out

    def file_disk_ranges(self, state: str, path: str) -> list[tuple[int, int]]:
        """``(disk offset, length)`` of an ext file's data blocks, from ``debugfs blocks``."""
        base = self.starts[0] * 512
        return [(base + b * EXT_BLOCK, EXT_BLOCK) for b in debugfs_blocks(self.exts[state], path)]


def _overwrite_in_place(ext: Path, path: str, offset: int, data: bytes) -> None:
    """Change a file's bytes without touching its metadata (the guest wrote into it)."""
    blocks = debugfs_blocks(ext, path)
    block = blocks[offset // EXT_BLOCK]
    with open(ext, "r+b") as f:
        f.seek(block * EXT_BLOCK + offset % EXT_BLOCK)
        f.write(data)


def build(tmp: Path) -> DiffVm:
    """Build the VM (ext4 p1 + FAT16 p2) with states S1, S2 and current."""
    need("mke2fs", "debugfs", "sfdisk", "mkfs.fat", "mcopy", "mdel")
    tree = make_tree(tmp / "tree")
    exts = {"S1": mkext(tmp / "ext-S1.img", 24 * MiB, tree, "-t", "ext4", "-b", "4096")}
    fat = tmp / "fat-S1.img"
    run("mkfs.fat", "-C", "-F", "16", "-n", "DATA", fat, str(16 * 1024))
    (tmp / "readme").write_bytes(b"version one\n")
    run("mcopy", "-m", "-i", fat, tmp / "readme", "::/README.TXT")
    run("mcopy", "-m", "-i", fat, tmp / "readme", "::/Old Notes.txt")
    run("mcopy", "-m", "-i", fat, tmp / "readme", "::/KEEP.TXT")
    fats = {"S1": fat}
    steps: dict[tuple[str, str], dict[tuple[str, str], tuple[str, bool]]] = {}

    # S1 -> S2: add, remove, grow, change in place (same size and times), touch only.
    ext, fat = tmp / "ext-S2.img", tmp / "fat-S2.img"
    shutil.copy(exts["S1"], ext)
    shutil.copy(fats["S1"], fat)
    (tmp / "host2").write_bytes(b"guest-two, renamed and longer\n")
    (tmp / "inner").write_bytes(bytes(range(256)) * 40)
    debugfs(
        ext,
        "rm /etc/hostname",
        f"write {tmp / 'host2'} /etc/hostname",
        f"write {tmp / 'host2'} /new.txt",
        "rm /hard1",
        "mkdir /newdir",
        f"write {tmp / 'inner'} /newdir/inner.bin",
        'sif "/Ünïcødé ñame.txt" mtime 20200101000000',
        write=True,
    )
    many = sorted(p.name for p in (tree / "many").iterdir() if p.stat().st_size > 100)
    victim = f"/many/{many[7]}"
    _overwrite_in_place(ext, victim, 10, b"CHANGED IN PLACE")
    (tmp / "readme2").write_bytes(b"version two, longer\n")
    run("mcopy", "-o", "-i", fat, tmp / "readme2", "::/README.TXT")
    run("mdel", "-i", fat, "::/Old Notes.txt")
    exts["S2"], fats["S2"] = ext, fat
    steps[("S1", "S2")] = {
        ("p1", "/etc/hostname"): ("changed", True),
        ("p1", "/new.txt"): ("added", True),
        ("p1", "/hard1"): ("removed", True),
        ("p1", "/newdir"): ("added", True),
        ("p1", "/newdir/inner.bin"): ("added", True),
        ("p1", victim): ("changed", True),
        ("p1", "/Ünïcødé ñame.txt"): ("changed", False),
        ("p2", "/README.TXT"): ("changed", True),
        ("p2", "/Old Notes.txt"): ("removed", True),
    }

    # S2 -> current: remove a folder's content and the folder, change a big file in place.
    ext, fat = tmp / "ext-cur.img", tmp / "fat-cur.img"
    shutil.copy(exts["S2"], ext)
    shutil.copy(fats["S2"], fat)
    debugfs(ext, "rm /a/b/c/d/e/bottom.txt", "rmdir /a/b/c/d/e", write=True)
    _overwrite_in_place(ext, "/big.bin", 2 * MiB + 5, b"\xff" * 3000)
    (tmp / "newfat").write_bytes(b"n" * 5000)
    run("mcopy", "-i", fat, tmp / "newfat", "::/NEW.TXT")
    exts["current"], fats["current"] = ext, fat
    steps[("S2", "current")] = {
        ("p1", "/a/b/c/d/e"): ("removed", True),
        ("p1", "/a/b/c/d/e/bottom.txt"): ("removed", True),
        ("p1", "/big.bin"): ("changed", True),
        ("p2", "/NEW.TXT"): ("added", True),
    }

    raws: dict[str, Path] = {}
    starts: list[int] = []
    for state in ("S1", "S2", "current"):
        raws[state] = tmp / f"disk-{state}.raw"
        starts = partitioned(raws[state], DISK, [(exts[state], "83"), (fats[state], "c")])
    vm = VmBuilder(tmp / "vm", disk_size=DISK)
    written: dict[tuple[str, str], set[int]] = {}
    previous = bytes(DISK)
    for i, state in enumerate(("S1", "S2", "current")):
        data = raws[state].read_bytes()
        done = set()
        for b in range(DISK // MiB):
            chunk = data[b * MiB : (b + 1) * MiB]
            if chunk != previous[b * MiB : (b + 1) * MiB]:
                vm.write(b * MiB, chunk)
                done.add(b)
        if i:
            written[(("S1", "S2", "current")[i - 1], state)] = done
        previous = data
        if state != "current":
            vm.take_snapshot(state)
    return DiffVm(vm.folder, tree, raws, exts, fats, starts, steps, written)
