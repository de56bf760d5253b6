"""The Lua scripts that make each RedisStore operation one atomic compare-and-act.

A lease is the hash ``lease:<id>`` {owner, token} with a PEXPIRE of its TTL. Tokens come
from one counter (``tokens``) that never expires, raised to at least the server's clock in
microseconds: so a new token is greater than every token issued before, even after a
Redis without persistence restarted empty. Writes compare the lease's token first. The
``_MANY`` scripts act on a whole chunk of sessions in one call: one command and one reply
per chunk, where a pipeline would still pack and parse one command per session.
"""

from __future__ import annotations

# KEYS: lease, token counter. ARGV: owner, ttl_ms.
# Returns {1, token as text} when taken, {0, holder, pttl} when another owner holds it.
ACQUIRE = """
local holder = redis.call('HGET', KEYS[1], 'owner')
if holder and holder ~= ARGV[1] then
  return {0, holder, redis.call('PTTL', KEYS[1])}
end
local now = redis.call('TIME')
local token = math.max(tonumber(redis.call('GET', KEYS[2]) or 0) + 1, now[1] * 1000000 + now[2])
local text = string.format('%d', token)
redis.call('SET', KEYS[2], text)
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'token', text)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, text}
"""

# KEYS: leases. ARGV: ttl_ms, then one token per lease.
# Extends each lease whose token matches; returns 1 (extended) or 0 (lost) per lease.
RENEW_MANY = """
local extended = {}
for i, lease in ipairs(KEYS) do
  if redis.call('HGET', lease, 'token') == ARGV[i + 1] then
    redis.call('PEXPIRE', lease, ARGV[1])
    extended[i] = 1
  else
    extended[i] = 0
  end
end
return extended
"""

# KEYS: lease and entry of each session, in pairs. ARGV: token, entry bytes, entry ttl_ms
# of each, in threes. Writes each entry whose lease token matches; returns 1 (written) or
# 0 (lost) per session.
CHECKPOINT_MANY = """
local written = {}
for i = 1, #KEYS / 2 do
  local arg = 3 * i - 2
  if redis.call('HGET', KEYS[2 * i - 1], 'token') == ARGV[arg] then
    redis.call('SET', KEYS[2 * i], ARGV[arg + 1], 'PX', ARGV[arg + 2])
    written[i] = 1
  else
    written[i] = 0
  end
end
return written
"""

# KEYS: lease, entry or none. ARGV: token, released channel. Deletes the lease (and the
# entry, when given) and announces the release. Returns 1 when done, 0 when lost.
RELEASE = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
redis.call('DEL', unpack(KEYS))
redis.call('PUBLISH', ARGV[2], '')
return 1
"""

# KEYS: lease. ARGV: handover channel prefix, request payload.
# Publishes the request on the holder's channel; returns the holder, or false when none.
REQUEST_HANDOVER = """
local holder = redis.call('HGET', KEYS[1], 'owner')
if not holder then return false end
redis.call('PUBLISH', ARGV[1] .. holder, ARGV[2])
return holder
"""
