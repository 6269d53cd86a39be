"""The Cognito quota governor, measured: who gets the account's quota when one caller floods.

Side by side in one run, on the same machine and load: two `attrgate serve` replicas on one
redis-server in front of the Cognito stub, which behaves like Cognito's UserUpdate quota (it
answers TooManyRequestsException to whatever arrives beyond 25 in any second). Three callers:
a batch job flooding at 200/s, a verification service at 10/s (a share with weight 4 and a
reserved fifth), and a quiet profile service at 5/s. First without a CognitoQuota (Cognito's own
throttling decides: everyone fails alike), then with policies/cognito-quota.yaml's shares.

Prints, per caller: demand, answered OK per second, the share of its demand served, and what
Cognito throttled; a per-second figure of the governed run; and the governor's own cost per call
(in process, no I/O). `make bench`, or `python bench/bench_quota.py --seconds 20`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "server"))

from attrgate.policy.compile import load_and_compile  # noqa: E402
from attrgate.quota.governor import Governor, Ticket  # noqa: E402
from attrgate.quota.leases import LeaseKeeper  # noqa: E402
from support.cognito_stub import CognitoStub  # noqa: E402
from support.fleet import Replica, replica_env, start_all  # noqa: E402
from support.quota_load import Flow, Results, run_flows  # noqa: E402
from support.redis_server import RedisServer  # noqa: E402

COGNITO_QUOTA = 25
ALLOW = (
    "apiVersion: attrgate/v1\nkind: AttributePolicy\nmetadata: {name: everyone}\nspec:\n"
    '  callers: ["*"]\n  userPools: ["*"]\n  allow: [{attribute: given_name}]\n'
)
QUOTA = (REPO / "policies" / "cognito-quota.yaml").read_text()
CALLERS = (("batch-export", 200.0), ("verification-api", 10.0), ("profile-api", 5.0))


def run(governed: bool, seconds: float, folder: Path) -> tuple[Results, CognitoStub]:
    stub = CognitoStub(backlog=1024)
    stub.throttle_above = COGNITO_QUOTA
    redis = RedisServer()
    policies = folder / ("governed" if governed else "baseline")
    policies.mkdir()
    (policies / "policies.yaml").write_text(ALLOW + ("---\n" + QUOTA if governed else ""))
    key = folder / "hmac.key"
    key.write_text(secrets.token_hex(32))
    replicas = [
        Replica(
            f"{policies.name}-{n}",
            [
                *("--policies", str(policies), "--cognito-endpoint", stub.endpoint),
                *("--region", "us-east-1", "--redis-url", redis.url),
                *("--hmac-key-file", str(key), "--cognito-max-attempts", "1"),
                *("--log-level", "WARNING", "--decision-log", "/dev/null"),
            ],
            replica_env("stub-key", "stub-secret"),
            folder,
        )
        for n in range(2)
    ]
    try:
        start_all(replicas)
        time.sleep(1.0)
        targets = tuple(r.target for r in replicas)
        flows = [Flow(caller, rps, targets) for caller, rps in CALLERS]
        return run_flows(flows, seconds), stub
    finally:
        for replica in replicas:
            replica.stop()
        stub.stop()
        redis.stop()


def report(title: str, results: Results, stub: CognitoStub, seconds: float) -> dict[str, object]:
    calls = stub.calls()
    throttled = sum(1 for c in calls if c.throttled)
    print(f"\n{title}: Cognito received {len(calls) / seconds:.1f}/s, throttled {throttled}")
    print(f"  {'caller':18} {'demand/s':>9} {'OK/s':>7} {'served':>7}  answers")
    rows = {}
    for i, (caller, rps) in enumerate(CALLERS):
        mine = [r for r in results if r.flow == i]
        ok = sum(1 for r in mine if r.code == "OK")
        answers: dict[str, int] = {}
        for r in mine:
            name = r.reason or r.code
            answers[name] = answers.get(name, 0) + 1
        served = ok / len(mine) if mine else 0.0
        print(
            f"  {caller:18} {rps:9.0f} {ok / seconds:7.1f} {served:7.0%}  "
            + ", ".join(f"{k} {v}" for k, v in sorted(answers.items()))
        )
        rows[caller] = {"demand": rps, "ok_per_s": ok / seconds, "served": served}
    return {"cognito_per_s": len(calls) / seconds, "throttled": throttled, "callers": rows}


def figure(results: Results, seconds: float) -> None:
    """OK answers per second and caller, one line per second: the shares as they were."""
    marks = {0: "#", 1: "V", 2: "p"}
    print("\n  second  OK per caller (# batch-export, V verification-api, p profile-api)")
    for second in range(int(seconds)):
        counts = [
            sum(
                1
                for r in results
                if r.flow == i and r.code == "OK" and second <= r.sent < second + 1
            )
            for i in range(len(CALLERS))
        ]
        bar = "".join(marks[i] * n for i, n in enumerate(counts))
        print(f"  {second:6d}  {bar:<34} " + " ".join(f"{n:3d}" for n in counts))


async def governor_cost(calls: int) -> float:
    """Microseconds per acquire + release on one replica without a fleet store."""
    _, compiled = load_and_compile(REPO / "policies" / "cognito-quota.yaml")
    assert compiled is not None
    assert compiled.quota is not None
    quota = compiled.quota
    governor = Governor(LeaseKeeper(None, None), default_in_flight=32)
    governor.follow(quota)
    for share in governor.shares:  # no waiting: the cost of the bookkeeping alone
        share.gate.set_rate(1e9, 1e9)
    started = time.perf_counter()
    for n in range(calls):
        ticket = await governor.acquire(quota, "profile-api", "us-east-1_X", f"u{n}", None)
        assert isinstance(ticket, Ticket)
        ticket.release()
    return (time.perf_counter() - started) / calls * 1e6


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    print(
        f"Cognito quota: 2 replicas on one redis-server; the Cognito stub throttles beyond "
        f"{COGNITO_QUOTA}/s; {args.seconds:.0f} s per run; callers "
        + ", ".join(f"{c} {r:.0f}/s" for c, r in CALLERS)
    )
    with tempfile.TemporaryDirectory(prefix="attrgate-bench-quota-") as name:
        folder = Path(name)
        baseline, stub = run(False, args.seconds, folder)
        without = report("without a CognitoQuota (Cognito throttles)", baseline, stub, args.seconds)
        governed, stub = run(True, args.seconds, folder)
        with_ = report("with policies/cognito-quota.yaml", governed, stub, args.seconds)
        figure(governed, args.seconds)
    cost = asyncio.run(governor_cost(20_000))
    print(f"\ngovernor bookkeeping per call (acquire + release, no waiting): {cost:.1f} µs")
    if args.json:
        args.json.write_text(
            json.dumps({"without": without, "with": with_, "governor_us": cost}, indent=2)
        )


if __name__ == "__main__":
    main()
