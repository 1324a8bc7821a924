"""A served anomaly detector scores a live stream through the session API: one session per stream,
the server keeping the stream's last window; stepping a series point by point (and in chunks) gives
``model.score``'s scores within 1e-5, also after the replica serving the stream is killed mid-stream;
bad steps are 4xx naming the field. The detector is the session's torch forecast run (_anomaly_runs)."""

import time

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
