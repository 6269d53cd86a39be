"""A PolicyTest's cases as concrete requests: each matrix expanded into its cross product, each
expanded case named after its values, in a deterministic order."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any

from attrgate.display import quote
from attrgate.domain import Attribute, UpdateRequest
from attrgate.policy.load import PolicyError
from attrgate.policy.testmodel import TestCase
from attrgate.policy.yamlsource import Document, Path

# Expanded cases one run may hold, all suites together: a matrix is a product, and a few short
# lists make millions.
MAX_CASES = 100_000

# The matrix keys, in the order they vary (the first slowest) and appear in names:
# (model field, YAML key).
MATRIX_KEYS = (
    ("caller", "caller"),
    ("user_pool", "userPool"),
    ("attributes", "attributes"),
    ("client_metadata", "clientMetadata"),
)


@dataclass(frozen=True, slots=True)
class Case:
    """One expanded case: a request to decide and what to expect of the decision."""

    suite: str
    name: str
    file: str  # the test file
    line: int  # of the case in it
    skip: str | None  # the reason (the suite's, when the whole suite is skipped)
    caller: str
    request: UpdateRequest
    spec: TestCase  # the expectations (shared by every case one matrix expands to)


@dataclass(frozen=True, slots=True)
class Where:
    """A test document, for errors that point at a key in it."""

    file: str
    source: Document | None
    line: int

    def line_of(self, path: Path) -> int:
        return self.source.line_of(path) if self.source is not None else self.line

    def error(self, path: Path, message: str) -> PolicyError:
        return PolicyError(self.file, self.line_of(path), key_path(path), message)


def key_path(path: Path) -> str:
    """`spec.cases[2].matrix.caller[1]`, as the loader names keys in its errors."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


class TooManyCases(Exception):
    def __init__(self, error: PolicyError) -> None:
        super().__init__(str(error))
        self.error = error


def expand_case(
    suite: str, spec: TestCase, skip: str | None, where: Where, at: Path, budget: int
) -> tuple[list[Case], list[PolicyError]]:
    """The cases `spec` (at key path `at` of its document) expands to, or the errors that keep
    it from expanding. Raises TooManyCases past `budget` cases."""
    # Each axis: the model field it sets, and its values with their labels ("caller=svc-a").
    axes: list[tuple[str, list[tuple[Any, str]]]] = []
    errors: list[PolicyError] = []
    count = 1
    if spec.matrix is not None:
        for attr, key in MATRIX_KEYS:
            values = getattr(spec.matrix, attr)
            if values is not None:
                labelled = [(v, f"{key}={render_value(v)}") for v in values]
                axes.append((attr, labelled))
                count *= len(values)
                errors.extend(_duplicates(labelled, where, (*at, "matrix", key)))
    if count > budget:
        if count > MAX_CASES:
            message = (
                f"the matrix expands to {count:,} cases, more than the {MAX_CASES:,} one run "
                "may hold: split it"
            )
        else:
            message = (
                f"with this case's {count:,} the run holds more than the {MAX_CASES:,} cases "
                "one run may hold (all suites together): test the PATHs in separate runs"
            )
        raise TooManyCases(where.error((*at, "matrix") if axes else at, message))
    if errors:
        return [], errors
    line = where.line_of(at)
    skipped = spec.skip or skip
    cases = []
    base: dict[str, Any] = {attr: getattr(spec, attr) for attr, _ in MATRIX_KEYS}
    for combination in itertools.product(*(values for _, values in axes)):
        chosen = dict(base)
        label = []
        for (attr, _), (value, text) in zip(axes, combination, strict=True):
            chosen[attr] = value
            label.append(text)
        request = UpdateRequest(
            user_pool_id=chosen["user_pool"],
            username=spec.username,
            attributes=tuple(Attribute(n, v) for n, v in chosen["attributes"].items()),
            client_metadata=dict(chosen["client_metadata"]),
        )
        name = f"{spec.name} ({', '.join(label)})" if label else spec.name
        cases.append(Case(suite, name, where.file, line, skipped, chosen["caller"], request, spec))
    return cases, []


def _duplicates(labelled: list[tuple[Any, str]], where: Where, at: Path) -> list[PolicyError]:
    seen: set[str] = set()
    found = []
    for index, (_, label) in enumerate(labelled):
        if label in seen:
            message = f"{label} is listed twice: each expanded case needs a name of its own"
            found.append(where.error((*at, index), message))
        seen.add(label)
    return found


_PLAIN = re.compile(r"[^\s,=(){}\[\]\"'\\]+")


def render_value(value: Any) -> str:
    """A value as names and diffs show it: plain when it can be, else JSON-quoted (so control
    characters are escaped); a mapping as {name=value, ...} in its order."""
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"{render_value(k)}={render_value(v)}" for k, v in value.items()) + "}"
        )
    text = str(value)
    return text if _PLAIN.fullmatch(text) and text.isprintable() else quote(text)
