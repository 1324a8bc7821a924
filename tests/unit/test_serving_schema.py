"""Serving without Serve: deploy configs, request validation, the error shape, auth and body limits,
and the engine's numbers against cf.load (predict) and the numpy reference (stepping)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

import cellforge as cf
from cellforge import bundle as B
from cellforge.backends.numpy import init_params
from cellforge.serving.config import DeployConfig
from cellforge.serving.engine import Engine, InputError
from cellforge.serving.http import BodyLimit, bearer_check, install_errors
from cellforge.serving.schema import PredictRequest, StepRequest


def numeric_bundle(path, task="classify", bidirectional=False, features=3, seed=0, **spec):
    out = {"classify": {"num_classes": 4}, "forecast": {"num_outputs": 1, "horizon": 2}}[task]
    s = cf.ModelSpec(task=task, cell="gru", hidden_size=8, num_layers=2, bidirectional=bidirectional,
                     input={"num_features": features, "window": 6}, **out, **spec)
    rng = np.random.default_rng(seed)
    scaler = {"shift": rng.normal(size=features).tolist(), "scale": rng.uniform(0.5, 2, features).tolist()}
    state = {"kind": "sequences", "task": task, "input_type": "numeric", "max_length": None,
             "num_features": features, "scaler": scaler}
    if task == "classify":
        state["classes"] = ["a", "b", "c", "d"]
    else:
        state.update(kind="series", window=6, horizon=2, columns=["x0", "x1", "x2"][:features], targets=["x0"],
                     num_targets=1, target_scaler={"shift": [1.0], "scale": [3.0]})
    return B.save(path, s, init_params(s, seed), state, {})


def text_bundle(path):
    vocab = ["<pad>", "<unk>", "good", "bad", "movie", "plot", "the", "was"]
    s = cf.ModelSpec(task="classify", cell="lstm", hidden_size=8, num_classes=2,
                     input={"type": "text", "vocab_size": len(vocab), "embedding_dim": 5})
    state = {"kind": "sequences", "task": "classify", "input_type": "text", "max_length": None,
             "tokenizer": "word", "lowercase": True, "vocab": vocab, "classes": ["neg", "pos"]}
    return B.save(path, s, init_params(s, 3), state, {})


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    d = tmp_path_factory.mktemp("bundles")
    return {"classify": numeric_bundle(d / "c"), "forecast": numeric_bundle(d / "f", task="forecast"),
            "keras": numeric_bundle(d / "k", framework="tensorflow"),
            "bidir": numeric_bundle(d / "b", bidirectional=True), "text": text_bundle(d / "t")}


def engine(path, **kw):
    return Engine(DeployConfig(bundle=str(path), name="m", **kw))


# deploy config -----------------------------------------------------------------------
def test_deploy_config_lists_every_problem_with_its_field():
    with pytest.raises(cf.SpecError) as e:
        DeployConfig.parse({"bundle": "b", "name": "bad name!", "batching": {"max_batch_size": 0},
                            "autoscaling": {"min_replicas": 3, "max_replicas": 2}, "num_cpus": -1, "colour": 1})
    fields = {f for f, _ in e.value.problems}
    assert {"name", "batching.max_batch_size", "autoscaling", "num_cpus", "colour"} <= fields
    with pytest.raises(cf.SpecError) as e:
        DeployConfig.parse({"bundle": "b", "name": "m", "num_replicas": 2, "autoscaling": {}})
    assert e.value.problems[0][0] == "num_replicas"
    with pytest.raises(cf.SpecError, match="runtime"):
        DeployConfig.parse({"bundle": "b", "name": "m", "num_gpus": 1})
    with pytest.raises(cf.SpecError, match="name"):
        DeployConfig.parse({"bundle": "b", "name": "cellforge"})  # the index app's name is reserved


def test_serve_options_follow_the_config():
    cfg = DeployConfig(bundle="b", name="m", autoscaling={"min_replicas": 1, "max_replicas": 4},
                       batching={"max_batch_size": 32}, num_cpus=0.25)
    opts = cfg.serve_options()
    assert opts["autoscaling_config"]["max_replicas"] == 4 and "num_replicas" not in opts
    assert opts["ray_actor_options"] == {"num_cpus": 0.25, "num_gpus": 0}
    assert opts["max_ongoing_requests"] >= 32  # room for a full batch
    assert DeployConfig(bundle="b", name="m").serve_options()["num_replicas"] == 1


def test_request_models_forbid_unknown_fields():
    with pytest.raises(Exception, match="extra"):
        PredictRequest.model_validate({"inputs": [], "extra": 1})
    with pytest.raises(Exception, match="greater than or equal"):
        StepRequest.model_validate({"inputs": [[1]], "offset": -1})


# engine: validation ------------------------------------------------------------------
@pytest.mark.parametrize("inputs, field, words", [
    ([], "inputs", "empty batch"),
    ([[[1, 2]]], "inputs.0.0", "expected 3 feature values"),
    ([[[1, 2, 3], [1, 2]]], "inputs.0.1", "expected 3 feature values"),
    ([[[1, float("nan"), 3]]], "inputs.0.0.1", "finite"),
    ([[[1, float("inf"), 3]]], "inputs.0.0.1", "finite"),
    ([[[1, "2", 3]]], "inputs.0.0.1", "valid number"),
    ([[[1, True, 3]]], "inputs.0.0.1", "valid number"),
    (["text"], "inputs.0", "valid list"),
    ([[]], "inputs.0", "non-empty"),
    ([[[0, 0, 0]] * 11], "inputs.0", "longer than the maximum 10"),
    ([[[0, 0, 0]]] * 6, "inputs", "at most 5 inputs"),
])
def test_bad_numeric_inputs_name_the_field(bundles, inputs, field, words):
    with pytest.raises(InputError) as e:
        engine(bundles["classify"], max_length=10, max_inputs=5).prepare(inputs)
    assert any(p.field == field and words in p.message for p in e.value.problems), e.value.problems


def test_bad_text_inputs_name_the_field(bundles):
    eng = engine(bundles["text"], max_length=4)
    for inputs, words in (([3], "valid string"), (["ok", "the movie was good good"], "longer than the maximum 4")):
        with pytest.raises(InputError) as e:
            eng.prepare(inputs)
        assert e.value.problems[0].field == f"inputs.{len(inputs) - 1}" and words in e.value.problems[0].message
    with pytest.raises(InputError, match="expected text"):
        eng.step_inputs([[1, 2]])


# engine: numbers ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["classify", "forecast", "bidir", "text", "keras"])
def test_batched_predictions_equal_cf_load(bundles, kind):
    """Served by numpy or torch, whatever the bundle was trained in; cf.load runs the training framework."""
    rng = np.random.default_rng(1)
    if kind == "text":
        reqs = [["the movie was good", "bad plot"], ["an unknown word"]]
    else:
        reqs = [[rng.normal(size=(n, 3)).tolist() for n in (4, 6)], [rng.normal(size=(5, 3)).tolist()]]
    for runtime in ("numpy", "torch"):
        eng = engine(bundles[kind], runtime=runtime)
        prepared = [eng.prepare(r) for r in reqs]
        outs = eng.run(prepared)  # both requests in one forward pass, padded together
        ref = cf.load(bundles[kind])
        for r, out, (_, lengths) in zip(reqs, outs, prepared):
            got = eng.respond(out, lengths)
            if kind == "forecast":
                np.testing.assert_allclose(got["values"], ref.predict(r), atol=1e-5)
            else:
                np.testing.assert_allclose(got["probabilities"], ref.predict_proba(r), atol=1e-5)
                assert got["labels"] == list(ref.predict(r))


@pytest.mark.parametrize("kind", ["classify", "forecast", "text"])
def test_stepping_equals_whole_sequence_prediction(bundles, kind):
    eng, ref = engine(bundles[kind]), cf.load(bundles[kind])
    if kind == "text":
        words = "the movie was good but the plot was bad".split()
        chunks = [" ".join(words[:3]), words[3], " ".join(words[4:])]
        prefixes = [" ".join(words[: i + 1]) for i in range(len(words))]
    else:
        seq = np.random.default_rng(2).normal(size=(6, 3))  # within the forecast window
        chunks = [seq[:2].tolist(), seq[2:3].tolist(), seq[3:].tolist()]
        prefixes = [seq[: i + 1] for i in range(len(seq))]
    state, answers = None, []
    for c in chunks:
        answer, state = eng.step(eng.step_inputs(c), state)
        answers.append(answer)
    key = "values" if kind == "forecast" else "probabilities"
    got = np.concatenate([np.asarray(a[key]) for a in answers])
    want = ref.predict(prefixes) if kind == "forecast" else ref.predict_proba(prefixes)
    np.testing.assert_allclose(got, np.asarray(want), atol=1e-5)


def test_bidirectional_models_refuse_sessions(bundles):
    eng = engine(bundles["bidir"])
    assert not eng.streams and not eng.info("m")["sessions"]
    with pytest.raises(Exception, match="bidirectional"):
        eng.step(eng.step_inputs([[0, 0, 0]]), None)


def test_info_describes_the_input_schema(bundles):
    info = engine(bundles["classify"], max_length=50).info("m")
    assert info["input"]["num_features"] == 3 and info["input"]["max_length"] == 50
    assert info["output"]["classes"] == ["a", "b", "c", "d"] and info["sessions"]
    assert engine(bundles["text"]).info("t")["input"]["vocab_size"] == 8


# session store (the class behind the detached actor) ------------------------------------
def test_store_keeps_state_guards_against_double_steps_and_expires_idle_sessions(monkeypatch):
    from cellforge.serving import sessions

    store = sessions.Store()
    sid = store.create("m", "v1", ttl_s=60)
    assert store.get(sid, "other-model") is None  # a session belongs to one model
    assert store.advance(sid, 0, ["h"], 3) == "ok"
    assert store.advance(sid, 0, ["h2"], 3) == "conflict"  # someone already moved it past 0 steps
    assert store.get(sid, "m") == {"version": "v1", "state": ["h"], "steps": 3}
    short = store.create("m", "v1", ttl_s=0.05)
    clock = [sessions.time.monotonic()]
    monkeypatch.setattr(sessions.time, "monotonic", lambda: clock[0])
    clock[0] += 0.1  # idle past its ttl, not past the other's
    assert store.get(short, "m") is None and store.get(sid, "m") is not None
    clock[0] += sessions.SWEEP_EVERY_S
    assert store.count("m") == 1 and short not in store.sessions  # swept
    assert store.delete(sid, "m") and not store.delete(sid, "m") and store.advance(sid, 3, [], 4) == "gone"


def test_store_sums_batch_sizes_over_replicas():
    from cellforge.serving.sessions import Store

    store = Store()
    store.report("m", "r1", {"batch_sizes": {1: 3, 4: 2}})
    store.report("m", "r2", {"batch_sizes": {4: 1, 16: 1}})
    store.report("m", "r1", {"batch_sizes": {1: 4, 4: 2}})  # cumulative: replaces r1's earlier report
    stats = store.batch_stats("m")
    assert stats == {"replicas_reported": 2, "batches": 8, "requests": 4 + 8 + 4 + 16, "max_batch_size": 16,
                     "batch_sizes": {"1": 4, "4": 3, "16": 1}}


# HTTP pieces ---------------------------------------------------------------------------
def small_app(api_key=None, max_bytes=200):
    api = FastAPI(dependencies=[Depends(bearer_check(api_key))])
    install_errors(api)
    api.add_middleware(BodyLimit, max_bytes=max_bytes)

    @api.post("/predict")
    async def predict(req: PredictRequest):
        return {"n": len(req.inputs)}

    return TestClient(api)


def test_errors_are_json_naming_the_field():
    c = small_app()
    r = c.post("/predict", json={"inputs": [1], "colour": 2})
    assert r.status_code == 422 and r.json()["problems"] == [{"field": "colour", "message": "unknown field"}]
    r = c.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "body"
    r = c.get("/nowhere")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    assert c.post("/predict", json={"inputs": [1]}).json() == {"n": 1}


def test_oversized_bodies_get_413_with_or_without_a_length():
    c = small_app(max_bytes=100)
    body = json.dumps({"inputs": [1] * 200}).encode()
    r = c.post("/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["problems"][0]["field"] == "body"
    r = c.post("/predict", content=iter([body[:60], body[60:]]), headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text  # chunked: no content-length to trust
    assert c.post("/predict", json={"inputs": [1]}).status_code == 200


def test_bearer_token_required_when_an_api_key_is_set():
    c = small_app(api_key="s3cret-key")
    for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": "s3cret-key"}):
        r = c.post("/predict", json={"inputs": [1]}, headers=headers)
        assert r.status_code == 401 and r.json()["problems"][0]["field"] == "Authorization"
        assert r.headers["www-authenticate"] == "Bearer"
    r = c.post("/predict", json={"inputs": [1]}, headers={"Authorization": "Bearer s3cret-key"})
    assert r.status_code == 200
