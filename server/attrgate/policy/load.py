"""Load a policy set from a file or a folder, with every error pointing at file and line."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

from pydantic import BaseModel, ValidationError

from attrgate.policy.model import KINDS
from attrgate.policy.yamlsource import Document, Path, YamlError, read_documents

POLICY_SUFFIXES = (".yaml", ".yml")


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


@dataclass
class LoadResult:
    policies: list[LoadedPolicy] = field(default_factory=list)
    errors: list[PolicyError] = field(default_factory=list)
    revision: str = ""

    @property
    def ok(self) -> bool:
        return not self.errors


def policy_files(root: str | os.PathLike[str]) -> list[FsPath]:
    """`root` itself, or every *.yaml/*.yml below it, skipping dot entries (`..data` links)."""
    base = FsPath(root)
    if not base.exists():
        return []
    if not base.is_dir():
        return [base]
    found: list[FsPath] = []
    for directory, subdirs, files in os.walk(base, followlinks=True):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        found.extend(
            FsPath(directory, name)
            for name in files
            if not name.startswith(".") and name.endswith(POLICY_SUFFIXES)
        )
    return sorted(found)


def load_policy_set(root: str | os.PathLike[str]) -> LoadResult:
    result = LoadResult()
    digest = hashlib.sha256()
    files = policy_files(root)
    names: dict[str, str] = {}
    for path in files:
        label = str(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            result.errors.append(PolicyError(label, 0, "", f"cannot read: {exc.strerror}"))
            continue
        digest.update(
            os.path.relpath(path, root if FsPath(root).is_dir() else path.parent).encode()
        )
        digest.update(b"\0")
        digest.update(raw)
        digest.update(b"\0")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            result.errors.append(PolicyError(label, 1, "", "not UTF-8 text"))
            continue
        try:
            documents = list(read_documents(text))
        except YamlError as exc:
            result.errors.append(PolicyError(label, exc.line, "", exc.message))
            continue
        for document in documents:
            loaded, errors = _validate(document, label)
            result.errors.extend(errors)
            if loaded is None:
                continue
            name = loaded.document.metadata.name  # type: ignore[attr-defined]
            first = names.get(name)
            if first is not None:
                result.errors.append(
                    PolicyError(
                        label,
                        document.line_of(("metadata", "name")),
                        "metadata.name",
                        f"duplicate policy name {name!r} (first defined at {first})",
                    )
                )
                continue
            names[name] = f"{label}:{document.line_of(('metadata', 'name'))}"
            result.policies.append(loaded)
    if not FsPath(root).exists():
        result.errors.append(PolicyError(str(root), 0, "", "no such file or folder"))
    elif not files or (not result.policies and not result.errors):
        result.errors.append(PolicyError(str(root), 0, "", "no policy documents found"))
    result.revision = "sha256:" + digest.hexdigest()[:16]
    return result


def _validate(document: Document, label: str) -> tuple[LoadedPolicy | None, list[PolicyError]]:
    value = document.value
    if not isinstance(value, dict):
        return None, [PolicyError(label, document.line, "", "a policy document must be a mapping")]
    kind = value.get("kind")
    model = KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        known = ", ".join(sorted(KINDS))
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
        return None, [_error(label, document, error) for error in exc.errors()]
    return LoadedPolicy(parsed, label, document.line), []


def _error(label: str, document: Document, error: Any) -> PolicyError:
    loc: Path = tuple(error["loc"])
    return PolicyError(
        label, document.line_of(loc), _dotted(loc), _message(error["type"], error["msg"])
    )


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
    "bool_type": "expected true or false",
    "list_type": "expected a list",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
}


def _message(kind: str, default: str) -> str:
    if kind == "value_error":
        return default.removeprefix("Value error, ")
    return _MESSAGES.get(kind, default)
