"""Load a policy set from a file or a folder, with every error pointing at file and line."""

from __future__ import annotations

import difflib
import hashlib
import os
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from attrgate.policy.model import KINDS, CognitoQuota
from attrgate.policy.patterns import pattern_scope
from attrgate.policy.snapshot import DEFAULT_MAX_BYTES, Snapshot, is_test_file, read_snapshot
from attrgate.policy.testmodel import PolicyTest
from attrgate.policy.yamlsource import Document, Path, YamlError, read_documents

# Every kind a document may have: the policy kinds, and the tests of a set.
ALL_KINDS: dict[str, type[BaseModel]] = {**KINDS, "PolicyTest": PolicyTest}


NO_POLICIES = "no policy documents found"


@dataclass(frozen=True)
class PolicyError:
    file: str
    line: int
    where: str  # dotted key path inside the document, "" for the document itself
    message: str

    def __str__(self) -> str:
        location = f"{self.where}: " if self.where else ""
        line = f":{self.line}" if self.line else ""
        return f"{self.file}{line}: {location}{self.message}"


@dataclass(frozen=True)
class LoadedPolicy:
    """A validated document and where it came from."""

    document: BaseModel
    file: str
    line: int
    # The YAML it came from: the line of any key in it (`source.line_of(("spec", "allow", 2))`),
    # for reports that point at an entry (test coverage) or a case.
    source: Document | None = field(default=None, compare=False, repr=False)


@dataclass
class LoadResult:
    policies: list[LoadedPolicy] = field(default_factory=list)
    errors: list[PolicyError] = field(default_factory=list)
    revision: str = ""
    # PolicyTest documents: found in any file; those in `*_test.yaml` files only when asked.
    tests: list[LoadedPolicy] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def load_policy_set(
    root: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_BYTES, tests: bool = False
) -> LoadResult:
    """Read one consistent snapshot of `root` (a file, or every *.yaml/*.yml below a folder) and
    validate it. `max_bytes` bounds each file and the whole set (--policy-max-bytes). `tests`:
    read the `*_test.yaml` files too (they never change the revision: a set's revision is the
    same whether its tests were read or not)."""
    with pattern_scope():
        return load_snapshot(read_snapshot(root, max_bytes, tests), str(root), tests)


def load_snapshot(snapshot: Snapshot, root: str, tests: bool = False) -> LoadResult:
    """Validate the files of one snapshot, wherever it was read from (a folder, a bundle);
    `root` names the set in errors. The revision hashes each file's relative path and bytes,
    so the same files give the same revision from any source. Call within a pattern_scope."""
    result = LoadResult(errors=[PolicyError(p.label, 0, "", p.message) for p in snapshot.problems])
    digest = hashlib.sha256()
    names: dict[str, str] = {}
    test_names: dict[str, str] = {}
    for source in snapshot.files:
        label = source.label
        test_file = tests and is_test_file(os.path.basename(source.relative))
        if not test_file:
            for part in (source.relative.encode(), source.data):
                digest.update(part)
                digest.update(b"\0")
        try:
            text = source.data.decode("utf-8")
        except UnicodeDecodeError:
            result.errors.append(PolicyError(label, 1, "", "not UTF-8 text"))
            continue
        try:
            documents = list(read_documents(text))
        except YamlError as exc:
            result.errors.append(PolicyError(label, exc.line, "", exc.message))
            continue
        for document in documents:
            loaded, errors = _validate(document, label, test_file)
            result.errors.extend(errors)
            if loaded is None:
                continue
            is_test = isinstance(loaded.document, PolicyTest)
            name = loaded.document.metadata.name  # type: ignore[attr-defined]
            seen = test_names if is_test else names
            first = seen.get(name)
            if first is not None:
                result.errors.append(
                    PolicyError(
                        label,
                        document.line_of(("metadata", "name")),
                        "metadata.name",
                        f"duplicate {'test' if is_test else 'policy'} name {name!r} "
                        f"(first defined at {first})",
                    )
                )
                continue
            seen[name] = f"{label}:{document.line_of(('metadata', 'name'))}"
            (result.tests if is_test else result.policies).append(loaded)
    _one_quota(result)
    # A folder of suites alone is no policy set, but it is what `attrgate test PATH --policies
    # SET` reads the suites from.
    if not result.policies and not (tests and result.tests) and not result.errors:
        result.errors.append(PolicyError(str(root), 0, "", NO_POLICIES))
    result.revision = "sha256:" + digest.hexdigest()[:16]
    return result


def _one_quota(result: LoadResult) -> None:
    """One account and region, one quota: a second CognitoQuota is an error at its name."""
    quotas = [p for p in result.policies if isinstance(p.document, CognitoQuota)]
    for extra in quotas[1:]:
        line = extra.source.line_of(("kind",)) if extra.source is not None else extra.line
        result.errors.append(
            PolicyError(
                extra.file,
                line,
                "kind",
                f"a second CognitoQuota (the first is at {quotas[0].file}:{quotas[0].line}); "
                "a policy set has at most one",
            )
        )


def _validate(
    document: Document, label: str, test_file: bool
) -> tuple[LoadedPolicy | None, list[PolicyError]]:
    value = document.value
    if not isinstance(value, dict):
        return None, [PolicyError(label, document.line, "", "a policy document must be a mapping")]
    kind = value.get("kind")
    if test_file and kind != "PolicyTest":
        message = f"a *_test.yaml file holds PolicyTest documents only, not kind {kind!r}"
        return None, [PolicyError(label, document.line_of(("kind",)), "kind", message)]
    model = ALL_KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        known = ", ".join(sorted(ALL_KINDS))
        return None, [
            PolicyError(
                label,
                document.line_of(("kind",)),
                "kind",
                f"unknown kind {kind!r} (known: {known})",
            )
        ]
    try:
        parsed = model.model_validate(value)
    except ValidationError as exc:
        return None, [_error(label, document, error, model) for error in exc.errors()]
    return LoadedPolicy(parsed, label, document.line, document), []


def _error(label: str, document: Document, error: Any, model: type[BaseModel]) -> PolicyError:
    loc: Path = tuple(error["loc"])
    message = _message(error["type"], error["msg"], error.get("ctx") or {})
    if error["type"] == "extra_forbidden" and loc and isinstance(loc[-1], str):
        close = difflib.get_close_matches(loc[-1], _keys_at(model, loc[:-1]), 1)
        if close:
            message += f" (did you mean {close[0]}?)"
    return PolicyError(label, document.line_of(loc), _dotted(loc), message)


def _keys_at(model: type[BaseModel], path: Path) -> list[str]:
    """The keys a mapping at `path` in a `model` document may have (for "did you mean")."""
    kind: Any = model
    for part in path:
        kind = _inner(kind, part)
        if kind is None:
            return []
    if not (isinstance(kind, type) and issubclass(kind, BaseModel)):
        return []
    return [f.alias or name for name, f in kind.model_fields.items()]


def _inner(kind: Any, part: str | int) -> Any:
    """The type found at `part` inside a value of type `kind` (a model's field, a list's item,
    a dict's value), looking through Optional and Annotated."""
    for candidate in _alternatives(kind):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            if isinstance(part, str):
                for name, info in candidate.model_fields.items():
                    if part in (name, info.alias):
                        return info.annotation
            continue
        origin, args = typing.get_origin(candidate), typing.get_args(candidate)
        if origin is list and args and isinstance(part, int):
            return args[0]
        if origin is dict and len(args) == 2 and isinstance(part, str):
            return args[1]
    return None


def _alternatives(kind: Any) -> list[Any]:
    while typing.get_origin(kind) is typing.Annotated:
        kind = typing.get_args(kind)[0]
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return [a for arg in typing.get_args(kind) for a in _alternatives(arg)]
    return [kind]


def _dotted(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


_MESSAGES = {
    "extra_forbidden": "unknown key",
    "missing": "missing required key",
    "string_type": "expected a string (quote values such as 123 or true to keep them strings)",
    "int_type": "expected an integer",
    "bool_type": "expected true or false (yes, no, on and off are strings in YAML 1.2)",
    "list_type": "expected a list",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
}


def _message(kind: str, default: str, ctx: dict[str, Any]) -> str:
    if kind == "value_error":
        return default.removeprefix("Value error, ")
    if kind == "too_short" and "min_length" in ctx:
        least = ctx["min_length"]
        return f"needs at least {least} {'item' if least == 1 else 'items'}"
    return _MESSAGES.get(kind, default)
