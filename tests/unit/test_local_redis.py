"""The default store's own redis-server (serving.local_redis), no Ray: the store actor's class starts it on
a Unix socket with a password and no TCP port, it dies with the process that started it, and the
replicas' ``LocalSessions`` follow it to a new server (its sessions gone, as with the actor) or keep the
sessions in the actor where no server can run."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from cellforge.serving import local_redis
from cellforge.serving.sessions import ActorSessions, LocalSessions, Store


class FakeActor:
    """A store actor without Ray: ``actor.method.remote(*args)`` runs ``Store.method`` (as the actor would)."""

    def __init__(self, store: Store):
        self.store, self.asked = store, 0

    def __getattr__(self, name):
        async def remote(*args):
            self.asked += name == "local_server"
            return getattr(self.store, name)(*args)

        return type("Method", (), {"remote": staticmethod(remote)})


@pytest.fixture
def store():
    if local_redis.unavailable() is not None:
        pytest.fail(f"the local store's redis-server cannot run here ({local_redis.unavailable()}): run `make sysdeps`")
    st = Store()
    yield st
    if st.local is not None:
        st.local.stop()


def run(coro):
    return asyncio.run(coro)


def test_the_server_listens_on_a_private_socket_with_a_password_and_no_tcp_port(store):
    import redis

    url = store.local_server()
    assert url.startswith("unix://") and store.local_server() == url  # started once
    server = store.local
    assert stat.S_IMODE(os.stat(server.folder).st_mode) == 0o700
    proc = psutil.Process(server.proc.pid)
    assert proc.ppid() == os.getpid()
    assert [c for c in proc.net_connections("inet")] == []  # no TCP or UDP socket at all
    assert server.password not in " ".join(proc.cmdline())  # given on stdin
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(unix_socket_path=server.sock).ping()
    assert redis.Redis(unix_socket_path=server.sock, password=server.password).config_get("save") == {"save": ""}


def test_sessions_step_through_the_local_server_and_follow_it_when_it_is_replaced(store):
    actor = FakeActor(store)

    async def go():
        sessions = LocalSessions(actor)
        sid = await sessions.create("m", "v1", 60)
        state = [(np.arange(4, dtype=np.float32).reshape(1, 4), np.ones((1, 4), np.float32))]
        assert await sessions.advance(sid, 0, state, 3, "m") == "ok"
        assert await sessions.advance(sid, 0, state, 3, "m") == "conflict"
        got = await sessions.get(sid, "m")
        np.testing.assert_array_equal(got["state"][0][0], state[0][0])
        assert await sessions.count("m") == 1 and store.sessions == {}  # in Redis, not the actor's dict
        assert actor.asked == 1
        first = store.local.url
        store.local.proc.kill()  # the server is lost (with the actor, or alone): so are its sessions
        store.local.proc.wait()
        assert await sessions.get(sid, "m") is None  # asked the actor again: a new, empty server
        assert store.local.url != first and store.local.alive() and actor.asked == 2
        sid2 = await sessions.create("m", "v1", 60)
        assert await sessions.count("m") == 1 and await sessions.delete(sid2, "m")
        await sessions.close()

    run(go())


def test_without_a_server_the_sessions_stay_in_the_actor(store, monkeypatch):
    monkeypatch.setattr(local_redis.shutil, "which", lambda name: None)
    actor = FakeActor(store)

    async def go():
        sessions = LocalSessions(actor)
        sid = await sessions.create("m", "v1", 60)
        assert isinstance(sessions.impl, ActorSessions) and list(store.sessions) == [sid]
        assert await sessions.advance(sid, 0, [np.zeros(2)], 1, "m") == "ok"
        assert (await sessions.get(sid, "m"))["steps"] == 1

    run(go())
    assert store.local is None and "no redis-server on the PATH" in store.local_why


def test_only_a_loopback_node_or_a_linux_machine_runs_one(monkeypatch):
    assert local_redis.unavailable("127.0.0.1") is None and local_redis.unavailable("::1") is None
    assert "not a loopback address" in local_redis.unavailable("10.0.0.7")
    monkeypatch.setenv("CELLFORGE_LOCAL_REDIS", "0")
    assert local_redis.unavailable("127.0.0.1") == "CELLFORGE_LOCAL_REDIS=0"
    monkeypatch.delenv("CELLFORGE_LOCAL_REDIS")
    monkeypatch.setattr(local_redis.sys, "platform", "darwin")
    assert "not on Linux" in local_redis.unavailable()


def test_the_server_dies_with_the_process_that_started_it(tmp_path):
    if local_redis.unavailable() is not None:
        pytest.fail(f"redis-server cannot run here ({local_redis.unavailable()}): run `make sysdeps`")
    code = ("import sys, time\nfrom cellforge.serving.local_redis import LocalRedis\n"
            "s = LocalRedis.start()\nprint(s.proc.pid, s.folder, flush=True)\ntime.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pid, folder = parent.stdout.readline().split()
    server = psutil.Process(int(pid))
    assert server.is_running() and server.status() != psutil.STATUS_ZOMBIE
    parent.send_signal(signal.SIGKILL)  # as Ray kills an actor
    parent.wait()
    deadline = time.monotonic() + 10
    while psutil.pid_exists(int(pid)) and time.monotonic() < deadline:
        try:
            if server.status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    assert not psutil.pid_exists(int(pid)) or server.status() == psutil.STATUS_ZOMBIE
    assert not os.path.exists(os.path.join(folder, "redis.sock"))  # it shut down (SIGTERM), not left behind


def test_a_server_that_will_not_restart_answers_503_naming_the_store(store, monkeypatch):
    from cellforge.serving.schema import ApiError

    actor = FakeActor(store)

    async def go():
        sessions = LocalSessions(actor)
        await sessions.create("m", "v1", 60)
        store.local.proc.kill()
        store.local.proc.wait()

        def refuse():
            raise RuntimeError("no room")

        monkeypatch.setattr(local_redis.LocalRedis, "start", staticmethod(refuse))
        with pytest.raises(ApiError) as e:
            await sessions.create("m", "v1", 60)
        assert e.value.status == 503 and "session_store" in str(e.value.body())
        assert store.sessions == {}  # never the actor's dict once sessions live in Redis
        monkeypatch.undo()
        assert await sessions.get("nope", "m") is None and store.local.alive()  # asked again: a new server

    run(go())
