"""Helpers for the guest-filesystem tests: building images with Debian's tools, no mounting.

Images are prefilled with a repeating non-zero pattern, so free space holds "stale" bytes that
only filesystem awareness (not zero detection) can drop.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from support import require_tool

from vdigui.engine.guestfs import UsageMap

PATTERN = b"stale guest data \xa5\x5a 0123456789 " * 64
MiB = 1 << 20


def need(*tools: str) -> None:
    """Skip (or, under CI, fail) when a Debian tool the test relies on is missing."""
    for tool in tools:
        require_tool(tool)


def run(
    *cmd: str | Path, env: dict | None = None, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "E2FSPROGS_FAKE_TIME": "1700000000"}
    full_env.update(env or {})
    res = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, env=full_env, input=stdin
    )
    if check and res.returncode:
        pytest.fail(f"{cmd} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


def prefill(path: Path, size: int) -> Path:
    """Create ``path`` of ``size`` bytes filled with the stale-data pattern."""
    chunk = (PATTERN * (MiB // len(PATTERN) + 1))[:MiB]
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(chunk)
        f.write(chunk[: size % MiB])
    return path


def make_tree(root: Path, seed: int = 1, big: int = 3 * MiB) -> Path:
    """A small directory tree of incompressible files (one of them large)."""
    rng = np.random.default_rng(seed)
    (root / "sub").mkdir(parents=True, exist_ok=True)
    for i in range(12):
        (root / f"f{i:02d}.bin").write_bytes(rng.bytes(int(rng.integers(1, 300_000))))
    (root / "sub" / "big.bin").write_bytes(rng.bytes(big))
    (root / "sub" / "small.txt").write_bytes(b"hello\n")
    return root


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def place(disk: Path, part: Path, start_sector: int) -> None:
    """Copy a filesystem image into a disk image at ``start_sector`` (512-byte sectors)."""
    with open(disk, "r+b") as d, open(part, "rb") as p:
        d.seek(start_sector * 512)
        shutil.copyfileobj(p, d, MiB)


def zero_unused(src: Path, dst: Path, usage: UsageMap) -> int:
    """Copy ``src`` to ``dst`` with every block the map calls unused overwritten by zeros."""
    shutil.copyfile(src, dst)
    bs = usage.block_size
    size = dst.stat().st_size
    unused = np.nonzero(usage.used_bytes == 0)[0]
    with open(dst, "r+b") as f:
        for b in unused.tolist():
            f.seek(b * bs)
            f.write(bytes(min(bs, size - b * bs)))
    return len(unused)


def assert_consistent(usage: UsageMap, size: int) -> None:
    """Cheap invariants every map must satisfy."""
    bs = usage.block_size
    assert usage.used_bytes.dtype == np.uint32
    assert len(usage.used_bytes) == -(-size // bs)
    assert (usage.used_bytes <= bs).all()


# -- filesystems inside partitions -------------------------------------------------------------


def make_fs(kind: str, path: Path, size: int, tree: Path | None) -> None:
    """Create one filesystem image file of exactly ``size`` bytes, with ``tree`` copied in."""
    prefill(path, size)
    if kind.startswith("ext"):
        need("mke2fs", "debugfs")
        opts = {
            "ext4": ["-t", "ext4", "-b", "4096", "-g", "1024"],
            "ext2": ["-t", "ext2", "-b", "1024"],
        }
        data = ["-d", str(tree)] if tree else []
        run("mke2fs", "-q", "-F", "-E", "nodiscard", *opts[kind], *data, path)
    elif kind.startswith("fat"):
        need("mkfs.vfat", "mcopy")
        clusters = {"fat12": "4", "fat16": "2", "fat32": "1"}[kind]
        run("mkfs.vfat", "-F", kind[3:], "-s", clusters, path)
        if tree:
            run("mcopy", "-s", "-Q", "-i", path, *sorted(tree.iterdir()), "::/")
    elif kind == "ntfs":
        need("mkntfs", "ntfscp")
        run("mkntfs", "-F", "-f", "-q", "-c", "4096", path)
        for p in sorted(tree.rglob("*.bin")) if tree else ():
            run("ntfscp", "-q", path, p, p.name)
    elif kind == "swap":
        need("mkswap")
        run("mkswap", "-q", "-L", "tswap", path)
    elif kind != "raw":
        raise AssertionError(kind)


def fs_used_bytes(kind: str, path: Path) -> int:
    """What the filesystem's own tools say it uses, in the terms vdigui reports."""
    need({"ntf": "ntfscluster", "fat": "fsck.vfat"}.get(kind[:3], "dumpe2fs"))
    if kind.startswith("ext"):
        out = run("dumpe2fs", "-h", path).stdout
        blocks, free, bs = (
            int(re.search(rf"^{k}:\s+(\d+)", out, re.M).group(1))
            for k in ("Block count", "Free blocks", "Block size")
        )
        return (blocks - free) * bs
    if kind.startswith("fat"):
        res = run("fsck.vfat", "-n", path)
        clusters = int(re.search(r"(\d+)/(\d+) clusters", res.stdout).group(1))
        boot = path.read_bytes()[:512]
        bps, spc = int.from_bytes(boot[11:13], "little"), boot[13]
        reserved, nfats = int.from_bytes(boot[14:16], "little"), boot[16]
        root = int.from_bytes(boot[17:19], "little")
        fatsz = int.from_bytes(boot[22:24], "little") or int.from_bytes(boot[36:40], "little")
        return (reserved + nfats * fatsz + -(-root * 32 // bps)) * bps + clusters * bps * spc
    if kind == "ntfs":
        free = ntfs_free_bytes(path)
        boot = path.read_bytes()[:512]
        clusters = int.from_bytes(boot[0x28:0x30], "little") // boot[0x0D]
        return clusters * 512 * boot[0x0D] - free + 512
    raise AssertionError(kind)


def fs_check(kind: str, path: Path, out: Path) -> dict[str, str]:
    """Run the filesystem's checker (must be clean) and return the hashes of its files."""
    tools = {"ntfs": ("ntfsfix", "ntfsls", "ntfscat"), "ext": ("e2fsck", "debugfs")}
    need(*tools.get(kind[:3], ("fsck.vfat", "mcopy")))
    out.mkdir(parents=True)
    if kind.startswith("ext"):
        res = run("e2fsck", "-fn", path, check=False)
        assert res.returncode == 0, res.stdout + res.stderr
        run("debugfs", "-R", f"rdump / {out}", path)
        return {k: v for k, v in tree_hashes(out).items() if not k.startswith("lost+found")}
    if kind.startswith("fat"):
        res = run("fsck.vfat", "-n", path, check=False)
        assert res.returncode == 0, res.stdout + res.stderr
        run("mcopy", "-s", "-n", "-i", path, "::/*", out)
        return tree_hashes(out)
    if kind == "ntfs":
        res = run("ntfsfix", "-n", path, check=False)
        assert res.returncode == 0 and "successfully" in res.stdout, res.stdout + res.stderr
        names = re.findall(r"^(\S+\.bin)$", run("ntfsls", path).stdout, re.M)
        for name in names:
            data = subprocess.run(["ntfscat", str(path), name], capture_output=True, check=True)
            (out / name).write_bytes(data.stdout)
        return tree_hashes(out)
    raise AssertionError(kind)


def flat_hashes(tree: Path) -> dict[str, str]:
    """Hashes of a tree flattened the way NTFS fixtures are (ntfscp makes no directories)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(tree.rglob("*.bin"))}


def extract(disk: Path, start: int, size: int, dst: Path) -> Path:
    with open(disk, "rb") as f:
        f.seek(start)
        dst.write_bytes(f.read(size))
    return dst


def ntfs_free_bytes(path: Path) -> int:
    """Bytes of free space as ntfs-3g's ntfscluster counts them from $Bitmap."""
    out = run("ntfscluster", "-i", path).stdout
    return int(re.search(r"bytes of free space\s*:\s*(\d+)", out).group(1))
