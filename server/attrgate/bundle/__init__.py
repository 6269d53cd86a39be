"""Policy bundles: a validated policy folder packed into one deterministic tar.gz with a manifest
of its files' digests, signed with Ed25519 (`attrgate bundle build | sign | verify | keygen`), and
read back through one reader that `verify` and `serve --policies s3://...` share."""

from __future__ import annotations

import json
from typing import Any

from attrgate.config import ConfigError


class BundleError(ConfigError):
    """A bundle refused, in one line: unreadable, incomplete, tampered with, unsigned when a
    signature is required, or holding an invalid policy set."""


class KeyFileError(ConfigError):
    """A key file that cannot serve (missing, not PEM, not Ed25519, encrypted): a usage error."""


MANIFEST = ".manifest.json"
SIGNATURE = ".signature"


def json_document(data: bytes, what: str, form: str) -> dict[str, Any]:
    """`data` as the JSON object of format `form` (the manifest, the signed statement)."""
    try:
        document = json.loads(data)
    except ValueError:
        raise BundleError(f"{what} is not JSON") from None
    if not isinstance(document, dict) or document.get("format") != form:
        raise BundleError(f"{what} is not of format {form!r}")
    return document
