#!/usr/bin/env python3
"""How fast each way of checking copied data is (not a test): ``python bench/bench_hash.py``.

The guest digest and the copy verification have to keep up with the copy itself. This
measures, in this process, over 1 GiB in 1 MiB blocks (one VDI block at a time, as the
pipeline does), the throughput of:

- ``sha256`` (hashlib): the digest vdigui used before;
- ``xxh3_128`` (the ``xxhash`` package): the guest digest now;
- ``blake3`` (only when the ``blake3`` package is installed; not a dependency);
- ``memcmp`` (``bytes ==``): the direct comparison the copy uses to check what it wrote;

each twice: with the block hot in the cache (hashing right after the write, as the pipeline
does) and cold (a 1 GiB buffer walked once, so every block comes from memory).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from collections.abc import Callable

import xxhash

MIB = 1 << 20


def rate(fn: Callable[[int, bytes], object], blocks: list[bytes]) -> float:
    """GiB/s of ``fn(index, block)`` over ``blocks`` (best of three passes)."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for i, block in enumerate(blocks):
            fn(i, block)
        best = min(best, time.perf_counter() - t0)
    return len(blocks) * len(blocks[0]) / (1 << 30) / best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=int, default=1)
    args = parser.parse_args()
    count = args.gib * 1024
    seed = os.urandom(MIB)
    cold = [bytes([i & 0xFF]) + seed[1:] for i in range(count)]  # distinct objects in memory
    cold_twins = [bytes(bytearray(b)) for b in cold]  # equal bytes: memcmp reads both to the end
    hot = [seed] * count
    hot_twin = bytes(bytearray(seed))
    ways: dict[str, tuple[Callable[[int, bytes], object], Callable[[int, bytes], object]]] = {
        "sha256": (lambda i, b: hashlib.sha256(b).digest(),) * 2,  # type: ignore[dict-item]
        "xxh3_128": (lambda i, b: xxhash.xxh3_128_digest(b),) * 2,  # type: ignore[dict-item]
        "memcmp (bytes ==)": (lambda i, b: hot_twin == b, lambda i, b: cold_twins[i] == b),
    }
    try:
        import blake3  # type: ignore[import-not-found]

        ways["blake3"] = (lambda i, b: blake3.blake3(b).digest(),) * 2  # type: ignore[assignment]
    except ImportError:
        pass
    one, five, _ = os.getloadavg()
    print(f"# checking 1 MiB blocks, {args.gib} GiB (load {one:.2f}/{five:.2f})")
    print(f"{'method':20s} {'hot GiB/s':>10s} {'cold GiB/s':>11s}")
    for name, (on_hot, on_cold) in ways.items():
        print(f"{name:20s} {rate(on_hot, hot):10.1f} {rate(on_cold, cold):11.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
