"""The files of guest filesystems: browse, stat, read, walk, find, and map files to blocks.

Read-only, stdlib + numpy. :func:`open_namespace` picks the reader by signature (ext2/3/4,
FAT12/16/32, NTFS) and returns a :class:`Namespace`; see docs/guest-files.md.
"""

from __future__ import annotations

from .api import (
    BaseNamespace,
    Entry,
    EntryKind,
    ExtentKind,
    FileExtent,
    Namespace,
    VolumeView,
    printable,
    safe_name,
)
from .volumes import GuestVolume, choose_volume, list_volumes, open_namespace, split_volume_path

__all__ = [
    "BaseNamespace",
    "Entry",
    "EntryKind",
    "ExtentKind",
    "FileExtent",
    "GuestVolume",
    "Namespace",
    "VolumeView",
    "choose_volume",
    "list_volumes",
    "open_namespace",
    "printable",
    "safe_name",
    "split_volume_path",
]
