"""A deployed model whose sessions live in a real Redis Cluster (three primaries started here), over
real HTTP through Ray Serve: a session's steps answer as predict does on each prefix, its state is on
the cluster's node for its slot, and the endpoint's metrics name the store and count its sessions."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import cellforge as cf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from _redis_cluster import RedisClusterServers  # noqa: E402


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with RedisClusterServers(tmp_path_factory.mktemp("redis-cluster"), primaries=3) as c:
        yield c


def lstm_bundle(path: Path) -> Path:
    """A random-weight two-layer LSTM classifier over 2 features (no training: the store is under test)."""
    from cellforge import bundle as B
    from cellforge.backends.numpy import init_params

    spec = cf.ModelSpec(task="classify", cell="lstm", hidden_size=8, num_layers=2, num_classes=3,
                        input={"num_features": 2})
    state = {"kind": "sequences", "task": "classify", "input_type": "numeric", "max_length": None,
             "num_features": 2, "scaler": {"shift": [0.5, 0.5], "scale": [2.0, 2.0]}, "classes": ["a", "b", "c"]}
    return B.save(path, spec, init_params(spec, 0), state, {})


def test_sessions_in_a_redis_cluster_step_as_predict_on_each_prefix(ray_session, serve_module, cluster,
                                                                   tmp_path):
    from cellforge.serving.deploy import base_url
    from cellforge.serving.redis_store import RedisSessions

    cf.deploy(lstm_bundle(tmp_path / "b"), "clustered", num_replicas=1, num_cpus=0.25,
              session_store=cluster.url, batching={"max_batch_size": 8, "batch_wait_timeout_s": 0.002})
    client = cf.Client(base_url())
    xs = np.random.default_rng(0).normal(size=(3, 6, 2)).round(3)
    sessions = [client.session("clustered") for _ in xs]
    outs: list[list] = [[] for _ in xs]
    for a, b in ((0, 2), (2, 5), (5, 6)):  # the sessions' steps interleaved
        for i, (s, x) in enumerate(zip(sessions, xs)):
            outs[i] += s.step(x[a:b])["probabilities"]
    want = client.predict("clustered", [x[: t + 1].tolist() for x in xs for t in range(6)])["probabilities"]
    np.testing.assert_allclose(np.array(outs).reshape(-1, 3), want, atol=1e-6)

    keys = [RedisSessions(cluster.url).keys(s.id, "clustered")[0] for s in sessions]
    homes = {cluster.node_of_key(k).port for k in keys}  # each session's hash found on a node, by asking it
    metrics = client.metrics("clustered")
    assert metrics["session_store"] == "redis-cluster" and metrics["sessions"] == 3, metrics
    for s in sessions:
        s.close()
    assert client.metrics("clustered")["sessions"] == 0
    print(f"\n3 sessions on {len(homes)} of the cluster's 3 primaries")
