"""The fleet store: Redis, shared by every replica; the check-and-reserve is one Lua script.

Layout per counter key K (namespaced under the prefix):
- `{prefix}ev:K`  a sorted set of events: member "<reservation>|<amount>", score its time (ms);
- `{prefix}sum:K` a string holding the sum of the live members' amounts (INCRBY / DECRBY).

No money ever becomes a Lua number: amounts and limits travel as decimal strings and all
arithmetic is Redis integer arithmetic (exact int64). The script copies the sum into a scratch key,
INCRBYs the amount, DECRBYs the limit and tests only the sign of the reply (a Lua double has the
sign of any int64). Times are Lua numbers, exact for millisecond timestamps (below 2**53).

Fail closed and fast: short socket and connect timeouts, no client retries (a retried reserve whose
first attempt landed would charge twice), and every Redis or socket error becomes StoreUnavailable.
A timed-out reserve may have landed on the server: it stays counted ("when in doubt, count it")
until the caller releases it or it ages out of its window.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from attrgate.store.base import Counter, Refused, ReserveResult, StoreUnavailable, check_counters

# KEYS: the scratch key, then per counter its events K and its sum S.
# ARGV: reservation id, now_ms, then per counter 5 strings: amount, limit, prune ("-": nothing,
#   "*": everything, else the score at or below which events have expired), ttl_ms (the expiry of
#   K and S once the event is added), walk ("1": sliding, find when it frees; "0": fixed period).
# Returns {1} when every counter took the reservation, else {0, index, used, ts, ...} for every
# refusing counter: `used` the window's sum (string), `ts` the score of the event whose ageing-out
# makes room (the newest event's when even an empty window is too small; "" when there is none or
# the period is fixed).
# Both scripts start from a sum that agrees with the events: S lost (evicted, deleted) while K
# holds events is rebuilt from them, with K's expiry, before anything adds to or takes from it.
COMMON = r"""
local function amount_of(member)
  return string.match(member, "|(%d+)$")
end

local function rebuild(k, s)
  if redis.call("EXISTS", s) == 0 and redis.call("ZCARD", k) > 0 then
    for _, m in ipairs(redis.call("ZRANGE", k, 0, -1)) do
      redis.call("INCRBY", s, amount_of(m))
    end
    local left = redis.call("PTTL", k)
    if left > 0 then
      redis.call("PEXPIRE", s, left)
    end
  end
end
"""

RESERVE = (
    COMMON
    + r"""
local scratch = KEYS[1]
local rid = ARGV[1]
local now = ARGV[2]
local n = (#KEYS - 1) / 2

-- Bring S in line with K, then drop expired events.
local function prune(k, s, how)
  rebuild(k, s)
  if how == "*" then
    redis.call("DEL", k, s)
  elseif how ~= "-" then
    local old = redis.call("ZRANGEBYSCORE", k, "-inf", how)
    for _, m in ipairs(old) do
      redis.call("DECRBY", s, amount_of(m))
    end
    if #old > 0 then
      redis.call("ZREMRANGEBYSCORE", k, "-inf", how)
    end
  end
  if redis.call("ZCARD", k) == 0 then
    redis.call("DEL", s)
  end
end

-- With the scratch holding used + amount - limit (> 0): walk the events oldest first, taking
-- each one's amount off, until the scratch is <= 0; that event's score.
local function frees_at(k)
  local last = ""
  local start = 0
  while true do
    local batch = redis.call("ZRANGE", k, start, start + 127, "WITHSCORES")
    for j = 1, #batch, 2 do
      last = batch[j + 1]
      if redis.call("DECRBY", scratch, amount_of(batch[j])) <= 0 then
        return last
      end
    end
    if #batch < 256 then
      return last
    end
    start = start + 128
  end
end

local refused = {}
local add = {}
for i = 1, n do
  local k, s = KEYS[2 * i], KEYS[2 * i + 1]
  local a = 2 + 5 * (i - 1)
  local amount, limit, how, walk = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 5]
  prune(k, s, how)
  -- a counter that already holds this reservation is charged once, not again
  if not redis.call("ZSCORE", k, rid .. "|" .. amount) then
    local used = redis.call("GET", s) or "0"
    redis.call("SET", scratch, used)
    redis.call("INCRBY", scratch, amount)
    if redis.call("DECRBY", scratch, limit) > 0 then
      table.insert(refused, i - 1)
      table.insert(refused, used)
      table.insert(refused, walk == "1" and frees_at(k) or "")
    else
      table.insert(add, i)
    end
  end
end
redis.call("DEL", scratch)
if #refused > 0 then
  table.insert(refused, 1, 0)
  return refused
end
for _, i in ipairs(add) do
  local k, s = KEYS[2 * i], KEYS[2 * i + 1]
  local a = 2 + 5 * (i - 1)
  local amount, ttl = ARGV[a + 1], tonumber(ARGV[a + 4])
  redis.call("ZADD", k, now, rid .. "|" .. amount)
  redis.call("INCRBY", s, amount)
  local left = redis.call("PTTL", k)
  if left > ttl then
    ttl = left
  end
  redis.call("PEXPIRE", k, ttl)
  redis.call("PEXPIRE", s, ttl)
end
return {1}
"""
)

# KEYS: per counter K and S. ARGV: per counter the member and its amount. Decrements the sum only
# when ZREM removed the member, so releasing twice frees once.
RELEASE = (
    COMMON
    + r"""
local removed = {}
for i = 1, #KEYS / 2 do
  local k, s = KEYS[2 * i - 1], KEYS[2 * i]
  rebuild(k, s)
  removed[i] = redis.call("ZREM", k, ARGV[2 * i - 1])
  if removed[i] == 1 then
    redis.call("DECRBY", s, ARGV[2 * i])
  end
  if redis.call("ZCARD", k) == 0 then
    redis.call("DEL", s)
  end
end
return removed
"""
)


def _decode(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisStore:
    def __init__(
        self,
        url: str,
        timeout: float = 0.25,
        *,
        prefix: str = "attrgate:",
        max_connections: int = 8,
    ) -> None:
        # Each socket step (connect, one reply) is bounded by `timeout`; a whole call, which may
        # take a few steps (connect, EVALSHA, SCRIPT LOAD on a fresh server), by twice that.
        self._deadline = 2 * timeout
        self._prefix = prefix
        # A small bounded pool: a burst queues for a connection (within the deadline) instead of
        # opening a socket per request; Redis runs scripts one at a time anyway, and SMS-sending
        # writes are few (Cognito's UserUpdate quota is 25/s).
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=self._deadline,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),  # redis-py retries 10 times with backoff by default
            protocol=2,  # plain RESP2: any Redis version, no HELLO round trip
            driver_info=None,  # no CLIENT SETINFO round trips on connect
        )
        self._redis = Redis.from_pool(pool)  # owns the pool: close() disconnects it
        self._reserve = self._redis.register_script(RESERVE)
        self._release = self._redis.register_script(RELEASE)

    def _keys(self, key: str) -> tuple[str, str]:
        return f"{self._prefix}ev:{key}", f"{self._prefix}sum:{key}"

    @contextlib.asynccontextmanager
    async def _answer(self) -> AsyncIterator[None]:
        """Bound a call by the deadline; any Redis or socket failure is StoreUnavailable."""
        try:
            async with asyncio.timeout(self._deadline):
                yield
        except (RedisError, OSError) as e:  # OSError includes TimeoutError
            raise StoreUnavailable(f"redis store: {type(e).__name__}: {e}") from e

    async def reserve(
        self, reservation_id: str, counters: Sequence[Counter], now_ms: int
    ) -> ReserveResult:
        check_counters(counters)
        keys = [f"{self._prefix}scratch"]
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
        """Summed from the events themselves (Python integers), in one MULTI snapshot."""
        live: list[int] = []  # positions of the counters whose window may hold events
        async with self._answer(), self._redis.pipeline(transaction=True) as pipe:
            for i, c in enumerate(counters):
                events, _ = self._keys(c.key)
                if c.window_ms is not None:
                    pipe.zrangebyscore(events, f"({now_ms - c.window_ms}", "+inf")
                    live.append(i)
                elif c.period_end_ms is not None and now_ms < c.period_end_ms:
                    pipe.zrange(events, 0, -1)
                    live.append(i)
            replies = await pipe.execute() if live else []
        used = [0] * len(counters)
        for i, members in zip(live, replies, strict=True):
            used[i] = sum(int(_decode(m).rpartition("|")[2]) for m in members)
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
            raise StoreUnavailable("redis store: the secret vanished (evicted?)")
        return value

    async def ping(self) -> None:
        async with self._answer():
            await self._redis.ping()

    async def persistence_warning(self) -> str | None:
        """A warning when the server would lose counts on restart (neither RDB snapshots nor
        AOF), or may evict them; None when fine, or when CONFIG is disabled (managed Redis):
        then it cannot be checked from here."""
        async with self._answer():
            try:
                config = await self._redis.config_get("*")
            except ResponseError:  # CONFIG renamed or disabled
                return None
        settings = {_decode(k): _decode(v) for k, v in config.items()}
        problems = []
        if not settings.get("save", "").strip() and settings.get("appendonly") != "yes":
            problems.append(
                "has no persistence (no RDB `save` points and `appendonly no`): "
                "SMS counts and budgets are lost when it restarts"
            )
        policy = settings.get("maxmemory-policy", "noeviction")
        if policy != "noeviction":
            problems.append(f"may evict keys (maxmemory-policy {policy}): counts can be lost")
        return "Redis " + "; ".join(problems) if problems else None

    async def close(self) -> None:
        await self._redis.aclose()


def _glob_escape(text: str) -> str:
    """Escape Redis MATCH pattern characters."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
