"""Building guest filesystems with Debian's tools, and reading them back with independent tools.

Filesystems are made with mke2fs -d / debugfs and mkfs.fat / mtools, placed into partitioned
disks (sfdisk) and wrapped into VDI images by tests/builders.py. Expected values come only from
debugfs, mtools and The Sleuth Kit (fls, icat), never from vdigui's readers.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(REPO / "tests"))

from builders import build_image  # noqa: E402
from support import require_tool  # noqa: E402

MiB = 1 << 20
ENV = {
    **os.environ,
    "MTOOLS_SKIP_CHECK": "1",
    "E2FSPROGS_FAKE_TIME": "1700000000",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "TZ": "UTC",
}


def need(*tools: str) -> None:
    for tool in tools:
        require_tool(tool)


def run(*cmd: str | Path, check: bool = True, text: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=text, env=ENV, timeout=120
    )
    if check and res.returncode:
        raise AssertionError(f"{cmd} failed ({res.returncode}): {res.stdout!r} {res.stderr!r}")
    return res


def make_tree(root: Path, seed: int = 7) -> Path:
    """Nested folders, non-ASCII and long names, links, a sparse file, many small files."""
    rng = np.random.default_rng(seed)
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hostname").write_bytes(b"guest-one\n")
    deep = root / "a" / "b" / "c" / "d" / "e"
    deep.mkdir(parents=True)
    (deep / "bottom.txt").write_bytes(b"deep down\n")
    (root / "Ünïcødé ñame.txt").write_bytes("grüße\n".encode())
    (root / ("long" * 60)).write_bytes(b"long name\n")  # 240 bytes
    many = root / "many"
    many.mkdir()
    for i in range(300):
        (many / f"file{i:04d}.dat").write_bytes(rng.bytes(int(rng.integers(0, 3000))))
    (root / "big.bin").write_bytes(rng.bytes(3 * MiB + 123))
    with open(root / "sparse.img", "wb") as f:
        f.seek(5 * MiB)
        f.write(b"after the hole\n")
        f.seek(9 * MiB)
        f.write(b"end")
    (root / "hard1").write_bytes(b"linked twice\n")
    os.link(root / "hard1", root / "a" / "hard2")
    (root / "fastlink").symlink_to("etc/hostname")
    (root / "slowlink").symlink_to("/" + "x" * 100 + "/target/far/away")
    (root / "evil").symlink_to("/etc/passwd")
    os.utime(root / "etc" / "hostname", (1600000000, 1600000000))
    return root


def mkext(path: Path, size: int, tree: Path | None, *args: str) -> Path:
    """An ext filesystem image of ``size`` bytes (``args``: -t ext4, -b 1024, -O ...)."""
    if path.exists():
        path.unlink()
    extra = ["-d", str(tree)] if tree is not None else []
    run("mke2fs", "-q", "-F", "-E", "nodiscard", *args, *extra, path, f"{size // 1024}k")
    return path


def debugfs(image: Path, *commands: str, write: bool = False) -> str:
    cmd: list[str | Path] = ["debugfs", "-w"] if write else ["debugfs"]
    if len(commands) == 1:
        cmd += ["-R", commands[0]]
    else:
        script = image.with_suffix(".cmds")
        script.write_text("\n".join(commands) + "\n")
        cmd += ["-f", str(script)]
    return str(run(*cmd, image).stdout)


def debugfs_bytes(image: Path, command: str) -> bytes:
    return bytes(run("debugfs", "-R", command, image, text=False).stdout)


def debugfs_ls(image: Path, path: str) -> dict[str, tuple[int, int, int, int, int | None]]:
    """name -> (inode, mode, uid, gid, size or None for directories) from ``ls -p``."""
    out: dict[str, tuple[int, int, int, int, int | None]] = {}
    for line in debugfs(image, f'ls -p "{path}"').splitlines():
        m = re.fullmatch(r"/(\d+)/(\d+)/(\d+)/(\d+)/(.*)/(\d*)/", line)
        if not m or m.group(5) in (".", "..") or m.group(1) == "0":
            continue
        ino, mode, uid, gid, name, size = m.groups()
        out[name] = (int(ino), int(mode, 8), int(uid), int(gid), int(size) if size else None)
    return out


def debugfs_blocks(image: Path, path: str) -> list[int]:
    return [int(b) for b in debugfs(image, f'blocks "{path}"').split()]


def fls_paths(image: Path, offset_sectors: int = 0) -> dict[str, tuple[str, int]]:
    """path -> (type letter pair, inode) from The Sleuth Kit's ``fls -r -p``."""
    out: dict[str, tuple[str, int]] = {}
    res = run("fls", "-r", "-p", "-o", str(offset_sectors), image)
    for line in res.stdout.splitlines():
        m = re.fullmatch(r"(\S+/\S+) (\*? ?)(\d+)(?:-\d+-\d+)?(?:\(realloc\))?:\t(.*)", line)
        if not m or m.group(2).strip() == "*":
            continue
        kind, _deleted, ino, name = m.groups()
        if (
            name.startswith("$")
            or kind.startswith(("V", "v"))
            or name.endswith("(Volume Label Entry)")
        ):
            continue
        out["/" + name] = (kind, int(ino))
    return out


def icat(image: Path, inode: int, offset_sectors: int = 0) -> bytes:
    return bytes(run("icat", "-o", str(offset_sectors), image, str(inode), text=False).stdout)


def partitioned(disk: Path, size: int, parts: list[tuple[Path, str]]) -> list[int]:
    """A disk of ``size`` bytes with MBR partitions holding the given images; start sectors."""
    with open(disk, "wb") as f:
        f.truncate(size)
    starts, lines, pos = [], ["label: dos"], 2048
    for image, ptype in parts:
        sectors = -(-image.stat().st_size // 512)
        lines.append(f"start={pos}, size={sectors}, type={ptype}")
        starts.append(pos)
        pos += -(-sectors // 2048) * 2048
    subprocess.run(
        ["sfdisk", "-q", str(disk)],
        input="\n".join(lines) + "\n",
        text=True,
        check=True,
        capture_output=True,
    )
    with open(disk, "r+b") as d:
        for (image, _), start in zip(parts, starts, strict=True):
            d.seek(start * 512)
            d.write(image.read_bytes())
    return starts


def raw_blocks(raw: Path) -> dict[int, bytes]:
    """The non-zero 1 MiB blocks of a raw disk (a VDI layer in tests/builders.py's form)."""
    data = raw.read_bytes()
    size = len(data)
    layer: dict[int, bytes] = {}
    for b in range(-(-size // MiB)):
        chunk = data[b * MiB : (b + 1) * MiB].ljust(MiB, b"\0")
        if chunk.count(0) != MiB:
            layer[b] = chunk
    return layer


def to_vdi(raw: Path, vdi: Path) -> Path:
    """Wrap a raw disk into a dynamic VDI with tests/builders.py (no engine code)."""
    build_image(vdi, raw.stat().st_size, raw_blocks(raw), slot_order="shuffle", seed=3)
    return vdi


class RawReader:
    """The trivial DiskReader over a raw image file."""

    def __init__(self, path: Path) -> None:
        self.data = Path(path).read_bytes()
        self.size = len(self.data)

    def read(self, offset: int, length: int) -> bytes:
        assert offset >= 0 and offset + length <= self.size, (offset, length, self.size)
        return self.data[offset : offset + length]
