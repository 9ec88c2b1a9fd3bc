"""Fixtures of the merge tests: every VM folder lives on tmpfs where there is one.

The merge tests build hundreds of small VM folders and every operation fsyncs its journal,
backups and images many times; on tmpfs the fsyncs are real calls but memory-fast, which
keeps this directory quick. Nothing here depends on the filesystem type.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_SHM = Path("/dev/shm")


@pytest.fixture
def tmp_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh temporary folder, on tmpfs when available (else pytest's usual one)."""
    if not (_SHM.is_dir() and os.access(_SHM, os.W_OK)):
        yield tmp_path_factory.mktemp("merge")
        return
    folder = Path(tempfile.mkdtemp(prefix="vdigui-merge-", dir=_SHM))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
