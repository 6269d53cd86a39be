"""The mTLS listener's certificate, key and client CA, re-read while serving.

grpc's dynamic server credentials ask `fetch` before every TLS handshake: it stats the three files
(cheap) and re-reads them only when one changed; SIGHUP re-reads them whatever their stat says.
Established connections keep the certificate they were made with; new ones get the new one. A set
that does not load (a file missing or half-written, a key that does not match the certificate)
leaves the current one serving and is logged in one line, once per change of the files.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from attrgate.files import FileRefused, read_small_file

log = logging.getLogger("attrgate.tls")

# A certificate chain or CA bundle is a few KiB; anything this large is not one.
MAX_PEM_BYTES = 1024 * 1024

# Per file: device, inode, size, mtime and ctime in nanoseconds. A ConfigMap or Secret volume
# swaps a symlink (new inode); cert-manager or a SPIFFE helper rewrites (new size, mtime, ctime).
Signature = tuple[tuple[int, int, int, int, int], ...]


class TlsFilesError(Exception):
    """The files do not make a usable certificate set; the message says why in one line."""


@dataclass(frozen=True)
class Loaded:
    configuration: grpc.ServerCertificateConfiguration
    signature: Signature
    serial: int
    not_after: str


class TlsFiles:
    """The certificate set of one listener. `credentials()` is what `add_secure_port` takes."""

    def __init__(self, cert: str, key: str, client_ca: str) -> None:
        self._paths = (Path(cert), Path(key), Path(client_ca))
        self._lock = threading.Lock()
        self.current = self._load()  # TlsFilesError: the server must not start
        self._pending: Loaded | None = None  # loaded on SIGHUP, handed to grpc at the next fetch
        self._failed: Signature | None = None  # the files as they were when loading last failed

    def credentials(self) -> grpc.ServerCredentials:
        # grpc's type stubs leave out that the fetcher may answer None ("no change").
        fetch = cast(Callable[[], grpc.ServerCertificateConfiguration], self._fetch)
        return grpc.dynamic_ssl_server_credentials(
            self.current.configuration, fetch, require_client_authentication=True
        )

    def reload(self) -> bool:
        """SIGHUP: re-read the files whatever their stat says; whether a new set loaded."""
        with self._lock:
            loaded = self._try_load()
            if loaded is not None:
                self._pending = loaded
            return loaded is not None

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Before every handshake, in a gRPC thread: a new configuration, or None to keep the
        current one. Never raises (gRPC would fail the handshake)."""
        try:
            with self._lock:
                if self._pending is not None:
                    pending, self._pending = self._pending, None
                    return pending.configuration
                signature = _signature(self._paths)
                if signature in (self.current.signature, self._failed):
                    return None
                loaded = self._try_load()
                return loaded.configuration if loaded is not None else None
        except Exception:
            log.exception("TLS files check failed; keeping the current certificate")
            return None

    def _try_load(self) -> Loaded | None:
        """Load and make current, or log why not (once per state of the files) and keep the
        current set. Called with the lock held."""
        # The files as this attempt found them, taken before reading: should they change while
        # it reads (the key landing after the certificate), the next handshake tries again.
        # (Taken after a failure, it was the new, good state that got marked as failed.)
        attempted = _signature(self._paths)
        try:
            loaded = self._load()
        except TlsFilesError as exc:
            failed = attempted
            if failed != self._failed:
                log.warning(
                    "TLS files not reloaded; still serving certificate serial %x (expires %s): %s",
                    self.current.serial,
                    self.current.not_after,
                    exc,
                )
            self._failed = failed
            return None
        previous, self.current, self._failed = self.current, loaded, None
        log.info(
            "TLS files reloaded: certificate serial %x (expires %s) replaces serial %x for new "
            "connections",
            loaded.serial,
            loaded.not_after,
            previous.serial,
        )
        return loaded

    def _load(self) -> Loaded:
        before = _signature(self._paths, strict=True)
        cert_pem, key_pem, ca_pem = (_read(path) for path in self._paths)
        cert_path, key_path, ca_path = self._paths
        chain = _certificates(cert_path, cert_pem)
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError):
            raise TlsFilesError(f"{key_path}: not an unencrypted PEM private key") from None
        if _public_der(key.public_key()) != _public_der(chain[0].public_key()):
            raise TlsFilesError(f"{key_path} does not match the certificate in {cert_path}")
        _certificates(ca_path, ca_pem)
        # A file replaced while it was being read: take the next change, not a mix of two.
        if _signature(self._paths, strict=True) != before:
            raise TlsFilesError("the files changed while they were read")
        return Loaded(
            grpc.ssl_server_certificate_configuration([(key_pem, cert_pem)], ca_pem),
            before,
            chain[0].serial_number,
            chain[0].not_valid_after_utc.isoformat(timespec="seconds"),
        )


def _signature(paths: tuple[Path, ...], strict: bool = False) -> Signature:
    found = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError as exc:
            if strict:
                raise TlsFilesError(f"cannot read {path}: {exc.strerror}") from None
            found.append((0, 0, -1, 0, 0))
            continue
        found.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(found)


def _read(path: Path) -> bytes:
    """A regular file's bytes, bounded: a FIFO or device here must not block or flood."""
    try:
        return read_small_file(str(path), MAX_PEM_BYTES)
    except FileRefused as exc:
        raise TlsFilesError(str(exc)) from None


def _certificates(path: Path, pem: bytes) -> list[x509.Certificate]:
    try:
        found = x509.load_pem_x509_certificates(pem)
    except ValueError:
        found = []
    if not found:
        raise TlsFilesError(f"{path}: no PEM certificate in it")
    return found


def _public_der(key: object) -> bytes:
    encoded: bytes = key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return encoded
