"""The bundle's manifest: every policy file's path, size and SHA-256, and the set's revision.
The signature covers its exact bytes, so it is written in one canonical form."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from attrgate.bundle import BundleError, json_document
from attrgate.policy.snapshot import POLICY_SUFFIXES, TEST_DATA, SourceFile, is_test_file

FORMAT = "attrgate-policy-bundle/1"
MAX_MANIFEST_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    revision: str
    files: tuple[FileEntry, ...]

    @classmethod
    def of(cls, files: Sequence[SourceFile], revision: str) -> Manifest:
        return cls(
            revision,
            tuple(
                FileEntry(f.relative, len(f.data), hashlib.sha256(f.data).hexdigest())
                for f in files
            ),
        )

    def encode(self) -> bytes:
        document = {
            "format": FORMAT,
            "revision": self.revision,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
        }
        return (json.dumps(document, sort_keys=True, separators=(",", ":")) + "\n").encode()

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        if len(data) > MAX_MANIFEST_BYTES:
            raise BundleError(f"the manifest is over {MAX_MANIFEST_BYTES} bytes")
        document = json_document(data, "the manifest", FORMAT)
        revision, files = document.get("revision"), document.get("files")
        if not isinstance(revision, str) or not isinstance(files, list):
            raise BundleError("the manifest has no revision or no file list")
        entries = tuple(_entry(item) for item in files)
        if len({e.path for e in entries}) != len(entries):
            raise BundleError("the manifest lists a file twice")
        return cls(revision, entries)


def _entry(item: Any) -> FileEntry:
    if not isinstance(item, dict):
        raise BundleError("the manifest's file list holds something other than files")
    path, size, digest = item.get("path"), item.get("size"), item.get("sha256")
    if (
        not isinstance(path, str)
        or not isinstance(size, int)
        or isinstance(size, bool)
        or size < 0
        or not isinstance(digest, str)
    ):
        raise BundleError("the manifest has a file without path, size or sha256")
    policy_path(path)
    return FileEntry(path, size, digest)


def policy_path(path: str) -> None:
    """A path the loader would read from a folder: a *.yaml/*.yml file, no dot entry, no test
    suite, no testdata/ (a bundle holds the set `serve` reads, nothing beside it)."""
    parts = path.split("/")
    if (
        not path.endswith(POLICY_SUFFIXES)
        or is_test_file(parts[-1])
        or any(p.startswith(".") or p in ("", TEST_DATA) for p in parts)
    ):
        raise BundleError(f"the manifest lists {path!r}, which is not a policy file path")
