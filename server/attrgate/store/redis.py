"""The fleet store: Redis (one server, or a Redis Cluster), shared by every replica; the
check-and-reserve is one Lua script (store/redis_lua.py).

Layout per counter key K, under the prefix `{attrgate}:` (its hash tag puts every key in one
cluster slot, so a script that charges several counters runs on one node):
- `{attrgate}:ev:K`  a sorted set of events: member "<reservation>|<amount>", score its time (ms);
- `{attrgate}:sum:K` a string holding the sum of the live members' amounts (INCRBY / DECRBY).

No money ever becomes a Lua number: amounts and limits travel as decimal strings and all
arithmetic is Redis integer arithmetic (exact int64). The script copies the sum into a scratch key,
INCRBYs the amount, DECRBYs the limit and tests only the sign of the reply (a Lua double has the
sign of any int64). Times are Lua numbers, exact for millisecond timestamps (below 2**53).

Fail closed and fast: every call is bounded by the store timeout (--store-timeout), no client
retries (the caller fails closed at once instead), and every Redis or socket error becomes
StoreUnavailable. A timed-out reserve may have landed on the server: it stays counted ("when in
doubt, count it") until the caller releases it or it ages out of its window.

The HMAC key never reaches Redis; only its fingerprint does (guards/keys.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from attrgate.store.base import (
    DEFAULT_TIMEOUT,
    REDIS_ERROR,
    TIMEOUT,
    Counter,
    LeaseGrant,
    LeaseRow,
    LeaseSync,
    Pace,
    Paced,
    Refused,
    ReserveResult,
    StoreUnavailable,
    check_counters,
)
from attrgate.store.redis_lua import QUOTA_PACE, QUOTA_SYNC, RELEASE, RESERVE, USAGE

PREFIX = "{attrgate}:"


def _decode(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisStore:
    def __init__(
        self,
        url: str,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        cluster: bool = False,
        prefix: str = PREFIX,
        max_connections: int = 8,
    ) -> None:
        self._timeout = timeout
        self._prefix = prefix
        self._url = url
        # A few connections: a burst queues for one (within the timeout) instead of opening a
        # socket per request; Redis runs scripts one at a time anyway, and SMS-sending writes
        # are few (Cognito's UserUpdate quota is 25/s).
        self._connections = asyncio.Semaphore(max_connections)
        options: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), 0),  # redis-py retries with backoff by default
            "protocol": 2,  # plain RESP2: any Redis version, no HELLO round trip
            "driver_info": None,  # no CLIENT SETINFO round trips on connect
        }
        self._redis: Redis | RedisCluster
        # A cluster client learns the slots on its first command; many first commands at once
        # each start that, and close one another's connections: learn them once, before.
        self._discovered = not cluster
        self._discovering = asyncio.Lock()
        if cluster:
            self._redis = RedisCluster.from_url(url, max_connections=max_connections, **options)
        else:
            pool = ConnectionPool.from_url(url, max_connections=max_connections, **options)
            self._redis = Redis.from_pool(pool)  # owns the pool: close() disconnects it
        self._reserve = self._redis.register_script(RESERVE)
        self._release = self._redis.register_script(RELEASE)
        self._usage = self._redis.register_script(USAGE)
        self._quota_sync = self._redis.register_script(QUOTA_SYNC)
        self._quota_pace = self._redis.register_script(QUOTA_PACE)

    def _keys(self, key: str) -> tuple[str, str]:
        return f"{self._prefix}ev:{key}", f"{self._prefix}sum:{key}"

    @contextlib.asynccontextmanager
    async def _answer(self) -> AsyncIterator[None]:
        """Bound a call by the timeout; any Redis or socket failure is StoreUnavailable."""
        try:
            async with asyncio.timeout(self._timeout), self._connections:
                if not self._discovered:
                    async with self._discovering:
                        if not self._discovered and isinstance(self._redis, RedisCluster):
                            await self._redis.initialize()
                        self._discovered = True
                yield
        # redis' own TimeoutError is a RedisError; RedisClusterException is not (a node not in
        # cluster mode, slots not covered).
        except (TimeoutError, RedisError, RedisClusterException, OSError) as e:
            timed_out = isinstance(e, TimeoutError) or "Timeout" in type(e).__name__
            raise StoreUnavailable(
                f"redis store: {type(e).__name__}: {e}", TIMEOUT if timed_out else REDIS_ERROR
            ) from e

    async def reserve(
        self, reservation_id: str, counters: Sequence[Counter], now_ms: int
    ) -> ReserveResult:
        check_counters(counters)
        keys = [f"{self._prefix}scratch"]  # the prefix's hash tag: same slot as the counters
        args: list[str | int] = [reservation_id, now_ms]
        for c in counters:
            keys.extend(self._keys(c.key))
            if c.window_ms is not None:
                prune, ttl, walk = str(now_ms - c.window_ms), c.window_ms, "1"
            else:
                assert c.period_end_ms is not None
                prune = "*" if now_ms >= c.period_end_ms else "-"
                ttl, walk = max(c.period_end_ms - now_ms, 1), "0"
            args.extend([str(c.amount), str(c.limit), prune, ttl, walk])
        async with self._answer():
            reply = await self._reserve(keys=keys, args=args)
        if int(reply[0]) == 1:
            return ReserveResult(ok=True)
        refused = []
        for j in range(1, len(reply), 3):
            index, used, ts = int(reply[j]), int(reply[j + 1]), _decode(reply[j + 2])
            c = counters[index]
            if c.window_ms is None:
                assert c.period_end_ms is not None
                at = c.period_end_ms
            else:
                # a score: a double, exact for millisecond timestamps (below 2**53)
                at = (int(float(ts)) if ts else now_ms) + c.window_ms
            refused.append(Refused(index=index, used=used, retry_at_ms=at))
        return ReserveResult(ok=False, refused=tuple(refused))

    async def release(self, reservation_id: str, counters: Sequence[Counter]) -> list[bool]:
        keys: list[str] = []
        args: list[str] = []
        for c in counters:
            keys.extend(self._keys(c.key))
            args.extend([f"{reservation_id}|{c.amount}", str(c.amount)])
        if not keys:
            return []
        async with self._answer():
            removed = await self._release(keys=keys, args=args)
        return [int(flag) == 1 for flag in removed]

    async def usage(self, counters: Sequence[Counter], now_ms: int) -> list[int]:
        """In one script (one snapshot): each key's kept sum less its expired events, or, when
        no sum is kept, its live events summed (Python integers either way)."""
        live: list[int] = []  # positions of the counters whose window may hold events
        keys: list[str] = []
        bounds: list[str] = []  # per counter: the highest expired score ("": none), the lowest live
        for i, c in enumerate(counters):
            if c.window_ms is not None:
                bounds.extend([str(now_ms - c.window_ms), f"({now_ms - c.window_ms}"])
            elif c.period_end_ms is not None and now_ms < c.period_end_ms:
                bounds.extend(["", "-inf"])
            else:
                continue
            live.append(i)
            keys.extend(self._keys(c.key))
        used = [0] * len(counters)
        if not live:
            return used
        async with self._answer():
            replies = await self._usage(keys=keys, args=bounds)
        for i, (total, members) in zip(live, replies, strict=True):
            amounts = sum(int(_decode(m).rpartition("|")[2]) for m in members)
            kept = _decode(total)
            used[i] = int(kept) - amounts if kept else amounts
        return used

    async def usage_by_prefix(self, prefix: str, window_ms: int, now_ms: int) -> dict[str, int]:
        """SCAN for the prefix's event sets, then sum each one's live events in Python."""
        events_prefix = f"{self._prefix}ev:"
        found: dict[str, int] = {}
        async with self._answer():
            pattern = events_prefix + _glob_escape(prefix) + "*"
            async for raw in self._redis.scan_iter(match=pattern, count=500):
                name = _decode(raw)
                members = await self._redis.zrangebyscore(name, f"({now_ms - window_ms}", "+inf")
                total = sum(int(_decode(m).rpartition("|")[2]) for m in members)
                if total:
                    found[name.removeprefix(events_prefix)] = total
        return found

    async def get_or_create_secret(self, name: str, new: bytes) -> bytes:
        key = f"{self._prefix}secret:{name}"
        async with self._answer():
            await self._redis.set(key, new, nx=True)
            value = await self._redis.get(key)
        if not isinstance(value, bytes):
            raise StoreUnavailable("redis store: the value vanished (evicted?)", REDIS_ERROR)
        return value

    async def secret(self, name: str) -> bytes | None:
        async with self._answer():
            value = await self._redis.get(f"{self._prefix}secret:{name}")
        return value if isinstance(value, bytes) else None

    async def delete_secret(self, name: str) -> None:
        async with self._answer():
            await self._redis.delete(f"{self._prefix}secret:{name}")

    async def quota_sync(self, quota: str, sync: LeaseSync) -> LeaseGrant:
        """The quota governor's lease exchange (redis_lua.QUOTA_SYNC): this replica's demands
        and desired rates in, its granted rates and the other live replicas' rows out."""
        args: list[str | int] = [
            sync.replica,
            sync.now_ms,
            sync.ttl_ms,
            repr(sync.capacity),
            sync.signature,
            json.dumps(list(sync.demands)),
            json.dumps(list(sync.desired)),
        ]
        async with self._answer():
            reply = await self._quota_sync(keys=[f"{self._prefix}quota:{quota}:leases"], args=args)
        granted = json.loads(_decode(reply[0]))
        rows = [row for row in map(_lease_row, reply[1:]) if row is not None]
        # cjson encodes an empty array as {}; the desired list is never empty.
        rates = tuple(float(x) for x in granted) if isinstance(granted, list) else ()
        return LeaseGrant(rates, tuple(rows))

    async def quota_leave(self, quota: str, replica: str) -> None:
        """Drop this replica's row from the lease table (its grant returns to the fleet)."""
        async with self._answer():
            await self._redis.hdel(f"{self._prefix}quota:{quota}:leases", replica)

    async def quota_pace(self, quota: str, user: str, pace: Pace) -> Paced:
        """Per-user pacing (redis_lua.QUOTA_PACE): whether the write may go, and its slot."""
        key = f"{self._prefix}quota:{quota}:user:{user}"
        args: list[str | int] = [
            pace.now_ms,
            repr(pace.interval_ms),
            repr(pace.tolerance_ms),
            repr(pace.wait_ms),
            repr(pace.floor_ms),
        ]
        async with self._answer():
            ok, at, tat = await self._quota_pace(keys=[key], args=args)
        return Paced(int(ok) == 1, float(_decode(at)), float(_decode(tat)))

    async def ping(self) -> None:
        async with self._answer():
            await self._redis.ping()

    async def cluster_enabled(self) -> bool:
        """Whether the server runs in cluster mode (then it needs --redis-cluster)."""
        async with self._answer():
            info = await self._redis.info("cluster")
        return str(_flat(info).get("cluster_enabled", "0")) == "1"

    async def durability_problems(self) -> list[str]:
        """Why this Redis (every primary of a cluster) could lose counts: no append-only file
        (RDB snapshots lose every write since the last one), or an eviction policy. Read with
        INFO, which managed services (ElastiCache) allow where CONFIG is disabled."""
        problems: list[str] = []
        async with self._answer():
            try:
                if isinstance(self._redis, RedisCluster):
                    infos = [
                        (f" {node.name}", await self._redis.info(target_nodes=node))
                        for node in self._redis.get_primaries()
                    ]
                else:
                    infos = [("", await self._redis.info())]
            except ResponseError:  # INFO renamed or disabled
                return ["Redis refuses INFO: whether it keeps counts across restarts is unknown"]
        for where, raw in infos:
            info = _flat(raw)
            if str(info.get("aof_enabled", "0")) != "1":
                problems.append(
                    f"Redis{where} runs without appendonly yes: a restart loses every SMS count "
                    "since its last RDB snapshot (or all of them without one)"
                )
            policy = str(info.get("maxmemory_policy", "noeviction"))
            if policy != "noeviction":
                problems.append(
                    f"Redis{where} may evict keys (maxmemory-policy {policy}): counts can be lost"
                )
        return problems

    async def close(self) -> None:
        await self._redis.aclose()


def _lease_row(raw: object) -> LeaseRow | None:
    """Another replica's row, or None when it cannot be read as one (then the store still
    counted it against the rate; it only stays out of the fairness)."""
    try:
        row = json.loads(_decode(raw))
        demands = row["d"]
        if not isinstance(demands, list):
            return None
        return LeaseRow(
            str(row.get("sig", "")), tuple(float(x) for x in demands), float(row["total"])
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def _flat(info: Mapping[str, Any]) -> Mapping[str, Any]:
    """INFO's fields; redis-py nests them under the node's name for some cluster calls."""
    if len(info) == 1:
        (only,) = info.values()
        if isinstance(only, Mapping):
            return only
    return info


def _glob_escape(text: str) -> str:
    """Escape Redis MATCH pattern characters."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
