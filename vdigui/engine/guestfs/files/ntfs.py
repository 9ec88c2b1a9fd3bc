"""NTFS files: MFT records, $I30 directory indexes, data runs, streams and reparse points.

The boot sector, MFT records with their fixups, attribute headers and runlists are parsed by
the allocation reader's :class:`~vdigui.engine.guestfs.ntfs.NtfsVolume`; this module adds what
file access needs on top. See docs/guest-files.md (NTFS) for the on-disk rules relied on.

- A directory is listed from every entry of its ``$I30`` index: the ``$INDEX_ROOT`` node and
  every in-use ``INDX`` block of ``$INDEX_ALLOCATION``, read block by block rather than by
  descending the B+ tree, so a damaged or hostile tree cannot loop and nothing depends on the
  key order.
- A file's metadata comes from its MFT record (times and attributes from
  ``$STANDARD_INFORMATION``, sizes from ``$DATA``), not from the copy in the index, which NTFS
  updates lazily.
- Names in the DOS namespace that shadow a Win32 name of the same record are hidden (the 8.3
  duplicates); a record's entries with seq mismatch (stale index entries) are skipped.
- Alternate data streams are listed beside their file as ``name:stream`` entries (the form
  Windows and The Sleuth Kit use), so ``vdictl cat SOURCE '/dir/file:stream'`` reads one.
- NTFS metadata files (MFT records 0 to 15: ``$MFT``, ``$Bitmap``, ``$Extend`` ...) are not
  listed, as ntfs-3g does not list them.
- LZNT1-compressed streams are decompressed (checked against ntfscat and icat in the tests);
  encrypted files and reparse points whose data lives elsewhere (WOF, deduplication, cloud
  placeholders) are listed but their content is refused with the reason.
"""

from __future__ import annotations

import gc
import struct
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from vdigui.engine.errors import GuestFsError, GuestPathError

from .. import ntfs as ntfs_usage
from ..blockmap import Unsupported, View
from .api import (
    BaseNamespace,
    Entry,
    EntryKind,
    ExtentKind,
    FileExtent,
    VolumeView,
    join,
    new_entry,
    place_extents,
    safe_name,
)

_AT_STANDARD_INFORMATION = 0x10
_AT_ATTRIBUTE_LIST = 0x20
_AT_FILE_NAME = 0x30
_AT_VOLUME_NAME = 0x60
_AT_VOLUME_INFORMATION = 0x70
_AT_DATA = 0x80
_AT_INDEX_ROOT = 0x90
_AT_INDEX_ALLOCATION = 0xA0
_AT_BITMAP = 0xB0
_AT_REPARSE_POINT = 0xC0

_ROOT = 5
_VOLUME = 3
#: Records below this hold the NTFS metadata files; they are not listed.
_FIRST_USER = 16
_MFT_REF = 0xFFFFFFFFFFFF
#: Stream entries carry the stream's index above the 48-bit record number in their id.
_STREAM_SHIFT = 48

_REC_IN_USE = 0x01
_REC_DIRECTORY = 0x02

_NS_DOS = 2
_INDEX_SUBNODE = 0x01
_INDEX_LAST = 0x02

_ATTR_COMPRESSED = 0x0001
_ATTR_ENCRYPTED = 0x4000
_ATTR_SPARSE = 0x8000

_FILE_ATTR_SYSTEM = 0x0004
_FILE_ATTR_DIRECTORY = 0x0010
_FILE_ATTR_ENCRYPTED = 0x4000

_TAG_MOUNT_POINT = 0xA0000003
_TAG_SYMLINK = 0xA000000C
_TAG_LX_SYMLINK = 0xA000001D
#: WSL's special files: AF_UNIX socket, FIFO, character and block device.
_TAG_LX_OTHER = (0x80000023, 0x80000024, 0x80000025, 0x80000026)
_SYMLINK_RELATIVE = 0x1
_INTERIX_LINK = b"IntxLNK\x01"

#: 100 ns ticks between 1601-01-01 and 1970-01-01.
_NT_EPOCH = 116444736000000000
#: Largest stream size believed (2^48 bytes; NTFS itself stops at 2^64 - 1 in theory, Windows
#: at 2^44 clusters); anything larger is hostile.
_MAX_SIZE = 1 << 48
#: Extension records one file may use through $ATTRIBUTE_LIST.
_MAX_EXTENSIONS = 4096
#: INDX blocks of one directory (about 40 million entries).
_MAX_INDEX_BLOCKS = 1 << 20
#: Parsed records kept (path lookups and listings revisit the same ones).
_CACHED_RECORDS = 4096
#: A listing reads its children's MFT records ahead in batches of this many entries, each
#: contiguous span of records in one read (a span at most _SPAN_RECORDS long).
_BATCH_ENTRIES = 1024
_SPAN_RECORDS = 256
_DOT = ".".encode("utf-16-le")
_MAX_NOTES = 20
#: LZNT1 works in 4 KiB chunks inside compression units of (normally) 16 clusters.
_LZNT1_CHUNK = 4096

_Run = tuple[int, int | None, int]
_Attr = tuple[int, str, bytes]
#: One directory index entry: (file reference, namespace, UTF-16 name, the $FILE_NAME key).
_Key = tuple[int, int, bytes, bytes]
_DAMAGE = (Unsupported, struct.error, IndexError, ValueError)


def nt_time(value: int) -> float | None:
    """An NT timestamp (100 ns ticks since 1601) as POSIX seconds, or None when unset."""
    if value <= 0:
        return None
    return (value - _NT_EPOCH) / 1e7


def _utf16(raw: bytes) -> tuple[str, bool]:
    """UTF-16LE text; unpaired surrogates (legal in NTFS names) become U+FFFD, flagged."""
    text = raw.decode("utf-16-le", "surrogatepass")
    try:
        text.encode("utf-8")
        return text, False
    except UnicodeEncodeError:
        return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text), True


def lznt1_decompress(data: bytes, limit: int) -> bytes:
    """Decompress LZNT1 ``data`` (one compression unit) to at most ``limit`` bytes.

    Chunks of up to 4 KiB each start with a 16-bit header: the low 12 bits hold the stored
    length of the rest of the chunk minus 1, bit 15 says it is compressed. A
    compressed chunk is groups of one flag byte and eight tokens: a literal byte, or a 16-bit
    back reference whose split between offset and length depends on how far into the 4 KiB
    chunk the output is. A zero header ends the unit.
    """
    out = bytearray()
    pos = 0
    while pos + 2 <= len(data) and len(out) < limit:
        (header,) = struct.unpack_from("<H", data, pos)
        if header == 0:
            break
        size = (header & 0x0FFF) + 1
        pos += 2
        chunk = data[pos : pos + size]
        if len(chunk) < size:
            raise GuestFsError("An LZNT1 chunk runs past the end of its compression unit.")
        pos += size
        if not header & 0x8000:
            out += chunk
            continue
        start = len(out)
        i = 0
        while i < len(chunk):
            flags = chunk[i]
            i += 1
            for bit in range(8):
                if i >= len(chunk):
                    break
                if not flags >> bit & 1:
                    out.append(chunk[i])
                    i += 1
                    continue
                if i + 2 > len(chunk):
                    raise GuestFsError("An LZNT1 back reference is cut short.")
                (token,) = struct.unpack_from("<H", chunk, i)
                i += 2
                done = len(out) - start
                if done == 0:
                    raise GuestFsError("An LZNT1 chunk starts with a back reference.")
                # Bits for the offset: the smallest n >= 4 with 2^n >= bytes done so far.
                n = 4
                while (1 << n) < done:
                    n += 1
                length_bits = 16 - n
                offset = (token >> length_bits) + 1
                length = (token & ((1 << length_bits) - 1)) + 3
                if offset > done:
                    raise GuestFsError("An LZNT1 back reference points before its chunk.")
                src = len(out) - offset
                for k in range(length):  # may overlap its own output
                    out.append(out[src + k])
            if len(out) - start > _LZNT1_CHUNK:
                raise GuestFsError("An LZNT1 chunk decompresses to more than 4 KiB.")
    return bytes(out[:limit])


@dataclass(slots=True)
class _Stream:
    """One $DATA attribute of a record: resident bytes or runs, with its sizes and flags."""

    name: str
    size: int
    init: int
    flags: int
    resident: bytes | None
    runs: list[_Run]
    unit: int  # compression unit in clusters (0 when not compressed)


@dataclass(slots=True)
class _Record:
    """The parts of a base MFT record (and its extension records) that files need."""

    number: int
    seq: int
    flags: int
    attrs: list[_Attr]
    links: int


class NtfsNamespace(BaseNamespace):
    """The files of one NTFS filesystem."""

    kind = "ntfs"

    def __init__(self, view: VolumeView, volume: str) -> None:
        super().__init__(view, volume)
        try:
            self.vol = ntfs_usage.NtfsVolume(View(view.reader, view.extents))
        except Unsupported as exc:
            raise GuestFsError(f"The NTFS filesystem in {volume} cannot be read: {exc}") from None
        self.cs = self.vol.cluster
        self._records: OrderedDict[int, _Record] = OrderedDict()
        #: Raw MFT records read ahead for the listing being built (fixups not yet applied).
        self._ahead: dict[int, bytes] = {}
        volrec = self._record(_VOLUME, "$Volume")
        for atype, _name, attr in volrec.attrs:
            if atype == _AT_VOLUME_NAME and not attr[8]:
                self.label, _bad = _utf16(self.vol.resident_value(attr))
            elif atype == _AT_VOLUME_INFORMATION and not attr[8]:
                value = self.vol.resident_value(attr)
                if len(value) >= 12 and struct.unpack_from("<H", value, 10)[0] & 0x4001:
                    self.notes.append(
                        "The volume is marked dirty (Windows did not shut it "
                        "down cleanly); its files are shown as the disk has "
                        "them."
                    )
        self._root = self._record(_ROOT, "/")
        if not self._root.flags & _REC_DIRECTORY:
            raise GuestFsError(f"The root directory record of {volume} is not a directory.")

    def _note(self, text: str) -> None:
        if len(self.notes) < _MAX_NOTES and text not in self.notes:
            self.notes.append(text)

    # -- records --------------------------------------------------------------------------
    def _record(self, number: int, path: str) -> _Record:
        """The base record ``number`` with the attributes of its extension records merged."""
        cached = self._records.get(number)
        if cached is not None:
            self._records.move_to_end(number)
            return cached
        try:
            rec = self._load(number, path)
        except Unsupported as exc:
            raise GuestFsError(
                f"The NTFS record of {path} in {self.volume} cannot be read: {exc}"
            ) from None
        except (struct.error, IndexError, ValueError) as exc:
            raise GuestFsError(
                f"The NTFS record of {path} in {self.volume} is damaged ({exc})."
            ) from None
        self._records[number] = rec
        if len(self._records) > _CACHED_RECORDS:
            self._records.popitem(last=False)
        return rec

    def _load(self, number: int, path: str) -> _Record:
        ahead = self._ahead.pop(number, None)
        # The same bytes raw_record would read; the fixup (and its checks) happens here.
        raw = self.vol.raw_record(number) if ahead is None else self.vol.fixup(ahead, "FILE")
        seq, links, _first, flags = struct.unpack_from("<HHHH", raw, 0x10)
        base = struct.unpack_from("<Q", raw, 0x20)[0] & _MFT_REF
        if not flags & _REC_IN_USE:
            raise GuestFsError(
                f"{path} in {self.volume} points to MFT record {number}, which is not in use."
            )
        if base:
            raise GuestFsError(
                f"{path} in {self.volume} points to MFT record {number}, which "
                "is an extension of another record."
            )
        attrs = list(self.vol.attributes(raw))
        lists = [a for a in attrs if a[0] == _AT_ATTRIBUTE_LIST]
        if lists:
            attrs += self._extension_attrs(number, lists[0][2], path)
        return _Record(number, seq, flags, attrs, links)

    def _read_ahead(self, numbers: list[int]) -> None:
        """Read the MFT records ``numbers`` (not cached yet) in contiguous spans, one read
        each, instead of one read per record: a listing's children mostly sit side by side
        in the MFT. Spans that cannot be read are left to ``_load``, which reports why."""
        size = self.vol.record_size
        limit = self.vol.mft_size // size
        wanted = sorted({n for n in numbers if _FIRST_USER <= n < limit and n not in self._records})
        at = 0
        while at < len(wanted):
            first = wanted[at]
            end = at + 1
            while (
                end < len(wanted)
                and wanted[end] == wanted[end - 1] + 1
                and wanted[end] - first < _SPAN_RECORDS
            ):
                end += 1
            count = wanted[end - 1] - first + 1
            try:
                data = self.vol.read_runs(self.vol.mft_runs, first * size, count * size)
            except Exception:
                # Only an optimisation: each record of a span that cannot be read is read on
                # its own by _load, which raises (or notes) what applies to that record.
                data = b""
            for k in range(len(data) // size):
                self._ahead[first + k] = data[k * size : (k + 1) * size]
            at = end

    def _extension_attrs(self, number: int, attr_list: bytes, path: str) -> list[_Attr]:
        """Attributes that ``$ATTRIBUTE_LIST`` places in other records of the same file."""
        if attr_list[8]:
            _v, runs, size = self.vol.decode_runlist(attr_list)
            if size > 1 << 24:
                raise GuestFsError(
                    f"The attribute list of {path} in {self.volume} claims {size} bytes."
                )
            data = self.vol.read_runs(runs, 0, size)
        else:
            data = self.vol.resident_value(attr_list)
        others: list[int] = []
        pos = 0
        while pos + 26 <= len(data):
            rlen = struct.unpack_from("<H", data, pos + 4)[0]
            if rlen < 26:
                raise GuestFsError(f"The attribute list of {path} in {self.volume} is damaged.")
            ref = struct.unpack_from("<Q", data, pos + 16)[0] & _MFT_REF
            if ref != number and ref not in others:
                others.append(ref)
            pos += rlen
        if len(others) > _MAX_EXTENSIONS:
            raise GuestFsError(
                f"{path} in {self.volume} spreads over more than {_MAX_EXTENSIONS} MFT records."
            )
        out: list[_Attr] = []
        for other in others:
            raw = self.vol.raw_record(other)
            flags = struct.unpack_from("<H", raw, 0x16)[0]
            base = struct.unpack_from("<Q", raw, 0x20)[0] & _MFT_REF
            if not flags & _REC_IN_USE or base != number:
                raise GuestFsError(
                    f"The attribute list of {path} in {self.volume} names MFT "
                    f"record {other}, which does not belong to it."
                )
            out += [a for a in self.vol.attributes(raw) if a[0] != _AT_ATTRIBUTE_LIST]
        return out

    # -- streams --------------------------------------------------------------------------
    def _stream(self, rec: _Record, atype: int, name: str, path: str) -> _Stream | None:
        """One attribute's content description, its runlist fragments put together."""
        pieces = [a for t, n, a in rec.attrs if t == atype and n == name]
        if not pieces:
            return None
        resident = [a for a in pieces if not a[8]]
        if resident:
            if len(pieces) > 1:
                raise GuestFsError(f"{path} in {self.volume} has a stream stored twice.")
            value = self.vol.resident_value(resident[0])
            flags = struct.unpack_from("<H", resident[0], 12)[0]
            return _Stream(name, len(value), len(value), flags, value, [], 0)
        decoded = []
        for attr in pieces:
            if len(attr) < 0x40:
                raise GuestFsError(f"An attribute header of {path} in {self.volume} is cut short.")
            decoded.append((self.vol.decode_runlist(attr), attr))
        decoded.sort(key=lambda d: d[0][0])
        first = decoded[0][1]
        if decoded[0][0][0] != 0:
            raise GuestFsError(
                f"The runlists of {path} in {self.volume} do not start at the "
                "beginning of the stream."
            )
        flags = struct.unpack_from("<H", first, 12)[0]
        unit = first[0x22] if flags & _ATTR_COMPRESSED else 0
        alloc, size, init = struct.unpack_from("<QQQ", first, 0x28)
        runs = [r for (_s, rs, _z), _a in decoded for r in rs]
        expect = 0
        for vcn, _lcn, length in runs:
            if vcn != expect:
                raise GuestFsError(
                    f"The runlists of {path} in {self.volume} leave a gap or overlap."
                )
            expect += length
        if size > _MAX_SIZE or init > _MAX_SIZE:
            raise GuestFsError(f"{path} in {self.volume} claims an absurd size ({size} bytes).")
        if size > expect * self.cs:
            raise GuestFsError(
                f"{path} in {self.volume} claims {size} bytes, but its runs "
                f"cover only {expect * self.cs}."
            )
        if unit and (unit > 16 or self.cs << unit > 1 << 21):
            raise GuestFsError(f"{path} in {self.volume} has an invalid compression unit.")
        del alloc
        return _Stream(name, size, min(init, size), flags, None, runs, unit)

    def _streams(self, rec: _Record) -> list[str]:
        """Names of the record's alternate data streams, in a stable order."""
        return sorted({n for t, n, _a in rec.attrs if t == _AT_DATA and n})

    # -- entries --------------------------------------------------------------------------
    def root(self) -> Entry:
        """The root directory (MFT record 5)."""
        return self._entry_for(self._root, "/", "/", b"/", "")

    def _standard(self, rec: _Record) -> tuple[list[float | None], int]:
        for t, _n, attr in rec.attrs:
            if t == _AT_STANDARD_INFORMATION and not attr[8]:
                value = self.vol.resident_value(attr)
                if len(value) >= 0x24:
                    times = struct.unpack_from("<qqqq", value, 0)
                    attrs = struct.unpack_from("<I", value, 0x20)[0]
                    return [nt_time(x) for x in times], int(attrs)
        return [None, None, None, None], 0

    def _reparse(self, rec: _Record) -> tuple[int, bytes] | None:
        for t, _n, attr in rec.attrs:
            if t == _AT_REPARSE_POINT and not attr[8]:
                value = self.vol.resident_value(attr)
                if len(value) >= 8:
                    tag, length = struct.unpack_from("<IH", value, 0)
                    return int(tag), value[8 : 8 + length]
        return None

    def _link_target(self, tag: int, data: bytes) -> str | None:
        """The target of a symbolic link or junction as text with "/" separators."""
        if tag == _TAG_LX_SYMLINK:
            text = data[4:].decode("utf-8", "surrogateescape") if len(data) >= 4 else ""
            return text
        if tag not in (_TAG_SYMLINK, _TAG_MOUNT_POINT):
            return None
        head = 12 if tag == _TAG_SYMLINK else 8
        if len(data) < head:
            return ""
        sub_off, sub_len, pr_off, pr_len = struct.unpack_from("<HHHH", data, 0)
        relative = tag == _TAG_SYMLINK and struct.unpack_from("<I", data, 8)[0] & 1
        buf = data[head:]
        raw = buf[pr_off : pr_off + pr_len] if pr_len else buf[sub_off : sub_off + sub_len]
        text, _bad = _utf16(raw)
        if not relative:
            text = text.removeprefix("\\??\\")
        return text.replace("\\", "/")

    def _entry_for(self, rec: _Record, name: str, path: str, raw_name: bytes, note: str) -> Entry:
        times, attributes = self._standard(rec)
        created, modified, changed, accessed = times
        kind = EntryKind.DIRECTORY if rec.flags & _REC_DIRECTORY else EntryKind.FILE
        target: str | None = None
        size = 0
        reparse = self._reparse(rec)
        if reparse is not None:
            tag, data = reparse
            target = self._link_target(tag, data)
            if target is not None:
                kind = EntryKind.SYMLINK
            elif tag in _TAG_LX_OTHER:
                kind = EntryKind.OTHER
        if kind is EntryKind.FILE:
            data_stream = self._stream(rec, _AT_DATA, "", path)
            size = data_stream.size if data_stream is not None else 0
            if (
                attributes & _FILE_ATTR_SYSTEM
                and data_stream is not None
                and len(_INTERIX_LINK) < size <= 8192
            ):
                head = self._read_stream(data_stream, 0, size, path)
                if head.startswith(_INTERIX_LINK):
                    # ntfs-3g's (and Interix's) symbolic links: a system file holding a magic
                    # and the UTF-16 target; a Linux guest sees them as links.
                    target, _bad = _utf16(head[len(_INTERIX_LINK) :])
                    kind = EntryKind.SYMLINK
        if kind is EntryKind.SYMLINK:
            target = target or ""
            size = len(target.encode("utf-8", "surrogateescape"))
        if kind is EntryKind.DIRECTORY:
            attributes |= _FILE_ATTR_DIRECTORY
        nlink = max(
            1,
            sum(
                1
                for t, _n, a in rec.attrs
                if t == _AT_FILE_NAME and not a[8] and self._fn_namespace(a) != _NS_DOS
            ),
        )
        return new_entry(  # Entry(...) at a third of the cost: called once per file listed
            name,
            path,
            kind,
            size,
            modified,
            accessed,
            changed,
            None,
            attributes,
            None,
            None,
            rec.number,
            nlink,
            created,
            target,
            raw_name,
            note,
        )

    def _entry_from_key(
        self, number: int, key: bytes, name: str, path: str, raw: bytes, note: str
    ) -> Entry:
        """An entry built from the ``$FILE_NAME`` copy in a directory index (for records that
        cannot be read)."""
        created, modified, changed, accessed, _alloc, size, flags = struct.unpack_from(
            "<qqqqqqI", key, 8
        )
        is_dir = bool(flags & 0x10000000)
        return Entry(
            name=name,
            path=path,
            kind=EntryKind.DIRECTORY if is_dir else EntryKind.FILE,
            size=0 if is_dir else max(0, size),
            mtime=nt_time(modified),
            atime=nt_time(accessed),
            ctime=nt_time(changed),
            btime=nt_time(created),
            mode=None,
            attributes=flags & 0xFFFF | (_FILE_ATTR_DIRECTORY if is_dir else 0),
            uid=None,
            gid=None,
            id=number,
            raw_name=raw,
            name_note="; ".join(x for x in (note, "its MFT record is damaged") if x),
        )

    def _fn_namespace(self, attr: bytes) -> int:
        value = self.vol.resident_value(attr)
        return value[0x41] if len(value) > 0x41 else -1

    def _damaged(self, path: str, exc: Exception) -> GuestFsError:
        return GuestFsError(f"The NTFS metadata of {path} in {self.volume} is damaged: {exc}")

    def _list(self, directory: Entry) -> list[Entry]:
        try:
            return self._list_index(directory)
        except _DAMAGE as exc:
            raise self._damaged(directory.path, exc) from None

    def _raw_extents(self, entry: Entry) -> list[FileExtent]:
        try:
            return self._extents_of(entry)
        except _DAMAGE as exc:
            raise self._damaged(entry.path, exc) from None

    def _inline(self, entry: Entry) -> bytes:
        try:
            return self._inline_of(entry)
        except _DAMAGE as exc:
            raise self._damaged(entry.path, exc) from None

    def _pieces(self, entry: Entry, start: int, end: int, chunk: int) -> Iterator[bytes]:
        try:
            yield from self._pieces_of(entry, start, end, chunk)
        except _DAMAGE as exc:
            raise self._damaged(entry.path, exc) from None

    def _list_index(self, directory: Entry) -> list[Entry]:
        number = directory.id & _MFT_REF
        if directory.id >> _STREAM_SHIFT:
            raise GuestPathError(f"{directory.path} in {self.volume} is not a directory.")
        rec = self._record(number, directory.path)
        try:
            keys = self._index_keys(rec, directory.path)
        except Unsupported as exc:
            raise GuestFsError(
                f"The index of {directory.path} in {self.volume} cannot be read: {exc}"
            ) from None
        except (struct.error, IndexError, ValueError) as exc:
            raise GuestFsError(
                f"The index of {directory.path} in {self.volume} is damaged ({exc})."
            ) from None
        # Keep one entry per (record, name); hide DOS names of records that have another one.
        named: dict[int, set[int]] = {}
        for ref, namespace, _raw, _key in keys:
            named.setdefault(ref & _MFT_REF, set()).add(namespace)
        seen: set[tuple[int, bytes]] = set()
        out: list[Entry] = []
        # The entries hold no references that could form a cycle: the collector, which would
        # otherwise run every 700 of them and revisit the ones already built, waits until
        # the listing is done.
        paused = gc.isenabled()
        gc.disable()
        try:
            for at in range(0, len(keys), _BATCH_ENTRIES):
                batch = keys[at : at + _BATCH_ENTRIES]
                self._read_ahead([ref & _MFT_REF for ref, _n, _r, _k in batch])
                try:
                    self._list_keys(directory, number, batch, named, seen, out)
                finally:
                    self._ahead.clear()
        finally:
            if paused:
                gc.enable()
        return out

    def _list_keys(
        self,
        directory: Entry,
        number: int,
        keys: list[_Key],
        named: dict[int, set[int]],
        seen: set[tuple[int, bytes]],
        out: list[Entry],
    ) -> None:
        """Add the entries of ``keys`` (part of the index of ``directory``) to ``out``."""
        for ref, namespace, raw, key in keys:
            child = ref & _MFT_REF
            if namespace == _NS_DOS and named[child] - {_NS_DOS}:
                continue
            if (child, raw) in seen:
                continue
            seen.add((child, raw))
            if child == number:
                if raw != _DOT:
                    self._note(
                        f"The index of {directory.path} lists the directory itself; "
                        "that entry was left out."
                    )
                continue
            if child < _FIRST_USER:
                continue
            text, bad = _utf16(raw)
            name, note = safe_name(text)
            if bad:
                note = "; ".join(
                    x for x in ("the stored name holds an unpaired UTF-16 surrogate", note) if x
                )
            path = join(directory.path, name)
            try:
                crec = self._record(child, path)
                if ref >> 48 and crec.seq and ref >> 48 != crec.seq:
                    self._note(
                        f"The index of {directory.path} holds a stale entry for {name}; "
                        "it was left out."
                    )
                    continue
                entry = self._entry_for(crec, name, path, raw, note)
            except GuestFsError as exc:
                # Still show the name, from the copy of its metadata in the index; reading it
                # repeats the error.
                self._note(str(exc))
                out.append(self._entry_from_key(child, key, name, path, raw, note))
                continue
            except _DAMAGE as exc:
                self._note(f"The NTFS record of {path} in {self.volume} is damaged ({exc}).")
                out.append(self._entry_from_key(child, key, name, path, raw, note))
                continue
            out.append(entry)
            for k, stream in enumerate(self._streams(crec), 1):
                sname, snote = safe_name(f"{text}:{stream}")
                try:
                    sdata = self._stream(crec, _AT_DATA, stream, path)
                except (GuestFsError, *_DAMAGE) as exc:
                    self._note(f"A stream of {path} in {self.volume} is damaged ({exc}).")
                    sdata = None
                out.append(
                    Entry(
                        name=sname,
                        path=join(directory.path, sname),
                        kind=EntryKind.FILE,
                        size=sdata.size if sdata else 0,
                        mtime=entry.mtime,
                        atime=entry.atime,
                        ctime=entry.ctime,
                        btime=entry.btime,
                        mode=None,
                        attributes=entry.attributes,
                        uid=None,
                        gid=None,
                        id=child | k << _STREAM_SHIFT,
                        nlink=1,
                        raw_name=raw,
                        name_note="; ".join(
                            x for x in (f"the alternate data stream {stream!r}", snote) if x
                        ),
                    )
                )

    def _index_keys(self, rec: _Record, path: str) -> list[_Key]:
        """``(file reference, namespace, UTF-16 name)`` of every entry of ``$I30``."""
        root = [a for t, n, a in rec.attrs if t == _AT_INDEX_ROOT and n == "$I30"]
        if not root or root[0][8]:
            raise GuestFsError(f"The directory {path} in {self.volume} has no $I30 index.")
        value = self.vol.resident_value(root[0])
        if len(value) < 32:
            raise GuestFsError(f"The index root of {path} in {self.volume} is cut short.")
        block_size = struct.unpack_from("<I", value, 8)[0]
        out: list[_Key] = []
        self._node_keys(value, 16, out, path)
        alloc = self._stream(rec, _AT_INDEX_ALLOCATION, "$I30", path)
        if alloc is None or alloc.resident is not None:
            return out
        if block_size < 512 or block_size & (block_size - 1) or block_size > 1 << 16:
            raise GuestFsError(
                f"The index block size of {path} in {self.volume} is invalid ({block_size})."
            )
        bitmap_stream = self._stream(rec, _AT_BITMAP, "$I30", path)
        bitmap = b""
        if bitmap_stream is not None:
            bitmap = self._read_stream(bitmap_stream, 0, min(bitmap_stream.size, 1 << 17), path)
        count = min(alloc.size // block_size, len(bitmap) * 8, _MAX_INDEX_BLOCKS)
        for i in range(count):
            if not bitmap[i // 8] >> (i % 8) & 1:
                continue
            raw = self._read_stream(alloc, i * block_size, block_size, path)
            if raw[:4] != b"INDX":
                raise GuestFsError(
                    f"Index block {i} of {path} in {self.volume} is damaged (bad signature)."
                )
            try:
                buf = self.vol.fixup(raw, "INDX")
            except Unsupported:
                raise GuestFsError(
                    f"Index block {i} of {path} in {self.volume} failed its "
                    "fixup check (a torn or damaged write)."
                ) from None
            self._node_keys(bytes(buf), 0x18, out, path)
        return out

    def _node_keys(self, buf: bytes, hdr: int, out: list[_Key], path: str) -> None:
        first, total = struct.unpack_from("<II", buf, hdr)
        pos, end = hdr + first, hdr + total
        if end > len(buf) or first < 16:
            raise GuestFsError(f"An index node of {path} in {self.volume} is damaged.")
        while pos + 16 <= end:
            ref, elen, klen, eflags = struct.unpack_from("<QHHH", buf, pos)
            if eflags & _INDEX_LAST:
                return
            if elen < 16 or pos + elen > end or 16 + klen > elen:
                raise GuestFsError(f"An index entry of {path} in {self.volume} is damaged.")
            if klen < 0x42:
                raise GuestFsError(f"An index entry of {path} in {self.volume} has no name.")
            key = pos + 16
            nlen, namespace = buf[key + 0x40], buf[key + 0x41]
            if 0x42 + 2 * nlen > klen:
                raise GuestFsError(
                    f"An index entry's name of {path} in {self.volume} runs past its entry."
                )
            out.append(
                (
                    int(ref),
                    namespace,
                    bytes(buf[key + 0x42 : key + 0x42 + 2 * nlen]),
                    bytes(buf[key : key + 0x42]),
                )
            )
            pos += elen
        raise GuestFsError(f"An index node of {path} in {self.volume} has no end marker.")

    # -- content --------------------------------------------------------------------------
    def _file_stream(self, entry: Entry) -> tuple[_Record, _Stream | None]:
        number, k = entry.id & _MFT_REF, entry.id >> _STREAM_SHIFT
        rec = self._record(number, entry.path)
        name = ""
        if k:
            names = self._streams(rec)
            if k > len(names):
                raise GuestFsError(f"The stream {entry.path} in {self.volume} is gone.")
            name = names[k - 1]
        return rec, self._stream(rec, _AT_DATA, name, entry.path)

    def _refusal(self, rec: _Record, stream: _Stream, entry: Entry) -> str | None:
        """Why the content cannot be read as stored, or None."""
        _times, attributes = self._standard(rec)
        if stream.flags & _ATTR_ENCRYPTED or attributes & _FILE_ATTR_ENCRYPTED:
            return (
                f"{entry.path} in {self.volume} is encrypted (EFS); its content cannot be "
                "read without the owner's key."
            )
        reparse = self._reparse(rec)
        if reparse is not None and entry.id >> _STREAM_SHIFT == 0:
            tag = reparse[0]
            if tag not in (_TAG_SYMLINK, _TAG_MOUNT_POINT, _TAG_LX_SYMLINK) and stream.size:
                return (
                    f"{entry.path} in {self.volume} is a reparse point (tag {tag:#010x}) "
                    "whose content Windows keeps elsewhere (for example compressed by "
                    "WOF, deduplicated or a cloud placeholder); vdigui cannot read it."
                )
        return None

    def _extents_of(self, entry: Entry) -> list[FileExtent]:
        rec, stream = self._file_stream(entry)
        if stream is None or stream.size == 0:
            return []
        reason = self._refusal(rec, stream, entry)
        if reason is not None:
            raise GuestFsError(reason)
        if stream.resident is not None:
            return [FileExtent(0, stream.size, ExtentKind.INLINE, None, None)]
        runs: list[tuple[int, int, ExtentKind, int | None]] = []
        if stream.unit:
            # Compressed: a unit stored in full is plain data, an all-sparse unit is a hole,
            # anything else is LZNT1 data (reported as inline: its bytes are not a copy).
            for ustart, ulen, kind, voff in self._units(stream, entry.path):
                runs.append((ustart, ulen, kind, voff))
            return place_extents(self.view, runs)
        for vcn, lcn, n in stream.runs:
            lo, hi = vcn * self.cs, min((vcn + n) * self.cs, stream.size)
            if lo >= hi:
                continue
            if lcn is None:
                runs.append((lo, hi - lo, ExtentKind.SPARSE, None))
                continue
            voff = lcn * self.cs
            if hi <= stream.init:
                runs.append((lo, hi - lo, ExtentKind.DATA, voff))
            elif lo >= stream.init:
                runs.append((lo, hi - lo, ExtentKind.UNWRITTEN, voff))
            else:
                cut = stream.init - lo
                runs.append((lo, cut, ExtentKind.DATA, voff))
                runs.append((stream.init, hi - stream.init, ExtentKind.UNWRITTEN, voff + cut))
        return place_extents(self.view, runs)

    def _units(
        self, stream: _Stream, path: str
    ) -> Iterator[tuple[int, int, ExtentKind, int | None]]:
        """Compression units of a compressed stream as (offset, length, kind, volume offset);
        compressed units come back as INLINE, whole data units as DATA, holes as SPARSE."""
        ucl = 1 << stream.unit
        ubytes = ucl * self.cs
        for ustart in range(0, stream.size, ubytes):
            vcn = ustart // self.cs
            pieces = self._cluster_map(stream.runs, vcn, ucl)
            ulen = min(ubytes, stream.size - ustart)
            if all(lcn is None for lcn, _n in pieces):
                yield ustart, ulen, ExtentKind.SPARSE, None
            elif all(lcn is not None for lcn, _n in pieces):
                pos = ustart
                for lcn, n in pieces:
                    take = min(n * self.cs, ustart + ulen - pos)
                    if take > 0:
                        assert lcn is not None
                        yield pos, take, ExtentKind.DATA, lcn * self.cs
                    pos += n * self.cs
            else:
                yield ustart, ulen, ExtentKind.INLINE, None

    @staticmethod
    def _cluster_map(runs: list[_Run], vcn: int, count: int) -> list[tuple[int | None, int]]:
        """``(lcn or None, clusters)`` pieces of clusters ``vcn .. vcn+count``."""
        out: list[tuple[int | None, int]] = []
        end = vcn + count
        for rvcn, lcn, n in runs:
            lo, hi = max(vcn, rvcn), min(end, rvcn + n)
            if lo < hi:
                out.append((None if lcn is None else lcn + lo - rvcn, hi - lo))
        covered = sum(n for _l, n in out)
        if covered < count:
            out.append((None, count - covered))
        return out

    def _read_stream(self, stream: _Stream, offset: int, length: int, path: str) -> bytes:
        """Bytes of a stream (metadata streams and small files); zeros past its end."""
        if stream.resident is not None:
            return stream.resident[offset : offset + length].ljust(length, b"\0")
        if stream.unit:
            return self._decompressed(stream, offset, length, path)
        try:
            data = self.vol.read_runs(stream.runs, offset, length)
        except Unsupported as exc:
            raise GuestFsError(
                f"A stream of {path} in {self.volume} cannot be read: {exc}"
            ) from None
        if offset + length > stream.init:
            cut = max(0, stream.init - offset)
            data = data[:cut] + bytes(length - cut)
        return data

    def _decompressed(self, stream: _Stream, offset: int, length: int, path: str) -> bytes:
        ubytes = (1 << stream.unit) * self.cs
        out = bytearray()
        first = offset // ubytes * ubytes
        for ustart in range(first, offset + length, ubytes):
            out += self._unit(stream, ustart, path)
        skip = offset - first
        return bytes(out[skip : skip + length]).ljust(length, b"\0")

    def _unit(self, stream: _Stream, ustart: int, path: str) -> bytes:
        ucl = 1 << stream.unit
        ubytes = ucl * self.cs
        pieces = self._cluster_map(stream.runs, ustart // self.cs, ucl)
        if all(lcn is None for lcn, _n in pieces):
            return bytes(ubytes)
        stored = b"".join(
            bytes(n * self.cs) if lcn is None else self.view.read(lcn * self.cs, n * self.cs)
            for lcn, n in pieces
        )
        if all(lcn is not None for lcn, _n in pieces):
            return stored
        try:
            return lznt1_decompress(stored, ubytes).ljust(ubytes, b"\0")
        except GuestFsError as exc:
            raise GuestFsError(
                f"The compressed data of {path} in {self.volume} at byte {ustart} is damaged: {exc}"
            ) from None

    def _inline_of(self, entry: Entry) -> bytes:
        _rec, stream = self._file_stream(entry)
        if stream is None:
            return b""
        if stream.resident is not None:
            return stream.resident
        raise GuestFsError(f"{entry.path} in {self.volume} has no inline content.")

    def _pieces_of(self, entry: Entry, start: int, end: int, chunk: int) -> Iterator[bytes]:
        """Compressed streams are decompressed unit by unit; the rest as the base does."""
        if entry.kind is EntryKind.FILE and start < end:
            rec, stream = self._file_stream(entry)
            if stream is not None and stream.unit and stream.resident is None:
                reason = self._refusal(rec, stream, entry)
                if reason is not None:
                    raise GuestFsError(reason)
                pos = start
                while pos < end:
                    take = min(chunk, end - pos)
                    yield self._read_stream(stream, pos, take, entry.path)
                    pos += take
                return
        yield from super()._pieces(entry, start, end, chunk)


def open_ntfs(view: VolumeView, volume: str) -> NtfsNamespace:
    """The namespace of the NTFS filesystem at the start of ``view``."""
    try:
        return NtfsNamespace(view, volume)
    except (struct.error, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise GuestFsError(f"The NTFS filesystem in {volume} cannot be read ({exc}).") from None


__all__ = ["NtfsNamespace", "lznt1_decompress", "nt_time", "open_ntfs"]
