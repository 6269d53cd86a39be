"""The AWS CLI's shorthand syntax (`Name=given_name,Value=Ada`), parsed as the AWS CLI parses it,
so that a runbook line means the same to `attrgate call` as to `aws`:

    parameter  = keyval *("," keyval)
    keyval     = key ["@"] "=" [values]           ; "@=": the value may be file://
    values     = explicit-list / hash-literal / csv-value
    csv-value  = first-value *("," later-value)   ; a later value followed by "=" starts a keyval
    explicit   = "[" [item *("," item)] "]"       ; item: explicit / hash / first-value
    hash       = "{" [key "=" item *("," key "=" item)] "}"

A value is quoted ('..' or "..", a backslash escaping the quote and itself) or bare: a bare value
keeps `\\,` as a comma and loses its trailing blanks. `a=b,c` is the list ['b', 'c'], which a
string member then refuses (as the AWS CLI does): a comma inside a value is quoted or escaped.
Purely syntactic: the operation's model decides afterwards what a list or a dict may be.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from typing import Any

_KEY_CHARS = frozenset(string.ascii_letters + string.digits + "-_.#/:")
# Characters a bare value may start with: not a blank, a quote, a comma, "=", "[" or "{".
_START = r"!#-&(-+\--<>-Z\\-z|-\uffff"
_ESCAPED_COMMA = r"\\,"
# The first value of a key runs until a comma, a quote or a closing bracket; it may hold "=".
_FIRST = re.compile(
    rf"(?:{_ESCAPED_COMMA}|[{_START}])(?:{_ESCAPED_COMMA}|[\s!#-&(-+\--\\^-|~-\uffff])*"
)
# A later value of a list stops at "=" too: `a=b,c=d` is two keys, not the list ['b', 'c=d'].
_LATER = re.compile(
    rf"(?:{_ESCAPED_COMMA}|[{_START}])(?:{_ESCAPED_COMMA}|[\s!#-&(-+\--<>-\uffff])*"
)
_SINGLE_QUOTED = re.compile(r"'(?:\\'|[^'])*'")
_DOUBLE_QUOTED = re.compile(r'"(?:\\"|[^"])*"')

Value = str | bytes | list[Any] | dict[str, Any]


class ShorthandError(ValueError):
    """A value that is not shorthand; the message points at where it went wrong."""

    def __init__(self, text: str, index: int, problem: str) -> None:
        super().__init__(f"{problem} for input:\n{_pointing(text, index)}")
        self.index = index


def _pointing(text: str, index: int) -> str:
    """`text` with a caret under `index` (under the line that holds it)."""
    line_start = text.rfind("\n", 0, index) + 1
    line_end = text.find("\n", index)
    line_end = len(text) if line_end < 0 else line_end
    return f"{text[:line_end]}\n{' ' * (index - line_start)}^{text[line_end:]}"


class _Parser:
    def __init__(self, text: str, load_file: Callable[[str], Value | None]) -> None:
        self.text = text
        self.at = 0
        self.load_file = load_file
        self.files_allowed = False  # inside a `key@=` value

    # --- the grammar ----------------------------------------------------------------------

    def parameter(self) -> dict[str, Value]:
        params: dict[str, Value] = {}
        while True:
            started = self.at
            key, value = self.keyval()
            if key in params:
                raise ShorthandError(
                    self.text,
                    started,
                    f'Second instance of key "{key}" (often a "," where a space belongs)',
                )
            params[key] = value
            if self.eof():
                return params
            self.expect(",", blanks=True)

    def keyval(self) -> tuple[str, Value]:
        key = self.key_and_equals()
        return key, self.values()

    def key_and_equals(self) -> str:
        """`key =` or `key @=` (its value may then name a file)."""
        key = self.key()
        self.skip_blanks()
        self.files_allowed = self.peek() == "@"
        if self.files_allowed:
            self.at += 1
        self.expect("=", blanks=True)
        return key

    def key(self) -> str:
        start = self.at
        while not self.eof() and self.text[self.at] in _KEY_CHARS:
            self.at += 1
        return self.text[start : self.at]

    def values(self) -> Value:
        return "" if self.eof() else self.bracketed_or(self.csv_value)

    def bracketed_or(self, otherwise: Callable[[], Value]) -> Value:
        if self.peek() == "[":
            return self.explicit_list()
        if self.peek() == "{":
            return self.hash_literal()
        return otherwise()

    def csv_value(self) -> Value:
        first = self.first_value()
        self.skip_blanks()
        if self.eof() or self.peek() != ",":
            return first
        self.expect(",", blanks=True)
        items: list[Value] = [first]
        while True:
            try:
                item = self.later_value()
                self.skip_blanks()
                if self.eof():
                    items.append(item)
                    break
                self.expect(",", blanks=True)
                items.append(item)
            except ShorthandError:
                # `a=b,c=d`: what followed the comma was the next key; give it back.
                if self.eof():
                    raise
                self.at = self.text.rindex(",", 0, self.at + 1)
                break
        return first if len(items) == 1 else items

    def explicit_list(self) -> list[Value]:
        self.expect("[", blanks=True)
        items: list[Value] = []
        while self.peek() != "]":
            items.append(self.explicit_value())
            self.skip_blanks()
            if self.peek() != "]":
                self.expect(",")
                self.skip_blanks()
        self.expect("]")
        return items

    def hash_literal(self) -> dict[str, Value]:
        self.expect("{", blanks=True)
        pairs: dict[str, Value] = {}
        while self.peek() != "}":
            key = self.key_and_equals()
            value = self.explicit_value()
            self.skip_blanks()
            if self.peek() != "}":
                self.expect(",")
                self.skip_blanks()
            pairs[key] = value
        self.expect("}")
        return pairs

    def explicit_value(self) -> Value:
        return self.bracketed_or(self.first_value)

    def first_value(self) -> Value:
        return self.scalar(_FIRST, required=False)

    def later_value(self) -> Value:
        return self.scalar(_LATER, required=True)

    def scalar(self, bare: re.Pattern[str], required: bool) -> Value:
        """A quoted value, or a bare one `bare` matches (none: "", or an error if required)."""
        quoted = self.quoted()
        if quoted is not None:
            return quoted
        match = bare.match(self.text, self.at)
        if match is None:
            if required:
                raise ShorthandError(self.text, self.at, "Expected: a value, received: '<none>'")
            return ""
        self.at = match.end()
        return self.maybe_file(match.group().replace("\\,", ",").rstrip())

    def quoted(self) -> Value | None:
        quote = self.peek()
        if quote not in ("'", '"'):
            return None
        pattern = _SINGLE_QUOTED if quote == "'" else _DOUBLE_QUOTED
        match = pattern.match(self.text, self.at)
        if match is None:
            raise ShorthandError(self.text, self.at, f"Expected: a closing {quote}")
        self.at = match.end()
        inner = match.group()[1:-1].replace("\\" + quote, quote).replace("\\\\", "\\")
        return self.maybe_file(inner)

    def maybe_file(self, value: str) -> Value:
        if not self.files_allowed:
            return value
        loaded = self.load_file(value)
        return value if loaded is None else loaded

    # --- characters -----------------------------------------------------------------------

    def eof(self) -> bool:
        return self.at >= len(self.text)

    def peek(self) -> str:
        return self.text[self.at] if self.at < len(self.text) else ""

    def skip_blanks(self) -> None:
        while self.at < len(self.text) and self.text[self.at] in string.whitespace:
            self.at += 1

    def expect(self, char: str, blanks: bool = False) -> None:
        if blanks:
            self.skip_blanks()
        if self.eof():
            raise ShorthandError(self.text, self.at, f"Expected: '{char}', received: 'EOF'")
        if self.text[self.at] != char:
            found = self.text[self.at]
            raise ShorthandError(self.text, self.at, f"Expected: '{char}', received: '{found}'")
        self.at += 1
        if blanks:
            self.skip_blanks()


def parse(text: str, load_file: Callable[[str], Value | None] = lambda _: None) -> dict[str, Value]:
    """One shorthand argument as a dict. `load_file`: what a `key@=file://...` value reads
    (None: the value is not a file reference)."""
    return _Parser(text, load_file).parameter()
