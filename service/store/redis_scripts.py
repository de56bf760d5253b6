"""The Lua scripts that make each RedisStore operation one atomic compare-and-act.

A process is alive while its key ``owner:<owner>`` exists (PEXPIRE of its TTL, one
``HEARTBEAT`` renews it). A lease is the hash ``lease:<id>`` {owner, token, and the asker:
the last process that asked for a hand-over}, live while its owner is; the hash's own
PEXPIRE (long) only bounds how long a dead owner's leases stay. ``ACQUIRE`` reads the
holder's owner key by a name it builds from the hash, a key not passed in KEYS: these
scripts are for a single Redis (or Valkey) server or a replicated one, not Redis Cluster.
Tokens come
from one counter (``tokens``) that never expires, raised to at least the server's clock in
microseconds: so a new token is greater than every token issued before, even after a
Redis without persistence restarted empty. Writes compare the lease's token first. The
``_MANY`` scripts act on a whole chunk of sessions in one call: one command and one reply
per chunk, where a pipeline would still pack and parse one command per session.
Messages to a process are published on its inbox channel ``<prefix><owner>``.
"""

from __future__ import annotations

# Sets ``token`` (as number) and ``text``: a token greater than every one issued before.
# KEYS[TOKENS_KEY] is the counter.
_NEW_TOKEN = """
local now = redis.call('TIME')
local token = math.max(tonumber(redis.call('GET', KEYS[%d]) or 0) + 1, now[1] * 1000000 + now[2])
local text = string.format('%%d', token)
redis.call('SET', KEYS[%d], text)
"""

# An inbox message: a JSON header, a newline, a payload (a grant's entry, else empty).
_NOTIFY = """
local function notify(prefix, to, header, payload)
  redis.call('PUBLISH', prefix .. to, cjson.encode(header) .. '\\n' .. (payload or ''))
end
"""

# KEYS: owner. ARGV: ttl_ms. Returns 1 when the owner was alive (its key renewed), 0 when
# it had lapsed or never beat (its key made again).
HEARTBEAT = """
if redis.call('PEXPIRE', KEYS[1], ARGV[1]) == 1 then return 1 end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
return 0
"""

# KEYS: lease, token counter. ARGV: owner, record ttl_ms, inbox prefix or '' (do not ask),
# id, owner key prefix. Returns {1, token as text} when taken, {0, holder, its pttl} when
# another live owner holds it; asking records the asker on the lease and sends the holder
# a hand-over request.
ACQUIRE = (
    _NOTIFY
    + """
local holder = redis.call('HGET', KEYS[1], 'owner')
if holder and holder ~= ARGV[1] then
  local alive_ms = redis.call('PTTL', ARGV[5] .. holder)
  if alive_ms > 0 then
    if ARGV[3] ~= '' then
      redis.call('HSET', KEYS[1], 'asker', ARGV[1])
      notify(ARGV[3], holder, {kind = 'request', session_id = ARGV[4], to_owner = ARGV[1]})
    end
    return {0, holder, alive_ms}
  end
end
"""
    + _NEW_TOKEN % (2, 2)
    + """
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'token', text)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, text}
"""
)

# KEYS: leases. ARGV: record ttl_ms, then one token per lease.
# Keeps each lease whose token matches longer; returns 1 (held) or 0 (lost) per lease.
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

# No KEYS. ARGV: key prefix, then one packed string of the whole chunk: per session the
# little-endian u16 length of its id, u16 of its token's text, u32 of its entry, u64 entry
# ttl_ms, then the id, the token, the entry (``redis_store.pack_writes``). One argument
# rather than five per session: packing and parsing thousands of arguments was most of a
# checkpoint's cost to the event loop. Writes each entry whose lease token matches; returns
# the (1-based) positions of the sessions whose lease was lost.
CHECKPOINT_MANY = """
local prefix, packed = ARGV[1], ARGV[2]
local lost, at, n = {}, 1, 0
while at <= #packed do
  local id_len, token_len, entry_len, ttl_ms
  id_len, token_len, entry_len, ttl_ms, at = struct.unpack('<I2I2I4I8', packed, at)
  local id = string.sub(packed, at, at + id_len - 1)
  at = at + id_len
  local token = string.sub(packed, at, at + token_len - 1)
  at = at + token_len
  n = n + 1
  if redis.call('HGET', prefix .. 'lease:' .. id, 'token') == token then
    redis.call('SET', prefix .. 'session:' .. id, string.sub(packed, at, at + entry_len - 1),
      'PX', ttl_ms)
  else
    lost[#lost + 1] = n
  end
  at = at + entry_len
end
return lost
"""

# KEYS: lease, entry. ARGV: token, inbox prefix, session id. Deletes the lease and the
# entry and tells the asker, if any. Returns 1 when done, 0 when lost. (A release without
# the entry is RELEASE_MANY.)
DELETE = (
    _NOTIFY
    + """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
local asker = redis.call('HGET', KEYS[1], 'asker')
redis.call('DEL', unpack(KEYS))
if asker then notify(ARGV[2], asker, {kind = 'released', session_id = ARGV[3]}) end
return 1
"""
)

# No KEYS. ARGV: key prefix, inbox prefix, then the chunk packed as per session the u16
# length of its id and u16 of its token's text, then both (``redis_store.pack_releases``).
# Deletes each lease whose token matches and tells its asker, if any; returns the
# (1-based) positions of the leases that were already lost.
RELEASE_MANY = (
    _NOTIFY
    + """
local prefix, inbox, packed = ARGV[1], ARGV[2], ARGV[3]
local lost, at, n = {}, 1, 0
while at <= #packed do
  local id_len, token_len
  id_len, token_len, at = struct.unpack('<I2I2', packed, at)
  local id = string.sub(packed, at, at + id_len - 1)
  local token = string.sub(packed, at + id_len, at + id_len + token_len - 1)
  at = at + id_len + token_len
  n = n + 1
  local lease = prefix .. 'lease:' .. id
  if redis.call('HGET', lease, 'token') == token then
    local asker = redis.call('HGET', lease, 'asker')
    redis.call('DEL', lease)
    if asker then notify(inbox, asker, {kind = 'released', session_id = id}) end
  else
    lost[#lost + 1] = n
  end
end
return lost
"""
)

# KEYS: lease, entry, token counter. ARGV: token, entry bytes, entry ttl_ms, new owner,
# lease record ttl_ms, inbox prefix, session id. When the token is live: writes the entry, gives
# the lease to the new owner under a new token, sends it the grant (with the entry) and
# tells any other asker. Returns the new token as text, or false when the lease was lost.
HAND_OVER = (
    _NOTIFY
    + """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return false end
local asker = redis.call('HGET', KEYS[1], 'asker')
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
"""
    + _NEW_TOKEN % (3, 3)
    + """
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'owner', ARGV[4], 'token', text)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
notify(ARGV[6], ARGV[4], {kind = 'grant', session_id = ARGV[7], token = text}, ARGV[2])
if asker and asker ~= ARGV[4] then
  notify(ARGV[6], asker, {kind = 'released', session_id = ARGV[7]})
end
return text
"""
)
