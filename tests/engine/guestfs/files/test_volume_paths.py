"""How a guest path names its volume: ``p2:/etc``, ``vg0/root:/home``, or none."""

from __future__ import annotations

import pytest

from vdigui.engine.guestfs.files import split_volume_path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("p2:/etc", ("p2", "/etc")),
        ("p1:", ("p1", "/")),
        ("vg0/root:/home", ("vg0/root", "/home")),
        ("/etc/hosts", (None, "/etc/hosts")),
        ("/odd:name", (None, "/odd:name")),  # an absolute path names no volume
        ("", (None, "/")),
        ("*:x", (None, "*:x")),  # a wildcard before the colon is a name pattern
        ("report?:*", (None, "report?:*")),
        ("[ab]:1", (None, "[ab]:1")),
    ],
)
def test_split_volume_path(text: str, expected: tuple[str | None, str]) -> None:
    assert split_volume_path(text) == expected
