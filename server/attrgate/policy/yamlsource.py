"""YAML reading that keeps line numbers and does not let YAML 1.1 typing bite.

PyYAML follows YAML 1.1, where bare `NO`, `on` or `yes` are booleans, `1:30` is a number and
`2024-01-01` a date. Policies here use the YAML 1.2 core schema instead: only `true`/`false` are
booleans, and anything else unquoted that is not a plain number stays a string. Decimals become
`Decimal` (exact money, later). Duplicate keys, which PyYAML silently merges, are errors.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

Path = tuple[str | int, ...]

_STR = "tag:yaml.org,2002:str"
_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_NULL = "tag:yaml.org,2002:null"


class _CoreSchemaResolver(Resolver):
    """Implicit typing of the YAML 1.2 core schema."""

    yaml_implicit_resolvers = {}  # noqa: RUF012 - PyYAML's own registry, per class


for _tag, _pattern, _first in (
    (_BOOL, r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    (_INT, r"^[-+]?[0-9]+$", "-+0123456789"),
    (_FLOAT, r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$", "-+.0123456789"),
    (_NULL, r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
):
    _CoreSchemaResolver.add_implicit_resolver(_tag, re.compile(_pattern), list(_first))


class _PyLoader(Reader, Scanner, Parser, Composer, SafeConstructor, _CoreSchemaResolver):
    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        _CoreSchemaResolver.__init__(self)


_Loader: type[Any] = _PyLoader
if yaml.__with_libyaml__:
    # libyaml parses about 10x faster than PyYAML's Python parser (1 MiB of policies: ~0.5 s
    # against ~6 s), which is what lets --policy-max-bytes be a few MiB. Same nodes, same marks.
    from yaml._yaml import CParser

    class _CLoader(CParser, SafeConstructor, _CoreSchemaResolver):
        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            SafeConstructor.__init__(self)
            _CoreSchemaResolver.__init__(self)

    _Loader = _CLoader


class YamlError(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


@dataclass(frozen=True)
class Document:
    """One YAML document: its plain value and the line of every key and list item in it."""

    index: int
    value: Any
    lines: dict[Path, int]
    line: int

    def line_of(self, path: Path) -> int:
        """The line of the deepest existing node along `path` (1-based)."""
        for end in range(len(path), 0, -1):
            found = self.lines.get(path[:end])
            if found is not None:
                return found
        return self.line


def read_documents(text: str) -> Iterator[Document]:
    """Parse every non-empty document of `text`. Raises YamlError with a line on bad YAML."""
    loader = _Loader(text)
    try:
        index = 0
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            lines: dict[Path, int] = {}
            value = _to_python(node, (), lines, set())
            if value is not None:
                yield Document(index, value, lines, node.start_mark.line + 1)
            index += 1
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise YamlError(line, f"invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise YamlError(1, f"invalid YAML: {exc}") from None
    except RecursionError:
        # Thousands of nested brackets: the composer (and _to_python) recurse once per level.
        raise YamlError(1, "invalid YAML: nested too deeply") from None
    finally:
        loader.dispose()


def _to_python(node: Node, path: Path, lines: dict[Path, int], seen: set[int]) -> Any:
    # An alias makes the composer hand out the same node twice. Policies have no use for them,
    # and they allow self-reference and exponential expansion ("billion laughs"): refuse.
    if id(node) in seen:
        raise YamlError(node.start_mark.line + 1, "YAML anchors and aliases are not supported")
    seen.add(id(node))
    if isinstance(node, MappingNode):
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = _to_python(key_node, path, {}, seen)
            key_line = key_node.start_mark.line + 1
            if not isinstance(key, str):
                raise YamlError(key_line, f"keys must be strings, got {key!r}")
            if key in result:
                raise YamlError(key_line, f"duplicate key {key!r}")
            lines[(*path, key)] = key_line
            result[key] = _to_python(value_node, (*path, key), lines, seen)
        return result
    if isinstance(node, SequenceNode):
        items = []
        for position, item in enumerate(node.value):
            lines[(*path, position)] = item.start_mark.line + 1
            items.append(_to_python(item, (*path, position), lines, seen))
        return items
    if isinstance(node, ScalarNode):
        return _scalar(node)
    raise YamlError(node.start_mark.line + 1, "unsupported YAML node")


def _scalar(node: ScalarNode) -> Any:
    text = node.value
    line = node.start_mark.line + 1
    if node.tag == _STR:
        return text
    if node.tag == _NULL:
        return None
    try:
        if node.tag == _BOOL and text.lower() in ("true", "false"):
            return text.lower() == "true"
        if node.tag == _INT:
            return int(text)
        if node.tag == _FLOAT:
            return Decimal(text)
    except (ArithmeticError, ValueError):
        raise YamlError(line, f"{text!r} is not a valid {node.tag.rsplit(':', 1)[-1]}") from None
    raise YamlError(line, f"unsupported YAML value {text!r} tagged {node.tag}")
