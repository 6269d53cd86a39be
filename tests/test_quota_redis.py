"""The quota governor's fleet store on a real redis-server: the lease table never grants the
fleet more than the rate, leases converge to the fair shares and expire with their replica, and
per-user pacing in Lua agrees with the Python GCRA."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import uuid
from pathlib import Path

import pytest
import redis as redis_py

from attrgate.policy.compile import load_and_compile
from attrgate.quota.compiled import CompiledQuota
from attrgate.quota.leases import EMERGENCY, FLEET, LEASE_TTL, LeaseKeeper
from attrgate.quota.pacing import gcra
from attrgate.store.base import Pace, StoreUnavailable
from attrgate.store.breaker import Breaker
from attrgate.store.redis import PREFIX, RedisStore
from support.redis_server import RedisServer


def compiled_quota(tmp_path: Path, spec: str) -> CompiledQuota:
    name = f"q{uuid.uuid4().hex[:8]}"  # one lease table per test on the shared server
    path = tmp_path / "quota.yaml"
    body = "\n".join("  " + line for line in spec.strip().splitlines())
    path.write_text(
        f"apiVersion: attrgate/v1\nkind: CognitoQuota\nmetadata: {{name: {name}}}\nspec:\n{body}\n"
    )
    result, compiled = load_and_compile(path)
    assert compiled is not None, result.errors
    assert compiled.quota is not None
    return compiled.quota


TWO_CLASSES = """
rate: 25
shares:
  - {name: noisy, callers: [noisy]}
"""


def live_total(server: RedisServer, quota: CompiledQuota, now_ms: int) -> float:
    client = redis_py.Redis.from_url(server.url)
    try:
        rows = client.hgetall(f"{PREFIX}quota:{quota.name}:leases")
    finally:
        client.close()
    return sum(
        float(row["total"])
        for row in (json.loads(v) for v in rows.values())
        if float(row["exp"]) > now_ms
    )


def test_leases_never_add_up_to_more_than_the_rate(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    quota = compiled_quota(tmp_path, TWO_CLASSES)
    clock = [1_000_000]

    async def main() -> None:
        store = RedisStore(redis_server.url, 1.0)
        keepers = [LeaseKeeper(store, None, clock_ms=lambda: clock[0]) for _ in range(5)]
        rng = random.Random(7)
        try:
            for _ in range(40):
                clock[0] += 250
                demands = [[rng.choice([0, 1, 5, 50, 200]) for _ in range(2)] for _ in keepers]
                # Renewals race one another, as replicas' do.
                granted = await asyncio.gather(
                    *(k.renew(quota, d) for k, d in zip(keepers, demands, strict=True))
                )
                assert all(g.mode == FLEET for g in granted)
                assert sum(sum(g.rates) for g in granted) <= quota.rate + 1e-6
                assert live_total(redis_server, quota, clock[0]) <= quota.rate + 1e-6
        finally:
            await store.close()

    asyncio.run(main())


def test_leases_converge_to_the_fair_shares_of_the_fleet(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    quota = compiled_quota(tmp_path, TWO_CLASSES)
    clock = [2_000_000]

    async def main() -> list[list[float]]:
        store = RedisStore(redis_server.url, 1.0)
        a, b = (LeaseKeeper(store, None, clock_ms=lambda: clock[0]) for _ in range(2))
        try:
            for _ in range(8):
                clock[0] += 250
                # noisy wants 200 from each replica; the rest (others) 5 in all, from b only.
                got_a = await a.renew(quota, [200, 0])
                got_b = await b.renew(quota, [200, 5])
            return [list(got_a.rates), list(got_b.rates)]
        finally:
            await store.close()

    rates_a, rates_b = asyncio.run(main())
    noisy = rates_a[0] + rates_b[0]
    others = rates_a[1] + rates_b[1]
    assert noisy + others == pytest.approx(25, abs=0.01)
    # others get their demand and its headroom (5 x 1.2), the noisy share the rest.
    assert others == pytest.approx(6, abs=0.5)
    assert rates_b[1] > rates_a[1]  # where the demand is


def test_a_replica_that_stops_renewing_gives_its_lease_back(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    quota = compiled_quota(tmp_path, TWO_CLASSES)
    clock = [3_000_000]

    async def main() -> tuple[float, float]:
        store = RedisStore(redis_server.url, 1.0)
        a, b = (LeaseKeeper(store, None, clock_ms=lambda: clock[0]) for _ in range(2))
        try:
            for _ in range(6):
                clock[0] += 250
                await a.renew(quota, [200, 0])
                await b.renew(quota, [200, 0])
            shared = sum((await a.renew(quota, [200, 0])).rates)
            clock[0] += int(LEASE_TTL * 1000) + 1  # b is gone
            await a.renew(quota, [200, 0])  # learns b's row expired, asks for all
            clock[0] += 250
            alone = sum((await a.renew(quota, [200, 0])).rates)
            return shared, alone
        finally:
            await store.close()

    shared, alone = asyncio.run(main())
    assert shared == pytest.approx(12.5, abs=1)
    assert alone == pytest.approx(25, abs=0.01)


def test_without_its_store_a_replica_falls_back_to_rate_over_the_replicas_it_saw(
    tmp_path: Path,
) -> None:
    server = RedisServer()
    quota = compiled_quota(tmp_path, TWO_CLASSES)
    failures: list[str] = []
    now = [100.0]

    async def main() -> None:
        store = RedisStore(server.url, 0.2)
        keepers = [
            LeaseKeeper(
                store,
                None,
                breaker=Breaker(failures=1, cooldown=30),
                on_failure=lambda exc: failures.append(exc.reason),
                monotonic=lambda: now[0],
            )
            for _ in range(4)
        ]
        try:
            for keeper in keepers:
                await keeper.renew(quota, [10, 10])
            for keeper in keepers:
                assert (await keeper.renew(quota, [10, 10])).mode == FLEET
            server.stop()
            now[0] += LEASE_TTL  # past the last grant (until then it holds: the next test)
            down = await keepers[0].renew(quota, [100, 0])
            assert down.mode == EMERGENCY
            assert down.replicas == 4  # seen at the last exchange
            assert sum(down.rates) == pytest.approx(25 / 4)
            # The breaker is open: the next renewal does not even ask the dead store.
            before = len(failures)
            again = await keepers[0].renew(quota, [100, 0])
            assert again.mode == EMERGENCY
            assert len(failures) == before
        finally:
            await store.close()

    asyncio.run(main())
    assert failures
    assert set(failures) <= {"redis_error", "timeout"}


def test_quota_replicas_sets_the_emergency_share_when_nothing_was_learned(tmp_path: Path) -> None:
    quota = compiled_quota(tmp_path, TWO_CLASSES)

    async def main() -> None:
        store = RedisStore("redis://127.0.0.1:1/0", 0.2)  # nothing listens there
        try:
            keeper = LeaseKeeper(store, 5)
            got = await keeper.renew(quota, [100, 0])
            assert got.mode == EMERGENCY
            assert sum(got.rates) == pytest.approx(5)
        finally:
            await store.close()

    asyncio.run(main())


def test_lua_pacing_agrees_with_the_python_gcra(redis_server: RedisServer) -> None:
    rng = random.Random(11)

    async def main() -> None:
        store = RedisStore(redis_server.url, 1.0)
        user = uuid.uuid4().hex
        tat: float | None = None
        now = 5_000_000
        try:
            for _ in range(300):
                now += rng.choice([0, 0, 10, 50, 100, 400])
                interval, tolerance, wait = 100.0, rng.choice([0.0, 100.0, 400.0]), 300.0
                paced = await store.quota_pace("pace", user, Pace(now, interval, tolerance, wait))
                ok, at = paced.ok, paced.at_ms
                slot, new_tat = gcra(tat, now, interval, tolerance, wait)
                assert ok == slot.ok
                assert at == pytest.approx(slot.at_ms, abs=0.01)
                if new_tat is not None:
                    tat = new_tat
        finally:
            await store.close()

    asyncio.run(main())


def test_store_calls_fail_within_the_quota_timeout(tmp_path: Path) -> None:
    """A Redis that accepts connections and never answers (stopped) costs a call its timeout,
    not a stall."""
    server = RedisServer()
    quota = compiled_quota(tmp_path, TWO_CLASSES)
    server._process.send_signal(signal.SIGSTOP)

    async def main() -> float:
        store = RedisStore(server.url, 0.05)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            with pytest.raises(StoreUnavailable):
                await store.quota_pace(quota.name, "u", Pace(0, 100, 0, 0))
            return loop.time() - started
        finally:
            await store.close()

    try:
        took = asyncio.run(main())
    finally:
        server._process.send_signal(signal.SIGCONT)
        server.stop()
    assert took < 0.5  # the timeout is 50 ms; a wide margin for a loaded machine


def test_slots_promised_alone_while_redis_was_away_are_not_promised_again(
    redis_server: RedisServer,
) -> None:
    async def main() -> None:
        store = RedisStore(redis_server.url, 1.0)
        user = uuid.uuid4().hex
        try:
            # Redis knows nothing of this user; the replica paced it locally up to t=2000.
            paced = await store.quota_pace("pace", user, Pace(1000, 100, 0, 5000, floor_ms=2000))
            assert paced.ok
            assert paced.at_ms == 2000
            assert paced.tat_ms == 2100
        finally:
            await store.close()

    asyncio.run(main())


def test_one_failed_exchange_keeps_the_grant_the_store_still_counts(tmp_path: Path) -> None:
    """A renewal that fails while the last grant holds keeps that grant: the store counts it
    for the others until it expires, so falling to rate / N now could overshoot the fleet."""
    server = RedisServer()
    quota = compiled_quota(tmp_path, TWO_CLASSES)
    now = [100.0]

    async def main() -> None:
        store = RedisStore(server.url, 0.2)
        keepers = [
            LeaseKeeper(store, 4, breaker=Breaker(failures=5), monotonic=lambda: now[0])
            for _ in range(4)
        ]
        try:
            for _ in range(3):
                for keeper, demand in zip(keepers, ([200, 0], [0, 0], [0, 0], [0, 0]), strict=True):
                    await keeper.renew(quota, demand)
            granted = await keepers[1].renew(quota, [0, 0])
            assert sum(granted.rates) < 25 / 4  # the busy replica holds most of the rate
            server.pause()
            try:
                now[0] += 0.5
                held = await keepers[1].renew(quota, [0, 0])
                assert held.mode == FLEET
                assert held.rates == granted.rates
                now[0] += LEASE_TTL  # the grant has expired: now rate / N
                expired = await keepers[1].renew(quota, [0, 0])
                assert expired.mode == EMERGENCY
                assert sum(expired.rates) == pytest.approx(25 / 4)
            finally:
                server.resume()
        finally:
            await store.close()

    try:
        asyncio.run(main())
    finally:
        server.stop()


def test_rows_written_by_hand_neither_break_the_exchange_nor_hold_the_rate(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    quota = compiled_quota(tmp_path, TWO_CLASSES)
    clock = [4_000_000]
    table = f"{PREFIX}quota:{quota.name}:leases"
    control = redis_py.Redis.from_url(redis_server.url)

    async def main() -> None:
        store = RedisStore(redis_server.url, 1.0)
        keeper = LeaseKeeper(store, None, clock_ms=lambda: clock[0])
        try:
            exp = clock[0] + 1000
            control.hset(
                table,
                mapping={
                    # the quota's own signature, but too few demands
                    "short": json.dumps({"exp": exp, "total": 1, "sig": quota.signature, "d": [1]}),
                    "words": json.dumps(
                        {"exp": exp, "total": 1, "sig": quota.signature, "d": ["x"]}
                    ),
                    "hex": f'{{"exp": {exp}, "total": 0x1, "d": [1, 1]}}',  # Lua reads hex
                    "junk": "not json",
                    # dated far ahead, holding the whole rate: no replica writes that
                    "squatter": json.dumps({"exp": clock[0] + 10**9, "total": 10**9, "d": [0, 0]}),
                },
            )
            for _ in range(3):
                clock[0] += 250
                got = await keeper.renew(quota, [200, 0])
                assert got.mode == FLEET
            # The three readable-but-odd rows still count (1 each) until they expire; the
            # squatter and the junk are gone.
            assert sum(got.rates) == pytest.approx(25 - 3, abs=0.01)
            assert not control.hexists(table, "squatter")
            clock[0] += 1000
            got = await keeper.renew(quota, [200, 0])
            assert sum(got.rates) == pytest.approx(25, abs=0.01)
        finally:
            await store.close()

    try:
        asyncio.run(main())
    finally:
        control.close()
