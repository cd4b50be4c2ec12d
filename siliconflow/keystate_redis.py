"""The key state in Redis, shared by every worker of every instance: the `Store` of keystate.py,
its choice of a key and its budgets in one Lua script each (one round trip, atomic)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from siliconflow.keystate import (
    CAP_SECONDS,
    NOT_SERVED_YET,
    TURN_GRACE,
    WAVE_HOLD,
    WAVE_SECONDS,
    YIELD_SECONDS,
    Answer,
    Ask,
    Known,
    Store,
)
from storage.redis_client import redis_client

# KEYS: none (names are built inside: this needs one Redis, not a cluster).
# ARGV: prefix, model, number of limits, then count and milliseconds for each limit, then key id and
# account for each candidate in order. Returns {key id, 0} or {"", milliseconds until one may, -1: never}.
# ARGV: prefix, model, learn ms, request ("" for none), force (0/1), turn grace ms, yield ms, the number
# of limits, then count and milliseconds for each limit, then the candidates in one argument, a line
# "key id<TAB>account<TAB>busy (0/1)" each (one argument packs in a fraction of the time of a hundred),
# then the milliseconds a probe of a key resting for balance holds it.
# Returns {key id, ticket} or {"", milliseconds until a key may be free (-1: never), 1 if it yielded}.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prefix, model, learn = ARGV[1], ARGV[2], tonumber(ARGV[3])
local request, force, grace, yield = ARGV[4], ARGV[5] == '1', tonumber(ARGV[6]), tonumber(ARGV[7])
local nlimits = tonumber(ARGV[8])
local limits = {}
for i = 1, nlimits do
  limits[i] = {tonumber(ARGV[7 + 2 * i]), tonumber(ARGV[8 + 2 * i])}
end
local turns, expiries = prefix .. 'turns:' .. model, prefix .. 'turnexp:' .. model
local not_served_yet = NOT_SERVED_YET_MS
local function waiting(expires)
  redis.call('ZADD', turns, 'NX', now - not_served_yet, request)
  redis.call('ZADD', expiries, expires, request)
  redis.call('PEXPIRE', turns, expires - now + grace)
  redis.call('PEXPIRE', expiries, expires - now + grace)
end
local function waited_longer()
  for _, gone in ipairs(redis.call('ZRANGEBYSCORE', expiries, '-inf', now)) do
    redis.call('ZREM', turns, gone)
    redis.call('ZREM', expiries, gone)
  end
  local mine = redis.call('ZSCORE', turns, request)
  local before = redis.call('ZCOUNT', turns, '-inf', '(' .. (mine or (now - not_served_yet)))
  if before > 0 and not mine then waiting(now + grace) end
  return before
end
local wave = redis.call('GET', prefix .. 'wave:' .. model)
local held = false
local soonest, chosen, room, inf = -1, nil, 0, 1e18
local rooms = {}
-- The free room is counted only when turns matter: with nobody else waiting, the first free key will do.
local turns_matter = request ~= '' and not force and redis.call('EXISTS', turns) == 1
for kid, account, busy in string.gmatch(ARGV[9 + 2 * nlimits], '([^\\t\\n]+)\\t([^\\t\\n]+)\\t([01])') do
  if chosen and not turns_matter then break end
  if redis.call('EXISTS', prefix .. 'dead:' .. kid, prefix .. 'broke:' .. kid) == 0 then
    local window = account .. ':' .. model
    local free_at = now
    local cool = redis.call('PTTL', prefix .. 'cool:' .. kid)
    if cool > 0 then free_at = math.max(free_at, now + cool) end
    local rest = redis.call('PTTL', prefix .. 'rest:' .. window)
    if rest > 0 then free_at = math.max(free_at, now + rest) end
    local budget, longest = {}, learn
    for j, limit in ipairs(limits) do
      budget[j] = limit
      if limit[2] > longest then longest = limit[2] end
    end
    local cap = redis.call('GET', prefix .. 'cap:' .. window)
    if cap then budget[#budget + 1] = {tonumber(cap), learn} end
    local hold = wave and busy == '1' and not cap
    local calls = prefix .. 'win:' .. window
    redis.call('ZREMRANGEBYSCORE', calls, '-inf', now - longest)
    local left = inf
    for _, limit in ipairs(budget) do
      local inside = redis.call('ZRANGEBYSCORE', calls, '(' .. (now - limit[2]), '+inf', 'WITHSCORES')
      local count = #inside / 2
      if count >= limit[1] then
        free_at = math.max(free_at, tonumber(inside[2 * (count - limit[1] + 1)]) + limit[2])
      end
      left = math.min(left, limit[1] - count)
    end
    if hold and free_at <= now and redis.call('ZCOUNT', calls, '(' .. (now - learn), '+inf') >= tonumber(wave) then
      held = true
    elseif free_at <= now then
      if not chosen then chosen = {kid, calls, longest} end
      if not rooms[window] then
        rooms[window] = true
        room = math.min(room + left, inf)
      end
    elseif soonest < 0 or free_at - now < soonest then
      soonest = free_at - now
    end
  end
end
if chosen then
  if request ~= '' and not force and waited_longer() >= room then
    return {'', yield, 1}
  end
  local ticket = now .. ':' .. redis.call('INCR', prefix .. 'seq')
  redis.call('ZADD', chosen[2], now, ticket)
  redis.call('PEXPIRE', chosen[2], chosen[3])
  if request ~= '' and redis.call('ZSCORE', turns, request) then
    redis.call('ZADD', turns, now, request)
    redis.call('ZADD', expiries, now + grace, request)
  end
  local probing = 0
  if redis.call('EXISTS', prefix .. 'backoff:' .. chosen[1]) == 1 then
    redis.call('SET', prefix .. 'broke:' .. chosen[1], 'probe', 'PX', tonumber(ARGV[10 + 2 * nlimits]))
    probing = 1
  end
  return {chosen[1], ticket, probing}
end
if held and (soonest < 0 or soonest > HOLD_MS) then soonest = HOLD_MS end
if soonest >= 0 and request ~= '' then waiting(now + soonest + grace) end
return {'', soonest, 0}
"""
_ACQUIRE = _ACQUIRE.replace("NOT_SERVED_YET_MS", str(int(NOT_SERVED_YET * 1000))).replace("HOLD_MS", str(int(WAVE_HOLD * 1000)))

# ARGV: prefix, account:model, ticket, rest ms, learn ms, cap ms. Returns the cap.
_REFUSED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prefix, window, ticket = ARGV[1], ARGV[2], ARGV[3]
local rest, learn, keep = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
redis.call('ZREM', prefix .. 'win:' .. window, ticket)
local left = redis.call('ZCOUNT', prefix .. 'win:' .. window, '(' .. (now - learn), '+inf')
local cap = redis.call('GET', prefix .. 'cap:' .. window)
if cap and tonumber(cap) < left then left = tonumber(cap) end
if left < 1 then left = 1 end
redis.call('SET', prefix .. 'cap:' .. window, left, 'PX', keep)
redis.call('SET', prefix .. 'rest:' .. window, '1', 'PX', math.max(rest, 1))
local wave = redis.call('GET', prefix .. 'wave:' .. ARGV[7])
local least = left
if wave and tonumber(wave) < least then least = tonumber(wave) end
redis.call('SET', prefix .. 'wave:' .. ARGV[7], least, 'PX', math.max(math.min(rest, WAVE_MS), 1))
return left
"""
_REFUSED = _REFUSED.replace("WAVE_MS", str(int(WAVE_SECONDS * 1000)))


class RedisStore(Store):
    """Facts in Redis, shared by every worker of every instance; names start with `prefix`."""

    kind = "redis"

    def __init__(self, url: str, prefix: str = "sfp:"):
        self.prefix = prefix
        # Short socket timeouts: an unreachable Redis costs a request a fraction of a second, once.
        self.client = redis_client(url, socket_timeout=1)
        self._acquire = self.client.register_script(_ACQUIRE)
        self._refused = self.client.register_script(_REFUSED)

    def acquire(self, ask: Ask) -> Answer:
        args: list[Any] = [
            self.prefix,
            ask.model,
            int(ask.learn_seconds * 1000),
            ask.request or "",
            int(ask.force),
            int(TURN_GRACE * 1000),
            int(YIELD_SECONDS * 1000),
            len(ask.limits),
        ]
        for limit in ask.limits:
            args += [limit.count, int(limit.seconds * 1000)]
        args.append(
            "\n".join(
                f"{c.key_id}\t{c.account.replace(chr(9), ' ').replace(chr(10), ' ')}\t{int(c.busy)}" for c in ask.candidates
            )
        )
        args.append(max(int(ask.probe_seconds * 1000), 1))
        answer = self._acquire(args=args)
        if answer[0]:
            return Answer(answer[0].decode(), answer[1].decode(), probing=int(answer[2]) == 1)
        wait = int(answer[1])
        return Answer(wait=None if wait < 0 else wait / 1000, yielded=int(answer[2]) == 1)

    def refused(self, account: str, model: str, ticket: str, rest: float, learn_seconds: float) -> int:
        return int(
            self._refused(
                args=[
                    self.prefix,
                    f"{account}:{model}",
                    ticket,
                    int(rest * 1000),
                    int(learn_seconds * 1000),
                    int(CAP_SECONDS * 1000),
                    model,
                ]
            )
        )

    def get(self, names: Sequence[str]) -> dict[str, Known]:
        if not names:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.get(self.prefix + name)
            pipe.pttl(self.prefix + name)
        answers = pipe.execute()
        found = {}
        for name, value, ttl in zip(names, answers[::2], answers[1::2], strict=True):
            if value is not None:
                found[name] = (value.decode(), None if ttl < 0 else ttl / 1000)
        return found

    def live(self, prefix: str) -> dict[str, Known]:
        names = [raw.decode()[len(self.prefix) :] for raw in self.client.scan_iter(match=self.prefix + prefix + "*", count=500)]
        return self.get(names)

    def put(self, name: str, value: str, seconds: float | None) -> None:
        self.client.set(self.prefix + name, value, px=None if seconds is None else max(int(seconds * 1000), 1))

    def drop(self, name: str) -> None:
        self.client.delete(self.prefix + name)

    def claim(self, name: str, seconds: float) -> bool:
        return bool(self.client.set(self.prefix + name, "1", nx=True, px=max(int(seconds * 1000), 1)))

    name = "Redis"

    @property
    def failures(self) -> tuple[type[Exception], ...]:
        import redis

        return (redis.RedisError, OSError)

    def failure(self, exc: Exception) -> str:
        import redis

        if isinstance(exc, redis.ResponseError):  # it answered, but with an error: say which
            return f"Redis answered with an error ({str(exc)[:200]})"
        return f"Redis cannot be reached ({type(exc).__name__})"

    def ping(self) -> None:
        """A write, as drawing does: a Redis out of memory still answers PING and reads."""
        self.client.set(self.prefix + "ping", "1", ex=60)

    def describe(self) -> dict[str, Any]:
        return {"kind": "redis", "shared_by": "every worker of every instance using this Redis"}
