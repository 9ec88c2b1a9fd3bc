"""The guest digest: inline hashing, blocks in any order, unadded blocks as zeros."""

from __future__ import annotations

import pytest

from vdigui.engine.operations.verify import GuestDigest, digest_of_raw


def test_digest_rejects_bad_input_at_once() -> None:
    """Hashing runs inline (XXH3 is faster than a hand-off): a bad block fails right away."""
    digest = GuestDigest(4096, 1024)
    digest.add(0, b"x" * 1024)
    with pytest.raises(TypeError):
        digest.add(1, object())  # type: ignore[arg-type]


def test_blocks_never_added_count_as_zeros() -> None:
    raw = b"a" * 1024 + bytes(2048) + b"b" * 512
    digest = GuestDigest(len(raw), 1024)
    digest.add(3, raw[3072:])
    digest.add(0, raw[:1024])
    assert digest.hexdigest() == digest_of_raw(raw, 1024)
