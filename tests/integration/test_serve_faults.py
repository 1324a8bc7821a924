"""Serving under load and faults, over real HTTP through real Ray Serve with a real redis-server.

32 clients mix predictions and streaming sessions (``_serve_load``) while a replica is killed, then
redis-server is SIGKILLed and restarted from its append-only file, then the Serve controller is killed:
with the Redis session store (and affinity: each replica a write-through cache of its sessions) no
session is lost, every step's answer equals the whole-sequence prediction, and fewer than 0.1% of
requests fail over 60 s (each failure counted and shown; the 24 s run of ``make test`` holds them to one
per client — the requests in flight on the killed replica — since their share is a matter of the run's length). The in-memory store's documented loss is shown too:
when its actor dies, its sessions answer 404 (and the model list heals from the replicas' reports).

``make test`` runs it for 24 s; the 60 s run the issue asks for is marked slow (``make test-all``).
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from _serve_load import run_load

import cellforge as cf
from cellforge import _ray

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from _redis_server import RedisServer  # noqa: E402

CONCURRENCY = 32


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def digits(ray_session, serve_module, digits_runs):
    bundle = digits_runs("torch", 2).bundle
    x = cf.datasets.load("digits").x[:40].astype(np.float64)
    probs = cf.load(bundle).predict_proba([seq[: t + 1] for seq in x for t in range(x.shape[1])])
    return bundle, x, np.asarray(probs).reshape(len(x), x.shape[1], -1)


def wait_for(cond, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if got := cond():
            return got
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def faults_under_load(app: str, duration_s: float, redis_server, digits):
    """Run the load; at 20% of it kill a replica, at 45% restart redis-server, at 70% the controller."""
    import ray

    from cellforge.serving.deploy import base_url

    _, x, want = digits
    events: list[str] = []

    def inject():
        t0 = time.monotonic()
        time.sleep(duration_s * 0.2)
        victim = sorted(_ray.serve_replica_actors(app))[0]
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        events.append(f"{time.monotonic() - t0:.1f}s killed replica {victim}")
        time.sleep(max(0.0, duration_s * 0.45 - (time.monotonic() - t0)))
        redis_server.restart()
        events.append(f"{time.monotonic() - t0:.1f}s redis-server SIGKILLed and restarted from its AOF")
        time.sleep(max(0.0, duration_s * 0.7 - (time.monotonic() - t0)))
        ray.kill(_ray.serve_controller(), no_restart=False)
        events.append(f"{time.monotonic() - t0:.1f}s killed the Serve controller")

    injector = threading.Thread(target=inject)
    injector.start()
    tally = asyncio.run(run_load(base_url(), app, x, want, CONCURRENCY, duration_s))
    injector.join()
    print(f"\n{app}: {tally.summary()}\n  " + "\n  ".join(events))
    return tally, events


def check(tally, events, share: bool):
    assert len(events) == 3, events
    assert tally.sessions > CONCURRENCY and tally.steps_checked > 500, tally.summary()
    assert tally.lost == 0 and tally.wrong == [], tally.summary()
    # the requests that fail are those in flight on the killed replica (a connection cut mid-answer), at
    # most one per client whatever the run's length (seen: 2 to 23 of 32); over 60 s that is < 0.1% of all
    # requests. A cut step may still have applied: its retry then answers 409 naming what the session
    # consumed and the stream goes on (``resumed``, the same incident: one run had 23 cuts and 12 of these,
    # which the bound counted as 35 failures when 409s were failures); each follows a failed try
    assert tally.failures <= CONCURRENCY, tally.summary()
    assert tally.resumed <= tally.failures, tally.summary()
    if share:
        assert tally.failures < 0.001 * tally.requests, tally.summary()


def deploy_redis(name: str, redis_server, digits):
    bundle = digits[0]
    cf.deploy(bundle, name, num_replicas=2, num_cpus=0.25, session_store=redis_server.url, affinity=True,
              batching={"max_batch_size": 16, "batch_wait_timeout_s": 0.005})
    wait_for(lambda: len(_ray.serve_replica_actors(name)) == 2, 120, "two replicas")


def test_redis_sessions_survive_a_replica_redis_and_the_controller_under_load(redis_server, digits):
    deploy_redis("faults", redis_server, digits)
    tally, events = faults_under_load("faults", 24, redis_server, digits)
    check(tally, events, share=False)
    from cellforge.serving.deploy import base_url

    metrics = cf.Client(base_url()).metrics("faults")
    print(f"  steps from a replica's cache: {metrics.get('session_cache')}")
    assert metrics["session_store"] == "redis" and metrics["affinity"] is True
    steps_stay_on_one_replica("faults", digits)


def steps_stay_on_one_replica(name: str, digits) -> None:
    """Behind the default ingress (HAProxy, whose balancing cellforge's launcher sets to a hash of the
    session id) every step of a session after its first finds its state in the cache of the replica that
    took the one before; with HAProxy's least-connections or round-robin choice over two replicas about
    half would miss."""
    from cellforge.serving.deploy import base_url

    client, x = cf.Client(base_url()), digits[1][0]

    def counts() -> dict:
        return client.metrics(name).get("session_cache", {})

    def counted() -> dict | None:
        c = counts()
        return c if sum(c.values()) - sum(before.values()) >= n else None

    def settled() -> dict | None:
        """The counts once the load's last steps have reached the store (replicas send theirs every 0.25 s):
        unchanged over a second. Seen without this: 2 of the load's hits counted after the baseline."""
        first = counts()
        time.sleep(1.0)
        return first if counts() == first else None

    before = wait_for(settled, 30, "the load's cache counts to settle")
    sessions = [client.session(name) for _ in range(4)]
    for t in range(len(x)):
        for s in sessions:
            s.step(x[t:t + 1])
    n = len(x) * len(sessions)
    after = wait_for(counted, 30, "the replicas' cache counts")
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in ("hit", "miss", "stale")}
    print(f"  {len(sessions)} sessions x {len(x)} steps on 2 replicas: {delta}")
    assert delta == {"hit": n - len(sessions), "miss": len(sessions), "stale": 0}, delta


@pytest.mark.slow
def test_sixty_seconds_of_load_with_the_three_faults(redis_server, digits):
    deploy_redis("faults60", redis_server, digits)
    tally, events = faults_under_load("faults60", 60, redis_server, digits)
    check(tally, events, share=True)


@pytest.mark.slow  # make test-all: the in-memory store's documented loss; make test runs the Redis store through the three faults above
def test_the_in_memory_store_loses_its_sessions_with_its_actor_as_documented(digits):
    """The default store keeps sessions in one actor: when it dies they are gone (404), new ones work,
    and the model list comes back from the replicas' next reports."""
    import ray

    from cellforge.serving.deploy import base_url
    from cellforge.serving.sessions import get_store

    bundle, x, want = digits
    cf.deploy(bundle, "faults-mem", num_replicas=1, num_cpus=0.25)
    client = cf.Client(base_url())
    sessions = [client.session("faults-mem") for _ in range(5)]
    for s in sessions:
        s.step(x[0][:2])
    ray.kill(get_store(), no_restart=False)
    lost = 0
    for s in sessions:
        try:
            s.step(x[0][2:4])
        except cf.client.RequestError as e:
            assert e.status == 404 and e.problems[0][0] == "session_id"
            lost += 1
    print(f"\nin-memory store killed: {lost} of {len(sessions)} sessions lost (documented: state in one actor)")
    assert lost == len(sessions)
    with client.session("faults-mem") as s:
        np.testing.assert_allclose(s.step(x[1][:3])["probabilities"], want[1, :3], atol=1e-4)
    wait_for(lambda: "faults-mem" in {m["name"] for m in client.models()}, 30, "the model list to heal")
