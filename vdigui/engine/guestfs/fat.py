"""FAT12/16/32: used clusters from the active FAT; everything before the data area is kept.

The FAT type is decided by the cluster count, as the specification demands, never by the label
in the boot sector. Any non-zero FAT entry (including bad-cluster and reserved values) counts as
used, so lost chains on a dirty volume are kept too.
"""

from __future__ import annotations

import struct

import numpy as np

from .blockmap import FsResult, Marker, Unsupported, View


def parse_bpb(boot: bytes) -> dict[str, int] | None:
    """Return the BIOS parameter block of a FAT boot sector, or None if it is not one."""
    if len(boot) < 512 or boot[0] not in (0xEB, 0xE9) or boot[3:11] == b"NTFS    ":
        return None
    bps, spc, reserved, nfats, root_entries, total16, media, fatsz16 = struct.unpack_from(
        "<HBHBHHBH", boot, 11
    )
    (total32,) = struct.unpack_from("<I", boot, 0x20)
    if bps not in (512, 1024, 2048, 4096) or spc == 0 or spc & (spc - 1) or spc > 128:
        return None
    if reserved == 0 or nfats == 0 or nfats > 4 or (media < 0xF0 and media != 0):
        return None
    fatsz = fatsz16 or struct.unpack_from("<I", boot, 0x24)[0]
    total = total16 or total32
    if fatsz == 0 or total == 0:
        return None
    root_sectors = -(-root_entries * 32 // bps)
    data_start = reserved + nfats * fatsz + root_sectors
    if data_start >= total:
        return None
    clusters = (total - data_start) // spc
    return {
        "bps": bps,
        "spc": spc,
        "reserved": reserved,
        "nfats": nfats,
        "fatsz": fatsz,
        "fatsz16": fatsz16,
        "total": total,
        "data_start": data_start,
        "clusters": clusters,
        "media": media,
    }


def probe(head: bytes) -> bool:
    """True when ``head`` starts with a plausible FAT boot sector."""
    return parse_bpb(head) is not None and head[510:512] == b"\x55\xaa"


def analyze(view: View, marker: Marker, res: FsResult) -> None:
    """Mark the reserved area, the FATs, the root directory and every allocated cluster."""
    boot = view.read(0, 512)
    bpb = parse_bpb(boot)
    if bpb is None:
        raise Unsupported("The FAT boot sector is not valid.")
    clusters = bpb["clusters"]
    if clusters < 4085:
        res.kind, bits_per = "fat12", 12
    elif clusters < 65525:
        res.kind, bits_per = "fat16", 16
    else:
        res.kind, bits_per = "fat32", 32
    label_off = 0x47 if bpb["fatsz16"] == 0 else 0x2B
    sig_off = 0x42 if bpb["fatsz16"] == 0 else 0x26
    if boot[sig_off] in (0x28, 0x29):
        label = boot[label_off : label_off + 11].decode("latin-1").strip()
        res.label = "" if label == "NO NAME" else label
    if (bits_per == 32) != (bpb["fatsz16"] == 0):
        # Windows types FAT by cluster count, Linux by the boot sector layout: when they
        # disagree, the two would read different FATs, so trust neither.
        raise Unsupported(
            "The FAT type implied by the cluster count does not match the boot sector layout."
        )
    bps, spc = bpb["bps"], bpb["spc"]
    cs = bps * spc
    fs_bytes = bpb["total"] * bps
    if fs_bytes > view.size:
        raise Unsupported("The FAT filesystem claims to be larger than its partition.")
    fat_bytes = bpb["fatsz"] * bps
    need = (clusters + 2) * bits_per // 8 + 2
    if fat_bytes < need:
        raise Unsupported("The FAT is too small for the number of clusters.")
    active = 0
    if bits_per == 32:
        (ext_flags,) = struct.unpack_from("<H", boot, 0x28)
        if ext_flags & 0x80:
            active = ext_flags & 0x0F
            if active >= bpb["nfats"]:
                raise Unsupported("The active FAT number is larger than the number of FATs.")
            res.note(f"FAT mirroring is off; FAT #{active} is the active one.")
    fat_off = (bpb["reserved"] + active * bpb["fatsz"]) * bps
    raw = np.frombuffer(view.read(fat_off, min(need, fat_bytes)), dtype=np.uint8)
    entries = _entries(raw, bits_per, clusters + 2)
    if bits_per != 32 and entries[0] & 0xFF != bpb["media"] and bpb["media"]:
        res.note("The first FAT entry does not repeat the media byte; the FAT was used anyway.")
    clean_bit = {16: 0x8000, 32: 0x08000000}.get(bits_per)
    if clean_bit and not int(entries[1]) & clean_bit:
        res.note(
            "The FAT volume was not cleanly unmounted; lost cluster chains stay marked used, "
            "so nothing is at risk."
        )
    used = entries[2:] != 0
    # Everything before the data area: boot sector, FSInfo, backup boot, all FATs, root dir.
    marker.used_range(0, bpb["data_start"] * bps)
    marker.used_units(bpb["data_start"] * bps, cs, np.packbits(used, bitorder="little"), clusters)


def _entries(raw: np.ndarray, bits_per: int, count: int) -> np.ndarray:
    """Decode ``count`` FAT entries (FAT12 packs two entries into three bytes)."""
    if bits_per == 32:
        return raw[: count * 4].view("<u4")[:count] & 0x0FFFFFFF
    if bits_per == 16:
        return raw[: count * 2].view("<u2")[:count].astype(np.uint32)
    idx = np.arange(count, dtype=np.int64)
    off = idx + idx // 2
    lo = raw[off].astype(np.uint32)
    hi = raw[off + 1].astype(np.uint32)
    val = lo | hi << 8
    entries: np.ndarray = np.where(idx % 2 == 1, val >> 4, val & 0xFFF)
    return entries
