"""The channel a command-line client (`attrgate call`, `attrgate health`) opens to a server:
plaintext, or TLS with the CA and, for mTLS, the client's certificate and key."""

from __future__ import annotations

import argparse
from pathlib import Path

import grpc


def add_tls_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--tls-cert", help="client certificate (PEM) for mTLS")
    parser.add_argument("--tls-key", help="client private key (PEM) for mTLS")
    parser.add_argument("--ca", help="CA (PEM) that signed the server certificate")


def open_channel(args: argparse.Namespace) -> grpc.Channel:
    """To `args.target`; OSError when a TLS file cannot be read, ValueError for a certificate
    without its key or a key without its certificate (never a silent plaintext call)."""
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together: give both, or neither")
    if args.ca or args.tls_cert:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=Path(args.ca).read_bytes() if args.ca else None,
            private_key=Path(args.tls_key).read_bytes() if args.tls_key else None,
            certificate_chain=Path(args.tls_cert).read_bytes() if args.tls_cert else None,
        )
        return grpc.secure_channel(args.target, credentials)
    return grpc.insecure_channel(args.target)
