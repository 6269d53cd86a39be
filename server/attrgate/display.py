"""Text from policies, tests and requests as terminals and reviews show it: what would not print
plainly (control, bidi and zero-width characters) is escaped, so nobody is misled by what a
name or value seems to say. One place for attrgate test's reports and explain's output."""

from __future__ import annotations

import json


def quote(text: str) -> str:
    """`text` as a JSON string literal, every character that would not print plainly escaped
    (`\\u202e`), every other one kept as it is (an emoji stays an emoji)."""
    return "".join(
        ch if ch.isprintable() else f"\\u{ord(ch):04x}"
        for ch in json.dumps(text, ensure_ascii=False)
    )


def printable(text: str) -> str:
    """`text` itself when it prints plainly, else its escaped form without the quotes."""
    return text if text.isprintable() else quote(text)[1:-1]
