"""``vdictl ls / cat / get / find / where`` on VDI images and on the states of a VM folder.

Disks are built with mke2fs -d, debugfs, mkfs.fat and mtools, placed with sfdisk and written
into a VM folder by the VM builder (tests/engine/merge/vmbuild.py), which snapshots and then
writes the blocks a second, changed copy of the disk differs in. Expected listings and bytes
come from debugfs and mtools run on the two raw copies, image offsets from ``qemu-img map``.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "engine" / "merge"))
sys.path.insert(0, str(REPO / "tests" / "engine" / "guestfs" / "files"))

from fsbuild import (  # noqa: E402
    MiB,
    debugfs,
    debugfs_blocks,
    debugfs_bytes,
    debugfs_ls,
    make_tree,
    mkext,
    need,
    partitioned,
    run,
    to_vdi,
)
from vmbuild import VmBuilder  # noqa: E402

from vdigui.cli import main  # noqa: E402

DISK = 48 * MiB


def vdictl(capsys: pytest.CaptureFixture[bytes], *args: str | Path) -> tuple[int, bytes, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err.decode()


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A VM whose snapshot S1 holds disk v1 and whose current state holds v2."""
    need("mke2fs", "debugfs", "sfdisk", "mkfs.fat", "mcopy", "mtype", "mdel")
    tmp = tmp_path_factory.mktemp("files_vm")
    tree = make_tree(tmp / "tree")
    ext1 = mkext(tmp / "ext1.img", 24 * MiB, tree, "-t", "ext4", "-b", "4096")
    fat1 = tmp / "fat1.img"
    run("mkfs.fat", "-C", "-F", "16", "-n", "DATA", fat1, str(16 * 1024))
    (tmp / "readme").write_bytes(b"version one\n")
    run("mcopy", "-i", fat1, tmp / "readme", "::/README.TXT")
    run("mcopy", "-i", fat1, tmp / "readme", "::/Old Notes.txt")
    ext2, fat2 = tmp / "ext2.img", tmp / "fat2.img"
    shutil.copy(ext1, ext2)
    shutil.copy(fat1, fat2)
    (tmp / "host2").write_bytes(b"guest-two, renamed\n")
    debugfs(
        ext2,
        "rm /etc/hostname",
        f"write {tmp / 'host2'} /etc/hostname",
        f"write {tmp / 'host2'} /new.txt",
        "rm /hard1",
        write=True,
    )
    (tmp / "readme2").write_bytes(b"version two, longer\n")
    run("mcopy", "-o", "-i", fat2, tmp / "readme2", "::/README.TXT")
    run("mdel", "-i", fat2, "::/Old Notes.txt")
    raw1, raw2 = tmp / "v1.raw", tmp / "v2.raw"
    starts = partitioned(raw1, DISK, [(ext1, "83"), (fat1, "c")])
    assert partitioned(raw2, DISK, [(ext2, "83"), (fat2, "c")]) == starts
    builder = VmBuilder(tmp / "vm", disk_size=DISK)
    one, two = raw1.read_bytes(), raw2.read_bytes()
    for b in range(DISK // MiB):
        chunk = one[b * MiB : (b + 1) * MiB]
        if chunk.count(0) != MiB:
            builder.write(b * MiB, chunk)
    builder.take_snapshot("S1")
    changed = []
    for b in range(DISK // MiB):
        if two[b * MiB : (b + 1) * MiB] != one[b * MiB : (b + 1) * MiB]:
            builder.write(b * MiB, two[b * MiB : (b + 1) * MiB])
            changed.append(b)
    assert changed
    return {
        "folder": builder.folder,
        "ext1": ext1,
        "ext2": ext2,
        "fat1": fat1,
        "fat2": fat2,
        "tree": tree,
        "raw1": raw1,
        "starts": starts,
        "changed": changed,
        "vdi": to_vdi(raw1, tmp / "v1.vdi"),
    }


def _state(vm: dict, which: str) -> list[str]:
    return (
        [str(vm["folder"]), "--snapshot", "S1"]
        if which == "S1"
        else [str(vm["folder"]), "--current"]
    )


@pytest.mark.parametrize("which", ["S1", "current"])
def test_ls_each_state_equals_debugfs(
    capsysbinary: pytest.CaptureFixture[bytes], vm: dict, which: str
) -> None:
    image = vm["ext1"] if which == "S1" else vm["ext2"]
    for path in ("/", "/etc", "/a"):
        code, out, err = vdictl(capsysbinary, "ls", *_state(vm, which), f"p1:{path}", "--json")
        assert code == 0, err
        got = {e["name"]: (e["id"], e["mode"], e["size"]) for e in json.loads(out)}
        expected = debugfs_ls(image, path)
        assert set(got) == set(expected)
        for name, (ino, mode, _uid, _gid, size) in expected.items():
            assert got[name][:2] == (ino, mode)
            if size is not None:
                assert got[name][2] == size


def test_cat_differs_between_states(capsysbinary: pytest.CaptureFixture[bytes], vm: dict) -> None:
    for which, image, fat in (("S1", vm["ext1"], vm["fat1"]), ("current", vm["ext2"], vm["fat2"])):
        code, out, _ = vdictl(capsysbinary, "cat", *_state(vm, which), "p1:/etc/hostname")
        assert code == 0 and out == debugfs_bytes(image, "cat /etc/hostname")
        code, out, _ = vdictl(capsysbinary, "cat", *_state(vm, which), "p2:/README.TXT")
        assert code == 0
        assert out == run("mtype", "-i", fat, "::/README.TXT", text=False).stdout
    assert debugfs_bytes(vm["ext1"], "cat /etc/hostname") != debugfs_bytes(
        vm["ext2"], "cat /etc/hostname"
    )
    code, out, err = vdictl(capsysbinary, "cat", *_state(vm, "current"), "p2:/Old Notes.txt")
    assert code == 1 and err.count("\n") == 1 and "does not exist" in err
    assert "Traceback" not in err


def test_ls_lists_volumes_and_needs_one(
    capsysbinary: pytest.CaptureFixture[bytes], vm: dict
) -> None:
    code, out, _ = vdictl(capsysbinary, "ls", *_state(vm, "S1"))
    assert code == 0
    text = out.decode()
    assert "p1:  ext4" in text and "p2:  fat16 'DATA'" in text
    code, _, err = vdictl(capsysbinary, "cat", *_state(vm, "S1"), "/etc/hostname")
    assert code == 1 and "p1:/path" in err and err.count("\n") == 1
    code, out, _ = vdictl(capsysbinary, "ls", *_state(vm, "S1"), "p1:/a", "-R")
    assert code == 0 and b"/a/b/c/d/e:\nbottom.txt" in out


def test_find_across_volumes(capsysbinary: pytest.CaptureFixture[bytes], vm: dict) -> None:
    code, out, _ = vdictl(capsysbinary, "find", *_state(vm, "current"), "*.txt")
    assert code == 0
    lines = set(out.decode().splitlines())
    assert {"p1:/new.txt", "p1:/a/b/c/d/e/bottom.txt", "p2:/README.TXT"} <= lines
    code, out, _ = vdictl(capsysbinary, "find", *_state(vm, "S1"), "p2:*notes*")
    assert code == 0 and out.decode().splitlines() == ["/Old Notes.txt"]


def test_get_tree_keeps_bytes_times_and_links(
    capsysbinary: pytest.CaptureFixture[bytes], vm: dict, tmp_path: Path
) -> None:
    dest = tmp_path / "out"
    code, _, err = vdictl(
        capsysbinary,
        "get",
        *_state(vm, "S1"),
        "p1:/etc",
        "p1:/a",
        "p1:/evil",
        "p1:/sparse.img",
        dest,
    )
    assert code == 0, err
    tree: Path = vm["tree"]
    assert (dest / "etc" / "hostname").read_bytes() == (tree / "etc" / "hostname").read_bytes()
    assert int((dest / "etc" / "hostname").stat().st_mtime) == int(
        (tree / "etc" / "hostname").stat().st_mtime
    )
    assert (dest / "a" / "b" / "c" / "d" / "e" / "bottom.txt").read_bytes() == b"deep down\n"
    assert (dest / "sparse.img").read_bytes() == (tree / "sparse.img").read_bytes()
    assert (dest / "sparse.img").stat().st_blocks * 512 < 1 * MiB  # holes stay holes
    # The guest's link to /etc/passwd is a link in DEST, never followed or copied.
    assert (dest / "evil").is_symlink() and str((dest / "evil").readlink()) == "/etc/passwd"
    # Nothing is overwritten without --force; a refused get writes nothing.
    (dest / "etc" / "hostname").write_bytes(b"mine\n")
    code, _, err = vdictl(capsysbinary, "get", *_state(vm, "S1"), "p1:/etc", "p1:/hard1", dest)
    assert code == 1 and "already exists" in err and err.count("\n") == 1
    assert (dest / "etc" / "hostname").read_bytes() == b"mine\n"
    code, _, err = vdictl(capsysbinary, "get", *_state(vm, "S1"), "p1:/etc", dest, "--force")
    assert code == 0, err
    assert (dest / "etc" / "hostname").read_bytes() == (tree / "etc" / "hostname").read_bytes()


def test_get_never_follows_links_inside_dest(
    capsysbinary: pytest.CaptureFixture[bytes], vm: dict, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "etc").symlink_to(outside)
    code, _, err = vdictl(capsysbinary, "get", *_state(vm, "S1"), "p1:/etc", dest, "--force")
    assert code == 1 and "symbolic link" in err
    assert list(outside.iterdir()) == []
    # An existing link where a file goes is not written through, even with --force.
    (dest / "hostname").symlink_to(outside / "victim")
    code, _, err = vdictl(
        capsysbinary, "get", *_state(vm, "S1"), "p1:/etc/hostname", dest, "--force"
    )
    assert code == 0, err
    assert not (outside / "victim").exists()
    assert not (dest / "hostname").is_symlink()
    assert (dest / "hostname").read_bytes() == (vm["tree"] / "etc" / "hostname").read_bytes()


def test_get_refuses_names_the_host_cannot_hold(
    capsysbinary: pytest.CaptureFixture[bytes], tmp_path: Path
) -> None:
    need("mkfs.fat", "mcopy", "sfdisk")
    fat = tmp_path / "fat.img"
    run("mkfs.fat", "-C", "-F", "16", fat, "16384")
    (tmp_path / "x").write_bytes(b"x")
    # mtools keeps 130 of these: 130 UTF-16 units on FAT, 260 bytes in UTF-8 on the host.
    run("mcopy", "-i", fat, tmp_path / "x", "::/" + "é" * 200)
    run("mcopy", "-i", fat, tmp_path / "x", "::/fine.txt")
    listed = run("mdir", "-i", fat, "-b", "::/").stdout.splitlines()
    long_name = next(n.removeprefix("::/") for n in listed if "é" in n)
    assert len(long_name.encode()) > 255
    raw = tmp_path / "disk.raw"
    partitioned(raw, 24 * MiB, [(fat, "c")])
    vdi = to_vdi(raw, tmp_path / "disk.vdi")
    code, out, _ = vdictl(capsysbinary, "ls", vdi, "/")
    assert code == 0 and long_name in out.decode()
    dest = tmp_path / "dest"
    code, _, err = vdictl(capsysbinary, "get", vdi, "/", dest)
    assert code == 1 and "longer than 255 bytes" in err and long_name in err
    assert not dest.exists() or list(dest.iterdir()) == []


def test_where_matches_qemu_img_map(
    capsysbinary: pytest.CaptureFixture[bytes], vm: dict, qemu_img: str
) -> None:
    vdi: Path = vm["vdi"]
    code, out, err = vdictl(capsysbinary, "where", vdi, "p1:/big.bin", "--json")
    assert code == 0, err
    doc = json.loads(out)
    start = vm["starts"][0] * 512
    blocks = [
        b
        for x in doc["extents"]
        for b in range(
            x["volume_offset"] // 4096, (x["volume_offset"] + x["length"] + 4095) // 4096
        )
    ]
    assert blocks == debugfs_blocks(vm["ext1"], "/big.bin")
    mapping = json.loads(run(qemu_img, "map", "--output=json", "-f", "vdi", vdi).stdout)
    pieces = [p for x in doc["extents"] for p in x["blocks"]]
    assert pieces
    for piece in pieces:
        assert piece["disk_offset"] >= start
        m = next(
            m for m in mapping if m["start"] <= piece["disk_offset"] < m["start"] + m["length"]
        )
        assert (
            m["data"] and piece["image_offset"] == m["offset"] + piece["disk_offset"] - m["start"]
        )
    # The host extents under each piece equal filefrag's (e2fsprogs, FIEMAP), where the host
    # filesystem reports extents at all.
    frag = run("filefrag", "-v", "-b1", vdi, check=False)
    host = [
        tuple(map(int, m.groups()))
        for m in re.finditer(r"^\s*\d+:\s+(\d+)\.\.\s*(\d+):\s+(\d+)\.\.", frag.stdout, re.M)
    ]
    if frag.returncode == 0 and host:
        for piece in pieces:
            lo, hi = piece["image_offset"], piece["image_offset"] + piece["length"]
            expected = [
                {
                    "logical": max(lo, a),
                    "physical": p + max(lo, a) - a,
                    "length": min(hi, b + 1) - max(lo, a),
                }
                for a, b, p in host
                if max(lo, a) < min(hi, b + 1)
            ]
            assert piece["host"] == expected
    else:
        assert str(vdi) in doc["host_notes"]
    code, out, _ = vdictl(capsysbinary, "where", vdi, "p1:/big.bin")
    assert code == 0 and b"VDI block" in out


def test_where_names_the_layer_that_serves_a_changed_file(
    capsysbinary: pytest.CaptureFixture[bytes], vm: dict
) -> None:
    code, out, err = vdictl(capsysbinary, "where", *_state(vm, "current"), "p1:/new.txt", "--json")
    assert code == 0, err
    pieces = [p for x in json.loads(out)["extents"] for p in x["blocks"]]
    assert pieces and all(p["block"] in vm["changed"] for p in pieces)
    assert all(p["layer"] == 1 and "Snapshots" in p["image"] for p in pieces)


def test_get_keeps_permission_bits(
    capsysbinary: pytest.CaptureFixture[bytes], vm: dict, tmp_path: Path
) -> None:
    expected = debugfs_ls(vm["ext1"], "/etc")["hostname"][1] & 0o777
    code, _, err = vdictl(capsysbinary, "get", *_state(vm, "S1"), "p1:/etc", tmp_path / "o")
    assert code == 0, err
    assert (tmp_path / "o" / "etc" / "hostname").stat().st_mode & 0o777 == expected | 0o600
