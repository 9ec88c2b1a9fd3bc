"""Fixtures for the guest-filesystem tests: the raw-file DiskReader and an analysis helper."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from guestfs_images import MiB, make_tree

from vdigui.engine.guestfs import UsageMap, analyze_usage


class RawReader:
    """The trivial DiskReader over a raw image file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.size = self.path.stat().st_size
        self._f = open(self.path, "rb")  # noqa: SIM115 - closed by the fixture finaliser

    def read(self, offset: int, length: int) -> bytes:
        assert offset >= 0 and offset + length <= self.size, (offset, length, self.size)
        self._f.seek(offset)
        data = self._f.read(length)
        assert len(data) == length
        return data

    def close(self) -> None:
        self._f.close()


def analyze_file(path: Path, block_size: int = MiB, **kw) -> UsageMap:
    """Run the analysis over a raw image file through :class:`RawReader`."""
    reader = RawReader(path)
    try:
        return analyze_usage(reader, block_size, **kw)
    finally:
        reader.close()


@pytest.fixture
def analyze() -> Callable[..., UsageMap]:
    return analyze_file


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "tree")
