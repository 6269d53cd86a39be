"""`attrgate bundle build` and `sign`: a validated policy folder packed with its manifest, and a
bundle re-packed with a signature over that manifest, a time and a target (the same bytes for
the same inputs)."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from attrgate.bundle import MANIFEST, SIGNATURE
from attrgate.bundle.archive import write_archive
from attrgate.bundle.manifest import Manifest
from attrgate.bundle.reader import Bundle, load_bundle
from attrgate.bundle.signing import signature_file
from attrgate.policy.compile import compile_snapshot
from attrgate.policy.load import PolicyError
from attrgate.policy.snapshot import SourceFile, read_snapshot


class InvalidSet(Exception):
    """The folder does not load: every error, FILE:LINE as `attrgate check` prints them."""

    def __init__(self, errors: list[PolicyError]) -> None:
        super().__init__(f"{len(errors)} errors")
        self.errors = errors


def build_bundle(path: str, max_bytes: int) -> tuple[bytes, Bundle]:
    """The bundle of the policy set at `path`: exactly the files `serve --policies PATH` reads
    (never *_test.yaml or testdata/), validated and compiled first, then read back through the
    bundle reader so it is known to load within the same limits."""
    snapshot = read_snapshot(path, max_bytes)
    result, policy_set = compile_snapshot(snapshot, path)
    if policy_set is None:
        raise InvalidSet(result.errors)
    manifest = Manifest.of(snapshot.files, result.revision)
    data = pack(manifest.encode(), snapshot.files, None)
    bundle, _ = load_bundle(data, path, max_bytes, None)
    return data, bundle


def sign_bundle(
    data: bytes,
    name: str,
    key: Ed25519PrivateKey,
    max_bytes: int,
    signed_at: int,
    target: str,
) -> tuple[bytes, Bundle]:
    """`data` re-packed with a signature by `key` over its manifest, `signed_at` (UTC seconds)
    and `target` (replacing any signature it had), once it reads and loads as `serve` would load
    it."""
    bundle, _ = load_bundle(data, name, max_bytes, None)
    signature = signature_file(bundle.manifest_bytes, key, signed_at, target)
    return pack(bundle.manifest_bytes, bundle.files, signature), bundle


def pack(manifest: bytes, files: list[SourceFile], signature: bytes | None) -> bytes:
    """Manifest, signature, then the policy files in the loader's order."""
    entries = [(MANIFEST, manifest)]
    if signature is not None:
        entries.append((SIGNATURE, signature))
    entries.extend((f.relative.replace(os.sep, "/"), f.data) for f in files)
    return write_archive(entries)


def write_atomically(path: str, data: bytes) -> None:
    """Written beside `path` and renamed over it: a reader (an upload script) never sees half."""
    target = Path(path)
    partial = target.with_name(f".{target.name}.partial")
    partial.write_bytes(data)
    os.replace(partial, target)
