"""Benchmark: delete a snapshot whose differencing image holds 1 GiB of changes over a 4 GiB base.

Targets (issue 5): bytes written <= 1.1x the bytes that must move; time <= 1.5x a plain copy
of those bytes; peak memory <= 200 MiB.

Usage: ``python bench/bench_merge.py [--base-mib 4096] [--diff-mib 1024] [--dir DIR] [--keep]``

The VM folder is built directly (header, identity map, big data writes) so building is fast:
the base is fully allocated, and the differencing image holds every 4th block, all of them
overwriting base blocks, which is the worst case for the copy-on-write merge. The deletion
runs in a child process so that its peak RSS and its write counters (``/proc/self/io``
``wchar``: every byte passed to write/pwrite, journal and backups included) are its own.
The baseline is ``shutil.copyfile`` of the differencing image plus an fsync.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vdigui.engine import format as fmt  # noqa: E402
from vdigui.engine.image import new_header, write_new_image  # noqa: E402

MIB = 1 << 20
CHUNK = 64 * MIB


def _io_counters() -> dict[str, int]:
    out = {}
    with open("/proc/self/io") as f:
        for line in f:
            key, value = line.split(":")
            out[key.strip()] = int(value)
    return out


def _vm_hwm_kib() -> int:
    """Peak RSS of this process image (VmHWM; ru_maxrss would include the pre-exec parent)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _fill(path: Path, header: fmt.VdiHeader, blocks: np.ndarray, seed: int) -> None:
    """Allocate ``blocks`` (guest indices) in order, with pseudo-random data per block."""
    fd = os.open(path, os.O_RDWR)
    try:
        rng = np.random.default_rng(seed)
        pattern = rng.integers(0, 256, CHUNK, dtype=np.uint8)
        bs = header.block_size
        per = CHUNK // bs
        for start in range(0, blocks.size, per):
            n = min(per, blocks.size - start)
            chunk = pattern[: n * bs].copy()
            # stamp each block so no two blocks are equal
            stamp = np.arange(start, start + n, dtype=np.uint64) * np.uint64(seed + 1)
            chunk.reshape(n, bs)[:, :8] = stamp.view(np.uint8).reshape(n, 8)
            os.pwrite(fd, chunk.tobytes(), header.slot_offset(start))
        block_map = np.full(header.blocks, fmt.BLOCK_FREE, dtype="<u4")
        block_map[blocks] = np.arange(blocks.size, dtype="<u4")
        os.pwrite(fd, block_map.tobytes(), header.offset_blocks)
        final = header.replace(blocks_allocated=int(blocks.size))
        os.pwrite(fd, fmt.pack_header(final), fmt.PREHEADER_SIZE)
        os.fsync(fd)
    finally:
        os.close(fd)


_HW = ('<Hardware><Memory RAMSize="1024"/><StorageControllers>'
       '<StorageController name="SATA" type="AHCI" PortCount="1">'
       '<AttachedDevice type="HardDisk" port="0" device="0"><Image uuid="{%s}"/>'
       "</AttachedDevice></StorageController></StorageControllers></Hardware>")
VBOX = (
    '<?xml version="1.0"?>\n<VirtualBox xmlns="http://www.virtualbox.org/" '
    'version="1.19-linux">\n'
    '  <Machine uuid="{%(vm)s}" name="bench" OSType="Ubuntu_64" currentSnapshot="{%(snap)s}" '
    'snapshotFolder="Snapshots" lastStateChange="2024-05-02T09:00:00Z">\n'
    "    <MediaRegistry><HardDisks>\n"
    '      <HardDisk uuid="{%(base)s}" location="bench.vdi" format="VDI" type="Normal">\n'
    '        <HardDisk uuid="{%(diff)s}" location="Snapshots/{%(diff)s}.vdi" format="VDI"/>\n'
    "      </HardDisk>\n    </HardDisks></MediaRegistry>\n"
    '    <Snapshot uuid="{%(snap)s}" name="before" timeStamp="2024-05-01T10:00:00Z">\n'
    f"      {_HW % '%(base)s'}\n    </Snapshot>\n"
    f"    {_HW % '%(diff)s'}\n  </Machine>\n</VirtualBox>\n"
)


def build(folder: Path, base_mib: int, diff_mib: int) -> Path:
    (folder / "Snapshots").mkdir(parents=True)
    size = base_mib * MIB
    base_h = new_header(size)
    write_new_image(folder / "bench.vdi", base_h)
    _fill(folder / "bench.vdi", base_h, np.arange(base_h.blocks), seed=1)
    base_h = fmt.read_header(folder / "bench.vdi")
    diff_h = new_header(size, parent=base_h)
    diff = folder / "Snapshots" / f"{{{diff_h.uuid}}}.vdi"
    write_new_image(diff, diff_h)
    count = diff_mib * MIB // base_h.block_size
    step = max(1, base_h.blocks // count)
    _fill(diff, diff_h, np.arange(0, base_h.blocks, step)[:count], seed=2)
    (folder / "bench.vbox").write_text(VBOX % {
        "vm": uuidlib.uuid4(), "snap": uuidlib.uuid4(), "base": base_h.uuid,
        "diff": diff_h.uuid})
    return diff


def child(folder: Path) -> None:
    from vdigui.engine.operations.merge import plan_snapshot_delete, run_merge
    before = _io_counters()
    started = time.perf_counter()
    plan = plan_snapshot_delete(folder, "before")
    result = run_merge(plan)
    seconds = time.perf_counter() - started
    after = _io_counters()
    print(json.dumps({
        "seconds": seconds, "wchar": after["wchar"] - before["wchar"],
        "write_bytes": after["write_bytes"] - before["write_bytes"],
        "data_bytes": result.bytes_written,
        "must_move": plan.steps[0].costs[0].bytes,
        "maxrss_kib": _vm_hwm_kib(),
    }))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-mib", type=int, default=4096)
    parser.add_argument("--diff-mib", type=int, default=1024)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return 0
    root = Path(tempfile.mkdtemp(prefix="vdigui-bench-", dir=args.dir))
    try:
        folder = root / "vm"
        t0 = time.perf_counter()
        diff = build(folder, args.base_mib, args.diff_mib)
        print(f"built {args.base_mib} MiB base + {args.diff_mib} MiB diff in "
              f"{time.perf_counter() - t0:.1f} s")
        copy = root / "plain-copy.bin"
        t0 = time.perf_counter()
        shutil.copyfile(diff, copy)
        with open(copy, "rb+") as f:
            os.fsync(f.fileno())
        plain = time.perf_counter() - t0
        copy.unlink()
        out = subprocess.run([sys.executable, __file__, "--child", str(folder)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        ratio_bytes = r["wchar"] / r["must_move"]
        ratio_time = r["seconds"] / plain
        peak = r["maxrss_kib"] / 1024
        print(f"bytes that must move : {r['must_move'] / MIB:.0f} MiB")
        print(f"bytes written (wchar): {r['wchar'] / MIB:.1f} MiB  -> {ratio_bytes:.3f}x "
              f"(target <= 1.1x) [data {r['data_bytes'] / MIB:.0f} MiB]")
        print(f"merge time           : {r['seconds']:.2f} s vs plain copy {plain:.2f} s -> "
              f"{ratio_time:.2f}x (target <= 1.5x)")
        print(f"peak memory (RSS)    : {peak:.0f} MiB (target <= 200 MiB)")
        ok = ratio_bytes <= 1.1 and ratio_time <= 1.5 and peak <= 200
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
