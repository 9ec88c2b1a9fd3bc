"""The one parser of UUID text (settings files, the command line, the app's search)."""

from __future__ import annotations

import uuid as uuidlib

import pytest

from vdigui.engine.format import parse_uuid

U = uuidlib.UUID("0123abcd-4567-89ef-0123-456789abcdef")


@pytest.mark.parametrize(
    "text",
    [
        "{0123abcd-4567-89ef-0123-456789abcdef}",  # as VirtualBox writes it
        "0123ABCD-4567-89EF-0123-456789ABCDEF",  # as people paste it
        "  {0123abcd-4567-89ef-0123-456789abcdef} ",
        "0123abcd456789ef0123456789abcdef",
    ],
)
def test_accepts_what_virtualbox_writes_and_people_type(text: str) -> None:
    assert parse_uuid(text) == U


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "Snapshot 1",
        "1234",
        "urn:uuid:0123abcd-4567-89ef-0123-456789abcdef",  # not how anyone writes it here
        "0-123abcd4567-89ef-0123-456789abcdef",  # dashes in the wrong places
        "{0123abcd-4567-89ef-0123-456789abcdeg}",
    ],
)
def test_anything_else_is_not_a_uuid(text: str | None) -> None:
    assert parse_uuid(text) is None
