"""What a file is, when it is not what vdigui expected: file types and disk-format signatures.

Why: "header field u32Signature is 0x00088B1F" tells a user nothing; "disk.vdi.gz is gzip
compressed; decompress it first (gunzip)" tells them what to do. Users hand vdigui all sorts of
files (docs/users.md has the list that motivated this): compressed downloads, VMware and
Hyper-V disks, qcow2 images, raw dumps of a whole disk, and sometimes something that is not a
file at all -- a FIFO named ``x.vdi`` would make a plain ``open()`` wait forever.

Two parts:

- :func:`regular_file_problem` and :func:`open_regular`: every reader refuses anything but a
  regular file (or a symbolic link to one) before opening it, and opens with ``O_NONBLOCK`` and
  checks again with ``fstat`` so a file swapped for a FIFO in between cannot block either.
- :func:`identify` and :func:`not_vdi_sentence`: known signatures (gzip, xz, bzip2, zstd, zip,
  VMDK descriptor and sparse, VHD, VHDX, qcow/qcow2, ISO 9660, raw disks with an MBR or GPT,
  VirtualBox settings XML, text) and what to do about each.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from vdigui.engine.errors import VdiError

_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_NOCTTY = getattr(os, "O_NOCTTY", 0)
_BINARY = getattr(os, "O_BINARY", 0)

_CONVERT = (
    "convert it to VDI first, e.g. 'qemu-img convert -O vdi {name} {stem}.vdi' or "
    "'VBoxManage clonemedium disk {name} {stem}.vdi --format VDI'"
)


# -- file types -----------------------------------------------------------------------------
def file_kind(mode: int) -> str:
    """A plain phrase for a file type ("a FIFO (named pipe)", "a folder", ...)."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "not a regular file"


def regular_file_problem(path: Path | str) -> str | None:
    """Why ``path`` is not a regular file, as one sentence naming it once; None when it is.

    Never opens the file, so it cannot block. A symbolic link to a regular file is fine (disks
    kept on another drive are often linked in); a loop or a dangling link is not.
    """
    path = Path(path)
    try:
        st = path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"{path} is a symbolic link that loops back on itself."
        if exc.errno == errno.ENOENT:
            if os.path.lexists(path):
                return f"{path} is a symbolic link to a file that does not exist."
            return f"{path} does not exist."
        if exc.errno == errno.ENOTDIR:
            return f"{path} does not exist (a part of the path is not a folder)."
        return f"{path} cannot be examined: {exc.strerror or exc}."
    if not stat.S_ISREG(st.st_mode):
        return (
            f"{path} is {file_kind(st.st_mode)}, not a disk image file; vdigui reads only "
            "regular files."
        )
    return None


def require_regular_file(path: Path | str) -> None:
    """Raise VdiError (one sentence) unless ``path`` is a regular file or a link to one."""
    problem = regular_file_problem(path)
    if problem is not None:
        raise VdiError(problem)


def open_regular(path: Path | str, flags: int = os.O_RDONLY) -> int:
    """Open a regular file for reading without any chance of blocking; the fd is the caller's.

    Raises:
        VdiError: it is not a regular file, or it cannot be opened.
    """
    path = Path(path)
    require_regular_file(path)
    try:
        fd = os.open(path, flags | _NONBLOCK | _NOCTTY | _BINARY)
    except OSError as exc:
        raise VdiError(f"Cannot open {path}: {exc.strerror or exc}.") from exc
    check_fd_regular(fd, path)
    return fd


def check_fd_regular(fd: int, path: Path) -> None:
    """Close ``fd`` and raise VdiError unless it is a regular file (a swap since the stat)."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        os.close(fd)
        raise VdiError(f"Cannot read {path}: {exc.strerror or exc}.") from exc
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise VdiError(
            f"{path} is {file_kind(mode)}, not a disk image file; vdigui reads only regular files."
        )


# -- signatures -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Identity:
    """What a file was recognised as.

    Attributes:
        what: a phrase after "it is" ("a VMDK sparse disk", "gzip-compressed").
        advice: what to do, a clause (may contain ``{name}``/``{stem}`` placeholders).
    """

    what: str
    advice: str


def _read(fd: int, length: int, offset: int) -> bytes:
    try:
        return os.pread(fd, length, offset)
    except OSError:
        return b""


def identify_bytes(head: bytes, tail: bytes = b"", size: int | None = None) -> Identity | None:
    """Recognise a file from its first bytes (4 KiB is plenty) and its last 512 bytes."""
    if size == 0 or (size is None and not head):
        return Identity("an empty file", "it holds no disk at all")
    if head.startswith(b"\x1f\x8b"):
        return Identity("gzip-compressed", "decompress it first (gunzip {name})")
    if head.startswith(b"\xfd7zXZ\x00"):
        return Identity("xz-compressed", "decompress it first (unxz {name})")
    if head.startswith(b"BZh") and head[3:4].isdigit():
        return Identity("bzip2-compressed", "decompress it first (bunzip2 {name})")
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return Identity("zstd-compressed", "decompress it first (unzstd {name})")
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return Identity("a zip archive", "extract the disk from it first (unzip {name})")
    if head.startswith(b"7z\xbc\xaf\x27\x1c"):
        return Identity("a 7-Zip archive", "extract the disk from it first (7z x {name})")
    if head.startswith(b"KDMV"):
        return Identity("a VMDK sparse disk (VMware)", _CONVERT)
    if head.startswith(b"COWD"):
        return Identity("a VMDK (ESX COWD) sparse disk (VMware)", _CONVERT)
    if b"# Disk DescriptorFile" in head[:1024]:
        return Identity("a VMDK descriptor (VMware)", _CONVERT)
    if head.startswith(b"vhdxfile"):
        return Identity("a VHDX disk (Hyper-V)", _CONVERT)
    if head.startswith(b"conectix") or (
        tail[-512:].startswith(b"conectix") or tail[-511:].startswith(b"conectix")
    ):
        return Identity("a VHD disk (Virtual PC / Hyper-V)", _CONVERT)
    if head.startswith(b"QFI\xfb"):
        return Identity("a qcow2 disk (QEMU)", _CONVERT)
    if head.startswith(b"QEVM"):
        return Identity("a QED disk (QEMU)", _CONVERT)
    if len(head) >= 0x8006 and head[0x8001:0x8006] == b"CD001":
        return Identity(
            "an ISO 9660 CD/DVD image",
            "attach it to the VM as an optical disk instead; it is not a hard disk",
        )
    if len(head) >= 520 and head[512:520] == b"EFI PART":
        return Identity(
            "a raw disk with a GPT partition table",
            "convert it with 'VBoxManage convertfromraw {name} {stem}.vdi' or "
            "'qemu-img convert -f raw -O vdi {name} {stem}.vdi'",
        )
    if len(head) >= 512 and head[510:512] == b"\x55\xaa":
        return Identity(
            "a raw disk with an MBR (partition table or boot sector)",
            "convert it with 'VBoxManage convertfromraw {name} {stem}.vdi' or "
            "'qemu-img convert -f raw -O vdi {name} {stem}.vdi'",
        )
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped.startswith(b"<?xml") or stripped.startswith(b"<VirtualBox"):
        if b"<VirtualBox" in head:
            return Identity(
                "a VirtualBox settings file",
                "give it (or its folder) where a VM is expected, e.g. 'vdictl tree {name}'",
            )
        return Identity("an XML file", "it holds no disk at all")
    sample = head[:4096]
    if (
        sample
        and all(b in b"\t\n\r" or 32 <= b < 127 or b >= 128 for b in sample)
        and b"\x00" not in sample
    ):
        try:
            sample.decode("utf-8")
        except UnicodeDecodeError:
            return None
        return Identity("a text file", "it holds no disk at all")
    return None


def identify(path: Path | str) -> Identity | None:
    """Recognise the regular file at ``path`` by its signature (None when unknown)."""
    path = Path(path)
    try:
        fd = open_regular(path)
    except VdiError:
        return None
    try:
        size = os.fstat(fd).st_size
        head = _read(fd, 0x8800, 0)
        tail = _read(fd, 512, max(0, size - 512)) if size >= 512 else b""
    finally:
        os.close(fd)
    return identify_bytes(head, tail, size)


def not_vdi_sentence(path: Path | str, identity: Identity | None) -> str | None:
    """ "x is not a VDI image (it is ...); do ..." for a recognised file, else None."""
    if identity is None:
        return None
    path = Path(path)
    advice = identity.advice.format(name=path.name, stem=path.stem or "disk")
    return f"{path} is not a VDI image (it is {identity.what}); {advice}."
