"""The Lua scripts of `RedisLimiter`: every change of the shared state, each one atomic.

Every script gets the same seven keys, all under ``nanobanana:{<name>}:`` (one hash tag, so a
cluster keeps them on one node): ``meta`` (hash: epoch, server run id, grace, waiter sequence,
pause, rate bucket, charged credits), ``leases`` (sorted set: one member per generation in flight,
scored by its expiry, server time in ms), ``queue`` and ``beats`` (waiting acquirers in arrival
order, and their liveness deadlines), ``procs`` (processes holding reservations, scored by their
heartbeat deadline), ``resv`` (hash: credits each process reserved for creates not yet settled)
and ``op`` (the answer of one change of the credits, kept a few minutes so that a script run again
after a lost reply changes them once).

The scripts that read or write shared state start with `PRELUDE`: ARGV[1] is the epoch the caller
knows, ARGV[2] a fresh epoch id to write if the store has none, ARGV[3] the lease time in ms,
ARGV[4] the caller's process id and ARGV[5] '1' for the strict start. It answers {"epoch", id}
instead of running when the caller knows another epoch. The epoch is tied to the server's run id:
a store written by another server process (a restart that restored an older snapshot, a failover)
is a lost store, wiped and started afresh, and its holders re-assert what they hold. A Redis user
denied ``INFO`` (an ACL) runs without the run id: a restored older snapshot then goes unnoticed.
"""

from __future__ import annotations

#: Every key of a name lives this many lease times after the last script that touched it.
KEY_LEASES = 2

_CLOCK = """
if redis.replicate_commands then redis.replicate_commands() end  -- Redis < 7: TIME, then writes
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local meta, leases, queue, beats = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local procs, resv, op = KEYS[5], KEYS[6], KEYS[7]
local lease_ms = tonumber(ARGV[3])
local function keep(at_least)
  -- Nothing outlives the last holder: every key lapses unless a living process touches it.
  local ttl = math.max(lease_ms * 2, at_least or 0)
  for _, k in ipairs({leases, queue, beats, procs, resv}) do
    redis.call('PEXPIRE', k, ttl)
  end
  local pause = tonumber(redis.call('HGET', meta, 'pause') or '0')
  redis.call('PEXPIRE', meta, math.max(ttl, pause - now))
end
"""

PRELUDE = (
    _CLOCK
    + """
-- A user denied INFO by an ACL gets no run id: the store then counts as lost only when its keys
-- are (a flush, a restart without persistence), not when an older snapshot comes back.
local info = redis.pcall('INFO', 'server')
local run = type(info) == 'string' and string.match(info, 'run_id:(%x+)') or ''
local state = redis.call('HMGET', meta, 'epoch', 'run', 'grace')
local epoch, grace, known = state[1], tonumber(state[3] or '0'), state[2] or ''
if epoch and run ~= '' and known ~= '' and known ~= run then
  -- Written by another server process: an older snapshot restored, or a failover. Lost.
  redis.call('DEL', leases, queue, beats, procs, resv)
  redis.call('HDEL', meta, 'epoch', 'credits', 'seq', 'grace')
  epoch = nil
end
if not epoch then
  -- A new name or an empty store grants at once; the strict start waits one lease time.
  epoch, grace = ARGV[2], 0
  if ARGV[5] == '1' then grace = now + lease_ms end
  redis.call('HSET', meta, 'epoch', epoch, 'run', run, 'grace', grace)
elseif run ~= '' and known == '' then
  redis.call('HSET', meta, 'run', run)  -- first seen by a user allowed INFO
end
keep()
if epoch ~= ARGV[1] then
  return {'epoch', epoch}
end
"""
)

# ARGV[6] max, ARGV[7] waiter ttl ms, ARGV[8] channel, ARGV[9..] the caller's waiters in arrival
# order. Grants those among the first `free` of the queue. Returns {"ok", ms until something may
# change, why ("cap" or "grace"), slots in flight, ms of pause left, granted...}.
ACQUIRE = (
    PRELUDE
    + """
local max, ttl = tonumber(ARGV[6]), tonumber(ARGV[7])
local freed = redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
local dead = redis.call('ZRANGEBYSCORE', beats, '-inf', now)
for _, w in ipairs(dead) do
  redis.call('ZREM', queue, w)
  redis.call('ZREM', beats, w)
end
local mine = {}
local granted = {}
for i = 9, #ARGV do
  local w = ARGV[i]
  if redis.call('ZSCORE', leases, w) then
    -- Granted by an earlier run of this call whose reply was lost (a retry): granted still.
    granted[#granted + 1] = w
  else
    mine[w] = true
    if not redis.call('ZSCORE', queue, w) then
      redis.call('ZADD', queue, redis.call('HINCRBY', meta, 'seq', 1), w)
    end
    redis.call('ZADD', beats, now + ttl, w)
  end
end
local next_ms, why = lease_ms, 'cap'
if now < grace then
  next_ms, why = grace - now, 'grace'
else
  local free = max - redis.call('ZCARD', leases)
  if free > 0 then
    for _, w in ipairs(redis.call('ZRANGE', queue, 0, free - 1)) do
      if mine[w] then
        redis.call('ZREM', queue, w)
        redis.call('ZREM', beats, w)
        redis.call('ZADD', leases, now + lease_ms, w)
        granted[#granted + 1] = w
      end
    end
  end
  local first = redis.call('ZRANGE', leases, 0, 0, 'WITHSCORES')
  if first[2] then next_ms = tonumber(first[2]) - now end
end
if (freed > 0 or #dead > 0) and redis.call('ZCARD', queue) > 0 then
  redis.call('PUBLISH', ARGV[8], 'expired')
end
keep()
local pause = math.max(0, tonumber(redis.call('HGET', meta, 'pause') or '0') - now)
local result = {'ok', next_ms, why, redis.call('ZCARD', leases), pause}
for _, w in ipairs(granted) do result[#result + 1] = w end
return result
"""
)

# ARGV[6..] leases to extend. Extends only those that still exist: a lease released meanwhile
# (or lapsed) stays gone. Also the caller's heartbeat for its reservations. Returns {"ok", lost...}.
RENEW = (
    PRELUDE
    + """
redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
local result = {'ok'}
for i = 6, #ARGV do
  if redis.call('ZADD', leases, 'XX', 'CH', now + lease_ms, ARGV[i]) == 0
      and not redis.call('ZSCORE', leases, ARGV[i]) then
    result[#result + 1] = ARGV[i]
  end
end
if redis.call('HEXISTS', resv, ARGV[4]) == 1 then
  redis.call('ZADD', procs, now + lease_ms, ARGV[4])
end
return result
"""
)

# ARGV[1] the epoch to re-assert into (never created here), ARGV[6] grace ms, ARGV[7] credits
# charged, ARGV[8] credits reserved, ARGV[9] op ttl ms, ARGV[10..] leases. Puts back every lease
# (over the cap if need be: they are in flight), the credits (once, even when run again after a
# lost reply) and starts a short grace, so that the other holders re-assert before new grants.
REASSERT = (
    _CLOCK
    + """
if redis.call('HGET', meta, 'epoch') ~= ARGV[1] then
  return {'epoch', redis.call('HGET', meta, 'epoch') or ''}
end
for i = 10, #ARGV do
  redis.call('ZADD', leases, now + lease_ms, ARGV[i])
end
if tonumber(ARGV[7]) > 0 and redis.call('SET', op, '1', 'NX', 'PX', ARGV[9]) then
  redis.call('HINCRBY', meta, 'credits', ARGV[7])
end
if tonumber(ARGV[8]) > 0 then
  redis.call('HSET', resv, ARGV[4], ARGV[8])
  redis.call('ZADD', procs, now + lease_ms, ARGV[4])
end
local grace = tonumber(redis.call('HGET', meta, 'grace') or '0')
if now + tonumber(ARGV[6]) > grace then
  redis.call('HSET', meta, 'grace', now + tonumber(ARGV[6]))
end
keep()
return {'ok'}
"""
)

# ARGV[1] channel, ARGV[2] a process whose reservations to drop ('' : none), ARGV[3..] leases or
# waiters to drop. Wakes the waiters when a slot came free. Needs no epoch: it only removes.
RELEASE = """
local leases, queue, beats, procs, resv = KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local freed = 0
for i = 3, #ARGV do
  freed = freed + redis.call('ZREM', leases, ARGV[i])
  redis.call('ZREM', queue, ARGV[i])
  redis.call('ZREM', beats, ARGV[i])
end
if ARGV[2] ~= '' then
  redis.call('HDEL', resv, ARGV[2])
  redis.call('ZREM', procs, ARGV[2])
end
if freed > 0 and redis.call('ZCARD', queue) > 0 then
  redis.call('PUBLISH', ARGV[1], 'released')
end
return freed
"""

# ARGV[6] rate per second ('' for none), ARGV[7] burst. Returns {"ok", ms to wait, why}
# (0: go, and a rate token was taken).
READY = (
    PRELUDE
    + """
local pause = tonumber(redis.call('HGET', meta, 'pause') or '0')
if pause > now then
  return {'ok', pause - now, 'pause'}
end
if ARGV[6] == '' then
  return {'ok', 0, ''}
end
local rate, burst = tonumber(ARGV[6]), tonumber(ARGV[7])
local bucket = redis.call('HMGET', meta, 'tokens', 'filled')
local tokens = tonumber(bucket[1]) or burst
local filled = tonumber(bucket[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - filled) * rate / 1000)
if tokens >= 1 then
  redis.call('HSET', meta, 'tokens', tostring(tokens - 1), 'filled', now)
  return {'ok', 0, ''}
end
redis.call('HSET', meta, 'tokens', tostring(tokens), 'filled', now)
return {'ok', math.ceil((1 - tokens) * 1000 / rate), 'rate'}
"""
)

# ARGV[6] ms. Extends the pause (never shortens it), and the life of the meta key to cover it.
PAUSE = (
    _CLOCK
    + """
local until_ms = now + tonumber(ARGV[6])
local pause = tonumber(redis.call('HGET', meta, 'pause') or '0')
if until_ms > pause then
  redis.call('HSET', meta, 'pause', until_ms)
end
keep()
return 1
"""
)

# ARGV[6] kind: "reserve" (ARGV[7] credits, ARGV[8] the budget, '' : no check), "settle" (ARGV[7]
# credits charged, ARGV[9] credits the create had reserved) or "adjust" (ARGV[7] credits to add to
# the charged ones, may be negative); ARGV[10] op ttl ms. A reservation belongs to the caller's
# process and lapses with its heartbeat (a killed process's unsent creates come back). Returns
# {"ok", committed}, {"over", committed} (nothing added) or, for a reservation during a grace,
# {"wait", ms}. The op key keeps the answer a while: run again, the script returns it.
CREDITS = (
    PRELUDE
    + """
local done = redis.call('GET', op)
if done then
  local status, figure = string.match(done, '^(%a+) (-?%d+)$')
  return {status, tonumber(figure)}
end
for _, p in ipairs(redis.call('ZRANGEBYSCORE', procs, '-inf', now)) do
  redis.call('HDEL', resv, p)
  redis.call('ZREM', procs, p)
end
local committed = tonumber(redis.call('HGET', meta, 'credits') or '0')
for _, v in ipairs(redis.call('HVALS', resv)) do
  committed = committed + tonumber(v)
end
local kind, credits, me = ARGV[6], tonumber(ARGV[7]), ARGV[4]
local result
if kind == 'reserve' then
  if ARGV[8] ~= '' then
    if now < grace then
      return {'wait', grace - now}
    end
    if committed + credits > tonumber(ARGV[8]) then
      result = {'over', committed}
    end
  end
  if not result then
    redis.call('HINCRBY', resv, me, credits)
    redis.call('ZADD', procs, now + lease_ms, me)
    result = {'ok', committed + credits}
  end
else
  local reserved = 0
  if kind == 'settle' then
    reserved = math.min(tonumber(ARGV[9]), tonumber(redis.call('HGET', resv, me) or '0'))
    if redis.call('HINCRBY', resv, me, -reserved) <= 0 then
      redis.call('HDEL', resv, me)
    end
  end
  redis.call('HINCRBY', meta, 'credits', credits)
  result = {'ok', committed + credits - reserved}
end
keep()
redis.call('SET', op, result[1] .. ' ' .. result[2], 'PX', ARGV[10])
return result
"""
)

# ARGV[1] credits the op reserved, ARGV[2] op ttl ms, ARGV[3] the process. Takes back a
# reservation whose caller gave up on it (cancelled, or its reply lost): if it was added, it is
# subtracted; if it has not run yet, it never will. Returns 1 when credits were given back.
GIVE_BACK = """
local resv, op = KEYS[6], KEYS[7]
local done = redis.call('GET', op)
if done and string.sub(done, 1, 3) == 'ok ' then
  local mine = tonumber(redis.call('HGET', resv, ARGV[3]) or '0')
  local back = math.min(mine, tonumber(ARGV[1]))
  if redis.call('HINCRBY', resv, ARGV[3], -back) <= 0 then
    redis.call('HDEL', resv, ARGV[3])
  end
  redis.call('SET', op, 'cancelled 0', 'PX', ARGV[2])
  return 1
end
if not done then
  redis.call('SET', op, 'cancelled 0', 'PX', ARGV[2])
end
return 0
"""

#: Every script by the name the store runs it under.
ALL = {
    "acquire": ACQUIRE,
    "renew": RENEW,
    "reassert": REASSERT,
    "release": RELEASE,
    "ready": READY,
    "pause": PAUSE,
    "credits": CREDITS,
    "give_back": GIVE_BACK,
}
