"""The arguments of `attrgate test`, apart from the command so that `attrgate --help` and every
other command start without loading the test runner."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="folders or files holding the suites (*_test.yaml, kind: PolicyTest); without "
        "--policies also the policies, read as `serve --policies PATH` reads them (several "
        "PATHs are one set together)",
    )
    parser.add_argument("--policies", metavar="PATH", help="the policy set under test")
    parser.add_argument(
        "--format",
        choices=("tree", "json", "junit"),
        default="tree",
        help="what to print (default: tree)",
    )
    parser.add_argument("--junit", metavar="FILE", help="also write JUnit XML to FILE")
    parser.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="GLOB",
        help="run only the suites (SUITE) or cases (SUITE/CASE) a glob matches; repeatable",
    )
    parser.add_argument(
        "--coverage", action="store_true", help="list every entry, exercised or not"
    )
    parser.add_argument(
        "--min-coverage",
        type=_percent,
        metavar="PCT",
        help="fail (exit 4) when less than PCT percent of the entries are exercised",
    )
    parser.set_defaults(handler=_run_command)


def _run_command(args: argparse.Namespace) -> int:
    from attrgate.policytest.command import run_command

    return run_command(args)


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError("give a percentage from 0 to 100")
    return value
