"""`attrgate analyze`: static analysis of a policy set, exact where the language allows it.

globalgebra  globs as automata: intersection, containment, emptiness, shortest witnesses
domains      the valid attribute names, user pool ids and callers, as automata over alphabets
world        the policies as the analysis sees them (entries with file:line) and their regions
values       what an allow entry's constraints accept: containment and sample values
analysis     one run of the checks: policies.py, entries.py, pools.py (the findings)
counterexample  requests that show them, confirmed by the pipeline before printing
report       load, analyse, print text or JSON; exit codes

Here only the command's arguments, which `attrgate` reads without importing the rest.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `attrgate analyze` (the CLI adds --policy-max-bytes, as for check)."""
    parser.add_argument("path", help="policy file or folder (as `serve --policies`)")
    parser.add_argument(
        "--pool-file",
        action="append",
        default=[],
        metavar="DESCRIBE.json",
        help="a DescribeUserPool answer (JSON or YAML); check entries against its schema",
    )
    parser.add_argument("--output", choices=("text", "json"), default="text")
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 when anything is found (for CI)"
    )
