"""The Cognito quota across a fleet: two `attrgate serve` replicas on one real redis-server,
open-loop callers in their own processes (support/quota_load.py), and the Cognito stub counting
what arrives. The issue's acceptance tests: fair shares under a noisy caller, weights, a reserved
share, per-user pacing, adapting to a Cognito that throttles, and Redis killed mid-run."""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import redis as redis_py

from support.cognito_stub import CognitoStub, Received, describe_reply, max_in_window
from support.fleet import Replica, replica_env, start_all
from support.prometheus import metrics_text, samples_of, total
from support.quota_load import Flow, Result, Results, run_flows, summary
from support.redis_server import RedisServer, free_port
from support.waiting import wait_for

RATE, BURST = 25, 25
MAX_WAIT = 2.0  # queue.maxWait's default
ALLOW = (
    "apiVersion: attrgate/v1\nkind: AttributePolicy\nmetadata: {name: everyone}\nspec:\n"
    '  callers: ["*"]\n  userPools: ["*"]\n'
    "  allow: [{attribute: given_name}, {attribute: phone_number}]\n"
)


def quota(spec: str) -> str:
    body = "\n".join("  " + line for line in spec.strip().splitlines())
    return (
        "---\napiVersion: attrgate/v1\nkind: CognitoQuota\nmetadata: {name: account}\n"
        f"spec:\n  rate: {RATE}\n  burst: {BURST}\n{body}\n"
    )


@pytest.fixture
def replicas() -> Iterator[list[Replica]]:
    started: list[Replica] = []
    yield started
    for replica in started:
        replica.stop()


def fleet(
    replicas: list[Replica],
    tmp_path: Path,
    stub: CognitoStub,
    policies: str,
    redis_url: str,
    *extra: str,
    count: int = 2,
) -> list[Replica]:
    folder = tmp_path / "policies"
    folder.mkdir(exist_ok=True)
    (folder / "policies.yaml").write_text(policies)
    key = tmp_path / "hmac.key"
    if not key.exists():
        key.write_text(secrets.token_hex(32))
    control = redis_py.Redis.from_url(redis_url)
    try:
        control.flushall()  # the session's Redis: counts and leases of earlier tests
    finally:
        control.close()
    started = []
    for n in range(count):
        args = [
            *("--policies", str(folder), "--cognito-endpoint", stub.endpoint),
            *("--region", "us-east-1", "--redis-url", redis_url, "--hmac-key-file", str(key)),
            *("--metrics-listen", f"127.0.0.1:{free_port()}", "--cognito-max-attempts", "1"),
            # As a deployment sets it: while Redis does not answer (or, on a busy machine, not
            # within --quota-store-timeout), each replica takes half.
            *("--quota-replicas", str(count)),
            *extra,
        ]
        started.append(
            Replica(f"quota-{n}", args, replica_env("stub-key", "stub-secret"), tmp_path)
        )
    replicas.extend(started)
    start_all(started)
    time.sleep(1.0)  # a few lease exchanges: each replica knows the other
    return started


def metrics_port(replica: Replica) -> int:
    return int(replica.args[replica.args.index("--metrics-listen") + 1].rpartition(":")[2])


def updates(stub: CognitoStub) -> list[Received]:
    return stub.calls("AdminUpdateUserAttributes")


def ok_rate(results: Results, flow: int, start: float, end: float) -> float:
    """Calls of `flow` sent in [start, end) answered OK, per second."""
    ok = sum(1 for r in results if r.flow == flow and start <= r.sent < end and r.code == "OK")
    return ok / (end - start)


def sent_in(results: Sequence[Result], flow: int, start: float, end: float) -> int:
    return sum(1 for r in results if r.flow == flow and start <= r.sent < end)


def check_the_cognito_side(stub: CognitoStub, results: Results, duration: float) -> None:
    """What the stand-in saw: never more than rate + burst in a second after the first, and no
    more in all than the rate allows while calls came and waited (maxWait, 2 s), and a burst."""
    arrivals = [r.at for r in updates(stub)]
    assert max_in_window(arrivals, 1.0, after=results.start + 1.0) <= RATE + BURST
    # Over longer windows the burst is spent once: a replica sending more than its lease for
    # seconds (a stale grant, an unbacked line) shows here.
    assert max_in_window(arrivals, 5.0, after=results.start + 1.0) <= 5 * RATE + BURST
    assert len(arrivals) <= RATE * (duration + MAX_WAIT) + BURST


def test_a_quiet_caller_is_not_starved_by_a_noisy_one(
    replicas: list[Replica], tmp_path: Path, stub: CognitoStub, redis_server: RedisServer
) -> None:
    policies = ALLOW + quota("shares:\n  - {name: noisy, callers: [noisy]}")
    targets = tuple(r.target for r in fleet(replicas, tmp_path, stub, policies, redis_server.url))
    duration = 20.0
    flows = [Flow("noisy", 200, targets), Flow("quiet", 5, targets)]
    results = run_flows(flows, duration)
    counts = summary(results, flows)
    quiet, noisy = counts[1], counts[0]
    assert quiet["ok"] >= 0.95 * quiet["sent"], counts
    # The noisy caller gets the rest: what the quota leaves after the quiet one, bar the
    # first seconds while the leases learn the demand.
    assert noisy["ok"] >= 0.8 * (RATE * duration - quiet["ok"]), counts
    refused = noisy["by"].get(("RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"), 0)
    assert noisy["ok"] + refused == noisy["sent"], counts
    check_the_cognito_side(stub, results, duration)
    samples = samples_of(metrics_text(metrics_port(replicas[0])))
    assert total(samples["attrgate_quota_mode"], mode="fleet") == 1
    assert total(samples["attrgate_quota_tokens_total"], share="noisy", result="exceeded") > 0


def test_three_classes_share_by_weight_within_ten_percent(
    replicas: list[Replica], tmp_path: Path, stub: CognitoStub, redis_server: RedisServer
) -> None:
    policies = ALLOW + quota(
        "shares:\n  - {name: heavy, callers: [heavy], weight: 3}\n"
        "  - {name: light, callers: [light], weight: 1}"
    )
    targets = tuple(r.target for r in fleet(replicas, tmp_path, stub, policies, redis_server.url))
    duration = 14.0
    flows = [Flow("heavy", 90, targets), Flow("light", 90, targets), Flow("small", 3, targets)]
    results = run_flows(flows, duration)
    start, end = 4.0, duration  # after the leases have learned the demand
    got = [ok_rate(results, i, start, end) for i in range(3)]
    # The quota was used (a busy machine may serve a little less than all of it)...
    assert sum(got) >= 0.75 * RATE, got
    # ...and divided by weighted max-min: small wants 3 and gets it; heavy and light share the
    # rest 3:1 (the ideal computed for what was served, so only the division is judged).
    served = sum(got)
    expected = [(served - 3) * 3 / 4, (served - 3) / 4, 3]
    for share, (rate, ideal) in enumerate(zip(got, expected, strict=True)):
        assert abs(rate - ideal) <= 0.1 * ideal, (share, got, expected)
    check_the_cognito_side(stub, results, duration)


def test_a_reserved_share_is_honoured_under_contention(
    replicas: list[Replica], tmp_path: Path, stub: CognitoStub, redis_server: RedisServer
) -> None:
    # Without its reserve, weight 1 against 20 would leave the critical caller about 1.2/s.
    policies = ALLOW + quota(
        "shares:\n  - {name: critical, callers: [critical], weight: 1, reserved: 0.2}\n"
        "others: {weight: 20}"
    )
    targets = tuple(r.target for r in fleet(replicas, tmp_path, stub, policies, redis_server.url))
    duration = 12.0
    flows = [Flow("noisy", 150, targets), Flow("critical", 5, targets)]
    results = run_flows(flows, duration)
    counts = summary(results, flows)
    assert counts[1]["ok"] >= 0.95 * counts[1]["sent"], counts
    assert ok_rate(results, 0, 3.0, duration) >= 0.8 * (RATE - 5 * 1.2), counts
    check_the_cognito_side(stub, results, duration)


def test_writes_to_one_user_are_paced_across_the_fleet(
    replicas: list[Replica], tmp_path: Path, stub: CognitoStub, redis_server: RedisServer
) -> None:
    policies = ALLOW + quota("perUser: {rate: 10}\nqueue: {maxWait: 10s}")
    targets = tuple(r.target for r in fleet(replicas, tmp_path, stub, policies, redis_server.url))
    # 50 writes for one user at once (within 0.1 s), half through each replica.
    flows = [Flow("svc", 500, targets, users=1, deadline=20)]
    results = run_flows(flows, 0.1)
    assert summary(results, flows)[0]["ok"] == 50, summary(results, flows)
    arrivals = [r.at for r in updates(stub) if r.body.get("Username") == "user-0"]
    assert len(arrivals) == 50
    # Let go at 10 a second (and a burst of one): 49 intervals of 0.1 s. Measured where they
    # arrive, after a hop that jitters (a new HTTP connection per call to the stub; a busy
    # machine): a late one can share a second with the next two, so the windows are 2 s wide
    # with room for that, and the whole span shows the rate.
    first = min(arrivals)
    shown = " ".join(f"{a - first:.3f}" for a in sorted(arrivals))
    assert max_in_window(arrivals, 2.0) <= 2 * 10 + 1 + 2, shown
    assert max(arrivals) - first >= 4.4, shown


def test_the_rate_adapts_when_cognito_throttles_anyway(
    replicas: list[Replica], tmp_path: Path, stub: CognitoStub, redis_server: RedisServer
) -> None:
    stub.throttle_above = 15  # other clients share the account: 15/s is all there is
    targets = tuple(
        r.target for r in fleet(replicas, tmp_path, stub, ALLOW + quota(""), redis_server.url)
    )
    duration = 24.0
    flows = [Flow("svc", 40, targets)]
    results = run_flows(flows, duration)
    settled = [r for r in updates(stub) if r.at >= results.start + duration / 2]
    throttled = sum(1 for r in settled if r.throttled)
    # The second half: sent at most a little over what Cognito takes, and under 5 % throttled.
    assert len(settled) / (duration / 2) <= 15 * 1.1, len(settled)
    assert throttled / len(settled) < 0.05, (throttled, len(settled))
    answered = Counter((r.code, r.reason) for r in results if r.sent >= duration / 2)
    errors = answered[("RESOURCE_EXHAUSTED", "COGNITO_THROTTLED")]
    assert errors / max(1, answered[("OK", "")] + errors) < 0.05, answered
    # The rate was lowered (said once a minute while reduced; the factor itself may have
    # climbed back to 1 by the time the run is over).
    warned = "Cognito throttles although the quota holds"
    assert any(warned in replica.log.read_text() for replica in replicas)


def test_redis_killed_mid_run_falls_back_to_the_local_share_and_recovers(
    replicas: list[Replica], tmp_path: Path, stub: CognitoStub
) -> None:
    stub.describe = describe_reply(auto_verified=("phone_number",))
    redis = RedisServer()
    try:
        policies = (
            ALLOW + "---\napiVersion: attrgate/v1\nkind: SmsGuard\nmetadata: {name: sms}\nspec:\n"
            "  userPools: ['*']\n  limits: [{per: global, max: 1000000, window: 1h}]\n"
            # No waiting in line: every answer's time is the store's doing alone.
             + quota("queue: {maxWait: 0s}\nshares: [{name: sms, callers: [sms], reserved: 0.2}]")
        )
        replicas_ = fleet(replicas, tmp_path, stub, policies, redis.url, "--store-timeout", "0.5")
        targets = tuple(r.target for r in replicas_)
        duration = 21.0
        flows = [
            Flow("plain", 60, targets),
            Flow("sms", 3, targets, attribute="phone_number", value="+14155550100"),
        ]
        outage = (6.0, 13.0)  # seconds after the start
        ran: list[Results] = []
        runner = threading.Thread(target=lambda: ran.append(run_flows(flows, duration)))
        runner.start()
        began = time.monotonic()  # the flows start a moment later (their processes spawn)
        time.sleep(outage[0])
        redis.kill()
        killed = time.monotonic()
        wait_for(
            lambda: all(
                total(
                    samples_of(metrics_text(metrics_port(r)))["attrgate_quota_mode"],
                    mode="emergency",
                )
                == 1
                for r in replicas_
            ),
            "both replicas to fall back to their local share",
            10,
        )
        time.sleep(max(0.0, outage[1] - (time.monotonic() - began)))
        redis.restart()
        restarted = time.monotonic()
        runner.join(timeout=duration + 60)
        assert not runner.is_alive()
        results = ran[0]
        wait_for(
            lambda: all(
                total(
                    samples_of(metrics_text(metrics_port(r)))["attrgate_quota_mode"], mode="fleet"
                )
                == 1
                for r in replicas_
            ),
            "both replicas to share the rate through Redis again",
            10,
        )
    finally:
        redis.stop()
    # The outage in the flows' time (one clock: time.monotonic), less the moments of change.
    down = (killed - results.start + 1.5, restarted - results.start - 0.5)
    assert down[1] - down[0] > 3
    during = [r for r in results if down[0] <= r.sent < down[1]]
    # No request waited longer than the store timeout for the dead store.
    slowest = max(during, key=lambda r: r.done - r.sent)
    assert slowest.done - slowest.sent < 0.5 + 0.5, slowest
    sms = Counter((r.code, r.reason) for r in during if r.flow == 1)
    assert set(sms) == {("UNAVAILABLE", "SMS_STORE_UNAVAILABLE")}, sms  # fail closed
    plain = Counter((r.code, r.reason) for r in during if r.flow == 0)
    assert plain[("OK", "")] > 0, plain
    assert plain[("RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED")] > 0, plain  # 60/s wanted, 25 had
    # Each replica sends at most rate / 2 (two replicas were live at the last exchange).
    arrivals = [
        r.at for r in updates(stub) if results.start + down[0] <= r.at < results.start + down[1]
    ]
    assert len(arrivals) <= (RATE / 2 * 2) * (down[1] - down[0]) + BURST
    # Back: SMS writes pass again without a restart of attrgate.
    back = restarted - results.start + 4
    after = Counter((r.code, r.reason) for r in results if r.flow == 1 and r.sent >= back)
    assert after[("OK", "")] > 0, after
    check_the_cognito_side(stub, results, duration)
