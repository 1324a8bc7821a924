"""The endpoints' Prometheus metrics, through Ray's metrics export (each node's agent serves them at
``http://<node>:<MetricsExportPort>/metrics``; ``cellforge ray status`` prints the address).

Every series carries ``model`` (the app's name); Ray adds the node, the worker and the session:

- ``ray_cellforge_requests_total{route, status}`` and ``ray_cellforge_request_latency_ms{route}`` (a histogram),
  for every HTTP request a model app answers (``route``: info, predict, explain, create_session, step,
  end_session, metrics, openapi; over a session's WebSocket each message counts as a ``stream_step``);
- ``ray_cellforge_rejected_requests_total{route, reason}``: 4xx answers by reason (invalid_input, not_found,
  conflict, too_large, unauthorized, ...; a 5xx counts as ``internal``);
- ``ray_cellforge_batch_size{kind}`` (a histogram): requests per forward pass, ``kind`` predict or step;
- ``ray_cellforge_session_store_latency_ms{op}`` (a histogram): each session-store call (get, advance,
  create, delete), whichever the store (memory or Redis);
- ``ray_cellforge_live_sessions``: the model's live sessions (each replica reports the store's count
  every 2 s: take the max over replicas, not the sum);
- ``ray_cellforge_version_requests_total{version, role, route, outcome}`` and
  ``ray_cellforge_version_latency_ms{version, role, route}``: predictions and session steps by the version
  that answered (``role`` live, canary or retired; ``outcome`` ok or error; a canary's error was answered
  by the live version), counted by the live replicas (``serving.traffic``): compare a canary with the live
  version by ``version``.

Serve's own series (``ray_serve_*``: replica queue lengths, autoscaling) come with them. A replica sums
its counters' increments and sends them every ``COUNT_EVERY_S`` (Ray exports every few seconds anyway):
a call into Ray's metrics per request and counter was ~3% of a busy replica's CPU.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from ray.util.metrics import Counter, Gauge, Histogram

from cellforge.serving.http import CODES

LATENCY_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000]
STORE_MS = [0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 50, 100, 500, 2000]
COUNT_EVERY_S = 0.25
BATCH = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
ROUTES = [(re.compile(r"/sessions/[^/]+/step/?$"), "step"), (re.compile(r"/sessions/[^/]+/stream/?$"), "stream"),
          (re.compile(r"/sessions/?$"), "create_session"), (re.compile(r"/sessions/[^/]+/?$"), "end_session"),
          (re.compile(r"/predict/?$"), "predict"), (re.compile(r"/explain/?$"), "explain"),
          (re.compile(r"/metrics/?$"), "metrics"), (re.compile(r"/openapi\.json$"), "openapi")]


def route_of(path: str) -> str:
    """A model app's request path -> its route's name (``info`` for the model's own description).

    >>> route_of("/v1/models/m/sessions/abc/step"), route_of("/v1/models/m/sessions"), route_of("/v1/models/m")
    ('step', 'create_session', 'info')
    """
    return next((name for pattern, name in ROUTES if pattern.search(path)), "info")


def reason_of(status: int) -> str:
    return "internal" if status >= 500 else CODES.get(status, f"http_{status}")


class EndpointMetrics:
    """One replica's handles on the metrics (Ray aggregates them per node and exports them)."""

    def __init__(self, model: str):
        self.tags = {"model": model}
        self.requests = Counter("cellforge_requests", "HTTP requests a model app answered",
                                ("model", "route", "status"))
        self.latency = Histogram("cellforge_request_latency_ms", "time from a request's arrival to its answer",
                                 LATENCY_MS, ("model", "route"))
        self.rejected = Counter("cellforge_rejected_requests", "requests answered 4xx or 5xx, by reason",
                                ("model", "route", "reason"))
        self.batch = Histogram("cellforge_batch_size", "requests per forward pass", BATCH, ("model", "kind"))
        self.store = Histogram("cellforge_session_store_latency_ms", "session store calls", STORE_MS, ("model", "op"))
        self.sessions = Gauge("cellforge_live_sessions", "live sessions of the model (the store's count)", ("model",))
        self.versions = Counter("cellforge_version_requests", "predictions and session steps by the version "
                                "sent them", ("model", "version", "role", "route", "outcome"))
        self.version_latency = Histogram("cellforge_version_latency_ms", "a version's time to answer (as the live "
                                         "replica saw it)", LATENCY_MS, ("model", "version", "role", "route"))
        self._counts: dict[tuple[Any, tuple], int] = {}  # (counter, its tags) -> increments not yet sent
        self._sending = False

    def _inc(self, counter: Counter, tags: dict[str, str]) -> None:
        key = (counter, tuple(tags.items()))
        self._counts[key] = self._counts.get(key, 0) + 1
        if not self._sending:
            self._sending = True
            try:
                asyncio.get_running_loop().call_later(COUNT_EVERY_S, self.send_counts)
            except RuntimeError:  # no event loop (a test calling in): at once
                self.send_counts()

    def send_counts(self) -> None:
        self._sending, counts, self._counts = False, self._counts, {}
        for (counter, tags), n in counts.items():
            counter.inc(n, dict(tags))

    def answered(self, route: str, status: int, seconds: float) -> None:
        self._inc(self.requests, {**self.tags, "route": route, "status": str(status)})
        self.latency.observe(seconds * 1000, {**self.tags, "route": route})
        if status >= 400:
            self._inc(self.rejected, {**self.tags, "route": route, "reason": reason_of(status)})

    def batched(self, kind: str, size: int) -> None:
        self.batch.observe(size, {**self.tags, "kind": kind})

    async def timed(self, op: str, call) -> Any:
        """``await call`` (a store call), its latency recorded under ``op``."""
        t = time.perf_counter()
        try:
            return await call
        finally:
            self.store.observe((time.perf_counter() - t) * 1000, {**self.tags, "op": op})

    def version_answered(self, version: str, role: str, route: str, ok: bool, seconds: float) -> None:
        tags = {**self.tags, "version": version, "role": role, "route": route}
        self._inc(self.versions, {**tags, "outcome": "ok" if ok else "error"})
        self.version_latency.observe(seconds * 1000, tags)

    def live_sessions(self, n: int) -> None:
        self.sessions.set(n, self.tags)
