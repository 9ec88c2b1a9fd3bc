"""NTFS: used clusters from ``$Bitmap``, found through the MFT.

Before trusting the bitmap we check that Windows left the volume consistent: the ``$Volume``
dirty flag, the ``$LogFile`` restart area, and ``hiberfil.sys`` (hibernation and Fast Startup keep
the real state in memory, not on disk). The backup boot sector after the last cluster is kept.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import numpy as np

from .blockmap import FsResult, Marker, Unsupported, View

_AT_ATTRIBUTE_LIST = 0x20
_AT_FILE_NAME = 0x30
_AT_VOLUME_NAME = 0x60
_AT_VOLUME_INFORMATION = 0x70
_AT_DATA = 0x80
_AT_INDEX_ROOT = 0x90
_AT_INDEX_ALLOCATION = 0xA0
_AT_BITMAP = 0xB0
_AT_END = 0xFFFFFFFF

_MFT_RECORD = 0
_LOGFILE_RECORD = 2
_VOLUME_RECORD = 3
_ROOT_RECORD = 5
_BITMAP_RECORD = 6

_VOLUME_DIRTY = 0x0001
_VOLUME_CHKDSK_UNDERWAY = 0x4000
_RESTART_VOLUME_IS_CLEAN = 0x0002
_LOGFILE_NO_CLIENT = 0xFFFF

#: One run of a runlist: (first vcn, first lcn or None when sparse, length in clusters).
_Run = tuple[int, int | None, int]
#: A runlist fragment: (start vcn, runs, data size).
_Piece = tuple[int, list[_Run], int]


def probe(head: bytes) -> bool:
    """True when ``head`` starts with an NTFS boot sector."""
    return len(head) >= 512 and head[3:11] == b"NTFS    " and head[510:512] == b"\x55\xaa"


class NtfsVolume:
    """Just enough of an NTFS volume to read a few system files."""

    def __init__(self, view: View) -> None:
        self.view = view
        boot = view.read(0, 512)
        bps, spc_raw = struct.unpack_from("<HB", boot, 0x0B)
        total_sectors, mft_lcn = struct.unpack_from("<QQ", boot, 0x28)
        cpr = struct.unpack_from("<b", boot, 0x40)[0]
        if bps not in (256, 512, 1024, 2048, 4096):
            raise Unsupported(f"The NTFS sector size ({bps}) is not valid.")
        spc = 1 << (256 - spc_raw) if spc_raw > 0x80 else spc_raw
        if spc == 0 or spc & (spc - 1):
            raise Unsupported("The NTFS cluster size is not valid.")
        self.bps = bps
        self.total_sectors = total_sectors
        self.cluster = bps * spc
        if self.cluster > 1 << 21:
            raise Unsupported("The NTFS cluster size is implausibly large.")
        self.clusters = total_sectors // spc
        self.record_size = 1 << -cpr if cpr < 0 else cpr * self.cluster
        if not 256 <= self.record_size <= 1 << 16:
            raise Unsupported("The NTFS file record size is not valid.")
        if total_sectors * bps > view.size:
            raise Unsupported("The NTFS filesystem claims to be larger than its partition.")
        if mft_lcn >= self.clusters:
            raise Unsupported("The MFT location is outside the volume.")
        self.mft_runs: list[_Run] = []
        rec0 = self.fixup(view.read(mft_lcn * self.cluster, self.record_size), "FILE")
        runs = self._data_runs(rec0, _MFT_RECORD)
        if not runs:
            raise Unsupported("The MFT has no data runs.")
        self.mft_runs = runs
        # Now that records can be read, pick up $MFT's own runlist fragments that a fragmented
        # MFT keeps in extension records (its $ATTRIBUTE_LIST).
        self.mft_runs = self._data_runs(rec0, _MFT_RECORD)

    # -- records -------------------------------------------------------------------------
    def fixup(self, raw: bytes, magic: str) -> bytearray:
        """Apply the update sequence array; a mismatch means a torn write, so give up."""
        if raw[:4] != magic.encode():
            raise Unsupported(f"An NTFS {magic} record is damaged (bad signature).")
        buf = bytearray(raw)
        usa_ofs, usa_count = struct.unpack_from("<HH", buf, 4)
        stride = 512
        if (
            usa_count < 1
            or (usa_count - 1) * stride > len(buf)
            or usa_ofs + 2 * usa_count > len(buf)
        ):
            raise Unsupported(f"An NTFS {magic} record has an invalid update sequence.")
        usn = raw[usa_ofs : usa_ofs + 2]
        for i in range(1, usa_count):
            end = i * stride
            if raw[end - 2 : end] != usn:
                raise Unsupported(f"An NTFS {magic} record failed its fixup check (torn write).")
            at = usa_ofs + 2 * i
            buf[end - 2 : end] = raw[at : at + 2]
        return buf

    def raw_record(self, number: int) -> bytearray:
        """MFT record ``number`` read through the MFT's own runlist, fixups applied (in use or
        not); the guest file reader (files/ntfs.py) shares this with the allocation reader."""
        if number < 0 or (number + 1) * self.record_size > self.mft_size:
            raise Unsupported(f"NTFS file record {number} lies past the end of the MFT.")
        data = self.read_runs(self.mft_runs, number * self.record_size, self.record_size)
        return self.fixup(data, "FILE")

    @property
    def mft_size(self) -> int:
        """Bytes of the MFT the runlist describes."""
        return int(sum(n for _v, _l, n in self.mft_runs) * self.cluster)

    def record(self, number: int) -> bytearray:
        """Read MFT record ``number`` through the MFT's own runlist."""
        rec = self.raw_record(number)
        if not struct.unpack_from("<H", rec, 0x16)[0] & 1:
            raise Unsupported(f"NTFS system file record {number} is not in use.")
        return rec

    @staticmethod
    def attributes(rec: bytes | bytearray) -> Iterator[tuple[int, str, bytes]]:
        """Yield (type, name, header offset, bytes) for every attribute in a record."""
        if not isinstance(rec, bytes):
            rec = bytes(rec)  # one copy; slices of bytes are then the attributes' own bytes
        off = struct.unpack_from("<H", rec, 0x14)[0]
        used = min(struct.unpack_from("<I", rec, 0x18)[0], len(rec))
        while off + 8 <= used:
            atype, alen = struct.unpack_from("<II", rec, off)
            if atype == _AT_END:
                return
            if alen < 16 or off + alen > used:
                raise Unsupported("An NTFS attribute header is damaged.")
            nlen, noff = struct.unpack_from("<BH", rec, off + 9)
            name = (
                rec[off + noff : off + noff + 2 * nlen].decode("utf-16-le", "replace")
                if nlen
                else ""  # most attributes are unnamed: no decode
            )
            yield atype, name, rec[off : off + alen]
            off += alen

    @staticmethod
    def resident_value(attr: bytes) -> bytes:
        vlen, voff = struct.unpack_from("<IH", attr, 16)
        if voff + vlen > len(attr):
            raise Unsupported("An NTFS resident attribute is damaged.")
        return attr[voff : voff + vlen]

    def decode_runlist(self, attr: bytes) -> tuple[int, list[_Run], int]:
        """Start vcn, runs ``(vcn, lcn or None when sparse, length)`` and data size."""
        start_vcn, _last_vcn, roff = struct.unpack_from("<QQH", attr, 16)
        data_size = struct.unpack_from("<Q", attr, 48)[0]
        runs: list[_Run] = []
        pos, vcn, lcn = roff, start_vcn, 0
        while pos < len(attr) and attr[pos]:
            hdr = attr[pos]
            ln, lo = hdr & 0x0F, hdr >> 4
            if ln == 0 or ln > 8 or lo > 8 or pos + 1 + ln + lo > len(attr):
                raise Unsupported("An NTFS runlist is damaged.")
            length = int.from_bytes(attr[pos + 1 : pos + 1 + ln], "little")
            if lo:
                lcn += int.from_bytes(attr[pos + 1 + ln : pos + 1 + ln + lo], "little", signed=True)
                if lcn < 0 or lcn + length > self.clusters:
                    raise Unsupported("An NTFS runlist points outside the volume.")
                runs.append((vcn, lcn, length))
            else:
                runs.append((vcn, None, length))
            vcn += length
            pos += 1 + ln + lo
        return start_vcn, runs, data_size

    def _data_runs(self, rec: bytes | bytearray, number: int) -> list[_Run]:
        """Runs of the unnamed $DATA of a record, following $ATTRIBUTE_LIST when present."""
        runs, _ = self._nonresident(rec, number, _AT_DATA, "")
        return runs

    def _nonresident(
        self, rec: bytes | bytearray, number: int, atype: int, aname: str
    ) -> tuple[list[_Run], int]:
        pieces: list[_Piece] = []
        attr_list = None
        for t, name, attr in self.attributes(rec):
            if t == _AT_ATTRIBUTE_LIST:
                attr_list = attr
            if t == atype and name == aname:
                if not attr[8]:
                    raise Unsupported("Expected a non-resident NTFS attribute.")
                pieces.append(self.decode_runlist(attr))
        if attr_list is not None and self.mft_runs:
            pieces = self._from_attribute_list(attr_list, number, atype, aname, pieces)
        if not pieces:
            return [], 0
        pieces.sort(key=lambda p: p[0])
        runs = [r for p in pieces for r in p[1]]
        size = next((p[2] for p in pieces if p[0] == 0), 0)
        expect = 0
        for vcn, _lcn, length in runs:
            if vcn != expect:
                raise Unsupported("An NTFS attribute's runlists leave a gap.")
            expect += length
        return runs, size

    def _from_attribute_list(
        self, attr_list: bytes, number: int, atype: int, aname: str, pieces: list[_Piece]
    ) -> list[_Piece]:
        """Add the runlist fragments that $ATTRIBUTE_LIST says live in other MFT records."""
        data = (
            self.resident_value(attr_list)
            if not attr_list[8]
            else self.read_runs(*self._attr_runs(attr_list))
        )
        seen = {number}
        out = list(pieces)
        pos = 0
        while pos + 26 <= len(data):
            t, rlen, nlen, noff, _svcn, ref = struct.unpack_from("<IHBBQQ", data, pos)
            if rlen == 0:
                break
            name = data[pos + noff : pos + noff + 2 * nlen].decode("utf-16-le", "replace")
            other = ref & 0xFFFFFFFFFFFF
            if t == atype and name == aname and other not in seen:
                seen.add(other)
                rec = self.record(other)
                for t2, n2, attr in self.attributes(rec):
                    if t2 == atype and n2 == aname and attr[8]:
                        out.append(self.decode_runlist(attr))
            pos += rlen
        return out

    def _attr_runs(self, attr: bytes) -> tuple[list[_Run], int, int]:
        _v, runs, size = self.decode_runlist(attr)
        return runs, 0, size

    def read_runs(self, runs: list[_Run], offset: int, length: int) -> bytes:
        """Read ``length`` bytes at byte ``offset`` of a runlist-described stream (sparse = 0)."""
        cs = self.cluster
        out = bytearray()
        end = offset + length
        for vcn, lcn, n in runs:
            lo, hi = max(offset, vcn * cs), min(end, (vcn + n) * cs)
            if lo >= hi:
                continue
            if lo != offset + len(out):
                raise Unsupported("An NTFS stream is shorter than expected.")
            if lcn is None:
                out += bytes(hi - lo)
            else:
                out += self.view.read(lcn * cs + lo - vcn * cs, hi - lo)
        if len(out) != length:
            raise Unsupported("An NTFS stream is shorter than expected.")
        return bytes(out)

    def stream(
        self, rec: bytes | bytearray, number: int, atype: int, aname: str, limit: int | None = None
    ) -> bytes | None:
        """The content (up to ``limit`` bytes) of a resident or non-resident attribute."""
        for t, name, attr in self.attributes(rec):
            if t == atype and name == aname and not attr[8]:
                return self.resident_value(attr)[:limit]
        runs, size = self._nonresident(rec, number, atype, aname)
        if not runs and size == 0:
            return None
        n = size if limit is None else min(size, limit)
        return self.read_runs(runs, 0, n)


def analyze(view: View, marker: Marker, res: FsResult) -> None:
    """Mark every cluster set in ``$Bitmap`` plus the backup boot sector."""
    res.kind = "ntfs"
    vol = NtfsVolume(view)
    volrec = vol.record(_VOLUME_RECORD)
    flags = 0
    for t, _name, attr in vol.attributes(volrec):
        if t == _AT_VOLUME_NAME and not attr[8]:
            res.label = vol.resident_value(attr).decode("utf-16-le", "replace")
        elif t == _AT_VOLUME_INFORMATION and not attr[8]:
            value = vol.resident_value(attr)
            if len(value) >= 12:
                flags = struct.unpack_from("<H", value, 10)[0]
    if flags & (_VOLUME_DIRTY | _VOLUME_CHKDSK_UNDERWAY):
        raise Unsupported(
            "The NTFS volume is marked dirty; let Windows (chkdsk) repair it before compacting."
        )
    _check_logfile(vol)
    _check_hibernation(vol)
    bitmap_rec = vol.record(_BITMAP_RECORD)
    need = (vol.clusters + 7) // 8
    data = vol.stream(bitmap_rec, _BITMAP_RECORD, _AT_DATA, "")
    if data is None or len(data) < need:
        raise Unsupported("$Bitmap is shorter than the number of clusters.")
    bits = np.frombuffer(data, dtype=np.uint8, count=need)
    marker.used_units(0, vol.cluster, bits, vol.clusters)
    # The backup boot sector sits one sector past the last one counted in the boot sector,
    # normally the partition's last sector; keep both candidates.
    backup = vol.total_sectors * vol.bps
    marker.used_range(backup, vol.bps)
    last = view.size - view.size % vol.bps - vol.bps
    if last > backup:
        marker.used_range(last, vol.bps)
    if vol.cluster >= 65536:
        res.note(f"Large clusters: {vol.cluster // 1024} KiB.")


def _check_logfile(vol: NtfsVolume) -> None:
    """Refuse unless $LogFile is empty or its restart area says the volume is clean."""
    rec = vol.record(_LOGFILE_RECORD)
    page = vol.stream(rec, _LOGFILE_RECORD, _AT_DATA, "", limit=4096)
    if page is None or page == b"\xff" * len(page) or page == bytes(len(page)):
        return
    if page[:4] not in (b"RSTR", b"CHKD"):
        raise Unsupported("The NTFS $LogFile restart page is not recognised.")
    sys_page = struct.unpack_from("<I", page, 0x10)[0]
    if sys_page not in (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536):
        raise Unsupported("The NTFS $LogFile restart page is not recognised.")
    raw = vol.stream(rec, _LOGFILE_RECORD, _AT_DATA, "", limit=sys_page)
    if raw is None or len(raw) < sys_page:
        raise Unsupported("The NTFS $LogFile is too short.")
    buf = vol.fixup(raw, raw[:4].decode())
    ra_off = struct.unpack_from("<H", buf, 0x18)[0]
    if ra_off + 16 > len(buf):
        raise Unsupported("The NTFS $LogFile restart area is damaged.")
    in_use, ra_flags = struct.unpack_from("<HH", buf, ra_off + 12)
    if in_use != _LOGFILE_NO_CLIENT and not ra_flags & _RESTART_VOLUME_IS_CLEAN:
        raise Unsupported(
            "The NTFS journal ($LogFile) was not closed cleanly, so $Bitmap may be stale."
        )


def _check_hibernation(vol: NtfsVolume) -> None:
    """Refuse when hiberfil.sys holds a hibernation or Fast Startup image."""
    ref = _find_in_root(vol, "hiberfil.sys")
    if ref is None:
        return
    rec = vol.record(ref)
    head = vol.stream(rec, ref, _AT_DATA, "", limit=4)
    if head and head.lower() == b"hibr":
        raise Unsupported(
            "Windows is hibernated or shut down with Fast Startup; the volume's real state is in "
            "hiberfil.sys, so it is kept whole. Shut Windows down fully first."
        )


def _find_in_root(vol: NtfsVolume, wanted: str) -> int | None:
    """Look a name up in the root directory index; returns the MFT record number."""
    root = vol.record(_ROOT_RECORD)
    wanted = wanted.lower()
    blocks: list[tuple[bytes, int]] = []
    index_block = 4096
    for t, name, attr in vol.attributes(root):
        if t == _AT_INDEX_ROOT and name == "$I30" and not attr[8]:
            value = vol.resident_value(attr)
            index_block = struct.unpack_from("<I", value, 8)[0]
            blocks.append((value, 16))
    alloc = None
    for t, name, attr in vol.attributes(root):
        if t == _AT_INDEX_ALLOCATION and name == "$I30":
            alloc = attr
    if alloc is not None and index_block:
        runs, size = vol._nonresident(root, _ROOT_RECORD, _AT_INDEX_ALLOCATION, "$I30")
        in_use = vol.stream(root, _ROOT_RECORD, _AT_BITMAP, "$I30") or b""
        for i in range(size // index_block):
            if i // 8 < len(in_use) and not in_use[i // 8] >> (i % 8) & 1:
                continue
            raw = vol.read_runs(runs, i * index_block, index_block)
            if raw[:4] != b"INDX":
                continue
            blocks.append((bytes(vol.fixup(raw, "INDX")), 0x18))
    for buf, hdr in blocks:
        first, total = struct.unpack_from("<II", buf, hdr)
        pos, end = hdr + first, min(hdr + total, len(buf))
        while pos + 16 <= end:
            ref, elen, klen, eflags = struct.unpack_from("<QHHH", buf, pos)
            if elen < 16:
                break
            if klen >= 0x42 and not eflags & 2:
                nlen = buf[pos + 16 + 0x40]
                name = buf[pos + 16 + 0x42 : pos + 16 + 0x42 + 2 * nlen].decode(
                    "utf-16-le", "replace"
                )
                if name.lower() == wanted:
                    return int(ref) & 0xFFFFFFFFFFFF
            if eflags & 2:
                break
            pos += elen
    return None
