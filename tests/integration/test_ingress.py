"""The fast ingress by default (issue 18): a plain ``cf.deploy`` on the session's embedded Ray answers
through HAProxy, over real HTTP, with the model's own predictions; and nothing of Ray's or HAProxy's
listens beyond 127.0.0.1.

Serve is started here on a free port when no Serve is running (and shut down after); otherwise the
running one is used and only this module's application is removed.
"""

from __future__ import annotations

import socket
import time

import numpy as np
import psutil
import pytest

import cellforge as cf
from cellforge import bundle as B
from cellforge.backends.numpy import init_params

pytestmark = pytest.mark.integration

LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")  # the last: IPv4 loopback on a dual-stack socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def numeric_bundle(path):
    """A real bundle with random weights: serving's arithmetic needs no training."""
    spec = cf.ModelSpec(task="classify", cell="gru", hidden_size=8, input={"num_features": 3}, num_classes=4)
    state = {"kind": "sequences", "task": "classify", "input_type": "numeric", "max_length": None,
             "num_features": 3, "scaler": {"shift": [0.5] * 3, "scale": [2.0] * 3}, "classes": ["a", "b", "c", "d"]}
    return B.save(path, spec, init_params(spec, 0), state, {})


def ray_processes() -> list[psutil.Process]:
    """The embedded Ray's processes: everything this test process started (GCS, raylet, workers, the
    HAProxy a Serve actor runs)."""
    return psutil.Process().children(recursive=True)


def listening(proc: psutil.Process) -> list:
    try:
        return [c for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


@pytest.fixture(scope="module")
def endpoint(serve_module, tmp_path_factory):
    bundle = numeric_bundle(tmp_path_factory.mktemp("ingress") / "bundle")
    ep = cf.deploy(bundle, "ingress", num_replicas=1)  # every setting its default, on the session's Serve
    yield ep, bundle


def test_a_default_deploy_answers_through_haproxy(endpoint):
    ep, bundle = endpoint
    x = np.random.default_rng(0).normal(size=(5, 7, 3))
    got = cf.Client(ep.base_url).predict("ingress", x.tolist())
    np.testing.assert_allclose(got["probabilities"], cf.load(bundle).predict_proba(x), atol=1e-5)
    assert got["labels"] == cf.load(bundle).predict(x).tolist()
    # the endpoint's port is HAProxy's: Serve's Python proxy does not listen on it
    port = int(ep.base_url.rsplit(":", 1)[1])
    assert port_owners(port) == {"haproxy"}, f"port {port} is listened on by {port_owners(port)}"


def port_owners(port: int, settle_s: float = 10.0) -> set[str]:
    """The names of the processes listening on ``port``, once two looks in a row agree. Serve reloads
    HAProxy when an application comes or goes (another module's teardown deletes its apps without
    waiting): the new HAProxy takes the socket over from the old one, which then exits, so one look
    can list a process that is gone by the time its sockets are read and miss the new one (CI saw an
    empty set once, at e6a0c57). A Python proxy on the port would be seen on every look."""
    deadline, last = time.monotonic() + settle_s, None
    while True:
        now = {p.name() for p in ray_processes() for c in listening(p) if c.laddr.port == port}
        if now and now == last or time.monotonic() > deadline:
            return now
        last = now
        time.sleep(0.5)


def test_nothing_of_ray_or_haproxy_listens_beyond_loopback(endpoint):
    """Looks until HAProxy and the raylet are both seen listening (at most 10 s): a reload between the
    old HAProxy's exit and the new one's sockets shows no HAProxy for an instant (CI saw that once, at
    2ae10f5). Every look counts: a wide socket seen on any of them fails the test."""
    wide, names = set(), set()
    deadline = time.monotonic() + 10.0
    while True:
        seen = set()
        for proc in ray_processes():
            for conn in listening(proc):
                seen.add(proc.name())
                if conn.laddr.ip not in LOOPBACK:
                    wide.add(f"{proc.name()} (pid {proc.pid}) on {conn.laddr.ip}:{conn.laddr.port}: "
                             f"{' '.join(proc.cmdline())[:160]}")
        names |= seen
        if {"haproxy", "raylet"} <= seen or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert {"haproxy", "raylet"} <= names, f"the check saw only {sorted(names)}"  # it saw what it is about
    assert not wide, "listening beyond 127.0.0.1:\n" + "\n".join(sorted(wide))


def test_a_deploy_right_after_the_index_app_was_deleted_lists_its_model(endpoint, serve_module):
    """An index app deleted without waiting (a test module's end did so) shows as DELETING for a moment:
    a deploy then must run it again, not take it for running, and return only once the ingress routes
    both (CI at 2ae10f5: ``GET /v1/models`` answered HAProxy's 404 right after such a deploy; CI at
    7e84bc9: the deletion reached Serve's controller after deploy had read the index as RUNNING, and
    the index went with its route). Twice over, the second time at once after the first deploy."""
    import httpx

    from cellforge.serving.config import INDEX_APP

    ep, bundle = endpoint
    for _ in range(2):
        serve_module.delete(INDEX_APP, _blocking=False)
        again = cf.deploy(bundle, "ingress", num_replicas=1)
        routes = httpx.get(f"{again.base_url}/-/routes", timeout=30).json()
        assert routes.get("/") == INDEX_APP, routes
        r = httpx.get(f"{again.base_url}/v1/models", timeout=30)
        assert r.status_code == 200, r.text
        assert "ingress" in [m["name"] for m in r.json()["models"]]
