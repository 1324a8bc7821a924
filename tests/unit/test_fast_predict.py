"""serving.app.FastPredict, no Ray: a model app's POST /predict answered past FastAPI's routing gives the
bytes FastAPI gives, and everything it does not take (bad JSON, a refused body, a stream, another path,
a key to check, a body over the limit) is FastAPI's answer, unchanged."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cellforge.serving.app import FastPredict
from cellforge.serving.http import BodyLimit, install_errors
from cellforge.serving.schema import InputError, PredictRequest, PredictResponse, Problem


class Server:
    """What FastPredict uses of a ModelServer: the config's key and ``predict``."""

    def __init__(self, api_key=None):
        self.cfg, self.calls = SimpleNamespace(api_key=api_key), []

    async def predict(self, req: PredictRequest):
        self.calls.append(req)
        if req.inputs == ["bad"]:
            raise InputError([Problem(field="inputs.0", message="expected a list of steps")])
        return {"model": "m", "version": "v1", "task": "classify", "labels": [1] * len(req.inputs),
                "probabilities": [[0.25, 0.75, 1e-05, 0.1 + 0.2]] * len(req.inputs), "classes": [0, 1, 2, 3],
                "texts": None}


def app(server: Server, fast: bool) -> TestClient:
    api = FastAPI()
    install_errors(api)
    if fast:
        api.add_middleware(FastPredict, server=server)
    api.add_middleware(BodyLimit, max_bytes=200)
    api.routes_seen = []

    @api.post("/predict", response_model=PredictResponse, response_model_exclude_none=True)
    async def predict(req: PredictRequest):
        api.routes_seen.append(req)
        return await server.predict(req)

    return api


@pytest.mark.parametrize("body, content_type", [
    ('{"inputs": [[[1, 2]], [[3, 4]]]}', "application/json"),
    ('{"inputs": [[[1, 2]]], "return_attention": false}', None),
    ('{"inputs": ["bad"]}', "application/json"),  # the model's refusal (422 naming inputs.0)
    ('{"inputs": [[[1, 2]]], "extra": 1}', "application/json"),  # PredictRequest refuses an unknown field
    ('{"inputs": [[[1, NaN]]]}', "application/json"),  # json.loads takes NaN, as FastAPI's parser does
    ('{"inputs": [[[1, 2]]]', "application/json"),  # not JSON
    ('{"inputs": [[[1, 2]]], "stream": true}', "application/json"),
    ('{"inputs": [[[1, 2]]]}', "text/plain"),
    ("", "application/json"),
    ('{"inputs": [' + "[[1, 2]]," * 40 + "[[1, 2]]]}", "application/json"),  # over the 200-byte limit
])
def test_the_fast_path_answers_as_fastapi_does(body, content_type):
    headers = {"content-type": content_type} if content_type else {}
    answers = []
    for fast in (False, True):
        api = app(Server(), fast)
        with TestClient(api) as client:
            r = client.post("/predict", content=body.encode(), headers=headers)
        answers.append((r.status_code, r.headers.get("content-type"), r.content))
    assert answers[0] == answers[1]
    assert answers[1][0] in (200, 413, 422)


def test_it_takes_a_valid_prediction_and_leaves_the_rest_to_fastapi():
    server = Server()
    api = app(server, fast=True)
    with TestClient(api) as client:
        assert client.post("/predict", json={"inputs": [[[1, 2]]]}).status_code == 200
        assert len(server.calls) == 1 and api.routes_seen == []  # answered past FastAPI's route
        assert client.post("/predict", json={"inputs": [[[1, 2]]], "stream": True}).status_code == 200
        assert len(api.routes_seen) == 1  # a stream is FastAPI's (the route would return a StreamingResponse)
        assert client.post("/other/predict", json={"inputs": [[[1, 2]]]}).status_code == 404
        assert client.post("/predict", json={"inputs": [[[1, 2]]], "extra": 1}).status_code == 422
        assert len(server.calls) == 2  # the refused body never reached the model


def test_an_app_with_a_key_keeps_fastapis_path():
    server = Server(api_key="k" * 16)
    api = app(server, fast=True)
    with TestClient(api) as client:
        assert client.post("/predict", json={"inputs": [[[1, 2]]]}).status_code == 200
    assert len(api.routes_seen) == 1
