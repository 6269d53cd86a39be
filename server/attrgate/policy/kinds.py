"""The document kinds by name, their schema files, and `attrgate schema`'s arguments: what the CLI
reads at every start, without importing the models (pydantic builds them in about 0.3 s)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# The kinds policy/load.ALL_KINDS validates (a test keeps the two equal).
KIND_NAMES = ("AttributePolicy", "SmsGuard", "CognitoQuota", "PolicyTest")
ANY_DOCUMENT = "attrgate.json"


def file_name(kind: str | None) -> str:
    """`attrgate.json` for any document, else the kind in lower case: `smsguard.json`."""
    return f"{kind.lower()}.json" if kind else ANY_DOCUMENT


def file_names() -> dict[str, str | None]:
    """Every schema file `attrgate schema` writes, and the kind of each (None: any document)."""
    return {file_name(kind): kind for kind in (None, *KIND_NAMES)}


def add_schema_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "schema", help="print the JSON Schema of policy documents (for editors and CI)"
    )
    parser.add_argument(
        "kind",
        nargs="?",
        choices=KIND_NAMES,
        help="one kind (default: any attrgate document, one of the kinds by `kind`)",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--output", metavar="FILE", help="write to FILE, not standard output")
    where.add_argument(
        "--output-dir",
        metavar="DIR",
        help=f"write every schema into DIR: {', '.join(file_names())}",
    )
    parser.set_defaults(handler=_schema)


def _schema(args: argparse.Namespace) -> int:
    from attrgate.policy.jsonschema import render

    if args.output_dir is not None:
        if args.kind is not None:
            print("attrgate schema: --output-dir writes every kind; give no KIND", file=sys.stderr)
            return 2
        files = {Path(args.output_dir) / name: kind for name, kind in file_names().items()}
    elif args.output is not None:
        files = {Path(args.output): args.kind}
    else:
        sys.stdout.write(render(args.kind))
        return 0
    for path, kind in files.items():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(render(kind).encode())
        except OSError as exc:
            print(f"attrgate schema: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
            return 1
    return 0
