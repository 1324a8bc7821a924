"""The Redis session store against a real redis-server (no Ray): the compare-and-set is atomic and
idempotent, the TTL is Redis' own key expiry, states survive a SIGKILL and restart from the append-only
file, and a store call rides out the restart; a session stepped through Redis answers like the whole
sequence."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from _redis_server import RedisServer

from cellforge.serving.redis_store import RedisSessions, decode, encode


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def run(coro):
    return asyncio.run(coro)


def test_sessions_create_get_advance_delete_count(redis_server):
    async def go():
        st = RedisSessions(redis_server.url)
        sid = await st.create("m", "v1", 60)
        assert await st.get(sid, "m") == {"version": "v1", "steps": 0, "state": None}
        assert await st.get(sid, "other") is None  # another model's session is not found
        state = [(np.arange(4, dtype=np.float32).reshape(1, 4), np.ones((1, 4), np.float32))]
        assert await st.advance(sid, 0, state, 3, "m") == "ok"
        assert await st.advance(sid, 0, state, 3, "m") == "conflict"  # someone already advanced it
        got = await st.get(sid, "m")
        assert got["steps"] == 3 and isinstance(got["state"][0], tuple)
        np.testing.assert_array_equal(got["state"][0][0], state[0][0])
        assert await st.count("m") == 1 and await st.count("other") == 0
        assert not await st.delete(sid, "other") and await st.delete(sid, "m") and not await st.delete(sid, "m")
        assert await st.get(sid, "m") is None and await st.advance(sid, 3, state, 4, "m") == "gone"
        assert await st.count("m") == 0
        await st.close()

    run(go())


def test_ttl_is_redis_key_expiry_renewed_by_each_step(redis_server):
    import redis

    async def go():
        st = RedisSessions(redis_server.url)
        sid = await st.create("m", "v", 0.4)
        r, key = redis.Redis.from_url(redis_server.url), st.keys(sid, "m")[0]
        assert 0 < r.pttl(key) <= 400  # the key itself expires: no sweeper in any process
        for _ in range(3):  # stepped within its TTL, it lives past it
            await asyncio.sleep(0.25)
            got = await st.get(sid, "m")
            assert got is not None
            assert await st.advance(sid, got["steps"], [], got["steps"] + 1, "m") == "ok"
        await asyncio.sleep(0.6)  # idle past its TTL: gone, and no longer counted
        assert await st.get(sid, "m") is None and not r.exists(key) and await st.count("m") == 0
        await st.close()

    run(go())


def test_compare_and_set_is_atomic_under_concurrent_steps(redis_server):
    async def go():
        st = RedisSessions(redis_server.url)
        sid = await st.create("m", "v", 60)
        # 40 replicas read steps=0 and race to store their step: exactly one wins
        out = await asyncio.gather(*(st.advance(sid, 0, [np.full(2, i, np.float32)], 1, "m") for i in range(40)))
        assert out.count("ok") == 1 and out.count("conflict") == 39
        winner = out.index("ok")
        np.testing.assert_array_equal((await st.get(sid, "m"))["state"][0], np.full(2, winner, np.float32))
        await st.close()

    run(go())


def test_a_retried_compare_and_set_is_idempotent(redis_server):
    """A reply lost when the connection drops is retried by the client: the step's token says it applied."""
    async def go():
        st = RedisSessions(redis_server.url)
        sid = await st.create("m", "v", 60)
        keys, args = st.keys(sid, "m"), [sid, 0, 2, encode([]), "token-1"]
        assert await st._advance(keys=keys, args=args) == b"ok"
        assert await st._advance(keys=keys, args=args) == b"ok"  # the same step again: applied once
        assert await st._advance(keys=keys, args=[sid, 0, 2, encode([]), "token-2"]) == b"conflict"
        assert (await st.get(sid, "m"))["steps"] == 2
        await st.close()

    run(go())


def test_states_survive_sigkill_and_a_call_rides_out_the_restart(redis_server):
    async def go():
        st = RedisSessions(redis_server.url)
        sid = await st.create("m", "v", 60)
        carry = {"window": [[0.5, 1.5]], "steps": 7}  # an anomaly stream's carry: a dict, not arrays
        assert await st.advance(sid, 0, carry, 7, "m") == "ok"
        redis_server.kill()  # SIGKILL: only the append-only file remains
        restarter = threading.Timer(0.5, redis_server.start)
        restarter.start()
        t0 = time.monotonic()
        got = await st.get(sid, "m")  # sent while redis-server is down: retried until it is back
        restarter.join()
        assert time.monotonic() - t0 >= 0.4 and got == {"version": "v", "steps": 7, "state": carry}
        await st.close()

    run(go())


def test_an_unreachable_store_answers_503_naming_it(tmp_path, monkeypatch):
    from cellforge.serving import redis_store
    from cellforge.serving.schema import ApiError

    monkeypatch.setattr(redis_store, "RETRIES", 2)
    server = RedisServer(tmp_path / "r")  # never started: nothing listens on its port
    st = RedisSessions(server.url)
    with pytest.raises(ApiError) as e:
        run(st.get("x", "m"))
    assert e.value.status == 503 and e.value.field == "session_store" and e.value.headers == {"Retry-After": "1"}


def test_states_round_trip_without_pickle():
    state = [(np.ones((1, 3), np.float32), np.zeros((1, 3), np.float64)), (np.arange(3, dtype=np.int64),)]
    data = encode(state)
    assert b"pickle" not in data and data.startswith(b"[")
    back = decode(data)
    assert [type(layer) for layer in back] == [tuple, tuple]
    for a, b in zip([x for layer in state for x in layer], [x for layer in back for x in layer]):
        assert a.dtype == b.dtype and a.shape == b.shape and (a == b).all()
    assert decode(encode({"window": [[1.0]], "steps": 3})) == {"window": [[1.0]], "steps": 3}
    assert decode(b"") is None


def test_steps_through_redis_equal_the_whole_sequence(redis_server, tmp_path):
    """A GRU classifier streamed 2 + 3 + 1 steps, its state through Redis between calls."""
    import cellforge as cf
    from cellforge import bundle as B
    from cellforge.backends.numpy import init_params
    from cellforge.serving.config import DeployConfig
    from cellforge.serving.engine import Engine

    spec = cf.ModelSpec(task="classify", cell="lstm", hidden_size=8, num_layers=2, num_classes=3,
                        input={"num_features": 2})
    state = {"kind": "sequences", "task": "classify", "input_type": "numeric", "max_length": None,
             "num_features": 2, "scaler": {"shift": [0.5, 0.5], "scale": [2.0, 2.0]}, "classes": ["a", "b", "c"]}
    bundle = B.save(tmp_path / "b", spec, init_params(spec, 0), state, {})
    engine = Engine(DeployConfig(bundle=str(bundle), name="m"))
    x = np.random.default_rng(0).normal(size=(6, 2)).round(3)

    async def go():
        st = RedisSessions(redis_server.url)
        sid, probs = await st.create("m", engine.version, 60), []
        for a, b in ((0, 2), (2, 5), (5, 6)):
            s = await st.get(sid, "m")
            answer, new = engine.step(engine.step_inputs(x[a:b].tolist()), s["state"])
            assert await st.advance(sid, s["steps"], new, b, "m") == "ok"
            probs += answer["probabilities"]
        await st.close()
        return probs

    want = cf.load(bundle).predict_proba([x[: t + 1] for t in range(6)])
    np.testing.assert_allclose(run(go()), want, atol=1e-5)


def test_deploy_config_names_the_store_and_affinity_sets_the_consistent_hash_router():
    from cellforge.errors import SpecError
    from cellforge.serving.config import AFFINITY_ROUTER, DeployConfig

    with pytest.raises(SpecError) as e:
        DeployConfig.parse({"bundle": "b", "name": "m", "session_store": "mysql://db"})
    assert e.value.problems[0][0] == "session_store"
    cfg = DeployConfig.parse({"bundle": "b", "name": "m", "session_store": "redis://10.0.0.5:6379/2", "affinity": True})
    router = cfg.serve_options()["request_router_config"]
    assert router.request_router_class == AFFINITY_ROUTER
    assert "request_router_config" not in DeployConfig(bundle="b", name="m", affinity=False).serve_options()


def test_behind_haproxy_affinity_is_haproxys_balancing_not_a_request_router(monkeypatch):
    """Ray 2.60 refuses a request router on the ingress deployment where HAProxy is the ingress (a
    Serve YAML built in the controller): the hash HAProxy balances by keeps the session on one replica."""
    from ray.serve._private import constants

    from cellforge.serving.config import DeployConfig

    monkeypatch.setattr(constants, "RAY_SERVE_ENABLE_HA_PROXY", True)
    cfg = DeployConfig.parse({"bundle": "b", "name": "m", "affinity": True})
    assert cfg.affinity and "request_router_config" not in cfg.serve_options()
