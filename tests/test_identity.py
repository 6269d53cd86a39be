"""The dev header's rules, byte for byte (gRPC clients refuse to send some of these values, so a
server test cannot reach them; the hostile-input check found them with raw HTTP/2)."""

from __future__ import annotations

import pytest

from attrgate.identity import CALLER_HEADER, CALLER_MAX, identify_header


@pytest.mark.parametrize(
    "value",
    ["", "   ", "profile-apí", b"profile-\xff", "a" * (CALLER_MAX + 1), "tab\there", "nul\x00"],
)
def test_header_values_that_are_no_identity(value: str | bytes) -> None:
    assert identify_header([(CALLER_HEADER, value)]) is None


def test_the_first_header_wins_and_space_is_trimmed() -> None:
    caller = identify_header([("other", "x"), (CALLER_HEADER, " svc-a "), (CALLER_HEADER, "svc-b")])
    assert caller is not None
    assert (caller.name, caller.source) == ("svc-a", "header")
