"""The Lua scripts that make each RedisStore operation one atomic compare-and-act.

A lease is the hash ``lease:<id>`` {owner, token} with a PEXPIRE of its TTL. Tokens come
from one counter (``tokens``) that never expires, raised to at least the server's clock in
microseconds: so a new token is greater than every token issued before, even after a
Redis without persistence restarted empty. Writes compare the lease's token first.
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

# KEYS: lease. ARGV: token, ttl_ms. Returns 1 when extended, 0 when the lease was lost.
RENEW = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: lease, entry. ARGV: token, entry bytes, entry ttl_ms. Returns 1 when written.
CHECKPOINT = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1
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
