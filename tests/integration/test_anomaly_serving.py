"""A served anomaly detector scores a live stream through the session API: one session per stream,
the server keeping the stream's last window; stepping a series point by point (and in chunks) gives
``model.score``'s scores within 1e-5, also after the replica serving the stream is killed mid-stream;
bad steps are 4xx naming the field. The detector is the session's torch forecast run (_anomaly_runs)."""

import time
from concurrent.futures import ThreadPoolExecutor

import _anomaly_runs
import numpy as np
import pytest

import cellforge as cf
from cellforge.client import RequestError
from cellforge.data.anomalies import co2_seasonal, inject

pytestmark = pytest.mark.integration
anomaly_runs = _anomaly_runs.anomaly_runs
NAME = "co2-anomaly"


def replica_actors(app: str) -> set[str]:
    """Actor names of the app's running replicas (from Serve's controller; as test_serve.py reads them)."""
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()["applications"].get(app, {})
    return {r["actor_name"] for r in details.get("deployments", {}).get("Model", {}).get("replicas", [])
            if r["state"] == "RUNNING"}


@pytest.mark.slow  # make test-all: a replica killed mid-stream (~50 s); make test streams many at once below, each equal to score
def test_a_stream_scored_step_by_step_equals_score_also_across_a_killed_replica(serve_module, anomaly_runs):
    import ray

    bundle = anomaly_runs("forecast", "torch").bundle
    client = cf.Client(cf.deploy(bundle, NAME, num_replicas=1, runtime="torch").base_url)
    injected, _ = inject(co2_seasonal(), start=_anomaly_runs.CUT, seed=0)
    series = injected.values[_anomaly_runs.CUT - 24: _anomaly_runs.CUT + 76, 0]  # a spike at step 77
    want = cf.load(bundle, framework="torch").score(series)
    got, flags = [], []
    with client.session(NAME) as s:
        for t in range(40):  # point by point
            out = s.step([float(series[t])])
            got += out["scores"]
            flags += out["flags"]
        assert out["threshold"] == pytest.approx(cf.load(bundle).anomaly_state()["anomaly"]["threshold"])
        killed = replica_actors(NAME)
        for name in killed:
            ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
        deadline = time.monotonic() + 90
        while not (replica_actors(NAME) - killed) and time.monotonic() < deadline:
            time.sleep(0.25)
        for a, b in ((40, 41), (41, 70), (70, 100)):  # on the new replica, in chunks
            out = s.step(series[a:b, None].tolist())
            got += out["scores"]
            flags += out["flags"]
        with pytest.raises(RequestError) as e:
            s.step([[1.0, 2.0]])  # two features for a one-feature model
        assert 400 <= e.value.status < 500 and any(f.startswith("inputs") for f, _ in e.value.problems), e.value
    scores = np.array([np.nan if v is None else v for v in got])
    np.testing.assert_allclose(scores, want, atol=1e-5, equal_nan=True)
    assert flags == list(np.nan_to_num(want, nan=-np.inf) > out["threshold"]) and any(flags)


def test_many_streams_at_once_are_batched_and_each_gets_its_own_scores(serve_module, anomaly_runs):
    """16 streams stepped at the same time through one replica: their windows run in shared forward
    passes (the endpoint's batch statistics show batches of several steps), and every stream's scores
    are still ``model.score`` of its own series."""
    bundle = anomaly_runs("forecast", "torch").bundle
    name = "co2-streams"
    client = cf.Client(cf.deploy(bundle, name, num_replicas=1, runtime="numpy").base_url)
    values = co2_seasonal().values[:, 0]
    series = [values[300 + 7 * k: 300 + 7 * k + 40] for k in range(16)]
    model = cf.load(bundle, framework="numpy")

    def stream(k: int) -> list:
        got = []
        with client.session(name) as s:
            for a, b in ((0, 1), (1, 20), *((t, t + 1) for t in range(20, 40))):
                got.append(s.step(series[k][a:b, None].tolist())["scores"])
        return got

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(stream, range(16)))
    results = [sum(a, []) for a in answers]
    scored = sum(any(v is not None for v in step) for a in answers for step in a)  # steps with windows to run
    for got, x in zip(results, series):
        np.testing.assert_allclose(np.array([np.nan if v is None else v for v in got]), model.score(x),
                                   atol=1e-5, equal_nan=True)
    deadline, stats = time.monotonic() + 10, {}
    while time.monotonic() < deadline:  # replicas report their batch sizes every 0.25 s
        stats = client.metrics(name)
        if stats.get("requests", 0) >= scored:
            break
        time.sleep(0.3)
    assert stats["requests"] == scored and stats["max_batch_size"] > 1, (scored, stats)
