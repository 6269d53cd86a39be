"""`attrgate bundle ...`: exit 0 done, 1 refused (one line saying why; for build, FILE:LINE per
error as `attrgate check` prints them), 2 usage (a key file that cannot serve)."""

from __future__ import annotations

import argparse
import sys

from attrgate.bundle import BundleError, KeyFileError
from attrgate.bundle.build import InvalidSet, build_bundle, sign_bundle, write_atomically
from attrgate.bundle.reader import download_limit, load_bundle
from attrgate.bundle.signing import generate_key_pair, load_private_key, load_public_keys
from attrgate.files import NotRegularFile, read_regular

OK, REFUSED, USAGE = 0, 1, 2


def build(args: argparse.Namespace) -> int:
    try:
        data, bundle = build_bundle(args.path, args.policy_max_bytes)
    except InvalidSet as invalid:
        for error in invalid.errors:
            print(error, file=sys.stderr)
        return REFUSED
    except BundleError as exc:
        return _refused("build", exc)
    write_atomically(args.output, data)
    print(f"built {args.output}: {_summary(bundle.manifest.revision, len(bundle.files))}")
    return OK


def sign(args: argparse.Namespace) -> int:
    try:
        key = load_private_key(args.key)
    except KeyFileError as exc:
        return _usage("sign", exc)
    try:
        data = _read_bundle(args.bundle, args.policy_max_bytes)
        signed, bundle = sign_bundle(data, args.bundle, key, args.policy_max_bytes)
    except BundleError as exc:
        return _refused("sign", exc)
    output = args.output or args.bundle
    write_atomically(output, signed)
    print(f"signed {output}: {_summary(bundle.manifest.revision, len(bundle.files))}")
    return OK


def verify(args: argparse.Namespace) -> int:
    if not args.public_key:
        print("attrgate bundle verify: give --public-key KEY.pem", file=sys.stderr)
        return USAGE
    try:
        keys = load_public_keys(args.public_key)
    except KeyFileError as exc:
        return _usage("verify", exc)
    try:
        data = _read_bundle(args.bundle, args.policy_max_bytes)
        bundle, _ = load_bundle(data, args.bundle, args.policy_max_bytes, keys)
    except BundleError as exc:
        return _refused("verify", exc)
    summary = _summary(bundle.manifest.revision, len(bundle.files))
    print(f"ok: {summary}, signed by {bundle.signed_by}")
    return OK


def keygen(args: argparse.Namespace) -> int:
    try:
        identity = generate_key_pair(args.key, args.public_key)
    except KeyFileError as exc:
        return _usage("keygen", exc)
    print(f"wrote {args.key} (private, keep it secret) and {args.public_key}: key {identity}")
    return OK


def _read_bundle(path: str, max_bytes: int) -> bytes:
    limit = download_limit(max_bytes)
    try:
        _, data = read_regular(path, limit)
    except NotRegularFile:
        raise BundleError(f"{path}: not a regular file") from None
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > limit:
        raise BundleError(f"{path}: over the {limit} bytes a bundle may have")
    return data


def _summary(revision: str, files: int) -> str:
    return f"revision {revision}, {files} {'file' if files == 1 else 'files'}"


def _refused(command: str, exc: Exception) -> int:
    print(f"attrgate bundle {command}: refused: {exc}", file=sys.stderr)
    return REFUSED


def _usage(command: str, exc: Exception) -> int:
    print(f"attrgate bundle {command}: {exc}", file=sys.stderr)
    return USAGE
