"""State that outlives a replica: streaming sessions, the model registry and batch statistics.

One detached, named Ray actor holds them, so a session's recurrent state (h, c) survives
autoscaling and the loss of the replica that served its last step: any replica can take the
next step. Idle sessions expire after their deployment's ``session_ttl_s``.

    >>> store = get_store()                                              # doctest: +SKIP
    >>> sid = ray.get(store.create.remote("digits", "3f2a9c", 600.0))    # doctest: +SKIP

If the store actor itself dies, Ray restarts it empty: sessions then answer 404 and clients
start new ones (the state is in memory only, by design: it is cheap to rebuild from the stream).
Where it can, the actor keeps its sessions in a redis-server of its own, its child on a Unix socket
(``serving.local_redis``): replicas then step them with one Redis call instead of a Ray actor call
(``LocalSessions``); they still live and die with the actor.
A deployment that needs sessions to outlive any process sets ``session_store: redis://host:port/db``
or, for a Redis Cluster, ``redis+cluster://host:port[,host:port...]`` (``cellforge.serving.redis_store``);
replicas reach any store through ``open_sessions``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from typing import Any

import ray

from cellforge.serving.traffic import CanaryConfig, VersionStats, public, verdict

log = logging.getLogger("cellforge")
STORE_NAME, NAMESPACE = "cellforge-state", "cellforge"
SWEEP_EVERY_S = 1.0  # how often expired sessions are looked for (each call checks the clock)
# calls to the actor's own redis-server before asking the actor again (a refused Unix socket fails at once)
LOCAL_RETRIES = 3
ACTOR_RETRIES = 12  # calls while Ray restarts the actor: backoff 0.05 s doubling to 1 s, ~8 s in all


class Store:
    """Sessions (id -> model, version, state, steps, expiry), registered models, batch stats, and each
    model's canary (``serving.traffic``) with the live deploy config a promote starts from."""

    def __init__(self):
        self.sessions: dict[str, dict[str, Any]] = {}
        self.models: dict[str, dict[str, Any]] = {}
        self.canaries: dict[str, dict[str, Any]] = {}  # model -> its canary's record (see set_canary)
        self.configs: dict[str, dict[str, Any]] = {}  # model -> its live deploy config
        self.described: dict[str, float] = {}  # model -> when the replica whose description is kept started
        self.stats: dict[str, dict[str, dict[str, Any]]] = {}  # app -> replica -> cumulative counters
        self._swept = time.monotonic()
        self.local = None  # the local redis-server holding the sessions (local_server), if any
        self.local_why: str | None = None  # why the sessions stay in this actor, once decided

    def local_server(self) -> str | None:
        """The URL of this actor's redis-server, where the sessions live (started on the first call, and
        again if it died: its sessions are then gone, as with the actor's own); None: they live in this
        actor (no redis-server here, not Linux, a Ray on several machines, or the server would not start).
        Decided once, on the first call, before any session exists."""
        from cellforge.serving.local_redis import LocalRedis, unavailable

        if self.local is not None:
            if self.local.alive():
                return self.local.url
            log.warning("the session store's redis-server exited (status %s): its sessions are lost; starting "
                        "another", self.local.proc.returncode)
        elif self.local_why is not None:
            return None
        else:
            self.local_why = unavailable(ray.util.get_node_ip_address() if ray.is_initialized() else None)
            if self.local_why is not None:
                log.info("sessions are kept in the store actor: %s", self.local_why)
                return None
        try:
            self.local = LocalRedis.start()
        except Exception as e:  # noqa: BLE001 (a server that will not start leaves the actor's own store)
            if self.local is not None:  # sessions already live in Redis: no falling back to the actor's dict;
                log.warning("the session store's redis-server did not restart: %s", e)
                return self.local.url  # the replicas answer 503 naming session_store, and ask again
            self.local_why = f"redis-server did not start ({e})"
            log.warning("sessions are kept in the store actor: %s", self.local_why)
            return None
        return self.local.url

    def _sweep(self) -> None:
        now = time.monotonic()
        if now - self._swept >= SWEEP_EVERY_S:
            self._swept = now
            for sid in [k for k, s in self.sessions.items() if s["expires"] <= now]:
                del self.sessions[sid]

    # sessions ----------------------------------------------------------------------
    def create(self, model: str, version: str, ttl_s: float) -> str:
        self._sweep()
        sid = uuid.uuid4().hex
        self.sessions[sid] = {"model": model, "version": version, "state": None, "steps": 0, "ttl": ttl_s,
                              "expires": time.monotonic() + ttl_s}
        return sid

    def get(self, sid: str, model: str) -> dict[str, Any] | None:
        """The session (touching its expiry), or None if unknown, expired or another model's."""
        self._sweep()
        s = self.sessions.get(sid)
        if s is None or s["model"] != model or s["expires"] <= time.monotonic():
            return None
        s["expires"] = time.monotonic() + s["ttl"]
        return {k: s[k] for k in ("version", "state", "steps")}

    def advance(self, sid: str, expected_steps: int, state: Any, steps: int) -> str:
        """Store new state if nobody advanced the session meanwhile: 'ok', 'gone' or 'conflict'."""
        s = self.sessions.get(sid)
        if s is None:
            return "gone"
        if s["steps"] != expected_steps:
            return "conflict"
        s.update(state=state, steps=steps, expires=time.monotonic() + s["ttl"])
        return "ok"

    def repin(self, sid: str, model: str, old: str, new: str) -> bool:
        """Move a session that has not stepped yet from version ``old`` to ``new`` (a canary that failed
        its first step, or was rolled back before it); False if it has stepped or is not on ``old``."""
        s = self.sessions.get(sid)
        if s is None or s["model"] != model or s["version"] != old or s["steps"]:
            return False
        s["version"] = new
        return True

    def delete(self, sid: str, model: str) -> bool:
        s = self.sessions.get(sid)
        if s is None or s["model"] != model:
            return False
        del self.sessions[sid]
        return True

    def count(self, model: str) -> int:
        self._sweep()
        return sum(s["model"] == model for s in self.sessions.values())

    # registry and statistics -------------------------------------------------------
    def register(self, name: str, info: dict[str, Any], started: float = 0.0) -> None:
        self._describe(name, info, None, started)

    def _describe(self, app: str, info: dict[str, Any], config: dict[str, Any] | None, started: float) -> None:
        """Keep a live replica's description of its model (and its deploy config) unless a replica that
        started later gave one: in a rolling update the old replicas, draining their last requests, still
        report theirs, and ``GET /v1/models`` named the old version again seconds after a redeploy."""
        if started < self.described.get(app, float("-inf")):
            return
        self.described[app] = started
        self.models[app] = info
        if config is not None:
            self.configs[app] = config

    def registered(self) -> dict[str, dict[str, Any]]:
        return dict(self.models)

    def report(self, app: str, replica: str, counters: dict[str, Any], info: dict[str, Any] | None = None,
               config: dict[str, Any] | None = None, started: float = 0.0) -> None:
        """A replica's cumulative counters, and its model's description and deploy config: the registry
        heals from these reports after the actor restarted empty. A live replica's counters hold what
        each version answered (``versions``): over all replicas they may roll the canary back."""
        self.stats.setdefault(app, {})[replica] = counters
        if info is not None:
            self._describe(app, info, config, started)
        c = self.canaries.get(app)
        if c is not None and c["state"] == "active" and "versions" in counters:
            why = verdict(self.version_stats(app).get(c["version"], VersionStats()), CanaryConfig.parse(
                {k: c[k] for k in ("canary", "max_error_rate", "min_requests")}))
            if why:
                self.roll_back(app, c["version"], why)

    def version_stats(self, app: str) -> dict[str, VersionStats]:
        """What each version answered, over every live replica of ``app``."""
        parts: dict[str, list] = {}
        for c in self.stats.get(app, {}).values():
            for version, s in c.get("versions", {}).items():
                parts.setdefault(version, []).append(s)
        return {v: VersionStats.merged(p) for v, p in parts.items()}

    # canaries ----------------------------------------------------------------------
    def set_canary(self, app: str, entry: dict[str, Any]) -> None:
        """A canary's record: ``version``, ``app`` (its Serve app), ``config`` (its deploy config), the
        ``CanaryConfig`` fields, ``state`` (active, rolled_back) and ``reason``. Its counts start afresh."""
        self.canaries[app] = {**entry, "state": "active", "reason": None, "removed": False, "since": time.time(),
                              "seen": []}
        for c in self.stats.get(app, {}).values():
            c.get("versions", {}).pop(entry["version"], None)

    def canary(self, app: str, replica: str | None = None) -> dict[str, Any] | None:
        """The canary's record; a live ``replica`` that asks is listed in its ``seen`` (deploy waits for
        every live replica to have read it, so a canary takes traffic once deploy returns)."""
        c = self.canaries.get(app)
        if c is not None and replica is not None and replica not in c["seen"]:
            c["seen"].append(replica)
        return c

    def roll_back(self, app: str, version: str, reason: str) -> bool:
        """Stop sending traffic to the canary ``version`` (the live replicas learn it within a flush);
        False if it was not active."""
        c = self.canaries.get(app)
        if c is None or c["version"] != version or c["state"] != "active":
            return False
        c.update(state="rolled_back", reason=reason)
        return True

    def claim_removal(self, app: str, version: str) -> bool:
        """True once for a canary no longer active: whoever gets it deletes the canary's Serve app."""
        c = self.canaries.get(app)
        if c is None or c["version"] != version or c["state"] == "active" or c["removed"]:
            return False
        c["removed"] = True
        return True

    def end_canary(self, app: str, version: str) -> None:
        """Forget a canary that was promoted (it is the live version now)."""
        if (c := self.canaries.get(app)) is not None and c["version"] == version:
            del self.canaries[app]

    def traffic(self, app: str) -> dict[str, Any]:
        """The canary's record (without its config) and each version's requests, errors and latency."""
        c = self.canaries.get(app)
        return {"canary": public(c), "versions": {v: s.summary() for v, s in sorted(self.version_stats(app).items())}}

    def set_config(self, app: str, config: dict[str, Any]) -> None:
        self.configs[app] = config

    def config(self, app: str) -> dict[str, Any] | None:
        return self.configs.get(app)

    def batch_stats(self, app: str) -> dict[str, Any]:
        """Batch sizes (requests per forward pass) summed over every replica that served ``app``."""
        sizes, cache = Counter(), Counter()
        for c in self.stats.get(app, {}).values():
            sizes.update({int(k): v for k, v in c["batch_sizes"].items()})
            cache.update(c.get("cache", {}))
        return {"replicas_reported": len(self.stats.get(app, {})),
                "batches": sum(sizes.values()), "requests": sum(k * v for k, v in sizes.items()),
                "max_batch_size": max(sizes, default=0), "batch_sizes": {str(k): sizes[k] for k in sorted(sizes)},
                **({"session_cache": dict(cache)} if cache else {})}


StateStore = ray.remote(num_cpus=0, max_restarts=-1)(Store)


def get_store():
    """The store actor, created on first use (detached: it outlives the replica that made it)."""
    return StateStore.options(name=STORE_NAME, namespace=NAMESPACE, lifetime="detached",
                              get_if_exists=True).remote()


async def call(actor, method: str, *args: Any) -> Any:
    """``actor.method.remote(*args)``, retried while Ray restarts the actor (it comes back empty: its
    sessions are gone, see above); still unavailable after ~8 s, a 503 naming ``session_store``."""
    from ray.exceptions import ActorUnavailableError, RayActorError

    from cellforge.serving.schema import ApiError

    for attempt in range(ACTOR_RETRIES):
        try:
            return await getattr(actor, method).remote(*args)
        except (ActorUnavailableError, RayActorError) as e:
            if attempt == ACTOR_RETRIES - 1:
                raise ApiError(503, "unavailable", "session_store", f"the session store actor is unavailable "
                                                                    f"({type(e).__name__}); retry",
                               headers={"Retry-After": "1"}) from None
            await asyncio.sleep(min(0.05 * 2 ** attempt, 1.0))


class ActorSessions:
    """The sessions of the store actor, behind the async interface every session store has:
    ``create``, ``get``, ``advance`` (compare-and-set on the step count), ``repin`` (a session that has
    not stepped moves to another version), ``delete``, ``count``."""

    kind = "memory"

    def __init__(self, actor=None):
        self.actor = actor or get_store()

    async def create(self, model: str, version: str, ttl_s: float) -> str:
        return await call(self.actor, "create", model, version, ttl_s)

    async def get(self, sid: str, model: str) -> dict[str, Any] | None:
        return await call(self.actor, "get", sid, model)

    async def advance(self, sid: str, expected_steps: int, state: Any, steps: int, model: str = "") -> str:
        return await call(self.actor, "advance", sid, expected_steps, state, steps)

    async def repin(self, sid: str, model: str, old: str, new: str) -> bool:
        return await call(self.actor, "repin", sid, model, old, new)

    async def delete(self, sid: str, model: str) -> bool:
        return await call(self.actor, "delete", sid, model)

    async def count(self, model: str, max_age_s: float = 0.0) -> int:
        """Exact, whatever ``max_age_s`` (the number a count up to that old may be, RedisSessions.count)."""
        return await call(self.actor, "count", model)

    async def close(self) -> None:
        pass


class LocalSessions:
    """The default store, ``memory``: the store actor's redis-server where it runs one (``local_server``),
    else the actor itself (``ActorSessions``); the same interface. Asked once which, then again only when
    the server stops answering (the actor restarted, or restarted its server: the sessions are gone)."""

    kind = "memory"

    def __init__(self, actor=None):
        self.actor = actor or get_store()
        self.impl: Any = None
        self._lock = asyncio.Lock()

    async def _resolve(self, seen: Any = None) -> Any:
        """The store to call; ``seen``: the one that just failed, asked about again."""
        from cellforge.serving.redis_store import RedisSessions

        async with self._lock:
            if self.impl is seen:
                url = await call(self.actor, "local_server")
                if url is None:
                    self.impl = ActorSessions(self.actor)
                elif getattr(self.impl, "url", None) != url:
                    old, self.impl = self.impl, RedisSessions(url, retries=LOCAL_RETRIES)
                    if old is not None:
                        await old.close()
            return self.impl

    async def _do(self, method: str, *args: Any) -> Any:
        from cellforge.serving.schema import ApiError

        impl = self.impl or await self._resolve()
        try:
            return await getattr(impl, method)(*args)
        except ApiError as e:
            if e.status != 503 or isinstance(impl, ActorSessions) or await self._resolve(impl) is impl:
                raise
            return await getattr(self.impl, method)(*args)

    async def create(self, model: str, version: str, ttl_s: float) -> str:
        return await self._do("create", model, version, ttl_s)

    async def get(self, sid: str, model: str) -> dict[str, Any] | None:
        return await self._do("get", sid, model)

    async def advance(self, sid: str, expected_steps: int, state: Any, steps: int, model: str = "") -> str:
        return await self._do("advance", sid, expected_steps, state, steps, model)

    async def repin(self, sid: str, model: str, old: str, new: str) -> bool:
        return await self._do("repin", sid, model, old, new)

    async def delete(self, sid: str, model: str) -> bool:
        return await self._do("delete", sid, model)

    async def count(self, model: str, max_age_s: float = 0.0) -> int:
        return await self._do("count", model, max_age_s)

    async def close(self) -> None:
        if self.impl is not None:
            await self.impl.close()


def open_sessions(url: str, actor=None):
    """The session store a deploy config names: ``memory`` (the store actor's, ``LocalSessions``),
    ``redis://...`` or ``redis+cluster://...``."""
    if url == "memory":
        return LocalSessions(actor)
    from cellforge.serving.redis_store import RedisSessions

    return RedisSessions(url)
