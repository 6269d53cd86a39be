"""Policy bundles: a validated policy folder packed into one deterministic tar.gz with a manifest
of its files' digests, signed with Ed25519 (`attrgate bundle build | sign | verify | keygen`), and
read back through one reader that `verify` and `serve --policies s3://...` share."""

from __future__ import annotations

from attrgate.config import ConfigError


class BundleError(ConfigError):
    """A bundle refused, in one line: unreadable, incomplete, tampered with, unsigned when a
    signature is required, or holding an invalid policy set."""


class KeyFileError(ConfigError):
    """A key file that cannot serve (missing, not PEM, not Ed25519, encrypted): a usage error."""


MANIFEST = ".manifest.json"
SIGNATURE = ".signature"
