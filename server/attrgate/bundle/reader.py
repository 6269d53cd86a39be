"""The one reader of a bundle, for `attrgate bundle verify`, `sign` and `serve --policies s3://`:
archive complete and bounded, manifest matching exactly the files present, signature valid for a
trusted key and signed for the expected target (when keys are given), and the files loaded as a
policy set through the one loader, which gives the revision the manifest names."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from attrgate.bundle import MANIFEST, SIGNATURE, BundleError
from attrgate.bundle.archive import read_archive
from attrgate.bundle.manifest import Manifest
from attrgate.bundle.signing import Signed, check_signature
from attrgate.policy.compile import PolicySet, compile_snapshot
from attrgate.policy.loading import compiled_or_refused, gc_paused
from attrgate.policy.snapshot import Snapshot, SourceFile, path_order


def archive_limit(max_bytes: int) -> int:
    """How large the decompressed tar may be: the policy files (--policy-max-bytes) and as much
    again for tar headers and padding (up to 1 KiB a file), plus 1 MiB for manifest and
    signature. The files themselves are held to --policy-max-bytes once listed."""
    return 2 * max_bytes + (1 << 20)


def download_limit(max_bytes: int) -> int:
    """How large a bundle may be compressed: gzip never grows data by more than a few bytes per
    16 KiB block, so a bundle past this could not decompress within archive_limit."""
    return archive_limit(max_bytes) + (64 << 10)


@dataclass(frozen=True)
class Bundle:
    manifest: Manifest
    manifest_bytes: bytes
    files: list[SourceFile]  # in the loader's order (policy.snapshot.path_order)
    signed: Signed | None  # the trusted key and its statement; None when no key was asked for


def read_bundle(
    data: bytes,
    name: str,
    max_bytes: int,
    keys: Sequence[Ed25519PublicKey] | None,
    target: str | None = None,
) -> Bundle:
    """Check `data` (the bundle named `name`) without loading its policies. `keys` None: do not
    ask for a signature (--allow-unsigned-bundles, or a bundle about to be signed), and so no
    target either. `target` None: any target."""
    if len(data) > download_limit(max_bytes):
        raise BundleError(
            f"{len(data)} bytes, over the {download_limit(max_bytes)} a bundle may have "
            f"with --policy-max-bytes {max_bytes}"
        )
    present = dict(read_archive(data, archive_limit(max_bytes)))
    manifest_bytes = present.pop(MANIFEST, None)
    if manifest_bytes is None:
        raise BundleError(f"no {MANIFEST} in the archive: not an attrgate bundle")
    signature = present.pop(SIGNATURE, None)
    # The signature first: nothing an unknown signer wrote is parsed beyond its JSON envelope.
    signed = None if keys is None else check_signature(manifest_bytes, signature, keys)
    if signed is not None and target is not None and signed.statement.target != target:
        raise BundleError(
            f"signed for target {json.dumps(signed.statement.target)}, not for "
            f"{json.dumps(target)}: a bundle meant for another place"
        )
    manifest = Manifest.decode(manifest_bytes)
    listed = {entry.path: entry for entry in manifest.files}
    extra, missing = sorted(set(present) - set(listed)), sorted(set(listed) - set(present))
    if extra:
        raise BundleError(f"{extra[0]!r} is in the archive but not in the manifest")
    if missing:
        raise BundleError(f"{missing[0]!r} is in the manifest but not in the archive")
    total = 0
    for path, entry in listed.items():
        body = present[path]
        total += len(body)
        if len(body) > max_bytes:
            raise BundleError(f"{path!r}: {len(body)} bytes, over --policy-max-bytes {max_bytes}")
        if len(body) != entry.size or hashlib.sha256(body).hexdigest() != entry.sha256:
            raise BundleError(f"{path!r} does not match its size or digest in the manifest")
    if total > max_bytes:
        raise BundleError(
            f"the policy files hold {total} bytes together, over --policy-max-bytes {max_bytes}"
        )
    files = [
        SourceFile(f"{name}/{path}", path, present[path]) for path in sorted(listed, key=path_order)
    ]
    return Bundle(manifest, manifest_bytes, files, signed)


def load_bundle(
    data: bytes,
    name: str,
    max_bytes: int,
    keys: Sequence[Ed25519PublicKey] | None,
    target: str | None = None,
    pause_gc: bool = False,
) -> tuple[Bundle, PolicySet]:
    """read_bundle, then its files loaded and compiled as `serve` loads a folder."""
    bundle = read_bundle(data, name, max_bytes, keys, target)
    with gc_paused() if pause_gc else contextlib.nullcontext():
        loaded = compile_snapshot(Snapshot(bundle.files, []), name)
    policy_set = compiled_or_refused(loaded, f"attrgate bundle verify {name}")
    if policy_set.revision != bundle.manifest.revision:
        raise BundleError(
            f"the manifest names revision {bundle.manifest.revision[:40]!r}, "
            f"its files give {policy_set.revision}"
        )
    return bundle, policy_set
