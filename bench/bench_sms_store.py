"""SMS-triggering writes under load: does the counting store keep up, and are counts exact?

A real `attrgate serve` process counts in an SQLite file (or `--redis-url URL`) in front of the
Cognito stub answering every AdminUpdateUserAttributes after 100 ms. For 256 and 512 concurrent
SMS-triggering writes (each to a new phone number, under a guard whose limits never fill) it prints
requests/s, client-side p50/p99 latency, the answers by status and reason, and whether what the
store holds equals what Cognito received. Run with `make bench` (or
`python bench/bench_sms_store.py 256 512 --rounds 3`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from support.cognito_stub import CognitoStub, Reply, describe_reply  # noqa: E402
from support.environment import clean_env  # noqa: E402
from support.moto_cognito import free_port  # noqa: E402
from support.served import serve_command, stop_serve, wait_serving  # noqa: E402
from support.sms_load import (  # noqa: E402
    ALLOW_PHONES,
    GUARD,
    STORE_UNAVAILABLE,
    counted,
    one_round,
)

COGNITO_DELAY = 0.1


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def serve(
    folder: Path, stub: CognitoStub, args: argparse.Namespace, store: list[str], extra: list[str]
) -> tuple[subprocess.Popen[bytes], str]:
    target = f"127.0.0.1:{free_port()}"
    log = folder / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            serve_command(
                target,
                *("--policies", str(folder / "policies.yaml"), "--region", "us-east-1"),
                *("--cognito-endpoint", stub.endpoint, "--decision-log", os.devnull),
                *("--executor-threads", str(args.executor_threads), "--log-level", "WARNING"),
                *store,
                *extra,
            ),
            env=clean_env(),
            stdout=out,
            stderr=out,
        )
    if not wait_serving(target, process, 30):
        process.kill()
        print(log.read_text()[-3000:], file=sys.stderr)
        raise RuntimeError("attrgate serve did not start")
    return process, target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("concurrency", nargs="*", type=int, default=[256, 512])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--redis-url", help="count in this Redis instead of an SQLite file")
    parser.add_argument("--executor-threads", type=int, default=256)
    parser.add_argument(
        "--without-guard", action="store_true", help="the baseline: no SmsGuard, no store"
    )
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    extra = argv[split + 1 :]  # after --: more `attrgate serve` flags

    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    # The stub's listen backlog (5 by default) drops connections in a burst of new ones; a write
    # whose connection dropped has an unknown outcome and stays counted, which is right but not
    # what this measures.
    stub = CognitoStub(backlog=1024)
    stub.describe = describe_reply(auto_verified=("phone_number",))
    stub.default = Reply(delay=COGNITO_DELAY)
    with tempfile.TemporaryDirectory(prefix="attrgate-bench-") as name:
        folder = Path(name)
        policies = folder / "policies.yaml"
        policies.write_text(ALLOW_PHONES + ("" if args.without_guard else GUARD))
        store: list[str] = []
        kind = "no SmsGuard"
        if args.redis_url:
            (folder / "hmac.key").write_text("0123456789abcdef0123456789abcdef")
            store = ["--redis-url", args.redis_url]
            kind = "Redis store"
        elif not args.without_guard:
            store = ["--state", str(folder / "state.sqlite")]
            kind = "SQLite store"
        key = ["--hmac-key-file", str(folder / "hmac.key")] if args.redis_url else []
        process, target = serve(folder, stub, args, [*store, *key], extra)
        try:
            print(
                f"SMS-triggering writes, Cognito answering after {COGNITO_DELAY * 1000:.0f} ms, "
                f"{kind}, --executor-threads {args.executor_threads} {' '.join(extra)}"
            )
            phone = 0
            for concurrent in args.concurrency:
                for round_no in range(args.rounds):
                    sent_before = len(stub.calls())
                    counted_before = counted(policies, store) if store else 0
                    seconds, latencies, outcomes = asyncio.run(one_round(target, concurrent, phone))
                    phone += concurrent
                    time.sleep(0.5)  # late releases land
                    sent = len(stub.calls()) - sent_before
                    held = counted(policies, store) - counted_before if store else None
                    unavailable = outcomes.get(STORE_UNAVAILABLE, 0)
                    exact = "exact" if sent == held else "NOT EXACT"
                    counts = f"the store holds {held} ({exact})" if store else "nothing counted"
                    print(
                        f"  {concurrent:4d} concurrent, round {round_no + 1}: "
                        f"{concurrent / seconds:6.1f} req/s, "
                        f"p50 {percentile(latencies, 0.5) * 1000:5.0f} ms, "
                        f"p99 {percentile(latencies, 0.99) * 1000:5.0f} ms, "
                        f"SMS_STORE_UNAVAILABLE {unavailable:3d}; Cognito received {sent}, "
                        f"{counts}; "
                        f"answers {dict(outcomes)}"
                    )
        finally:
            stop_serve(process, 20)
            stub.stop()


if __name__ == "__main__":
    main()
