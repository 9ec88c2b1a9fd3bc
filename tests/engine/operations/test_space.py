"""Host space: the refusal sentence when an operation's files do not fit."""

from __future__ import annotations

from pathlib import Path

from vdigui.engine.operations.space import space_refusal


def test_space_refusal_sentence(tmp_path: Path) -> None:
    assert space_refusal(tmp_path, 10, 20, "x") is None
    assert space_refusal(tmp_path, 3 << 20, 1 << 20, "the copy") == (
        f"Not enough free space in '{tmp_path}' for the copy: 3.0 MiB needed, 1.0 MiB free."
    )
