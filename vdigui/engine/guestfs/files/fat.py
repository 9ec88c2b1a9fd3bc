"""FAT12/16/32 files: directory entries, long file names, cluster chains.

Long names are accepted only when their pieces arrive in order and their checksum matches the
8.3 entry they belong to (otherwise the 8.3 name is shown, as Windows does). Cluster chains are
bounded by the cluster count and checked for loops and for ending before the file's size.
FAT keeps local time without a zone; times are reported as if they were UTC. See
docs/guest-files.md.
"""

from __future__ import annotations

import calendar
import struct

from vdigui.engine.errors import GuestFsError

from .. import fat as fat_usage
from .api import (
    BaseNamespace,
    Entry,
    EntryKind,
    ExtentKind,
    FileExtent,
    VolumeView,
    join,
    place_extents,
    safe_name,
)

_ATTR_DIR = 0x10
_ATTR_VOLUME = 0x08
_ATTR_LFN = 0x0F
#: The specification's limit: 65,536 entries of 32 bytes.
_MAX_DIR_BYTES = 65536 * 32
_FAT_CHUNK = 1 << 16
_FAT_CACHE_CHUNKS = 512
#: The 8.3 name's character set (Linux's default codepage for FAT short names).
_OEM = "cp437"


def _date_time(date: int, time: int = 0, tenths: int = 0) -> float | None:
    """FAT date and time words as seconds since the epoch (local time taken as UTC)."""
    if date == 0:
        return None
    day, month, year = date & 0x1F, (date >> 5) & 0xF, 1980 + (date >> 9)
    sec, minute, hour = (time & 0x1F) * 2, (time >> 5) & 0x3F, time >> 11
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and sec < 60):
        return None
    return calendar.timegm((year, month, day, hour, minute, sec, 0, 0, 0)) + tenths / 100


def lfn_checksum(short: bytes) -> int:
    """The checksum of an 11-byte 8.3 name that its long-name entries carry."""
    total = 0
    for byte in short:
        total = (((total & 1) << 7) + (total >> 1) + byte) & 0xFF
    return total


class FatNamespace(BaseNamespace):
    """The files of one FAT12/16/32 filesystem."""

    def __init__(self, view: VolumeView, volume: str) -> None:
        super().__init__(view, volume)
        boot = view.read(0, 512)
        bpb = fat_usage.parse_bpb(boot)
        if bpb is None:
            raise GuestFsError(f"{volume} holds no valid FAT boot sector.")
        self.bps = bps = bpb["bps"]
        self.cs = bps * bpb["spc"]
        self.clusters = bpb["clusters"]
        self.bits = 12 if self.clusters < 4085 else 16 if self.clusters < 65525 else 32
        self.kind = f"fat{self.bits}"
        if (self.bits == 32) != (bpb["fatsz16"] == 0):
            raise GuestFsError(
                f"The FAT type of {volume} is ambiguous (the cluster count and "
                "the boot sector layout disagree)."
            )
        if bpb["total"] * bps > view.size:
            self.notes.append(
                "The filesystem claims to be larger than its volume; data past "
                "the end of the volume cannot be read."
            )
        active = 0
        if self.bits == 32:
            (ext_flags,) = struct.unpack_from("<H", boot, 0x28)
            if ext_flags & 0x80:
                active = ext_flags & 0x0F
                if active >= bpb["nfats"]:
                    raise GuestFsError(f"The active FAT of {volume} does not exist.")
        self.fat_off = (bpb["reserved"] + active * bpb["fatsz"]) * bps
        self.fat_bytes = bpb["fatsz"] * bps
        if self.fat_bytes < (self.clusters + 2) * self.bits // 8:
            raise GuestFsError(f"The FAT of {volume} is too small for its cluster count.")
        self.data_off = bpb["data_start"] * bps
        root_sectors = -(-struct.unpack_from("<H", boot, 17)[0] * 32 // bps)
        self.root_off = self.data_off - root_sectors * bps
        self.root_bytes = root_sectors * bps
        self.root_cluster = struct.unpack_from("<I", boot, 0x2C)[0] if self.bits == 32 else 0
        if self.bits == 32 and not self._valid(self.root_cluster):
            raise GuestFsError(f"The root directory cluster of {volume} is outside the filesystem.")
        sig_off, label_off = (0x42, 0x47) if self.bits == 32 else (0x26, 0x2B)
        if boot[sig_off] in (0x28, 0x29):
            label = boot[label_off : label_off + 11].decode(_OEM).strip()
            self.label = "" if label == "NO NAME" else label
        self._fat: dict[int, bytes] = {}

    # -- the FAT -----------------------------------------------------------------------
    def _valid(self, cluster: int) -> bool:
        return 2 <= cluster < self.clusters + 2

    def _fat_bytes(self, offset: int, length: int) -> bytes:
        out = b""
        while length > 0:
            chunk, within = divmod(offset, _FAT_CHUNK)
            data = self._fat.get(chunk)
            if data is None:
                start = chunk * _FAT_CHUNK
                data = self.view.read(self.fat_off + start, min(_FAT_CHUNK, self.fat_bytes - start))
                if len(self._fat) >= _FAT_CACHE_CHUNKS:
                    self._fat.pop(next(iter(self._fat)))
                self._fat[chunk] = data
            piece = data[within : within + length]
            if not piece:
                raise GuestFsError(f"A FAT entry of {self.volume} lies past the FAT's end.")
            out += piece
            offset += len(piece)
            length -= len(piece)
        return out

    def next_cluster(self, cluster: int) -> int:
        """The FAT entry of ``cluster``: the next cluster, or an end/bad/free marker."""
        if self.bits == 32:
            return int(struct.unpack("<I", self._fat_bytes(cluster * 4, 4))[0]) & 0x0FFFFFFF
        if self.bits == 16:
            return int(struct.unpack("<H", self._fat_bytes(cluster * 2, 2))[0])
        val = int(struct.unpack("<H", self._fat_bytes(cluster + cluster // 2, 2))[0])
        return val >> 4 if cluster & 1 else val & 0xFFF

    def _is_end(self, value: int) -> bool:
        return value >= {12: 0xFF8, 16: 0xFFF8, 32: 0x0FFFFFF8}[self.bits]

    def chain(self, first: int, path: str, limit: int | None = None) -> list[int]:
        """The clusters of a chain from ``first``; at most ``limit`` are followed."""
        out: list[int] = []
        seen: set[int] = set()
        cluster = first
        cap = self.clusters if limit is None else min(limit, self.clusters)
        while len(out) < cap:
            if not self._valid(cluster):
                raise GuestFsError(
                    f"The cluster chain of {path} in {self.volume} points to "
                    f"cluster {cluster}, outside the filesystem."
                )
            if cluster in seen:
                raise GuestFsError(f"The cluster chain of {path} in {self.volume} loops.")
            seen.add(cluster)
            out.append(cluster)
            value = self.next_cluster(cluster)
            if self._is_end(value):
                break
            if value in (0, 1) or value == {12: 0xFF7, 16: 0xFFF7, 32: 0x0FFFFFF7}[self.bits]:
                raise GuestFsError(
                    f"The cluster chain of {path} in {self.volume} runs into a free or bad cluster."
                )
            cluster = value
        return out

    def _cluster_off(self, cluster: int) -> int:
        return self.data_off + (cluster - 2) * self.cs

    def _runs_of(
        self, clusters: list[int], size: int
    ) -> list[tuple[int, int, ExtentKind, int | None]]:
        runs: list[tuple[int, int, ExtentKind, int | None]] = []
        pos = 0
        for c in clusters:
            take = min(self.cs, size - pos)
            if take <= 0:
                break
            voff = self._cluster_off(c)
            if runs and runs[-1][3] is not None and runs[-1][3] + runs[-1][1] == voff:
                f, n, k, v = runs[-1]
                runs[-1] = (f, n + take, k, v)
            else:
                runs.append((pos, take, ExtentKind.DATA, voff))
            pos += take
        return runs

    # -- entries -----------------------------------------------------------------------
    def root(self) -> Entry:
        """The root directory (id 0)."""
        return Entry(
            name="/",
            path="/",
            kind=EntryKind.DIRECTORY,
            size=0,
            mtime=None,
            atime=None,
            ctime=None,
            mode=None,
            attributes=_ATTR_DIR,
            uid=None,
            gid=None,
            id=0,
            raw_name=b"/",
        )

    def _first_cluster(self, entry: Entry) -> int:
        if entry.id == 0:
            return self.root_cluster
        raw = self.view.read(entry.id, 32)
        hi, lo = struct.unpack_from("<H", raw, 20)[0], struct.unpack_from("<H", raw, 26)[0]
        return int(lo | (hi << 16 if self.bits == 32 else 0))

    def _dir_bytes(self, directory: Entry) -> bytes:
        if directory.id == 0 and self.bits != 32:
            return self.view.read(self.root_off, self.root_bytes)
        first = self._first_cluster(directory)
        if first == 0:
            raise GuestFsError(f"The directory {directory.path} in {self.volume} has no clusters.")
        clusters = self.chain(first, directory.path, _MAX_DIR_BYTES // self.cs + 1)
        return b"".join(self.view.read(self._cluster_off(c), self.cs) for c in clusters)

    def _dir_offsets(self, directory: Entry) -> list[int]:
        """The volume offset of each 32-byte slot of a directory (to give entries their id)."""
        if directory.id == 0 and self.bits != 32:
            return list(range(self.root_off, self.root_off + self.root_bytes, 32))
        clusters = self.chain(
            self._first_cluster(directory), directory.path, _MAX_DIR_BYTES // self.cs + 1
        )
        return [self._cluster_off(c) + k for c in clusters for k in range(0, self.cs, 32)]

    def _list(self, directory: Entry) -> list[Entry]:
        data = self._dir_bytes(directory)
        offsets = self._dir_offsets(directory)
        out: list[Entry] = []
        parts: dict[int, str] = {}
        want = 0  # the sequence number the next long-name piece must carry
        check = -1
        for i in range(0, len(data) - 31, 32):
            e = data[i : i + 32]
            first, attr = e[0], e[11]
            if first == 0:
                break
            if first == 0xE5:
                parts, want = {}, 0
                continue
            if attr & 0x3F == _ATTR_LFN:
                seq = first & 0x1F
                if first & 0x40:
                    parts, want, check = {}, seq, e[13]
                if seq == 0 or seq != want or e[13] != check:
                    parts, want = {}, 0
                    continue
                raw16 = e[1:11] + e[14:26] + e[28:32]
                parts[seq] = raw16.decode("utf-16-le", "replace")
                want = seq - 1
                continue
            if attr & _ATTR_VOLUME and not attr & _ATTR_DIR:
                parts, want = {}, 0
                continue
            short = e[:11]
            long_name = None
            if parts and want == 0 and lfn_checksum(short) == check:
                text = "".join(parts[k] for k in sorted(parts))
                long_name = text.split("\0", 1)[0]
            parts, want = {}, 0
            if short in (b".          ", b"..         "):
                continue
            raw_short = (b"\xe5" + short[1:]) if short[0] == 0x05 else short
            name = long_name if long_name else self._short_name(raw_short, e[12])
            raw_name = long_name.encode("utf-8", "replace") if long_name else raw_short
            safe, note = safe_name(name)
            cluster = struct.unpack_from("<H", e, 26)[0]
            if self.bits == 32:
                cluster |= struct.unpack_from("<H", e, 20)[0] << 16
            is_dir = bool(attr & _ATTR_DIR)
            crt_tenth, crt_time, crt_date, acc_date = struct.unpack_from("<BHHH", e, 13)
            wrt_time, wrt_date = struct.unpack_from("<HH", e, 22)
            out.append(
                Entry(
                    name=safe,
                    path=join(directory.path, safe),
                    kind=EntryKind.DIRECTORY if is_dir else EntryKind.FILE,
                    size=0 if is_dir else struct.unpack_from("<I", e, 28)[0],
                    mtime=_date_time(wrt_date, wrt_time),
                    atime=_date_time(acc_date),
                    ctime=None,
                    btime=_date_time(crt_date, crt_time, crt_tenth),
                    mode=None,
                    attributes=attr,
                    uid=None,
                    gid=None,
                    id=offsets[i // 32],
                    raw_name=raw_name,
                    name_note=note,
                )
            )
        return out

    @staticmethod
    def _short_name(raw: bytes, case: int) -> str:
        base = raw[:8].decode(_OEM).rstrip(" ")
        ext = raw[8:11].decode(_OEM).rstrip(" ")
        if case & 0x08:
            base = base.lower()
        if case & 0x10:
            ext = ext.lower()
        return f"{base}.{ext}" if ext else base

    def _raw_extents(self, entry: Entry) -> list[FileExtent]:
        if entry.size == 0:
            return []
        first = self._first_cluster(entry)
        need = -(-entry.size // self.cs)
        if need > self.clusters:
            raise GuestFsError(
                f"{entry.path} in {self.volume} claims {entry.size} bytes, more "
                "than the filesystem holds."
            )
        clusters = self.chain(first, entry.path, need)
        if len(clusters) < need:
            raise GuestFsError(
                f"The cluster chain of {entry.path} in {self.volume} ends after "
                f"{len(clusters) * self.cs} bytes, before its size of "
                f"{entry.size} bytes."
            )
        return place_extents(self.view, self._runs_of(clusters, entry.size))


def open_fat(view: VolumeView, volume: str) -> FatNamespace:
    """The namespace of the FAT filesystem at the start of ``view``."""
    try:
        return FatNamespace(view, volume)
    except (struct.error, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise GuestFsError(f"The FAT filesystem in {volume} cannot be read ({exc}).") from None


__all__ = ["FatNamespace", "lfn_checksum", "open_fat"]
