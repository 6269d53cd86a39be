"""Ed25519 keys and the bundle's signature file: a signature over a statement (the manifest's
SHA-256, when it was signed, and for which target), checked against every trusted public key (a
key file may hold several, for rotation). The statement travels in the signature file as the
exact bytes signed. A key id in the signature file only names the signer in messages; it never
selects or skips a check."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from attrgate.bundle import BundleError, KeyFileError, json_document
from attrgate.files import FileRefused, read_small_file

ALGORITHM = "ed25519"
STATEMENT_FORMAT = "attrgate-bundle-statement/1"
MAX_TARGET = 1024
MAX_SIGNATURE_FILE = 64 * 1024
MAX_KEY_FILE = 64 * 1024
_PUBLIC_PEM = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.DOTALL)


def key_id(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


def load_private_key(path: str) -> Ed25519PrivateKey:
    """An unencrypted PKCS#8 PEM Ed25519 key (`openssl genpkey -algorithm ed25519`). Messages
    name the file, never a byte of it."""
    data = _read_key_file(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyFileError(f"{path}: an encrypted key; give an unencrypted one") from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError(f"{path}: not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 key")
    return key


def load_public_keys(path: str) -> list[Ed25519PublicKey]:
    """Every Ed25519 public key (PEM `PUBLIC KEY` blocks) in the file; a bundle signed by any of
    them verifies."""
    keys = []
    for block in _PUBLIC_PEM.findall(_read_key_file(path)):
        try:
            key = serialization.load_pem_public_key(block)
        except (ValueError, UnsupportedAlgorithm):
            raise KeyFileError(f"{path}: a PUBLIC KEY block that does not parse") from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError(f"{path}: holds a public key that is not Ed25519")
        keys.append(key)
    if not keys:
        raise KeyFileError(f"{path}: no PEM public key in it (-----BEGIN PUBLIC KEY-----)")
    return keys


def _read_key_file(path: str) -> bytes:
    # As every file an operator names: a FIFO in its place must not hold the server's start.
    try:
        return read_small_file(path, MAX_KEY_FILE)
    except FileRefused as exc:
        raise KeyFileError(str(exc)) from None


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def generate_key_pair(private_path: str, public_path: str) -> str:
    """A new key pair: the private key written with mode 0600, neither file overwritten; the
    key id."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = public_pem(key.public_key())
    for path, data, mode in ((private_path, private, 0o600), (public_path, public, 0o644)):
        try:
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        except OSError as exc:
            raise KeyFileError(f"cannot create {path}: {exc.strerror}") from None
        with os.fdopen(handle, "wb") as out:
            out.write(data)
    return key_id(key.public_key())


@dataclass(frozen=True)
class Statement:
    """What a signature vouches for: the manifest (by its SHA-256), when it was signed (whole
    UTC seconds), and the target it was signed for ("" for none)."""

    manifest_sha256: str
    signed_at: int
    target: str

    def encode(self) -> bytes:
        """The canonical bytes signed: JSON, sorted keys, no spaces."""
        document = {
            "format": STATEMENT_FORMAT,
            "manifest_sha256": self.manifest_sha256,
            "signed_at": self.signed_at,
            "target": self.target,
        }
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> Statement:
        document = json_document(data, "the signed statement", STATEMENT_FORMAT)
        digest, signed_at, target = (
            document.get("manifest_sha256"),
            document.get("signed_at"),
            document.get("target"),
        )
        if (
            set(document) != {"format", "manifest_sha256", "signed_at", "target"}
            or not isinstance(digest, str)
            or not isinstance(signed_at, int)
            or isinstance(signed_at, bool)
            or signed_at < 0
            or not isinstance(target, str)
        ):
            raise BundleError(
                "the signed statement does not hold exactly manifest_sha256, signed_at "
                "(whole seconds) and target"
            )
        return cls(digest, signed_at, check_target(target))


def check_target(target: str) -> str:
    """A target as `sign --target` takes it: at most MAX_TARGET printable characters."""
    if len(target) > MAX_TARGET or not target.isprintable():
        raise BundleError(f"a target is at most {MAX_TARGET} printable characters")
    return target


def utc(seconds: int) -> str:
    """`seconds` since the epoch as ISO 8601 UTC, e.g. 2025-01-31T12:00:00Z."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Signed:
    """A signature that verified: by which trusted key, and the statement it vouches for."""

    key: str
    statement: Statement


def signature_file(manifest: bytes, key: Ed25519PrivateKey, signed_at: int, target: str) -> bytes:
    statement = Statement(hashlib.sha256(manifest).hexdigest(), signed_at, check_target(target))
    signed = statement.encode()
    document = {
        "algorithm": ALGORITHM,
        "key": key_id(key.public_key()),
        "signature": base64.b64encode(key.sign(signed)).decode(),
        "statement": signed.decode(),
    }
    return (json.dumps(document, sort_keys=True, separators=(",", ":")) + "\n").encode()


def check_signature(
    manifest: bytes, signature: bytes | None, keys: Sequence[Ed25519PublicKey]
) -> Signed:
    """The trusted key that signed a statement about exactly `manifest`, and that statement;
    BundleError when unsigned, signed by none of `keys`, or signed for another manifest."""
    if signature is None:
        raise BundleError("unsigned: the bundle has no signature and a public key is required")
    try:
        if len(signature) > MAX_SIGNATURE_FILE:
            raise ValueError
        document = json.loads(signature)
        claimed = str(document["key"])[:64]
        raw = base64.b64decode(document["signature"], validate=True)
        statement = document["statement"]
        if document["algorithm"] != ALGORITHM or not isinstance(statement, str):
            raise ValueError
        signed = statement.encode()
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise BundleError("the signature file is not an attrgate Ed25519 signature") from None
    for key in keys:
        try:
            key.verify(raw, signed)
        except InvalidSignature:
            continue
        # Only what a trusted key signed is parsed beyond the envelope.
        found = Statement.decode(signed)
        if found.manifest_sha256 != hashlib.sha256(manifest).hexdigest():
            raise BundleError(
                "the signature is for another manifest: the manifest was changed after "
                "signing, or the signature was taken from another bundle"
            )
        return Signed(key_id(key), found)
    raise BundleError(
        f"the signature does not verify with any trusted key (it names key {claimed!r}): "
        "signed by another key, or the signed statement was changed after signing"
    )
