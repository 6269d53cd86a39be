"""The Lua scripts of the Redis store (store/redis.py): each runs atomically on the server, and
every key one script touches carries the store's hash tag, so Redis Cluster runs it on one node."""

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
-- each one's amount off, until the scratch is <= 0; that event's score. An amount over the limit
-- never fits: the window empties with its newest event, read at once (a budget key may hold a
-- month of messages; walking them all on every refusal would stall Redis).
local function frees_at(k, used)
  if redis.call("DECRBY", scratch, used) > 0 then
    local newest = redis.call("ZRANGE", k, -1, -1, "WITHSCORES")
    return newest[2] or ""
  end
  redis.call("INCRBY", scratch, used)
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
      table.insert(refused, walk == "1" and frees_at(k, used) or "")
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

# KEYS: per counter its events K. ARGV: per counter the lowest live score ("(ms" exclusive, or
# "-inf"). Returns per counter its live members; the caller sums their amounts (Python integers).
USAGE = r"""
local out = {}
for i = 1, #KEYS / 2 do
  local k, s = KEYS[2 * i - 1], KEYS[2 * i]
  local total = redis.call("GET", s)
  if total and ARGV[2 * i - 1] ~= "" then
    -- the kept sum less the events that no longer count (few: each reservation prunes them)
    out[i] = {total, redis.call("ZRANGEBYSCORE", k, "-inf", ARGV[2 * i - 1])}
  elseif total then
    out[i] = {total, {}}
  else
    -- no sum kept (lost): the live events themselves
    out[i] = {"", redis.call("ZRANGEBYSCORE", k, ARGV[2 * i], "+inf")}
  end
end
return out
"""

# The quota governor's lease table (quota/leases.py): one hash per quota, a field per replica
# holding {"exp": ms, "total": granted rate, "sig": shares' signature, "d": demands}.
# KEYS: the hash. ARGV: replica id, now_ms, ttl_ms, capacity, signature, demands (JSON array),
# desired rates (JSON array). Rows past their expiry are dropped; this replica is granted its
# desired rates, scaled down to what the other live rows leave of the capacity, so the granted
# rates of all live rows never add up to more than the capacity. Returns the granted rates
# (JSON) and the other live rows (JSON strings). Rates are plain Lua numbers (doubles): they
# are requests per second, not money.
QUOTA_SYNC = r"""
local h = KEYS[1]
local me = ARGV[1]
local now = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local capacity = tonumber(ARGV[4])
local desired = cjson.decode(ARGV[7])
local others = 0
local rows = {}
local all = redis.call("HGETALL", h)
for i = 1, #all, 2 do
  -- A row that cannot be read (written by hand, or by another version) counts as expired.
  local ok, row = pcall(cjson.decode, all[i + 1])
  local exp = ok and type(row) == "table" and tonumber(row.exp) or 0
  local total = ok and type(row) == "table" and tonumber(row.total) or 0
  -- A row dated further ahead than any replica writes (now + ttl) is no lease: dropped, so a
  -- row written by hand cannot hold the rate for ever.
  if exp <= now or exp > now + 2 * ttl then
    redis.call("HDEL", h, all[i])
  elseif all[i] ~= me then
    others = others + total
    table.insert(rows, all[i + 1])
  end
end
local want = 0
for _, v in ipairs(desired) do want = want + v end
local free = capacity - others
if free < 0 then free = 0 end
local scale = 1
if want > free then
  if want > 0 then scale = free / want else scale = 0 end
end
local granted = {}
local total = 0
for i, v in ipairs(desired) do
  granted[i] = v * scale
  total = total + granted[i]
end
redis.call("HSET", h, me, cjson.encode({exp = now + ttl, total = total, sig = ARGV[5],
  d = cjson.decode(ARGV[6])}))
redis.call("PEXPIRE", h, ttl * 10)
local reply = {cjson.encode(granted)}
for _, r in ipairs(rows) do table.insert(reply, r) end
return reply
"""

# Per-user pacing (quota/pacing.py's GCRA, the same arithmetic). KEYS: the user's TAT key.
# ARGV: now_ms, interval_ms, tolerance_ms, wait_ms, floor_ms (a TAT this replica scheduled
# alone while Redis did not answer: slots promised then are not promised again). Returns
# {1, slot, tat} when the write may go at `slot` (the TAT moves one interval on, to `tat`),
# {0, slot, tat} when its slot is beyond the wait (nothing changes). Numbers go back as strings:
# Redis would truncate a Lua number to an integer.
QUOTA_PACE = r"""
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local tolerance = tonumber(ARGV[3])
local wait = tonumber(ARGV[4])
local tat = tonumber(redis.call("GET", KEYS[1]) or now)
local floor = tonumber(ARGV[5])
if tat < floor then tat = floor end
if tat < now then tat = now end
local at = tat - tolerance
if at < now then at = now end
if at - now > wait then
  return {0, string.format("%.3f", at), string.format("%.3f", tat)}
end
local new = tat + interval
redis.call("SET", KEYS[1], string.format("%.3f", new), "PX", math.ceil(new - now) + 1000)
return {1, string.format("%.3f", at), string.format("%.3f", new)}
"""
