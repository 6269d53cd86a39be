"""Who is calling: from the mTLS client certificate, or (plaintext dev mode only) a header.

The certificate is parsed with `cryptography` rather than trusting gRPC's `peer_spiffe_id`, which
disappears when a certificate carries several URI SANs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from cryptography import x509
from cryptography.x509.oid import NameOID

from attrgate.domain import Caller

CALLER_HEADER = "x-attrgate-caller"
CALLER_MAX = 512


def caller_from_certificate(pem: bytes) -> str | None:
    """The first spiffe:// URI SAN, else the first DNS SAN, else the subject CN."""
    try:
        certificate = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
    try:
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = None
    if sans is not None:
        for uri in sans.get_values_for_type(x509.UniformResourceIdentifier):
            if uri.lower().startswith("spiffe://"):
                return uri
        dns_names = sans.get_values_for_type(x509.DNSName)
        if dns_names:
            return dns_names[0]
    for attribute in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        value = attribute.value
        name = value if isinstance(value, str) else value.decode("utf-8", "replace")
        if name:
            return name
    return None


def identify_mtls(auth_context: Mapping[str, Iterable[bytes]]) -> Caller | None:
    for pem in auth_context.get("x509_pem_cert", ()):
        name = caller_from_certificate(pem)
        # Too long is no identity: truncating would merge distinct callers.
        if name and len(name) <= CALLER_MAX:
            return Caller(name, "mtls")
    return None


def identify_header(metadata: Iterable[tuple[str, str | bytes]]) -> Caller | None:
    """Plaintext listeners only: the caller names itself. Never consulted on an mTLS listener."""
    for key, value in metadata:
        if key == CALLER_HEADER:
            name = value.decode("ascii", "replace") if isinstance(value, bytes) else value
            name = name.strip()
            # SPIFFE ids, DNS names and service names are printable ASCII.
            if 0 < len(name) <= CALLER_MAX and name.isascii() and name.isprintable():
                return Caller(name, "header")
            return None
    return None
