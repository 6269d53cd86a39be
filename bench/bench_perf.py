"""attrgate's cost and throughput, side by side with references measured in the same run (issue 12).

A Cognito stub (its own process: HTTP/1.1 keep-alive, Nagle off, configurable latency), grpc.aio
load drivers (their own processes, closed loop), `attrgate serve` as a subprocess, and two
references: direct boto3 calls to the same stub, and a bare grpc.aio server answering or
aborting the same messages. CPU per request is read from /proc over a measured window after a
warm-up. Prints each target of issue 12 met or missed, one line per load (calls/s, p50/p99), and
writes everything as JSON.

`make bench-perf`, or `python bench/bench_perf.py [--rows allowed,denied] [--seconds 6]`.
Under five minutes on a 2-core machine; figures are noisy when the machine is busy (the `busy`
column says how busy it was).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "server"))
sys.path.insert(0, str(REPO / "bench"))

from perf.run import ROWS, Options, render, run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--rows", default=",".join(ROWS), help=f"comma-separated, of: {', '.join(ROWS)}"
    )
    parser.add_argument("--warmup", type=float, default=1.5, help="seconds before each window")
    parser.add_argument("--seconds", type=float, default=6.0, help="each measured window")
    parser.add_argument(
        "--json",
        type=Path,
        default=REPO / "bench" / "results" / "perf.json",
        help="where the results go (default bench/results/perf.json, not committed)",
    )
    parser.add_argument(
        "--logs", type=Path, help="folder for the processes' logs (default: a temp one)"
    )
    parser.add_argument(
        "--server",
        type=Path,
        default=REPO / "server",
        help="the attrgate to measure: a folder holding the attrgate package (default: this "
        "checkout's server/; e.g. another worktree's)",
    )
    args = parser.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    options = Options(rows, args.warmup, args.seconds, args.logs, args.server.resolve())
    result = run(options)
    print()
    print(render(result))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nresults: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
