"""Sessions in Redis (or Valkey): nothing of a session lives only in one process.

    session_store: redis://127.0.0.1:6379/0        # in a deploy config (a Serve YAML's args, cf.deploy)

Each session is one hash ``cf:s:<id>`` (model, version, steps, state, ttl, last step's token) whose
idle TTL is Redis' own key expiry (PEXPIRE, renewed by each read and step). A step's compare-and-set
(store the new state only if the session has consumed the steps this replica started from) is one
Lua script, atomic in the server; it is idempotent under the client's retries (a reply lost on a
dropped connection is retried: the step's token says it was applied). Live sessions per model are
counted in a sorted set (``cf:live:<model>``, score = expiry) that the same scripts update. (In Redis
Cluster mode both keys of a script must share a slot: shard by model, or run one Redis per shard.)

States are JSON with base64 arrays (``encode``/``decode``), never pickle: whoever can write to the
Redis must not be able to run code in a replica.

    >>> import numpy as np
    >>> state = [(np.ones((1, 2), np.float32), np.zeros((1, 2), np.float32))]
    >>> back = decode(encode(state))
    >>> type(back[0]).__name__, back[0][0].dtype.name, bool((back[0][0] == 1).all())
    ('tuple', 'float32', True)
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import numpy as np

from cellforge.serving.schema import ApiError

RETRIES = 60  # connection retries, backoff capped at 0.25 s: a redis-server restart (~1 s) is ridden out
# KEYS: the session's hash, its model's live set. Both renew the idle TTL (the key's and its live-set score).
TOUCH = """
local function touch(ttl)
  redis.call('PEXPIRE', KEYS[1], ttl)
  local t = redis.call('TIME')
  redis.call('ZADD', KEYS[2], t[1] * 1000 + math.floor(t[2] / 1000) + ttl, ARGV[1])
end
"""
GET = TOUCH + """
local v = redis.call('HMGET', KEYS[1], 'model', 'version', 'steps', 'state', 'ttl')
if not v[1] or v[1] ~= ARGV[2] then return false end
touch(v[5])
return {v[2], v[3], v[4] or ''}
"""
ADVANCE = TOUCH + """
local v = redis.call('HMGET', KEYS[1], 'steps', 'ttl', 'last')
if not v[1] then return 'gone' end
if tonumber(v[1]) ~= tonumber(ARGV[2]) then
  if tonumber(v[1]) == tonumber(ARGV[3]) and v[3] == ARGV[5] then return 'ok' end
  return 'conflict'
end
redis.call('HSET', KEYS[1], 'steps', ARGV[3], 'state', ARGV[4], 'last', ARGV[5])
touch(v[2])
return 'ok'
"""
REPIN = """
local v = redis.call('HMGET', KEYS[1], 'model', 'version', 'steps')
if v[1] ~= ARGV[1] or v[2] ~= ARGV[2] or tonumber(v[3]) ~= 0 then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[3])
return 1
"""
DELETE = """
if redis.call('HGET', KEYS[1], 'model') ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""


def _tree(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return {"nd": [x.dtype.str, list(x.shape), base64.b64encode(np.ascontiguousarray(x).tobytes()).decode()]}
    if isinstance(x, tuple):
        return {"tuple": [_tree(v) for v in x]}
    if isinstance(x, list):
        return [_tree(v) for v in x]
    if isinstance(x, dict):
        return {"dict": {k: _tree(v) for k, v in x.items()}}
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


def _untree(x: Any) -> Any:
    if isinstance(x, list):
        return [_untree(v) for v in x]
    if isinstance(x, dict):
        if "nd" in x:
            dtype, shape, data = x["nd"]
            return np.frombuffer(base64.b64decode(data), dtype=np.dtype(dtype)).reshape(shape).copy()
        if "tuple" in x:
            return tuple(_untree(v) for v in x["tuple"])
        return {k: _untree(v) for k, v in x["dict"].items()}
    return x


def encode(state: Any) -> bytes:
    return json.dumps(_tree(state), separators=(",", ":")).encode()


def decode(data: bytes | str) -> Any:
    return _untree(json.loads(data)) if data else None


class RedisSessions:
    """The session store in Redis, with the async interface of ``sessions.ActorSessions``."""

    kind = "redis"

    def __init__(self, url: str):
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialBackoff
        from redis.exceptions import ConnectionError, TimeoutError

        self.url = url
        self.r = aioredis.Redis.from_url(url, retry=Retry(ExponentialBackoff(cap=0.25, base=0.01), RETRIES),
                                         retry_on_error=[ConnectionError, TimeoutError], socket_timeout=5,
                                         health_check_interval=0)
        self._get, self._advance, self._repin, self._delete = (self.r.register_script(s)
                                                               for s in (GET, ADVANCE, REPIN, DELETE))

    async def _call(self, coro):
        from redis.exceptions import ConnectionError, TimeoutError

        try:
            return await coro
        except (ConnectionError, TimeoutError) as e:  # retried RETRIES times already
            raise ApiError(503, "unavailable", "session_store", f"the session store is unreachable ({e}); retry",
                           headers={"Retry-After": "1"}) from None

    async def create(self, model: str, version: str, ttl_s: float) -> str:
        sid, ttl = uuid.uuid4().hex, int(ttl_s * 1000)
        async with self.r.pipeline(transaction=True) as p:
            p.hset(f"cf:s:{sid}", mapping={"model": model, "version": version, "steps": 0, "state": "",
                                           "ttl": ttl, "last": ""})
            p.pexpire(f"cf:s:{sid}", ttl)
            p.zadd(f"cf:live:{model}", {sid: time.time() * 1000 + ttl})
            await self._call(p.execute())
        return sid

    async def get(self, sid: str, model: str) -> dict[str, Any] | None:
        got = await self._call(self._get(keys=[f"cf:s:{sid}", f"cf:live:{model}"], args=[sid, model]))
        if not got:
            return None
        version, steps, state = got
        return {"version": version.decode(), "steps": int(steps), "state": decode(state)}

    async def advance(self, sid: str, expected_steps: int, state: Any, steps: int, model: str = "") -> str:
        token = uuid.uuid4().hex  # the same on the client's retries of this call: they are idempotent
        out = await self._call(self._advance(keys=[f"cf:s:{sid}", f"cf:live:{model}"],
                                             args=[sid, expected_steps, steps, encode(state), token]))
        return out.decode() if isinstance(out, bytes) else out

    async def repin(self, sid: str, model: str, old: str, new: str) -> bool:
        """Move a session that has not stepped from version ``old`` to ``new`` (atomic, in Redis)."""
        return bool(await self._call(self._repin(keys=[f"cf:s:{sid}"], args=[model, old, new])))

    async def delete(self, sid: str, model: str) -> bool:
        gone = bool(await self._call(self._delete(keys=[f"cf:s:{sid}"], args=[model])))
        if gone:
            await self._call(self.r.zrem(f"cf:live:{model}", sid))
        return gone

    async def count(self, model: str) -> int:
        key = f"cf:live:{model}"
        async with self.r.pipeline(transaction=True) as p:
            p.zremrangebyscore(key, "-inf", time.time() * 1000)
            p.zcard(key)
            return (await self._call(p.execute()))[1]

    async def close(self) -> None:
        await self.r.aclose()
