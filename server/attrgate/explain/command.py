"""`attrgate explain`: how the policies decide one request, step by step, and the server's answer.

Exit status: 0 allowed, 1 denied or invalid, 2 usage error, 3 the policy set or the pool file is
invalid (FILE:LINE: message on stderr, as `attrgate check` prints them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Sequence

EXIT_ALLOWED = 0
EXIT_DENIED = 1
EXIT_USAGE = 2
EXIT_INVALID_INPUT = 3
DEFAULT_USERNAME = "explain"


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    add_policy_max_bytes: Callable[[argparse.ArgumentParser], None],
) -> None:
    explain = commands.add_parser(
        "explain",
        help="explain how the policies decide one request (as CheckUpdateUserAttributes)",
        description="Decide one request as the server's CheckUpdateUserAttributes would and "
        "show why: each applicable policy and the globs that applied it, each entry and "
        "constraint tried, the determining entries, audit findings, the pool schema and SMS "
        "checks. Exit 0 allowed, 1 denied or invalid, 2 usage error, 3 invalid policies or "
        "pool file.",
    )
    explain.add_argument(
        "--policies",
        default=os.environ.get("ATTRGATE_POLICIES") or None,
        help="policy file or folder, as for serve [env ATTRGATE_POLICIES]",
    )
    explain.add_argument("--caller", required=True, help="the caller identity (SPIFFE id, ...)")
    explain.add_argument("--pool", required=True, help="user pool id")
    explain.add_argument(
        "--pool-file",
        help="the pool's DescribeUserPool answer (JSON or YAML): schema checks, pending "
        "verification and whether a phone_number write sends an SMS; without it the pool "
        "stage is skipped",
    )
    explain.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE")
    explain.add_argument(
        "--username",
        default=DEFAULT_USERNAME,
        help=f"username, only validated as Cognito would (default {DEFAULT_USERNAME!r})",
    )
    explain.add_argument(
        "--all", action="store_true", help="also list the policies that did not apply, and why"
    )
    explain.add_argument("--output", choices=("text", "json"), default="text")
    add_policy_max_bytes(explain)
    explain.add_argument("attributes", nargs="+", metavar="NAME=VALUE")
    explain.set_defaults(handler=run)


def _pairs(items: Sequence[str], what: str) -> list[tuple[str, str]] | str:
    """NAME=VALUE pairs, or what is wrong with one of them."""
    pairs = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            return f"{what} {item!r} is not {'NAME' if what == 'attribute' else 'KEY'}=VALUE"
        pairs.append((name, value))
    return pairs


def _usage(message: str) -> int:
    print(f"attrgate explain: {message}", file=sys.stderr)
    return EXIT_USAGE


def run(args: argparse.Namespace) -> int:
    # Heavy imports only for this command.
    from attrgate.domain import Attribute, UpdateRequest
    from attrgate.explain.collect import explain, load
    from attrgate.explain.render_json import to_json
    from attrgate.explain.render_text import to_text
    from attrgate.offline import FixtureError, read_pool_fixture

    if not args.policies:
        return _usage("give --policies PATH (or ATTRGATE_POLICIES)")
    if not args.caller.strip():
        # No server decides for a caller it could not identify (it answers UNAUTHENTICATED).
        return _usage("give --caller: the identity the server would see (a SPIFFE id, ...)")
    attributes = _pairs(args.attributes, "attribute")
    metadata = _pairs(args.metadata, "metadata")
    if isinstance(attributes, str):
        return _usage(attributes)
    if isinstance(metadata, str):
        return _usage(metadata)

    loaded = load(args.policies, args.policy_max_bytes)
    if isinstance(loaded, list):
        for error in loaded:
            print(error, file=sys.stderr)
        return EXIT_INVALID_INPUT
    pool = None
    if args.pool_file:
        try:
            pool = read_pool_fixture(args.pool_file, args.pool)
        except FixtureError as exc:
            print(exc, file=sys.stderr)
            return EXIT_INVALID_INPUT

    request = UpdateRequest(
        user_pool_id=args.pool,
        username=args.username,
        attributes=tuple(Attribute(name, value) for name, value in attributes),
        client_metadata=dict(metadata),
    )
    explanation = asyncio.run(
        explain(loaded.policy_set, args.caller, request, pool, args.pool_file, loaded.lines)
    )
    if args.output == "json":
        print(json.dumps(to_json(explanation, args.all), indent=2))
    else:
        sys.stdout.write(to_text(explanation, args.all))
    return EXIT_ALLOWED if explanation.allowed else EXIT_DENIED
