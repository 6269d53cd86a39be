"""`attrgate bundle ...`: exit 0 done, 1 refused (one line saying why; for build, FILE:LINE per
error as `attrgate check` prints them), 2 usage (a key file that cannot serve)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from attrgate.bundle import BundleError, KeyFileError
from attrgate.bundle.build import InvalidSet, build_bundle, sign_bundle, write_atomically
from attrgate.bundle.reader import Bundle, download_limit, load_bundle
from attrgate.bundle.signing import (
    check_target,
    generate_key_pair,
    load_private_key,
    load_public_keys,
    utc,
)
from attrgate.files import FileRefused, read_small_file

OK, REFUSED, USAGE = 0, 1, 2
# How far ahead of this clock --signed-at may be: a bundle signed in the future would make every
# bundle signed before that time look like a rollback to a running server.
MAX_AHEAD = 300


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
    now = int(time.time())
    signed_at = now if args.signed_at is None else args.signed_at
    if signed_at < 0 or signed_at > now + MAX_AHEAD:
        print(
            f"attrgate bundle sign: --signed-at {signed_at} is not a time up to now "
            "(whole UTC seconds since the epoch)",
            file=sys.stderr,
        )
        return USAGE
    try:
        target = check_target(args.target)
        key = load_private_key(args.key)
    except (KeyFileError, BundleError) as exc:
        return _usage("sign", exc)
    try:
        data = _read_bundle(args.bundle, args.policy_max_bytes)
        signed, bundle = sign_bundle(
            data, args.bundle, key, args.policy_max_bytes, signed_at, target
        )
    except BundleError as exc:
        return _refused("sign", exc)
    output = args.output or args.bundle
    write_atomically(output, signed)
    summary = _summary(bundle.manifest.revision, len(bundle.files))
    print(f"signed {output}: {summary}, at {utc(signed_at)} for target {json.dumps(target)}")
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
        bundle, _ = load_bundle(data, args.bundle, args.policy_max_bytes, keys, args.target)
    except BundleError as exc:
        return _refused("verify", exc)
    print(f"ok: {_summary(bundle.manifest.revision, len(bundle.files))}, {_signer(bundle)}")
    return OK


def keygen(args: argparse.Namespace) -> int:
    try:
        identity = generate_key_pair(args.key, args.public_key)
    except KeyFileError as exc:
        return _usage("keygen", exc)
    print(f"wrote {args.key} (private, keep it secret) and {args.public_key}: key {identity}")
    return OK


def _read_bundle(path: str, max_bytes: int) -> bytes:
    try:
        return read_small_file(path, download_limit(max_bytes))
    except FileRefused as exc:
        raise BundleError(str(exc)) from None


def _signer(bundle: Bundle) -> str:
    assert bundle.signed is not None  # verified with keys
    statement = bundle.signed.statement
    return (
        f"signed by {bundle.signed.key} at {utc(statement.signed_at)} "
        f"for target {json.dumps(statement.target)}"
    )


def _summary(revision: str, files: int) -> str:
    return f"revision {revision}, {files} {'file' if files == 1 else 'files'}"


def _refused(command: str, exc: Exception) -> int:
    print(f"attrgate bundle {command}: refused: {exc}", file=sys.stderr)
    return REFUSED


def _usage(command: str, exc: Exception) -> int:
    print(f"attrgate bundle {command}: {exc}", file=sys.stderr)
    return USAGE
