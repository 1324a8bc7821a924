"""The Ray Serve applications: one per model (``/v1/models/<name>``) and an index (``/``).

    serve run serve/digits.yaml          # the builders below, named by a Serve config file

``build_app(args)`` turns a deploy config (a dict, e.g. a Serve YAML's ``args``) into a model
application; ``build_index()`` answers ``/healthz``, ``GET /v1/models`` and — since Serve routes
by the longest route prefix — every request for a model name no application has claimed (404).
Its OpenAPI page (``/docs``) documents the whole API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter, OrderedDict
from typing import Any

import numpy as np
import ray
from fastapi import Depends, FastAPI, WebSocket
from fastapi.responses import Response, StreamingResponse
from pydantic import TypeAdapter, ValidationError
from ray import serve
from starlette.exceptions import HTTPException

from cellforge import _ray
from cellforge.log import log
from cellforge.serving import contract
from cellforge.serving.config import INDEX_APP, DeployConfig, canary_app, resolve_bundle
from cellforge.serving.engine import EXPLAIN_MAX_PASSES, Engine
from cellforge.serving.http import (
    BodyLimit,
    bearer_check,
    error_answer,
    http_problem,
    install_errors,
    refusal,
    unknown,
)
from cellforge.serving.metrics import EndpointMetrics, route_of
from cellforge.serving.schema import (
    SEQ2SEQ_FIELDS,
    ApiError,
    ExplainRequest,
    ExplainResponse,
    InputError,
    ModelInfo,
    ModelList,
    PredictRequest,
    PredictResponse,
    Problem,
    SessionCreated,
    SessionDeleted,
    StepRequest,
    StepResponse,
    validation_problems,
)
from cellforge.serving.sessions import call, get_store, open_sessions
from cellforge.serving.traffic import TIMEOUT_S, CanaryConfig, VersionStats, takes_canary, verdict

FLUSH_EVERY_S = 0.25  # how often a replica sends its batch statistics to the store
REGISTER_EVERY = 8  # flushes between a replica's registrations of its model (every 2 s)
# the session states a replica keeps (affinity), in bytes of their arrays; the least recently stepped go first
CACHE_BYTES = 256 << 20


def state_bytes(state: Any) -> int:
    """About what a session's state holds (its arrays' bytes, and a little per container and scalar).

    >>> state_bytes([np.zeros((1, 64), np.float32), np.zeros((1, 64), np.float32)])
    520
    """
    if isinstance(state, np.ndarray):
        return state.nbytes
    if isinstance(state, dict):
        return 64 + sum(state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return 8 + sum(state_bytes(v) for v in state)
    if isinstance(state, (str, bytes)):
        return len(state)
    return 8


def on_loopback_if_local() -> None:
    """On a node at 127.0.0.1 (the embedded Ray) nothing of a replica listens beyond it: Ray would open
    the replica's inter-deployment gRPC port on every interface."""
    if ray.util.get_node_ip_address() == "127.0.0.1":
        _ray.replica_grpc_on_loopback()


@serve.deployment(name="Model")
@serve.ingress()
class ModelServer:
    """One replica of a model endpoint; every session's state lives in the session store (with
    ``affinity``, the replica also keeps the sessions it stepped: a write-through cache).

    ``role``: ``live`` (the app at ``/v1/models/<name>``, which sends a share of new predictions and
    sessions to the model's canary, if it has one: ``serving.traffic``) or ``canary`` (the app
    ``<name>@canary``, called only by the live replicas). ``retired``: the bundle (and version) this
    deployment replaced by a promote; its sessions finish on it here."""

    async def __init__(self, config: dict[str, Any], role: str = "live", retired: dict[str, Any] | None = None):
        on_loopback_if_local()
        self.cfg = DeployConfig.parse(config)
        self.name, self.role = self.cfg.name, role
        self.app_name = self.name if role == "live" else canary_app(self.name)
        self.engine = Engine(self.cfg)
        self.retired: dict[str, Engine] = {}  # version -> engine, for the sessions started on it
        if retired:
            old = Engine(DeployConfig.parse({**config, **retired}))
            if old.version != self.engine.version:
                self.retired[old.version] = old
        self.store = get_store()
        self.metrics = EndpointMetrics(self.name)
        self.sessions = open_sessions(self.cfg.session_store, self.store)
        self.cache: OrderedDict[str, dict[str, Any]] | None = OrderedDict() if self.cfg.affinity else None
        self.cache_bytes = 0
        self.cache_counts: Counter = Counter()  # hit, miss, stale (the replica changed meanwhile)
        self.canary: dict[str, Any] | None = None  # the model's canary record (the store's), when it has one
        self.canary_handle = None  # a DeploymentHandle to the canary app while it takes traffic
        self.canary_cfg: CanaryConfig | None = None
        self.routed: Counter = Counter()  # new predictions and sessions seen (takes_canary counts them)
        self.versions: dict[str, VersionStats] = {}  # what each version answered, as this replica saw it
        self.started = time.time()  # a later replica's description of the model wins (Store.register)
        if role == "live":
            await self.store.register.remote(self.name, self.engine.info(self.name), self.started)
        for batched in (self._batched, self._windows_batched):
            batched.set_max_batch_size(self.cfg.batching.max_batch_size)
            batched.set_batch_wait_timeout_s(self.cfg.batching.batch_wait_timeout_s)
        self.sizes: Counter = Counter()
        self._sent, self._flusher = 0, None
        self.inflight = 0  # predict requests inside this replica's HTTP app, counted by Observe
        self.stepping = 0  # and session steps
        self.replica = serve.get_replica_context().replica_id.unique_id
        self._flusher = asyncio.get_running_loop().create_task(self._flush())

    def __serve_build_asgi_app__(self) -> FastAPI:
        return model_api(self)

    # predictions -------------------------------------------------------------------
    def options(self, req: PredictRequest) -> dict[str, Any]:
        """seq2seq's decoding fields that were given; another task refuses any of them that is present,
        even at its default value (its OpenAPI document has no such field)."""
        if self.engine.seq2seq:
            return req.decode_options()
        return {f: getattr(req, f) for f in SEQ2SEQ_FIELDS if f in req.model_fields_set}

    async def predict(self, req: PredictRequest) -> dict[str, Any]:
        options = self.options(req)
        x, lengths = self.engine.prepare(req.inputs, options)  # bad input is refused here, before any batch
        if self.takes_canary("predict"):  # the canary answers, or on failure the live version below
            answer = await self.on_canary("predict", req)
            if answer is not None:
                return answer
        with self.answering(self.engine.version, "predict"):
            return await self._predict(req, options, x, lengths)

    async def _predict(self, req: PredictRequest, options: dict[str, Any], x: np.ndarray,
                       lengths: np.ndarray) -> dict[str, Any]:
        item = (x, lengths)
        if self.engine.seq2seq:
            item = (x, lengths, self.engine.translator.decoding(options), req.return_attention)
        await asyncio.sleep(0)  # let requests that arrived with this one be counted
        # a lone request runs at once: waiting batch_wait_timeout_s for company nobody brings would
        # only add latency; with other predictions in flight (see Observe) it joins their batch
        if self.cfg.batching.enabled and self.inflight > 1:
            out = await self._batched(item)
        else:
            out = (await self._run([item]))[0]
            self._count(1)
        return {"model": self.name, "version": self.engine.version, "task": self.engine.spec.task,
                **self.engine.respond(out, lengths, req.inputs, req.return_attention)}

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)  # reset from the config in __init__
    async def _batched(self, items: list[tuple]) -> list:
        self._count(len(items))
        return await self._run(items)

    async def _run(self, items: list[tuple]) -> list:
        # seq2seq decoding (one decoder step per output token) runs off the event loop, so requests
        # that arrive meanwhile are read and wait together for the next batch
        if self.engine.seq2seq:
            return await asyncio.to_thread(self.engine.run, items)
        return self.engine.run(items)

    def stream(self, req: PredictRequest) -> StreamingResponse:
        """A seq2seq prediction as server-sent events (greedy, decoded for this request alone)."""
        x, lengths = self.engine.prepare(req.inputs, self.options(req))  # 4xx before the stream starts
        events = self.engine.translator.stream(req.inputs, x, lengths, req.return_attention)
        head = {"model": self.name, "version": self.engine.version}

        def sse():  # a plain generator: Starlette runs each step in its thread pool
            try:
                for event in events:
                    yield f"data: {json.dumps({**head, **event} if event.get('done') else event)}\n\n"
            except Exception as e:  # the status line is sent: the error can only be an event
                yield f"event: error\ndata: {json.dumps({'error': 'internal', 'message': str(e)})}\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def _count(self, size: int, kind: str = "predict") -> None:
        self.sizes[size] += 1
        self.metrics.batched(kind, size)
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    # traffic control (serving.traffic) ---------------------------------------------------------
    def takes_canary(self, kind: str) -> bool:
        """Whether this new prediction or session goes to the canary (``canary`` percent of each kind)."""
        if self.canary_handle is None:
            return False
        n, self.routed[kind] = self.routed[kind], self.routed[kind] + 1
        return takes_canary(n, self.canary["canary"])

    async def on_canary(self, method: str, *args: Any) -> dict[str, Any] | None:
        """The canary's answer to ``method(*args)``; None when it failed (a 5xx, a crash, a refusal of what
        the live version accepted, no answer within TIMEOUT_S): counted against it, and the caller
        answers with the live version. A session's 404 or 409 is the session's, not a failure."""
        version, handle, t = self.canary["version"], self.canary_handle, time.perf_counter()
        try:
            answer = await asyncio.wait_for(getattr(handle, method).remote(*args), TIMEOUT_S)
        except Exception as e:  # noqa: BLE001 - whatever the canary did, the live version answers
            cause = getattr(e, "cause", None) or e  # a RayTaskError carries the replica's exception
            refused = error_answer(cause) if isinstance(cause, Exception) else None
            if refused is not None and refused[0] in (404, 409) and method == "step":
                self.record(version, "canary", method, t, ok=True)
                raise cause from None
            self.record(version, "canary", method, t, ok=False)
            why = verdict(self.versions[version], self.canary_cfg)
            if why and self.canary_handle is handle:
                self.canary_handle = None  # this replica stops at once; the others within a flush
                log.warning("%s: rolling the canary %s back: %s", self.name, version, why)
                with contextlib.suppress(Exception):  # a store away: its own verdict rolls it back later
                    await call(self.store, "roll_back", self.name, version, why)
            return None
        self.record(version, "canary", method, t, ok=True)
        return answer

    @contextlib.contextmanager
    def answering(self, version: str, route: str):
        """Count a prediction or step this replica answers by ``version``: a refusal (4xx) is the
        client's, not the version's."""
        t = time.perf_counter()
        try:
            yield
        except Exception as e:
            refused = error_answer(e)
            if refused is None or refused[0] >= 500:
                self.record(version, "live" if version == self.engine.version else "retired", route, t, ok=False)
            raise
        self.record(version, "live" if version == self.engine.version else "retired", route, t, ok=True)

    def record(self, version: str, role: str, route: str, started: float, ok: bool) -> None:
        if self.role != "live":  # a canary's answers are counted by the live replicas that sent them
            return
        seconds = time.perf_counter() - started
        self.versions.setdefault(version, VersionStats()).add(seconds, ok)
        self.metrics.version_answered(version, role, route, ok, seconds)

    async def follow_canary(self) -> None:
        """Learn the model's canary from the store (every flush); the first live replica to see one that
        was rolled back deletes its app, once every replica has stopped sending it traffic."""
        entry = await self.store.canary.remote(self.name, self.replica)  # the store away: routing stays as it was
        before, self.canary = self.canary, entry
        if entry is None or entry["state"] != "active" or entry["version"] == self.engine.version:
            self.canary_handle = None  # none, rolled back, or promoted: this replica runs that version
        elif before is None or before.get("since") != entry["since"]:  # a new canary: counted afresh
            self.versions.pop(entry["version"], None)
            self.canary_cfg = CanaryConfig.parse({k: entry[k] for k in ("canary", "max_error_rate", "min_requests")})
            self.canary_handle = serve.get_deployment_handle("Model", app_name=entry["app"])
        if entry is not None and entry["state"] == "rolled_back" and not entry["removed"]:
            if await call(self.store, "claim_removal", self.name, entry["version"]):
                asyncio.get_running_loop().create_task(self.remove_canary(entry["app"], entry["reason"]))

    async def remove_canary(self, app: str, reason: str | None) -> None:
        await asyncio.sleep(3 * FLUSH_EVERY_S)  # every live replica has read the record by then
        log.warning("%s: canary rolled back (%s); deleting its application %s", self.name, reason, app)
        await asyncio.to_thread(_ray.delete_app_nowait, app)

    async def _flush(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(FLUSH_EVERY_S)
            ticks += 1
            if self.role == "live":
                try:
                    await self.follow_canary()
                except Exception:  # noqa: BLE001 - never end the flusher (the store may be restarting)
                    pass
            answered = {v: s.to_dict() for v, s in self.versions.items()}
            total = (sum(self.sizes.values()) + sum(self.cache_counts.values())
                     + sum(s["requests"] for s in answered.values()))
            # every REGISTER_EVERY ticks, counts or not, with the model's description: a store actor
            # restarted empty learns the model list again (a canary's replicas describe nothing)
            if total != self._sent or ticks % REGISTER_EVERY == 0:
                self._sent = total
                describe = ticks % REGISTER_EVERY == 0 and self.role == "live"
                counters = {"batch_sizes": dict(self.sizes), "cache": dict(self.cache_counts), "versions": answered}
                self.store.report.remote(self.app_name, self.replica, counters,
                                         self.engine.info(self.name) if describe else None,
                                         self.cfg.model_dump() if describe else None, self.started)
            if ticks % REGISTER_EVERY == 0 and self.engine.streams:
                try:  # the gauge of live sessions; a store that is away is the step routes' to report
                    # a count up to one period old, as another replica made it (a cluster's count is 4096 calls)
                    period = REGISTER_EVERY * FLUSH_EVERY_S
                    self.metrics.live_sessions(await self.sessions.count(self.name, max_age_s=period))
                except Exception:  # noqa: BLE001 - never end the flusher
                    pass

    async def explain(self, req: ExplainRequest) -> dict[str, Any]:
        if "step" in req.model_fields_set and self.engine.spec.task != "tag":
            raise InputError([Problem(field="step", message=f"only for task 'tag', not {self.engine.spec.task!r}")])
        # off the event loop: one request is many forward passes and a backward
        out = await asyncio.to_thread(self.engine.explain, req.inputs, req.method, req.target, req.step, req.n_steps)
        return {"model": self.name, "version": self.engine.version, "task": self.engine.spec.task, **out}

    # sessions ----------------------------------------------------------------------
    async def create_session(self) -> dict[str, Any]:
        if not self.engine.streams:
            raise ApiError(400, "unsupported", "model", self.engine.no_sessions)
        # a session's version is kept with its state: its steps go to that version (serving.traffic)
        version = self.engine.version
        if self.canary is not None and self.canary.get("sessions") and self.takes_canary("session"):
            version = self.canary["version"]
        sid = await self.metrics.timed("create", self.sessions.create(self.name, version, self.cfg.session_ttl_s))
        self._count_session(None)
        return {"session_id": sid, "model": self.name, "version": version, "ttl_s": self.cfg.session_ttl_s}

    async def _load(self, sid: str) -> dict[str, Any]:
        s = await self.metrics.timed("get", self.sessions.get(sid, self.name))
        if s is None:
            raise self._unknown(sid)
        return s

    def _unknown(self, sid: str) -> ApiError:
        """The 404 of a session the store does not have (unknown, expired, ended or another model's); this
        replica forgets any cached copy of it."""
        self._forget(sid)
        return ApiError(404, "not_found", "session_id", f"unknown or expired session {sid!r}")

    def _forget(self, sid: str) -> None:
        if self.cache is not None and (gone := self.cache.pop(sid, None)) is not None:
            self.cache_bytes -= gone["bytes"]

    def _keep(self, sid: str, steps: int, state: Any) -> None:
        """Cache a session's state after its step (the store has it too), within CACHE_BYTES."""
        self._forget(sid)
        size = state_bytes(state)
        self.cache[sid] = {"version": self.engine.version, "steps": steps, "state": state, "bytes": size}
        self.cache_bytes += size
        while self.cache_bytes > CACHE_BYTES and len(self.cache) > 1:
            self.cache_bytes -= self.cache.popitem(last=False)[1]["bytes"]

    def _count_session(self, what: str | None) -> None:
        if what and self.cache is not None:
            self.cache_counts[what] += 1
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def step(self, sid: str, req: StepRequest) -> dict[str, Any]:
        if not self.engine.streams:
            raise ApiError(400, "unsupported", "model", self.engine.no_sessions)
        x = self.engine.step_inputs(req.inputs, req.end if "end" in req.model_fields_set else None)
        s = self.cache.get(sid) if self.cache is not None else None
        fresh = s is None
        if fresh:
            s = await self._load(sid)
        elif req.offset is not None and req.offset != s["steps"]:  # the cache may be behind the store
            s, fresh = await self._load(sid), True
        if s["version"] != self.engine.version:
            return await self.step_elsewhere(sid, req, s)
        if req.offset is not None and req.offset != s["steps"]:
            raise ApiError(409, "conflict", "offset", f"the session has consumed {s['steps']} steps, "
                                                      f"got offset {req.offset}")
        with self.answering(self.engine.version, "step"):
            answer, state = await self._advance(x, s["state"], req.end)
        steps = s["steps"] + x.shape[1]
        status = await self.metrics.timed("advance", self.sessions.advance(sid, s["steps"], state, steps, self.name))
        if status == "conflict" and not fresh:
            # another replica stepped the session since this one cached it (the hash ring changed): the
            # store has the truth; step again from it
            self._forget(sid)
            self._count_session("stale")
            return await self.step(sid, req)
        if status == "gone" and not fresh:  # ended or expired in the store since this replica cached it
            raise self._unknown(sid)
        if status != "ok":
            self._forget(sid)
            raise ApiError(409, "conflict", "session_id", "another step on this session ran at the same "
                                                          "time; retry with 'offset'" if status == "conflict"
                           else f"session {sid!r} ended while stepping")
        if self.cache is not None:
            self._count_session("miss" if fresh else "hit")
            self._keep(sid, steps, state)
        return {"session_id": sid, "model": self.name, "version": self.engine.version, "steps": steps,
                **answer}

    async def step_elsewhere(self, sid: str, req: StepRequest, s: dict[str, Any]) -> dict[str, Any]:
        """A step of a session started on another version than this replica's: the version a promote
        replaced (kept here), or the canary; a session that has not stepped yet moves to the live version
        when its canary fails or was rolled back. Any other version's sessions have ended."""
        v, c = s["version"], self.canary
        if v in self.retired and not (c is not None and c["version"] == v and c["state"] == "active"):
            return await self.step_retired(sid, req, s, self.retired[v])
        if c is not None and c["version"] == v:
            if self.canary_handle is not None:
                answer = await self.on_canary("step", sid, req)
                if answer is not None:
                    return answer
            if await self.metrics.timed("repin", self.sessions.repin(sid, self.name, v, self.engine.version)):
                return await self.step(sid, req)  # now the live version's, from its first step
            if c["state"] == "active":
                raise ApiError(503, "unavailable", "session_id", f"the canary version {v} this session started on "
                                                                 "failed this step; the session is unchanged: retry "
                                                                 "it, or start a new session",
                               headers={"Retry-After": "1"})
            raise ApiError(409, "conflict", "session_id", f"the session was started on the canary version {v}, which "
                                                          f"was rolled back ({c['reason']}); start a new session")
        raise ApiError(409, "conflict", "session_id", f"the session was started on version {v} and {self.name} "
                                                      f"now serves {self.engine.version}; start a new session")

    async def step_retired(self, sid: str, req: StepRequest, s: dict[str, Any], engine: Engine) -> dict[str, Any]:
        """A step of a session started on the version a promote replaced, with that version's engine
        (one forward pass of its own: these sessions are few and ending)."""
        x = engine.step_inputs(req.inputs, req.end if "end" in req.model_fields_set else None)
        if req.offset is not None and req.offset != s["steps"]:
            raise ApiError(409, "conflict", "offset", f"the session has consumed {s['steps']} steps, "
                                                      f"got offset {req.offset}")
        with self.answering(engine.version, "step"):
            answer, state = engine.step(x, s["state"], req.end)
        steps = s["steps"] + x.shape[1]
        status = await self.metrics.timed("advance", self.sessions.advance(sid, s["steps"], state, steps, self.name))
        if status != "ok":
            raise ApiError(409, "conflict", "session_id", "another step on this session ran at the same time; retry "
                                                          "with 'offset'" if status == "conflict"
                           else f"session {sid!r} ended while stepping")
        return {"session_id": sid, "model": self.name, "version": engine.version, "steps": steps, **answer}

    async def _advance(self, x: np.ndarray, state: Any, end: bool = False) -> tuple[dict[str, Any], Any]:
        """One session step's answer and the state to keep (``end``: an audio model's clip ends). An anomaly
        stream's windows join those of the other streams stepping now in one forward pass (with batching on
        and company in flight): benchmarks/anomaly.py --streams, 1,000 streams."""
        if self.engine.spec.task != "anomaly":
            return self.engine.step(x, state, end)
        work = self.engine.stream_work(x, state)
        if not len(work.windows):  # still warming up: nothing to score
            return work.answer(None), work.carry
        if self.cfg.batching.enabled and self.stepping > 1:
            return work.answer(await self._windows_batched(work.windows)), work.carry
        self._count(1, "step")  # a forward pass of its own, in the endpoint's batch statistics too
        return work.answer(self.engine.windows_outputs([work.windows])[0]), work.carry

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)  # reset from the config in __init__
    async def _windows_batched(self, windows: list[np.ndarray]) -> list[np.ndarray]:
        self._count(len(windows), "step")
        return self.engine.windows_outputs(windows)

    async def stream_session(self, ws: WebSocket, sid: str) -> None:
        """A session's steps over one WebSocket: each message is a step's body (what POST .../step
        takes), each answer that step's response or its refusal (the error body with its ``status``),
        in order. A refused step changes nothing, and the connection stays open; an unknown session
        is answered 404 and the connection closed (code 1008)."""
        await ws.accept()
        try:
            await self._load(sid)
        except ApiError as e:
            await ws.send_json({"status": e.status, **e.body()})
            return await ws.close(code=1008)
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            self.stepping += 1  # batched with the HTTP steps and other sockets' steps in flight
            t = time.perf_counter()
            try:
                answer = await self._socket_step(sid, message.get("text") or message.get("bytes") or b"")
            finally:
                self.stepping -= 1
            await ws.send_json(answer)
            self.metrics.answered("stream_step", answer.get("status", 200), time.perf_counter() - t)

    async def _socket_step(self, sid: str, body: str | bytes) -> dict[str, Any]:
        try:
            if len(body) > self.cfg.max_body_bytes:
                raise ApiError(413, "too_large", "body", f"the message is larger than {self.cfg.max_body_bytes} bytes")
            try:
                req = StepRequest.model_validate_json(body)
            except ValidationError as e:
                raise InputError(validation_problems(e.errors())) from None
            return StepResponse.model_validate(await self.step(sid, req)).model_dump(mode="json", exclude_none=True)
        except Exception as e:  # a refusal is the answer (the socket stays open); anything else is a bug
            refused = error_answer(e)
            if refused is None:
                raise
            return {"status": refused[0], **refused[1]}

    async def end_session(self, sid: str) -> dict[str, Any]:
        self._forget(sid)
        if not await self.metrics.timed("delete", self.sessions.delete(sid, self.name)):
            raise self._unknown(sid)
        return {"session_id": sid, "deleted": True}


class Observe:
    """ASGI middleware: counts predict requests and session steps from the moment they enter the app
    (body not yet read), so a request can tell whether others arrived with it and batching is worth a
    wait; and records every request's route, status and latency (serving.metrics)."""

    def __init__(self, app, server):
        self.app, self.server = app, server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route, t, status = route_of(scope["path"]), time.perf_counter(), 500
        counter = {"predict": "inflight", "step": "stepping"}.get(route)

        async def sent(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        if counter:
            setattr(self.server, counter, getattr(self.server, counter) + 1)
        try:
            await self.app(scope, receive, sent)
        finally:
            if counter:
                setattr(self.server, counter, getattr(self.server, counter) - 1)
            self.server.metrics.answered(route, status, time.perf_counter() - t)


class FastPredict:
    """ASGI middleware: a JSON ``POST /predict`` that its model accepts skips FastAPI's routing, dependency
    solving and exception middlewares. The body is read as FastAPI reads it (``json.loads``, then the
    same ``PredictRequest``), the same ``ModelServer.predict`` answers, and the JSON is written as FastAPI
    writes it (``PredictResponse``'s validation and ``dump_json``, None fields left out); a refusal of the
    model's gets the same error body. Anything else goes to FastAPI as it came, the body replayed: another
    route, an app with a key to check, a body not sent as ``application/json`` (FastAPI decides), not
    JSON, or that ``PredictRequest`` refuses (so its 422 is FastAPI's own), a stream. FastAPI's path was
    ~15% of a busy replica's CPU (py-spy at c=64): 0.90 ms of CPU per prediction before, 0.74 ms after,
    with the other changes of that commit."""

    def __init__(self, app, server):
        self.app, self.server = app, server
        self.on = server.cfg.api_key is None
        self.response = TypeAdapter(PredictResponse)

    async def __call__(self, scope, receive, send):
        path, root = scope.get("path", ""), scope.get("root_path", "")
        if not (self.on and scope["type"] == "http" and scope["method"] == "POST"
                and (path[len(root):] if path.startswith(root) else path) == "/predict"
                and dict(scope["headers"]).get(b"content-type", b"").lower().startswith(b"application/json")):
            return await self.app(scope, receive, send)
        chunks, message = [], {"more_body": True}
        while message.get("more_body"):
            try:
                message = await receive()
            except HTTPException as e:  # the body limit's 413
                return await http_problem(e)(scope, receive, send)
            if message["type"] != "http.request":  # the client left: FastAPI's way
                return await self.app(scope, replay(b"".join(chunks), receive, message), send)
            chunks.append(message.get("body", b""))
        body = b"".join(chunks)
        try:
            req = PredictRequest.model_validate(json.loads(body))
        except (ValueError, ValidationError):  # json's and pydantic's: FastAPI answers with its 422
            req = None
        if req is None or req.stream:
            return await self.app(scope, replay(body, receive), send)
        try:
            answer = await self.server.predict(req)
        except Exception as e:
            response = refusal(e)
            if response is None:
                raise
        else:
            content = self.response.dump_json(self.response.validate_python(answer), by_alias=True, exclude_none=True)
            response = Response(content, media_type="application/json")
        await response(scope, receive, send)


def replay(body: bytes, receive, first: dict | None = None):
    """An ASGI ``receive`` that gives ``body`` (all of it, once), then ``first`` if given, then ``receive``'s."""
    pending = [{"type": "http.request", "body": body, "more_body": False}] + ([first] if first else [])

    async def replayed():
        return pending.pop(0) if pending else await receive()

    return replayed


def model_api(server: ModelServer) -> FastAPI:
    """The HTTP routes of one model app (paths are relative to its route prefix)."""
    cfg = server.cfg
    # the key check only where there is a key: a dependency costs every request (FastAPI solves it)
    api = FastAPI(title=f"cellforge model {cfg.name}", version=server.engine.version,
                  dependencies=[Depends(bearer_check(cfg.api_key))] if cfg.api_key else None)
    install_errors(api)
    api.add_middleware(FastPredict, server=server)  # the innermost: inside the body limit and Observe
    api.add_middleware(BodyLimit, max_bytes=cfg.max_body_bytes)
    api.add_middleware(Observe, server=server)

    @api.get("/", response_model=ModelInfo)
    @api.get("", response_model=ModelInfo, include_in_schema=False)  # /v1/models/<name> itself
    async def info():
        return server.engine.info(cfg.name)

    @api.post("/predict", response_model=PredictResponse, response_model_exclude_none=True,
              responses={200: {"content": {"text/event-stream": {}},
                               "description": "JSON, or server-sent events with \"stream\": true"}})
    async def predict(req: PredictRequest):
        if req.stream:
            return server.stream(req)
        return await server.predict(req)

    @api.post("/explain", response_model=ExplainResponse, response_model_exclude_none=True)
    async def explain(req: ExplainRequest):
        """Attributions per step and feature (per token for text) for each input, with the prediction.
        A request costing more than EXPLAIN_MAX_PASSES sequence forward passes gets 413."""
        return await server.explain(req)

    @api.post("/sessions", response_model=SessionCreated)
    async def create_session():
        return await server.create_session()

    @api.post("/sessions/{session_id}/step", response_model=StepResponse, response_model_exclude_none=True)
    async def step(session_id: str, req: StepRequest):
        """New steps of a session, answered from the recurrent state the server keeps. An audio model's
        session takes a clip in chunks at its sample rate (steps and offset count samples) and answers
        from the frames whose analysis windows are complete (transcribe: the transcript so far, CTC
        greedy); the step with "end": true computes the clip's last frames and answers what predict
        answers for the whole clip, after which the session takes no more audio (409; an empty step with
        "end": true answers the final transcript again)."""
        return await server.step(session_id, req)

    @api.websocket("/sessions/{session_id}/stream")
    async def stream_session(ws: WebSocket, session_id: str):
        await server.stream_session(ws, session_id)

    @api.delete("/sessions/{session_id}", response_model=SessionDeleted)
    async def end_session(session_id: str):
        return await server.end_session(session_id)

    @api.get("/metrics")
    async def metrics():
        """Batch sizes formed so far (summed over replicas), the number of live sessions, the session
        store, and with affinity the replicas' cache counts (hit, miss, stale)."""
        stats = await call(server.store, "batch_stats", cfg.name)
        return {"model": cfg.name, "version": server.engine.version, **stats,
                "sessions": await server.sessions.count(cfg.name), "session_store": server.sessions.kind,
                "affinity": cfg.affinity, **await call(server.store, "traffic", cfg.name)}

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            doc = contract.exact(FastAPI.openapi(api), server.engine, cfg, model_errors(cfg, server.engine.streams))
            if not server.engine.streams:  # its session routes answer 400 naming "model": not part of its API
                doc["paths"] = {p: v for p, v in doc["paths"].items() if not p.startswith("/sessions")}
            if cfg.api_key:
                doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
                doc["security"] = [{"bearer": []}]
        return api.openapi_schema

    api.openapi = openapi
    return api


def model_errors(cfg: DeployConfig, sessions: bool) -> dict[str, list[int]]:
    """The error statuses each operation of a model app answers (documented in its OpenAPI)."""
    auth = [401] if cfg.api_key else []
    body = [*auth, 413, 422]
    store = [503] if cfg.session_store != "memory" else []
    out = {"GET /": auth, "POST /predict": body, "POST /explain": body, "GET /metrics": [*auth, *store]}
    if sessions:  # a step of a session on a canary that fails it: 503 (serving.traffic), whichever the store
        out |= {"POST /sessions": [*auth, *store], "POST /sessions/{session_id}/step": [*body, 404, 409, 503],
                "DELETE /sessions/{session_id}": [*auth, 404, *store]}
    return out


@serve.deployment(name="Index", num_replicas=1, ray_actor_options={"num_cpus": 0.1})
@serve.ingress()
class Index:
    """Health, the model list, and 404s for model names nobody serves."""

    def __init__(self):
        on_loopback_if_local()
        self.store = get_store()

    def __serve_build_asgi_app__(self) -> FastAPI:
        return index_api(self)

    async def models(self) -> list[dict[str, Any]]:
        registered = await call(self.store, "registered")
        live = (await asyncio.to_thread(serve.status)).applications
        return [info for name, info in sorted(registered.items())
                if name in live and live[name].status in ("RUNNING", "DEPLOYING")]


def index_api(index: Index) -> FastAPI:
    api = FastAPI(title="cellforge", description="Recurrent models served by Ray Serve. Each deployed "
                  "model answers under /v1/models/{name}; a request for a name not deployed gets 404.")
    install_errors(api, unknown_model=True)

    async def missing(name: str):
        raise unknown(name, [m["name"] for m in await index.models()])

    @api.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @api.get("/v1/models", response_model=ModelList)
    async def list_models():
        return {"models": await index.models()}

    # documented here, answered by each model's own app; reaching these means no such model
    @api.get("/v1/models/{name}", response_model=ModelInfo)
    async def model_info(name: str):
        await missing(name)

    @api.post("/v1/models/{name}/predict", response_model=PredictResponse)
    async def predict(name: str, req: PredictRequest):
        await missing(name)

    @api.post("/v1/models/{name}/explain", response_model=ExplainResponse,
              description="Attributions (integrated gradients, gradient x input, occlusion per step) for each "
                          "input, with the prediction. Attributions cost many forward passes: a request over "
                          f"{EXPLAIN_MAX_PASSES} sequence forward passes (inputs x n_steps for integrated "
                          "gradients, inputs x (steps + 1) for occlusion) gets 413 naming the limit.")
    async def explain(name: str, req: ExplainRequest):
        await missing(name)

    @api.post("/v1/models/{name}/sessions", response_model=SessionCreated)
    async def create_session(name: str):
        await missing(name)

    @api.post("/v1/models/{name}/sessions/{session_id}/step", response_model=StepResponse)
    async def step(name: str, session_id: str, req: StepRequest):
        await missing(name)

    @api.delete("/v1/models/{name}/sessions/{session_id}")
    async def end_session(name: str, session_id: str):
        await missing(name)

    @api.get("/v1/models/{name}/metrics")
    async def metrics(name: str):
        await missing(name)

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:  # every model route here answers 404, whatever the body
            doc = FastAPI.openapi(api)
            contract.document_errors(doc, {f"{m.upper()} {p}": [404] for p, item in doc["paths"].items()
                                           for m in item if p.startswith("/v1/models/")})
        return api.openapi_schema

    api.openapi = openapi
    return api


def build_app(args: dict[str, Any]) -> serve.Application:
    """A model application from deploy-config fields (what a Serve YAML passes as ``args``: Serve calls
    an application builder with that one argument)."""
    return model_app(args)


def model_app(args: dict[str, Any], role: str = "live", retired: dict[str, Any] | None = None) -> serve.Application:
    """``build_app`` with a ``role`` and the ``retired`` version (see ``ModelServer``), as ``serving.deploy``
    builds a canary's app and a promote's."""
    cfg = DeployConfig.parse({**args, "bundle": str(resolve_bundle(args.get("bundle", "")))})
    return ModelServer.options(**cfg.serve_options()).bind(cfg.model_dump(), role, retired)


def build_index(args: dict[str, Any] | None = None) -> serve.Application:
    """The index application (serve it at route prefix ``/`` under the name ``cellforge``)."""
    return Index.bind()


__all__ = ["INDEX_APP", "ModelServer", "Index", "build_app", "build_index", "model_app"]
