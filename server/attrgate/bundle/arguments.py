"""The arguments of `attrgate bundle build | sign | verify | keygen`, apart from the commands so
that `attrgate --help` and every other command start without loading them."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

PUBLIC_KEY_ENV = "ATTRGATE_BUNDLE_PUBLIC_KEY"


def add_arguments(
    commands: Any, add_policy_max_bytes: Callable[[argparse.ArgumentParser], None]
) -> None:
    """`commands`: the subparsers of `attrgate`; `add_policy_max_bytes` adds the flag `serve`
    takes, so a bundle is held to the limits the server applies."""
    bundle = commands.add_parser("bundle", help="build, sign and verify policy bundles for S3")
    actions = bundle.add_subparsers(title="bundle commands")

    build = actions.add_parser("build", help="pack a validated policy folder into a bundle")
    build.add_argument("path", help="policy file or folder, as `serve --policies PATH` reads it")
    build.add_argument("-o", "--output", required=True, metavar="BUNDLE", help="e.g. bundle.tar.gz")
    add_policy_max_bytes(build)
    build.set_defaults(handler=_handler("build"))

    sign = actions.add_parser(
        "sign", help="sign a bundle's manifest, time and target (Ed25519), in the archive"
    )
    sign.add_argument("bundle", metavar="BUNDLE")
    sign.add_argument("--key", required=True, help="Ed25519 private key, unencrypted PEM")
    sign.add_argument(
        "--target",
        default="",
        help="where the bundle may serve, as servers expect it: by default their s3://BUCKET/KEY "
        "(or their --bundle-target); default: none, which only a server given "
        "--bundle-target '' takes",
    )
    sign.add_argument(
        "--signed-at",
        type=int,
        metavar="SECONDS",
        help="signing time, whole UTC seconds since the epoch (default: now); a running server "
        "refuses a bundle signed before the one it serves",
    )
    sign.add_argument("-o", "--output", metavar="FILE", help="write here (default: in place)")
    add_policy_max_bytes(sign)
    sign.set_defaults(handler=_handler("sign"))

    verify = actions.add_parser(
        "verify", help="check a bundle as the server would: exit 0 ok, 1 refused, 2 usage"
    )
    verify.add_argument("bundle", metavar="BUNDLE")
    verify.add_argument(
        "--public-key",
        default=os.environ.get(PUBLIC_KEY_ENV) or None,
        help=f"trusted Ed25519 public key(s), PEM [env {PUBLIC_KEY_ENV}]",
    )
    verify.add_argument(
        "--target",
        help="refuse a bundle signed for another target (as `serve` does with its target)",
    )
    add_policy_max_bytes(verify)
    verify.set_defaults(handler=_handler("verify"))

    keygen = actions.add_parser("keygen", help="make an Ed25519 key pair for signing bundles")
    keygen.add_argument("--key", required=True, help="private key file to create (mode 0600)")
    keygen.add_argument("--public-key", required=True, help="public key file to create")
    keygen.set_defaults(handler=_handler("keygen"))

    bundle.set_defaults(handler=lambda _: bundle.print_help() or 2)


def _handler(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from attrgate.bundle import command

        result: int = getattr(command, name)(args)
        return result

    return run
