"""Sessions in Redis, Valkey or a Redis Cluster: nothing of a session lives only in one process.

    session_store: redis://127.0.0.1:6379/0                    # one Redis (a deploy config, cf.deploy)
    session_store: redis+cluster://10.0.0.1:7000,10.0.0.2:7000  # a Redis Cluster: any nodes, as seeds

Each session is one hash (model, version, steps, state, ttl, last step's token) whose idle TTL is Redis'
own key expiry (PEXPIRE, renewed by each read and step). A step's compare-and-set (store the new state
only if the session has consumed the steps this replica started from) is one Lua script, atomic in the
server; it is idempotent under the client's retries (a reply lost on a dropped connection is retried:
the step's token says it was applied). Live sessions per model are counted in sorted sets (score =
expiry) that the same scripts update.

Key layout (the same for both URLs): a session's id hashes to one of ``BUCKETS`` buckets (one for a
single Redis), and both keys a script touches carry that bucket's hash tag, so they share a Redis
Cluster slot while sessions spread over every slot's node::

    cf:s:{<tag>}:<session id>      the session's hash
    cf:live:<model>:{<tag>}        the model's live sessions in that bucket (id -> expiry, ms)
    cf:count:<model>               a cluster's last full count, shared by the replicas' gauges (``count``)

    >>> RedisSessions("redis+cluster://10.0.0.1:7000").keys("5f1c0a", "digits")  # connects on first use
    ['cf:s:{19046}:5f1c0a', 'cf:live:digits:{19046}']

Counting a model's live sessions sums its buckets (``count``). ``rediss://`` and ``rediss+cluster://``
use TLS; a cluster has only db 0. (Sessions stored under the earlier layout, ``cf:s:<id>`` and
``cf:live:<model>``, are not read: there were no deployed users to carry over.)

States are JSON with base64 arrays (``encode``/``decode``), never pickle: whoever can write to the
Redis must not be able to run code in a replica.

    >>> import numpy as np
    >>> state = [(np.ones((1, 2), np.float32), np.zeros((1, 2), np.float32))]
    >>> back = decode(encode(state))
    >>> type(back[0]).__name__, back[0][0].dtype.name, bool((back[0][0] == 1).all())
    ('tuple', 'float32', True)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import uuid
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from cellforge.serving.schema import ApiError

RETRIES = 60  # connection retries, backoff capped at 0.25 s: a redis-server restart (~1 s) is ridden out
SLOTS = 16384  # Redis Cluster's hash slots
# Live-session buckets in a cluster: a session's hash and its bucket's live set share a hash tag, so every
# script touches one slot; the buckets' tags sit on evenly spaced slots (every 4th), so sessions spread over
# every primary in proportion to the slots it serves. A primary carries whole buckets: of N primaries the
# busiest takes ceil(4096 / N) / 4096 of the steps (1,024 buckets would need 512 primaries where 4,096 need
# ~370, README's capacity plan). A count reads every bucket: 4,096 script calls in one pipeline per node,
# 101 ms and 23 ms of Redis CPU on 3 primaries (1,024: 25 ms and 6.7 ms; benchmarks/session_store.py).
BUCKETS = 4096
CONNECTIONS = 256  # a cluster client's connections per node (and its calls in flight, all nodes together)
TIME = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
"""
# KEYS: the session's hash, its bucket's live set (score = expiry in ms, the server's clock). Both renew
# the idle TTL (the key's and its live-set score).
TOUCH = TIME + """
local function touch(ttl)
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
end
"""
CREATE = TOUCH + """
redis.call('HSET', KEYS[1], 'model', ARGV[2], 'version', ARGV[3], 'steps', 0, 'state', '', 'ttl', ARGV[4],
           'last', '')
touch(ARGV[4])
return 1
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
redis.call('ZREM', KEYS[2], ARGV[2])
return redis.call('DEL', KEYS[1])
"""
# a bucket's live sessions: the expired ones (their hashes already gone by key expiry) are dropped first
COUNT = TIME + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)
return redis.call('ZCARD', KEYS[1])
"""


@functools.cache
def bucket_tags(n: int) -> tuple[str, ...]:
    """n hash tags (decimal strings) whose slots are evenly spaced: tag b's slot is b * SLOTS // n.
    The first match in 0, 1, 2, ... for each slot: the same in every process (~45 ms for 4096 tags).

    >>> from redis.crc import key_slot
    >>> [key_slot(b"{%s}" % t.encode()) for t in bucket_tags(4)]
    [0, 4096, 8192, 12288]
    """
    want = {b * SLOTS // n: b for b in range(n)}
    tags: list[str | None] = [None] * n
    left, i = n, 0
    while left:  # decimal strings below 110,000 reach every slot
        b = want.get(binascii.crc_hqx(str(i).encode(), 0) % SLOTS)  # Redis' slot: CRC16/XMODEM mod 16384
        if b is not None and tags[b] is None:
            tags[b], left = str(i), left - 1
        i += 1
    return tuple(tags)


def _torn_connection(e: BaseException) -> bool:
    """A redis-py 8.1 cluster client's own race, not an answer: when it re-reads the slot map (a node lost)
    while other calls are connecting, it closes their connections under them and they fail inside redis-py
    with AttributeError ('NoneType' object has no attribute 'writelines'): 4 calls in 1 failover run of 3
    with 150 steps in flight (the slow test in test_redis_cluster_store), and 5 in 5 runs of 64 creates at
    once on a new client before _connect. The call is retried like a ConnectionError."""
    import os

    import redis

    if not isinstance(e, (AttributeError, TypeError)) or e.__traceback__ is None:
        return False
    tb = e.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_filename.startswith(os.path.dirname(redis.__file__))


def is_cluster(url: str) -> bool:
    return url.startswith(("redis+cluster://", "rediss+cluster://"))


def cluster_options(url: str) -> dict[str, Any]:
    """``RedisCluster`` arguments from ``redis+cluster://[user:password@]host:port[,host:port...][/0]``
    (validated by ``DeployConfig``): every host a seed, so one that is down at start is not fatal.

    >>> o = cluster_options("rediss+cluster://:pw@10.0.0.1:7000,[::1]:7001/0")
    >>> [(n.host, n.port) for n in o["startup_nodes"]], o["password"], o["ssl"]
    ([('10.0.0.1', 7000), ('::1', 7001)], 'pw', True)
    """
    from urllib.parse import unquote

    from redis.asyncio.cluster import ClusterNode

    scheme, rest = url.split("://", 1)
    auth, _, hosts = rest.split("/", 1)[0].rpartition("@")
    user, _, password = auth.partition(":")
    nodes = []
    for hostport in hosts.split(","):
        host, _, port = hostport.rpartition(":") if hostport.rpartition(":")[2].isdigit() else (hostport, "", "6379")
        nodes.append(ClusterNode(host.strip("[]"), int(port)))
    return {"startup_nodes": nodes, "username": unquote(user) or None, "password": unquote(password) or None,
            "ssl": scheme == "rediss+cluster"}


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
    """The session store in Redis, with the async interface of ``sessions.ActorSessions``.

    ``redis://`` is one Redis with one bucket; ``redis+cluster://`` a Redis Cluster with ``BUCKETS``: the
    same keys either way, ``cf:s:{<tag>}:<id>`` and ``cf:live:<model>:{<tag>}``, a session's bucket (and
    so its tag) a hash of its id."""

    def __init__(self, url: str, retries: int = RETRIES):
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialBackoff, NoBackoff
        from redis.exceptions import ConnectionError, TimeoutError

        self.url, self.cluster = url, is_cluster(url)
        self.kind = "redis-cluster" if self.cluster else "redis"
        self.tags = bucket_tags(BUCKETS if self.cluster else 1)
        opts = {"socket_timeout": 5, "health_check_interval": 0}
        if self.cluster:  # follows MOVED/ASK, and finds a promoted replica when a primary is lost
            from redis.asyncio.cluster import RedisCluster

            # its own retries re-read the slot map at once, with no backoff (redis-py 8.1): a few of them,
            # then _call's backoff; and a pool past max_connections raises rather than waits: _call bounds it
            self.r = RedisCluster(**cluster_options(url), **opts, retry=Retry(NoBackoff(), 2),
                                  max_connections=CONNECTIONS)
            self._slots: asyncio.Semaphore | None = asyncio.Semaphore(CONNECTIONS)
            self._ready, self._ready_lock = False, asyncio.Lock()
        else:
            self.r = aioredis.Redis.from_url(url, **opts, retry=Retry(ExponentialBackoff(cap=0.25, base=0.01), retries),
                                             retry_on_error=[ConnectionError, TimeoutError])
            self._slots = None
        self._create, self._get, self._advance, self._repin, self._delete, self._count = (
            self.r.register_script(s) for s in (CREATE, GET, ADVANCE, REPIN, DELETE, COUNT))

    def keys(self, sid: str, model: str) -> list[str]:
        """The session's hash and its bucket's live set: one hash tag, so one slot in a cluster."""
        tag = self.tags[zlib.crc32(sid.encode()) % len(self.tags)]
        return [f"cf:s:{{{tag}}}:{sid}", f"cf:live:{model}:{{{tag}}}"]

    async def _call(self, make: Callable[[], Awaitable[Any]]) -> Any:
        """``make()``'s answer. A cluster's call is retried (backoff to 0.25 s, RETRIES times: ~15 s) while a
        node is unreachable or the cluster is down (a primary lost, until its replica is promoted: ~2 node
        timeouts); every call is safe to repeat (a step's token makes its retry idempotent)."""
        import redis.exceptions as rx

        transient = (rx.ConnectionError, rx.TimeoutError, rx.ClusterDownError, rx.TryAgainError, rx.SlotNotCoveredError)
        for attempt in range(RETRIES + 1 if self.cluster else 1):  # one Redis: redis-py's own retries
            try:
                if self._slots is None:
                    return await make()
                async with self._slots:
                    await self._connect()
                    return await make()
            except Exception as e:
                if isinstance(e, rx.AskError) and not self.cluster:  # MOVED <slot> <node>: a plain client at a cluster
                    raise ApiError(503, "unavailable", "session_store", f"the session store answered MOVED {e}: "
                                   "it is a Redis Cluster, give session_store: redis+cluster://host:port",
                                   headers={"Retry-After": "1"}) from None
                # before the first slot map, a cluster none of whose seeds answers is away, not broken
                away = isinstance(e, rx.RedisClusterException) and self.cluster and not self._ready
                if not isinstance(e, transient) and not away and not (self.cluster and _torn_connection(e)):
                    raise
                if attempt < RETRIES and self.cluster:
                    await asyncio.sleep(min(0.25, 0.01 * 2**attempt))
                    continue
                raise ApiError(503, "unavailable", "session_store", f"the session store is unavailable ({e}); "
                               "retry", headers={"Retry-After": "1"}) from None

    async def _connect(self) -> None:
        """Read the cluster's slot map once, before the first call: redis-py 8.1's first calls, when many
        start together on a new client, break each other's connections (AttributeError on a closed
        writer, 2 runs in 3 at 64 concurrent creates; none once connected first)."""
        if not self._ready:
            async with self._ready_lock:
                if not self._ready:
                    await self.r.initialize()
                    self._ready = True

    async def create(self, model: str, version: str, ttl_s: float) -> str:
        sid = uuid.uuid4().hex
        keys, args = self.keys(sid, model), [sid, model, version, int(ttl_s * 1000)]
        await self._call(lambda: self._create(keys=keys, args=args))
        return sid

    async def get(self, sid: str, model: str) -> dict[str, Any] | None:
        keys = self.keys(sid, model)
        got = await self._call(lambda: self._get(keys=keys, args=[sid, model]))
        if not got:
            return None
        version, steps, state = got
        return {"version": version.decode(), "steps": int(steps), "state": decode(state)}

    async def advance(self, sid: str, expected_steps: int, state: Any, steps: int, model: str = "") -> str:
        token = uuid.uuid4().hex  # the same on the client's retries of this call: they are idempotent
        keys, args = self.keys(sid, model), [sid, expected_steps, steps, encode(state), token]
        out = await self._call(lambda: self._advance(keys=keys, args=args))
        return out.decode() if isinstance(out, bytes) else out

    async def repin(self, sid: str, model: str, old: str, new: str) -> bool:
        """Move a session that has not stepped from version ``old`` to ``new`` (atomic, in Redis)."""
        key = self.keys(sid, model)[:1]
        return bool(await self._call(lambda: self._repin(keys=key, args=[model, old, new])))

    async def delete(self, sid: str, model: str) -> bool:
        keys = self.keys(sid, model)
        return bool(await self._call(lambda: self._delete(keys=keys, args=[model, sid])))

    async def count(self, model: str, max_age_s: float = 0.0) -> int:
        """Live sessions of ``model``: the sum over its buckets, each pruned of expired ids by the server's
        clock (the one its keys expire by), so the count is exact. In a cluster the buckets' calls go out as
        one pipeline per node, in parallel, and cost the cluster ~23 ms of CPU (benchmarks/session_store.py):
        ``max_age_s`` > 0 (each replica's gauge, every 2 s) takes a count another replica made within that
        long (kept in ``cf:count:<model>``), so the cluster counts each model about once per period, however
        many replicas ask."""
        keys = [f"cf:live:{model}:{{{t}}}" for t in self.tags]
        if len(keys) == 1:
            return int(await self._call(lambda: self._count(keys=keys)))
        shared = f"cf:count:{model}"
        if max_age_s > 0 and (got := await self._call(lambda: self.r.get(shared))) is not None:
            return int(got)
        n = sum(await self._call(lambda: self._pipelined_count(keys)))
        if max_age_s > 0:
            await self._call(lambda: self.r.set(shared, n, px=int(max_age_s * 1000)))
        return n

    async def _pipelined_count(self, keys: list[str]) -> list[int]:
        from redis.exceptions import NoScriptError

        for attempt in (0, 1):
            async with self.r.pipeline() as p:
                for k in keys:  # p.evalsha is refused in a cluster pipeline; the command itself is routed
                    p.execute_command("EVALSHA", self._count.sha, 1, k)
                out = await p.execute(raise_on_error=False)
            if attempt or not any(isinstance(x, NoScriptError) for x in out):
                break
            await self.r.script_load(COUNT)  # a node that restarted (or was promoted) lost its script cache
        if errors := [x for x in out if isinstance(x, Exception)]:
            raise errors[0]
        return [int(x) for x in out]

    async def close(self) -> None:
        await self.r.aclose()
