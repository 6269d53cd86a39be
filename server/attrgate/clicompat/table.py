"""`--output table`: the AWS CLI's boxed table, laid out by the same rules (a section per nested
dict or list of dicts, scalar keys as sorted column headers, columns scaled to the widest
section, one row of many columns turned vertical when the table is wider than the terminal)."""

from __future__ import annotations

import shutil
import unicodedata
from dataclasses import dataclass, field
from typing import Any, TextIO

# The AWS CLI's colours (colorama's codes): values bright blue, nesting bars dim yellow.
_VALUE = ("\x1b[1m\x1b[34m", "\x1b[0m")
_BAR = ("\x1b[2m\x1b[33m", "\x1b[0m")
PADDING = 4  # around each column's widest cell


def width_of(text: str) -> int:
    """Terminal columns: wide East Asian characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WFA" else 1 for ch in text)


@dataclass
class Section:
    title: str = ""
    indent: int = 0
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    widths: list[int] = field(default_factory=list)  # each column's widest cell

    def add_headers(self, headers: list[str]) -> None:
        self._measure(headers)
        self.headers = headers

    def add_row(self, cells: list[Any]) -> None:
        if self.rows or self.headers:
            expected = len(self.rows[0]) if self.rows else len(self.headers)
            if len(cells) != expected:
                raise ValueError(
                    f"Row should have {expected} elements, instead it has {len(cells)}"
                )
        row = [str(cell) for cell in cells]
        self.rows.append(row)
        self._measure(row)

    def _measure(self, cells: list[str]) -> None:
        if not self.widths:
            self.widths = [width_of(c) for c in cells]
        else:
            self.widths = [max(w, width_of(c)) for w, c in zip(self.widths, cells, strict=False)]

    def total_width(self) -> int:
        """With padding, the borders and the nesting bars on both sides."""
        columns = sum(w + PADDING for w in self.widths) + 2 + 2 * self.indent
        return max(width_of(self.title) + 2 + 2 * self.indent, columns)

    def column_widths(self, total: int) -> list[int]:
        """Each column's share of `total`, in proportion to its padded width, summing exactly."""
        padded = [w + PADDING for w in self.widths]
        if not padded:
            return []
        scale = total / float(sum(padded))
        scaled = [round(scale * w) for w in padded]
        surplus = sum(scaled) - total
        while surplus:
            order = range(len(scaled)) if surplus > 0 else reversed(range(len(scaled)))
            for i in order:
                scaled[i] += -1 if surplus > 0 else 1
                surplus += -1 if surplus > 0 else 1
                if not surplus:
                    break
        return scaled


class Table:
    def __init__(self, color: bool) -> None:
        self.sections: list[Section] = []
        self.color = color

    def section(self, title: str, indent: int) -> Section:
        self.sections.append(Section(title=title, indent=indent))
        return self.sections[-1]

    # --- building, from a response --------------------------------------------------------

    def build(self, title: str | None, value: Any, indent: int = 0) -> bool:
        if not value:
            return False
        if title is not None:
            self.section(title, indent)
        if isinstance(value, list):
            if isinstance(value[0], dict):
                self._from_dicts(value, indent, title)
            else:
                for item in value:
                    if is_scalar(item):
                        self.sections[-1].add_row([item])
                    elif all(is_scalar(element) for element in item):
                        self.sections[-1].add_row(list(item))
                    else:
                        self.build(None, item)
        if isinstance(value, dict):
            self._from_dict(value, indent)
        return True

    def _from_dict(self, value: dict[str, Any], indent: int) -> None:
        scalars = sorted(k for k in value if is_scalar(value[k]))
        nested = sorted(k for k in value if not is_scalar(value[k]))
        current = self.sections[-1]
        if len(scalars) == 1:
            current.add_row([scalars[0], value[scalars[0]]])
        elif scalars:
            current.add_headers(scalars)
            current.add_row([value[k] for k in scalars])
        for key in nested:
            self.build(key, value[key], indent + 1)

    def _from_dicts(self, items: list[dict[str, Any]], indent: int, title: str | None) -> None:
        scalars = sorted({k for item in items for k in item if is_scalar(item[k])})
        nested = sorted({k for item in items for k in item if not is_scalar(item[k])})
        self.sections[-1].add_headers(scalars)
        for n, item in enumerate(items):
            if n and nested:
                self.section(title or "", indent).add_headers(scalars)
            self.sections[-1].add_row([item.get(k, "") for k in scalars])
            for key in nested:
                if key in item:
                    self.build(key, item[key], indent + 1)

    # --- rendering ------------------------------------------------------------------------

    def render(self, out: TextIO, terminal_width: int) -> None:
        total = max(s.total_width() for s in self.sections)
        if total > terminal_width:
            self._vertical()
            total = max(s.total_width() for s in self.sections)
        out.write("-" * total + "\n")
        for section in self.sections:
            self._render(section, total - 2 * section.indent, out)

    def _vertical(self) -> None:
        """A one-row section of many columns becomes a column of name | value rows."""
        for i, section in enumerate(self.sections):
            if len(section.rows) == 1 and section.headers:
                turned = Section(title=section.title, indent=section.indent)
                for header, cell in zip(section.headers, section.rows[0], strict=False):
                    turned.add_row([header, cell])
                self.sections[i] = turned

    def _render(self, section: Section, width: int, out: TextIO) -> None:
        bar = self._paint("|", _BAR) * section.indent

        def line(text: str) -> None:
            out.write(f"{bar}{text}{bar}\n")

        if section.title:
            line(_centred(section.title, width, "|", "|"))
            if not section.headers and not section.rows:
                line("+" + "-" * (width - 2) + "+")
        widths = section.column_widths(width)
        if section.headers:
            line(_rule(widths))
            line(
                "".join(
                    _centred(h, w, "|" if n == 0 else "", "|")
                    for n, (w, h) in enumerate(zip(widths, section.headers, strict=False))
                )
            )
        if section.rows and widths:
            line(_rule(widths))
            for row in section.rows:
                line(
                    "".join(
                        _left(cell, w, "|" if n == 0 else "", self._paint(cell, _VALUE))
                        for n, (w, cell) in enumerate(zip(widths, row, strict=False))
                    )
                )
            line(_rule(widths))

    def _paint(self, text: str, colour: tuple[str, str]) -> str:
        return f"{colour[0]}{text}{colour[1]}" if self.color else text


def is_scalar(value: Any) -> bool:
    """Not a list or a dict: a cell of its own (text and table output alike)."""
    return not isinstance(value, (list, dict))


def _centred(text: str, width: int, left: str, right: str) -> str:
    length = width_of(text)
    start = width // 2 - length // 2 - 1
    used = len(left) + start + length
    return f"{left}{' ' * start}{text}{' ' * (width - len(right) - used)}{right}"


def _left(text: str, width: int, left: str, shown: str) -> str:
    """`shown` (the text, painted or not) left-aligned after two blanks when they fit."""
    length = width_of(text)
    padding = 2 if width - (length + 2 + len(left) + 1) >= 0 else 0
    rest = width - (len(left) + padding + length) - 1
    return f"{left}{' ' * padding}{shown}{' ' * rest}|"


def _rule(widths: list[int]) -> str:
    parts = ["+" + "-" * (widths[0] - 2) + "+", *("-" * (w - 1) + "+" for w in widths[1:])]
    return "".join(parts)


def render_table(title: str, value: Any, out: TextIO, color: bool) -> None:
    """The table of `value` under `title`; nothing for an empty value, as the AWS CLI."""
    table = Table(color)
    if table.build(title, value):
        table.render(out, terminal_width(out))


def terminal_width(out: TextIO) -> int:
    """The terminal's width when `out` is one, else 80 (what the AWS CLI assumes)."""
    try:
        if out.isatty():
            return shutil.get_terminal_size().columns
    except (AttributeError, ValueError, OSError):
        pass
    return 80
