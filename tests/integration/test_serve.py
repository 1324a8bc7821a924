"""Real Ray Serve on the session's Ray, real HTTP: predictions, sessions, bad input, autoscaling with
batching, a replica killed mid-session, a bundle replaced under load, the CLI, a job step and a Serve YAML.

Serve listens on 127.0.0.1 at a free port; only the applications made here are removed at the end
(and Serve itself only if this module started it).
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import yaml

import cellforge as cf
from cellforge import bundle as B
from cellforge.backends.numpy import init_params
from cellforge.client import RequestError
from cellforge.serving.config import version_of

KEY = "test-key-1234"
ROOT = Path(__file__).resolve().parents[2]


def numeric_bundle(path, task="classify", features=3, seed=0):
    """A real bundle with random weights (no training needed to test serving's arithmetic)."""
    out = {"classify": {"num_classes": 4}, "forecast": {"num_outputs": 1, "horizon": 2}}[task]
    spec = cf.ModelSpec(task=task, cell="gru", hidden_size=8, num_layers=2, input={"num_features": features},
                        **out)
    state = {"kind": "sequences", "task": task, "input_type": "numeric", "max_length": None,
             "num_features": features, "scaler": {"shift": [0.5] * features, "scale": [2.0] * features}}
    if task == "classify":
        state["classes"] = ["a", "b", "c", "d"]
    else:
        state.update(kind="series", window=6, horizon=2, columns=[f"x{i}" for i in range(features)],
                     targets=["x0"], num_targets=1, target_scaler={"shift": [1.0], "scale": [3.0]})
    return B.save(path, spec, init_params(spec, seed), state, {})


def text_bundle(path):
    vocab = ["<pad>", "<unk>", "good", "bad", "movie", "plot", "the", "was"]
    spec = cf.ModelSpec(task="classify", cell="lstm", hidden_size=8, num_classes=2, bidirectional=True,
                        input={"type": "text", "vocab_size": len(vocab), "embedding_dim": 5})
    state = {"kind": "sequences", "task": "classify", "input_type": "text", "max_length": None,
             "tokenizer": "word", "lowercase": True, "vocab": vocab, "classes": ["neg", "pos"]}
    return B.save(path, spec, init_params(spec, 3), state, {})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _replicas(app: str) -> dict[str, int]:
    """The replica states of an app's model deployment, e.g. {"RUNNING": 1, "STOPPING": 1}."""
    from ray import serve

    status = serve.status().applications.get(app)
    return {} if status is None else {str(k): v for k, v in status.deployments["Model"].replica_states.items() if v}


def wait_for(cond, timeout: float, what: str, every: float = 0.25):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = cond()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def replicas(app: str, state: str = "RUNNING") -> int:
    from ray import serve

    a = serve.status().applications.get(app)
    return a.deployments["Model"].replica_states.get(state, 0) if a and "Model" in a.deployments else 0


def replica_actors(app: str) -> set[str]:
    """Actor names of the app's running replicas (from Serve's controller)."""
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()["applications"].get(app, {})
    reps = details.get("deployments", {}).get("Model", {}).get("replicas", [])
    return {r["actor_name"] for r in reps if r["state"] == "RUNNING"}


@pytest.fixture(scope="module")
def server(ray_session, serve_module):
    from cellforge.serving.deploy import base_url

    mine: list[str] = []  # apps a test made (serve_module deletes every app of this module at its end)
    yield SimpleNamespace(base=base_url(), mine=mine, port=int(base_url().rsplit(":", 1)[1]),
                          gcs=ray_session.get_runtime_context().gcs_address)


@pytest.fixture(scope="module")
def digits(server, digits_runs):
    """The session's digits LSTM (trained in torch on 2 workers), deployed as 'digits' behind a bearer token."""
    data = cf.datasets.load("digits")
    result = digits_runs("torch", 2)
    ep = cf.deploy(result.bundle, "digits", num_replicas=1, api_key=KEY, max_length=20,
                   max_body_bytes=64 * 1024, batching={"max_batch_size": 16, "batch_wait_timeout_s": 0.01})
    server.mine += ["digits", "cellforge"]
    return SimpleNamespace(ep=ep, bundle=result.bundle, x=data.x[:6].astype(np.float64),
                           client=cf.Client(server.base, api_key=KEY))


@pytest.fixture(scope="module")
def more_models(server, tmp_path_factory):
    """A forecaster deployed with cf.deploy, and a bidirectional text classifier from a job file."""
    d = tmp_path_factory.mktemp("bundles")
    fc = numeric_bundle(d / "forecast", task="forecast")
    tx = text_bundle(d / "text")
    cf.deploy(fc, "forecast", num_replicas=1)
    from cellforge.jobs import run_job

    out = run_job({"steps": [{"deploy": {"bundle": str(tx), "name": "reviews", "block": False,
                                         "port": server.port, "num_cpus": 0.25}}]})
    server.mine += ["forecast", "reviews"]
    return SimpleNamespace(forecast=fc, text=tx, job=out)


# predictions -------------------------------------------------------------------------
def test_predictions_equal_cf_load_and_models_are_listed(server, digits, more_models):
    ref = cf.load(digits.bundle)  # trained in torch; served by the numpy runtime
    got = digits.client.predict("digits", digits.x)
    assert got["model"] == "digits" and got["version"] == digits.ep.version
    np.testing.assert_allclose(got["probabilities"], ref.predict_proba(digits.x), atol=1e-5)
    assert got["labels"] == ref.predict(digits.x).tolist()

    client = cf.Client(server.base)
    series = np.random.default_rng(0).normal(size=(3, 6, 3))
    np.testing.assert_allclose(client.predict("forecast", series)["values"],
                               cf.load(more_models.forecast).predict(series), atol=1e-5)
    texts = ["the movie was good", "bad plot", "never seen words"]
    np.testing.assert_allclose(client.predict("reviews", texts)["probabilities"],
                               cf.load(more_models.text).predict_proba(texts), atol=1e-5)

    models = {m["name"]: m for m in client.models()}
    assert {"digits", "forecast", "reviews"} <= set(models)
    assert models["digits"]["input"]["num_features"] == 8 and models["digits"]["output"]["classes"] == list(range(10))
    assert models["reviews"]["version"] == more_models.job["deploy"]["version"]
    assert len({models[n]["version"] for n in ("digits", "forecast", "reviews")}) == 3
    assert client.health() == {"status": "ok"}
    openapi = httpx.get(f"{server.base}/openapi.json").json()
    assert "/v1/models/{name}/sessions/{session_id}/step" in openapi["paths"]
    assert httpx.get(f"{server.base}/docs").status_code == 200


def test_session_steps_equal_whole_sequence_predictions(digits, more_models, server):
    ref = cf.load(digits.bundle)
    x = digits.x[0]  # 8 steps of 8 pixels
    with digits.client.session("digits") as s:
        outs = [s.step(x[a:b]) for a, b in ((0, 3), (3, 4), (4, 8))]
    with pytest.raises(RequestError) as e:  # leaving the block ended the session
        s.step(x[:1])
    assert e.value.status == 404 and e.value.problems[0][0] == "session_id"
    probs = np.concatenate([o["probabilities"] for o in outs])
    want = ref.predict_proba([x[: t + 1] for t in range(8)])
    np.testing.assert_allclose(probs, want, atol=1e-5)
    assert outs[-1]["steps"] == 8 and outs[-1]["labels"][-1] == ref.predict(x[None])[0]

    client = cf.Client(server.base)
    seq = np.random.default_rng(1).normal(size=(6, 3))
    with client.session("forecast") as s:
        values = s.step(seq[:4])["values"] + s.step(seq[4:])["values"]
    np.testing.assert_allclose(values, cf.load(more_models.forecast).predict([seq[: t + 1] for t in range(6)]),
                               atol=1e-5)


def test_session_steps_over_a_websocket_answer_as_the_step_route(digits):
    """One WebSocket per session (/sessions/{id}/stream, through HAProxy, with the bearer token): the
    answers are the whole-sequence predictions, in order; a refused step (wrong width, stale offset,
    not JSON) answers its 4xx and changes nothing, the socket staying open; HTTP steps and socket
    steps share the session; an unknown session is answered 404."""
    ref = cf.load(digits.bundle)
    x = digits.x[1]
    with digits.client.session("digits") as s, s.socket() as ws:
        outs = [ws.step(x[:3])]
        with pytest.raises(RequestError) as e:
            ws.step([[1.0, 2.0]])  # 2 features for an 8-feature model
        assert e.value.status == 422 and e.value.problems[0][0].startswith("inputs"), e.value
        s.steps = 1  # a stale offset: the step is refused, not applied twice
        with pytest.raises(RequestError) as e:
            ws.step(x[3:4])
        assert e.value.status == 409 and e.value.problems[0][0] == "offset"
        ws._ws.send(b"\xff not json")
        assert json.loads(ws._ws.recv(timeout=30))["status"] == 422
        s.steps = 3
        outs += [ws.step(x[3:4]), s.step(x[4:6]), ws.step(x[6:8])]  # the socket, HTTP, the socket again
    probs = np.concatenate([o["probabilities"] for o in outs])
    np.testing.assert_allclose(probs, ref.predict_proba([x[: t + 1] for t in range(8)]), atol=1e-5)
    assert [o["steps"] for o in outs] == [3, 4, 6, 8]
    from cellforge.client import Session

    with Session(digits.client, "digits", "no-such-session", s.version).socket() as ws, \
            pytest.raises(RequestError) as e:
        ws.step(x[:1])
    assert e.value.status == 404 and e.value.problems[0][0] == "session_id"


def test_endpoint_metrics_reach_prometheus_through_rays_export(digits):
    """The endpoint's own series (serving.metrics), scraped from the Ray node's metrics agent as
    Prometheus would: requests by route and status, their latency, rejections by reason, batch sizes,
    session-store latency by operation, live sessions, WebSocket steps."""
    import ray
    from prometheus_client.parser import text_string_to_metric_families

    x = digits.x
    digits.client.predict("digits", x[:2])
    with pytest.raises(RequestError):
        digits.client.predict("digits", [[[1.0, 2.0]]])  # 2 features for 8: 422
    with digits.client.session("digits") as s:
        s.step(x[0][:2])
        with s.socket() as ws:
            ws.step(x[0][2:4])
    port = next(n["MetricsExportPort"] for n in ray.nodes() if n["Alive"])
    need = {"ray_cellforge_requests_total", "ray_cellforge_request_latency_ms_count",
            "ray_cellforge_rejected_requests_total", "ray_cellforge_batch_size_count",
            "ray_cellforge_session_store_latency_ms_count", "ray_cellforge_live_sessions"}
    deadline = time.monotonic() + 120  # Ray's workers report to the agent every few seconds
    while True:
        series: dict[str, list] = {}
        for family in text_string_to_metric_families(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text):
            for sample in family.samples:
                if sample.labels.get("model") == "digits":
                    series.setdefault(sample.name, []).append(sample)
        requests = {(m.labels["route"], m.labels["status"]) for m in series.get("ray_cellforge_requests_total", [])}
        ops = {m.labels["op"] for m in series.get("ray_cellforge_session_store_latency_ms_count", [])}
        if need <= series.keys() and {("predict", "200"), ("predict", "422"), ("step", "200"),
                                      ("stream_step", "200"), ("create_session", "200")} <= requests \
                and {"create", "get", "advance", "delete"} <= ops:
            break
        assert time.monotonic() < deadline, (sorted(series), sorted(requests), sorted(ops))
        time.sleep(2)
    rejected = {(m.labels["route"], m.labels["reason"]) for m in series["ray_cellforge_rejected_requests_total"]}
    assert ("predict", "invalid_input") in rejected
    assert {m.labels["kind"] for m in series["ray_cellforge_batch_size_count"]} >= {"predict"}
    assert sum(m.value for m in series["ray_cellforge_request_latency_ms_count"]
               if m.labels["route"] == "predict") >= 2


# bad input -------------------------------------------------------------------------------
def test_bad_input_gets_4xx_naming_the_field_and_the_replica_keeps_serving(server, digits, more_models):
    auth = {"Authorization": f"Bearer {KEY}"}
    good = {"inputs": digits.x[:1].tolist()}
    m = "/v1/models/digits"
    sid = digits.client.session("digits").id
    nan = json.dumps({"inputs": [[[float("nan")] * 8] * 8]})  # NaN is not JSON; Python's encoder writes it anyway
    cases = [  # (method, path, json body or raw bytes, headers, status, field)
        ("POST", f"{m}/predict", good, {}, 401, "Authorization"),
        ("POST", f"{m}/predict", good, {"Authorization": "Bearer wrong-key-000"}, 401, "Authorization"),
        ("POST", f"{m}/predict", {"inputs": []}, auth, 422, "inputs"),
        ("POST", f"{m}/predict", {"inputs": [[[1.0] * 7] * 8]}, auth, 422, "inputs.0.0"),
        ("POST", f"{m}/predict", {"inputs": [[[1.0] * 8] * 21]}, auth, 422, "inputs.0"),
        ("POST", f"{m}/predict", {"inputs": [[["a"] * 8] * 8]}, auth, 422, "inputs.0.0.0"),
        ("POST", f"{m}/predict", {"inputs": "not a list"}, auth, 422, "inputs"),
        ("POST", f"{m}/predict", {"inputs": [[[1.0] * 8]], "colour": "red"}, auth, 422, "colour"),
        ("POST", f"{m}/predict", nan.encode(), auth, 422, "inputs.0.0.0"),
        ("POST", f"{m}/predict", nan.replace("NaN", "Infinity").encode(), auth, 422, "inputs.0.0.0"),
        ("POST", f"{m}/predict", b"{not json", auth, 422, "body"),
        ("POST", f"{m}/predict", {"inputs": [[[1.0] * 8] * 20] * 200}, auth, 413, "body"),
        ("POST", f"{m}/sessions/nope/step", {"inputs": [[1.0] * 8]}, auth, 404, "session_id"),
        ("POST", f"{m}/sessions/{sid}/step", {"inputs": [[1.0] * 8], "offset": 5}, auth, 409, "offset"),
        ("POST", f"{m}/sessions/{sid}/step", {"inputs": [[1.0] * 9]}, auth, 422, "inputs.0"),
        ("DELETE", f"{m}/sessions/nope", None, auth, 404, "session_id"),
        ("POST", "/v1/models/nosuchmodel/predict", good, {}, 404, "name"),
        ("POST", "/v1/models/reviews/sessions", None, {}, 400, "model"),  # bidirectional: no streaming
    ]
    before = replica_actors("digits")
    with httpx.Client(base_url=server.base, timeout=30) as http:
        for method, path, body, headers, status, field in cases:
            kw = {"content": body, "headers": {**headers, "content-type": "application/json"}} if isinstance(
                body, bytes) else {"json": body, "headers": headers}
            r = http.request(method, path, **kw)
            assert r.status_code == status, (path, r.status_code, r.text)
            err = r.json()
            assert err["problems"][0]["field"] == field and err["message"], (path, err)
            assert http.post(f"{m}/predict", json=good, headers=auth).status_code == 200  # still serving
    assert replica_actors("digits") == before  # no replica crashed or restarted


# autoscaling, batching, replica loss ---------------------------------------------------------
def test_autoscaling_batching_and_sessions_survive_scaling_and_a_killed_replica(server, digits):
    import ray

    cf.deploy(digits.bundle, "auto", num_cpus=0.25, batching={"max_batch_size": 16, "batch_wait_timeout_s": 0.02},
              autoscaling={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2,
                           "upscale_delay_s": 0.5, "downscale_delay_s": 5, "look_back_period_s": 1,
                           "metrics_interval_s": 0.5})
    server.mine.append("auto")
    client, x = cf.Client(server.base), digits.x[1]
    want = cf.load(digits.bundle).predict_proba([x[: t + 1] for t in range(8)])
    session, outs = client.session("auto"), []
    outs.append(session.step(x[:3]))

    # concurrent load until the autoscaler has started a second replica and both have served batches
    statuses: list[int] = []

    async def load(stop):
        async with httpx.AsyncClient(base_url=server.base, timeout=60) as http:
            async def worker():
                while not stop():
                    r = await http.post("/v1/models/auto/predict", json={"inputs": digits.x[:2].tolist()})
                    statuses.append(r.status_code)
            await asyncio.gather(*(worker() for _ in range(32)))

    stop = threading.Event()
    loader = threading.Thread(target=lambda: asyncio.run(load(stop.is_set)))
    loader.start()
    try:
        wait_for(lambda: replicas("auto") >= 2 and client.metrics("auto")["replicas_reported"] >= 2, 120,
                 "a second replica serving batches", every=0.5)
        outs.append(session.step(x[3:5]))  # mid-load, two replicas up
    finally:
        stop.set()
        loader.join()
    assert set(statuses) == {200}
    # every request went through the batcher; replicas flush their counts every 0.25 s
    stats = wait_for(lambda: (m := client.metrics("auto"))["requests"] >= len(statuses) and m, 10, "batch stats")
    # counts from more than one replica were summed. At least two, not exactly two: under a load near
    # the target the autoscaler may cycle a replica (fresh clone at 5ee4e2f: 1 -> 2 -> 1 -> 2 within 9 s,
    # "ongoing requests: 1.80", so three replicas served and reported)
    assert stats["requests"] == len(statuses) and stats["replicas_reported"] >= 2, stats
    assert stats["max_batch_size"] > 1, stats  # dynamic batching formed real batches

    # load gone: the autoscaler scales down; the session is untouched
    wait_for(lambda: replicas("auto") == 1 and replicas("auto", "STOPPING") == 0, 60, "scale down to 1 replica")
    outs.append(session.step(x[5:6]))

    # kill every replica: the next step lands on a brand-new one and still continues the sequence
    killed = replica_actors("auto")
    for name in killed:
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    wait_for(lambda: (replica_actors("auto") - killed) and replicas("auto") >= 1, 60, "a replacement replica")
    outs.append(session.step(x[6:]))
    probs = np.concatenate([o["probabilities"] for o in outs])
    np.testing.assert_allclose(probs, want, atol=1e-5)
    assert outs[-1]["steps"] == 8


def serve_state(app):
    from ray import serve

    return serve.status().applications.get(app)


# replacement under load, CLI ----------------------------------------------------------------
def test_replacing_a_bundle_under_load_drops_nothing(server, tmp_path, capsys):
    from cellforge.cli import main

    v1 = numeric_bundle(tmp_path / "v1", features=3, seed=1)
    v2 = numeric_bundle(tmp_path / "v2", features=3, seed=2)
    first = cf.deploy(v1, "swap", num_replicas=1, num_cpus=0.25)
    server.mine.append("swap")
    inputs = np.random.default_rng(3).normal(size=(2, 5, 3)).tolist()
    seen: list[tuple[int, str]] = []
    stop = threading.Event()

    def hammer():
        with httpx.Client(base_url=server.base, timeout=60) as http:
            while not stop.is_set():
                r = http.post("/v1/models/swap/predict", json={"inputs": inputs})
                try:  # an ingress's error page is not JSON: record it, the thread must go on
                    seen.append((r.status_code, r.json().get("version", r.text)))
                except ValueError:
                    seen.append((r.status_code, r.text[:300]))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(seen) > 20, 30, "requests before the swap")
        assert main(["deploy", str(v2), "--name", "swap", "--num-replicas", "1", "--num-cpus", "0.25",
                     "--address", server.gcs, "--port", str(server.port), "--no-block"]) == 0
        n = len(seen)
        wait_for(lambda: len(seen) > n + 20, 30, "requests after the swap")
        # and on while the old replica drains and goes (RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S,
        # cellforge.runtime.fast_ingress_env), which is when a request could reach nobody
        wait_for(lambda: _replicas("swap") == {"RUNNING": 1}, 120, "the old replica to go", every=0.5)
        n = len(seen)
        wait_for(lambda: len(seen) > n + 20, 30, "requests after the old replica went")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert {s for s, _ in seen} == {200}, [v for s, v in seen if s != 200][:3]
    second = version_of(cf.serving.DeployConfig(bundle=str(v2), name="swap"))
    versions = [v for _, v in seen]
    assert first.version in versions and versions[-1] == second != first.version
    assert f"version {second}" in capsys.readouterr().out

    # the new bundle answers, and `cellforge predict` reads it from a file
    (tmp_path / "in.json").write_text(json.dumps(inputs))
    assert main(["predict", "swap", "--input", str(tmp_path / "in.json"), "--url", server.base]) == 0
    printed = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose(printed["probabilities"], cf.load(v2).predict_proba(inputs), atol=1e-5)


# Serve's own CLI -----------------------------------------------------------------------------
def test_serve_run_with_the_yaml(server, digits, tmp_path):
    cfg = yaml.safe_load((ROOT / "serve" / "digits.yaml").read_text())
    app = cfg["applications"][1]
    app.update(name="digits-yaml", route_prefix="/v1/models/digits-yaml")
    app["args"].update(bundle=str(digits.bundle), name="digits-yaml")
    (tmp_path / "app.yaml").write_text(yaml.safe_dump(cfg))
    server.mine.append("digits-yaml")
    serve_cli = Path(sys.executable).parent / "serve"
    subprocess.run([str(serve_cli), "run", "--non-blocking", "--address", server.gcs, str(tmp_path / "app.yaml")],
                   check=True, timeout=180, capture_output=True)
    client = cf.Client(server.base)
    wait_for(lambda: replicas("digits-yaml") >= 1, 120, "the YAML's application")
    got = client.predict("digits-yaml", digits.x)
    np.testing.assert_allclose(got["probabilities"], cf.load(digits.bundle).predict_proba(digits.x), atol=1e-5)
    with pytest.raises(RequestError) as e:
        client.predict("digits-yaml", [[[1.0] * 8] * 2000])
    assert e.value.status == 422 and e.value.problems[0][0] == "inputs.0"


# the ONNX Runtime runtime ---------------------------------------------------------------------
def test_onnx_runtime_answers_and_streams_as_cf_load(server, digits):
    from ray import serve

    ep = cf.deploy(digits.bundle, "digits-onnx", num_replicas=1, runtime="onnx", num_cpus=0.25)
    server.mine.append("digits-onnx")
    client, ref = cf.Client(server.base), cf.load(digits.bundle)
    got = client.predict("digits-onnx", digits.x)
    np.testing.assert_allclose(got["probabilities"], ref.predict_proba(digits.x), atol=1e-5)
    assert got["labels"] == ref.predict(digits.x).tolist() and got["version"] == ep.version
    assert {m["name"]: m for m in client.models()}["digits-onnx"]["runtime"] == "onnx"
    x = digits.x[1]
    with client.session("digits-onnx") as s:  # through the single-step graph
        probs = np.concatenate([s.step(x[a:b])["probabilities"] for a, b in ((0, 2), (2, 7), (7, 8))])
    np.testing.assert_allclose(probs, ref.predict_proba([x[: t + 1] for t in range(8)]), atol=1e-5)
    serve.delete("digits-onnx")
