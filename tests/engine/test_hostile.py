"""Reader entry points on hostile input, and files that are not VDI images named for what they are.

The "never blocks" tests run the engine call in a child process with ``timeout=60`` as the
hang guard: a blocking open of a FIFO in this process would hang the test run itself.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import stat
import subprocess
import sys
import uuid as uuidlib
import zipfile
from pathlib import Path

import numpy as np
import pytest
from builders import MIB, build_image, pattern, write_vbox
from support import require_tool

from vdigui.engine import sniff
from vdigui.engine.errors import HeaderError, NotVdiImageError, VdiError
from vdigui.engine.format import read_header
from vdigui.engine.image import VdiImage, open_image
from vdigui.engine.usage_report import usage_report

REPO = Path(__file__).resolve().parents[2]

#: Every reader entry point, as code run in a child process on argv[1].
ENTRY_POINTS = {
    "open_image": "from vdigui.engine.image import open_image as f",
    "read_header": "from vdigui.engine.format import read_header as f",
    "resolve_chain": "from vdigui.engine.chain import resolve_chain as g\n"
    "def f(p):\n    r = g(p)\n    if r.error: raise r.error",
    "open_chain": "from vdigui.engine import open_chain as f",
    "check_path": "from vdigui.engine.check import check_path as f",
    "load_vm_folder": "from vdigui.engine.vmfolder import load_vm_folder as f",
    "plan_compact": "from vdigui.engine.operations.compact import plan_compact as f",
    "plan_convert": "from vdigui.engine.operations.convert import plan_convert as g\n"
    "def f(p): g(p, 'fixed')",
}


def _call_in_child(entry: str, path: Path) -> subprocess.CompletedProcess[str]:
    code = (
        f"import sys\n{ENTRY_POINTS[entry]}\n"
        "from vdigui.engine.errors import VdiError\n"
        "try:\n    f(sys.argv[1])\n"
        "except VdiError as exc:\n    print(str(exc)); sys.exit(3)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, str(path)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _make(kind: str, folder: Path, name: str) -> Path:
    path = folder / name
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "loop":
        (folder / f"other{path.suffix}").symlink_to(name)
        path.symlink_to(f"other{path.suffix}")
    elif kind == "device":
        if os.geteuid() != 0:
            pytest.skip("mknod needs root (CI runs the tests as root)")
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    return path


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("kind", ["fifo", "folder", "loop", "device"])
def test_reader_entry_points_refuse_non_files_without_blocking(
    tmp_path: Path, kind: str, entry: str
) -> None:
    if entry == "load_vm_folder" or (entry == "check_path" and kind == "folder"):
        path = _make(kind, tmp_path, "x.vbox")
    else:
        path = _make(kind, tmp_path, "x.vdi")
    done = _call_in_child(entry, path)
    assert done.returncode == 3, (done.stdout, done.stderr)  # a VdiError, no traceback
    message = done.stdout.strip()
    assert "x.v" in message and "\n" not in message
    words = {"fifo": "FIFO", "folder": "folder", "loop": "loops", "device": "device"}
    if not (kind == "folder" and entry in ("load_vm_folder", "check_path")):
        assert words[kind] in message, message


def test_a_fifo_beside_the_image_does_not_block_the_parent_search(tmp_path: Path) -> None:
    base = build_image(tmp_path / "base.vdi", 2 * MIB, {0: pattern(0, MIB)})
    build_image(tmp_path / "leaf.vdi", 2 * MIB, {1: pattern(1, MIB)}, parent=base.header)
    os.mkfifo(tmp_path / "trap.vdi")
    done = _call_in_child("open_chain", tmp_path / "leaf.vdi")
    assert done.returncode == 0, (done.stdout, done.stderr)


# -- not a VDI: say what it is ----------------------------------------------------------------
def _qemu(tmp_path: Path, fmt: str, name: str, *opts: str) -> Path:
    qemu_img = require_tool("qemu-img")
    path = tmp_path / name
    subprocess.run(
        [qemu_img, "create", "-q", "-f", fmt, *opts, str(path), "4M"], check=True, timeout=60
    )
    return path


def _compressed(tmp_path: Path, kind: str) -> Path:
    payload = pattern(1, 64 << 10)
    if kind == "gzip":
        path = tmp_path / "disk.vdi.gz"
        path.write_bytes(gzip.compress(payload))
    elif kind == "xz":
        path = tmp_path / "disk.vdi.xz"
        path.write_bytes(lzma.compress(payload))
    elif kind == "bzip2":
        path = tmp_path / "disk.vdi.bz2"
        path.write_bytes(bz2.compress(payload))
    else:
        path = tmp_path / "disk.zip"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("disk.vdi", payload)
    return path


def _raw_disk(tmp_path: Path, table: str) -> Path:
    path = tmp_path / f"disk-{table}.img"
    with open(path, "wb") as f:
        f.truncate(8 * MIB)
    if table == "mbr":
        sfdisk = require_tool("sfdisk")
        subprocess.run(
            [sfdisk, "-q", str(path)],
            input=b"label: dos\n,,L\n",
            check=True,
            timeout=60,
            capture_output=True,
        )
    else:
        sgdisk = require_tool("sgdisk")
        subprocess.run(
            [sgdisk, "-n", "1:0:0", str(path)], check=True, timeout=60, capture_output=True
        )
    return path


CASES = {
    # name: (builder, words that must appear, advice that must appear)
    "vmdk-sparse": (lambda t: _qemu(t, "vmdk", "disk.vmdk"), "VMDK sparse", "qemu-img convert"),
    "vmdk-descriptor": (
        lambda t: _qemu(t, "vmdk", "flat.vmdk", "-o", "subformat=monolithicFlat"),
        "VMDK descriptor",
        "VBoxManage clonemedium",
    ),
    "vhd-dynamic": (lambda t: _qemu(t, "vpc", "disk.vhd"), "VHD", "qemu-img convert"),
    "vhd-fixed": (
        lambda t: _qemu(t, "vpc", "fixed.vhd", "-o", "subformat=fixed"),
        "VHD",
        "qemu-img convert",
    ),
    "vhdx": (lambda t: _qemu(t, "vhdx", "disk.vhdx"), "VHDX", "qemu-img convert"),
    "qcow2": (lambda t: _qemu(t, "qcow2", "disk.qcow2"), "qcow2", "qemu-img convert"),
    "gzip": (lambda t: _compressed(t, "gzip"), "gzip", "gunzip"),
    "xz": (lambda t: _compressed(t, "xz"), "xz", "unxz"),
    "bzip2": (lambda t: _compressed(t, "bzip2"), "bzip2", "bunzip2"),
    "zip": (lambda t: _compressed(t, "zip"), "zip archive", "unzip"),
    "mbr": (lambda t: _raw_disk(t, "mbr"), "MBR", "convertfromraw"),
    "gpt": (lambda t: _raw_disk(t, "gpt"), "GPT", "convertfromraw"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_foreign_files_are_named_for_what_they_are(tmp_path: Path, name: str) -> None:
    build, words, advice = CASES[name]
    path = build(tmp_path)
    for reader in (open_image, read_header):
        with pytest.raises(NotVdiImageError) as info:
            reader(path)
        message = str(info.value)
        assert message.startswith(f"{path} is not a VDI image (it is "), message
        assert words in message and advice in message, message
        assert message.count(path.name) <= 3  # the path once, plus the name inside the advice
        assert isinstance(info.value, HeaderError) and info.value.field == "u32Signature"


def test_text_empty_and_unknown_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.vdi"
    text.write_text("my shopping list\n" * 40)
    empty = tmp_path / "empty.vdi"
    empty.touch()
    junk = tmp_path / "junk.vdi"
    junk.write_bytes(bytes(range(256)) * 8)
    short = tmp_path / "short.vdi"
    short.write_bytes(b"\x00\x01" * 10)
    expected = {
        text: "it is a text file",
        empty: "it is an empty file",
        junk: "header field u32Signature is 0x43424140, expected 0xBEDA107F",
        short: "too short to be a VDI image",
    }
    for path, words in expected.items():
        with pytest.raises(NotVdiImageError) as info:
            open_image(path)
        assert str(info.value).startswith(f"{path} ")
        assert words in str(info.value), str(info.value)


def test_truncated_map_leads_with_plain_words(tmp_path: Path) -> None:
    built = build_image(tmp_path / "cut.vdi", 4 * MIB, {0: pattern(0, MIB)}, placement="qemu")
    os.truncate(built.path, 0x200 + 8)  # the map of 4 entries is cut after 2
    with pytest.raises(HeaderError) as info:
        open_image(built.path)
    message = str(info.value)
    assert message.startswith(f"{built.path} is truncated or damaged"), message
    assert "cBlocks" in message  # the field detail after the plain words


def test_sniff_identity_of_vdi_like_names_is_not_guessed_from_the_suffix(tmp_path: Path) -> None:
    """A qcow2 named .vdi is still said to be qcow2 (the bytes decide, not the name)."""
    path = _qemu(tmp_path, "qcow2", "renamed.vdi")
    identity = sniff.identify(path)
    assert identity is not None and "qcow2" in identity.what


# -- usage: metadata only unless zeros are asked for ---------------------------------------
def test_usage_metadata_only_reads_no_data_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layer = {b: pattern(b, MIB) for b in range(48)}
    layer.update({b: bytes(MIB) for b in range(48, 56)})
    path = build_image(tmp_path / "d.vdi", 64 * MIB, layer).path
    reads: list[int] = []
    real = VdiImage.read_slot

    def counting(self: VdiImage, slot: int, block: int | None = None) -> bytes:
        reads.append(slot)
        return real(self, slot, block)

    monkeypatch.setattr(VdiImage, "read_slot", counting)
    quick = usage_report([path], scan_zeros=False)
    metadata_reads = len(reads)
    reads.clear()
    full = usage_report([path], scan_zeros=True)
    assert metadata_reads <= 4 < 56 <= len(reads)
    assert not quick.zeros_scanned and full.zeros_scanned
    assert full.forecast.zero_blocks == 8 and quick.forecast.zero_blocks == 0
    assert np.array_equal(quick.usage.used_bytes, full.usage.used_bytes)


def test_usage_of_a_blank_disk_is_unknown(tmp_path: Path) -> None:
    path = build_image(tmp_path / "blank.vdi", 32 * MIB, {}).path
    report = usage_report([path], scan_zeros=False)
    assert report.stored_blocks == 0 and report.guest_uses is None


# -- a pre-1.7 VM: Name.xml beside Name.vdi -----------------------------------------------------
def test_pre_17_vm_in_one_folder_with_snapshot_diff(tmp_path: Path) -> None:
    """The attached diff and its base are found by UUID (uuidLinkage), no orphans."""
    from vdigui.engine.vmfolder import load_vm_folder

    folder = tmp_path / "Old"
    (folder / "Snapshots").mkdir(parents=True)
    base = build_image(folder / "Old.vdi", 2 * MIB, {0: pattern(0, MIB)})
    diff_uuid = uuidlib.uuid4()
    build_image(
        folder / "Snapshots" / f"{{{diff_uuid}}}.vdi",
        2 * MIB,
        {1: pattern(1, MIB)},
        parent=base.header,
        uuid_create=diff_uuid,
    )
    machine = uuidlib.uuid4()
    (folder / "Old.xml").write_text(
        '<?xml version="1.0"?>\n'
        '<VirtualBox xmlns="http://www.innotek.de/VirtualBox-settings" version="1.3-linux">'
        f'<Machine uuid="{{{machine}}}" name="Old" OSType="Linux">'
        "<Hardware/><HardDiskAttachments>"
        f'<HardDiskAttachment hardDisk="{{{diff_uuid}}}" bus="IDE" channel="0" device="0"/>'
        "</HardDiskAttachments></Machine></VirtualBox>\n"
    )
    vm = load_vm_folder(folder)
    assert vm.problems == ()
    (disk,) = vm.current_disks()
    assert vm.chain_for(disk) == [folder / "Old.vdi", folder / "Snapshots" / f"{{{diff_uuid}}}.vdi"]
    # A current settings file keeps its own registry and is not second-guessed.
    write_vbox(tmp_path / "New.vbox", uuidlib.uuid4(), "New", [])
    assert load_vm_folder(tmp_path / "New.vbox").media == {}


def test_errors_are_vdi_errors() -> None:
    assert issubclass(NotVdiImageError, VdiError)
