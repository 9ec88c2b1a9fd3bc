"""The demo VM's guest filesystems are consistent in every state a user can open.

The demo's snapshots rewrite file blocks to model changed files; a rewritten block that the
filesystem's own structures shared (a directory, an inode table) left later states with a
damaged ext4, which the Files tab then showed as an error. e2fsck and fsck.vfat, run on each
state's exported partitions, are the independent judges.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from support import require_tool

from vdigui.cli import main
from vdigui.engine.demo import FAT_MIB, ROOT_MIB, build_demo_vm

MIB = 1 << 20

#: The states whose chains are whole (the demo's "Before experiment" has a broken link).
STATES = ["--current", "--snapshot=Alternative", "--snapshot=Updates", "--snapshot=Fresh install"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_tool("mke2fs")
    require_tool("mkfs.vfat")
    return build_demo_vm(tmp_path_factory.mktemp("demo"))


@pytest.mark.parametrize("state", STATES)
def test_every_state_holds_clean_filesystems(demo: Path, state: str, tmp_path: Path) -> None:
    e2fsck, fsck_vfat = require_tool("e2fsck"), require_tool("fsck.vfat")
    raw = tmp_path / "disk.raw"
    assert main(["export", str(demo), "--disk", "1", state, str(raw), "--no-verify"]) == 0
    root, fat = tmp_path / "root.img", tmp_path / "fat.img"
    with open(raw, "rb") as src:
        for out, start, size in ((root, 1, ROOT_MIB), (fat, 1 + ROOT_MIB, FAT_MIB)):
            src.seek(start * MIB)
            out.write_bytes(src.read(size * MIB))
    done = subprocess.run([e2fsck, "-fn", str(root)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{state}: e2fsck\n{done.stdout}{done.stderr}"
    done = subprocess.run([fsck_vfat, "-n", str(fat)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{state}: fsck.vfat\n{done.stdout}{done.stderr}"


def test_the_demo_removes_the_ones_older_versions_built(tmp_path: Path) -> None:
    """Each demo takes about 280 MB of the user's cache; one from an older vdigui is never
    used again, so building the current one removes it (and nothing else in the folder)."""
    from vdigui.engine.demo import DEMO_VERSION

    require_tool("mke2fs")
    old = tmp_path / "v1" / "Demo VM"
    old.mkdir(parents=True)
    (old / "Demo VM.vbox").write_text("<VirtualBox/>")
    keep = tmp_path / "notes"
    keep.mkdir()
    built = build_demo_vm(tmp_path)
    assert built.parent.name == f"v{DEMO_VERSION}"
    assert not (tmp_path / "v1").exists()
    assert keep.is_dir()
    # Also when the current demo is already there (the usual start of vdigui --demo).
    (tmp_path / "v2" / "Demo VM").mkdir(parents=True)
    assert build_demo_vm(tmp_path) == built
    assert not (tmp_path / "v2").exists()
