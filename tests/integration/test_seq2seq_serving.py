"""A seq2seq bundle on real Ray Serve, over real HTTP: strings in, strings out, equal to
``cf.load(bundle).predict`` whether a request is alone or decoded in a batch with others, greedy and
beam; attention matrices; tokens streamed as server-sent events joining to the same text; bad input
refused with 4xx naming the field while the replica keeps serving.

The model is the session's numbers translator (tests/integration/_seq2seq_runs.py, trained once for
test_seq2seq.py too); its quality is test_seq2seq.py's business, equality with ``cf.load`` is this one's.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import _seq2seq_runs
import httpx
import numpy as np
import pytest

import cellforge as cf
from cellforge.client import RequestError

numbers_runs = _seq2seq_runs.numbers_runs  # a session fixture, shared by the seq2seq test modules

NAME = "fr-numbers"
TEXTS = ["four thousand and twelve", "seven hundred and one", "thirteen", "ninety-nine", "two hundred",
         "sixty-six", "one hundred and eight", "eleven"]


@pytest.fixture(scope="module")
def served(serve_module, numbers_runs):
    """The session's numbers translator (torch, beam of width 3), served by the numpy runtime."""
    bundle = numbers_runs("torch").bundle
    # a batch wait long enough that requests sent together meet in a batch on a busy 2-core machine
    ep = cf.deploy(bundle, NAME, num_replicas=1, max_length=50,
                   batching={"max_batch_size": 16, "batch_wait_timeout_s": 0.05})
    return ep, cf.load(bundle), cf.Client(ep.base_url)


def test_predictions_equal_cf_load_alone_and_batched_greedy_and_beam(served):
    ep, model, client = served
    info = client.info(NAME)
    assert info["task"] == "seq2seq" and info["output"]["decode"] == {"strategy": "beam", "beam_width": 3}
    for options in ({}, {"strategy": "greedy"}, {"strategy": "beam", "beam_width": 2}):
        want = model.predict(TEXTS, strategy=options.get("strategy"), beam_width=options.get("beam_width"))
        got = client.predict(NAME, TEXTS, **options)  # one request, several inputs
        assert got["texts"] == want and got["model"] == NAME and got["version"] == ep.version, options
        # one request per input, all at once: the replica decodes them together in padded batches
        with ThreadPoolExecutor(len(TEXTS)) as pool:
            alone = list(pool.map(lambda t, o=options: client.predict(NAME, [t], **o)["texts"][0], TEXTS))
        assert alone == want, options
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # a replica reports its batch sizes every 0.25 s
        sizes = {int(k): v for k, v in client.metrics(NAME)["batch_sizes"].items()}
        if any(k > 1 for k in sizes):
            break
        time.sleep(0.25)
    assert any(k > 1 for k in sizes), f"no request was batched with another: {sizes}"


def test_return_attention_gives_the_matrices(served):
    _, model, client = served
    got = client.predict(NAME, TEXTS[:3], strategy="greedy", return_attention=True)
    want = model.predict(TEXTS[:3], strategy="greedy", return_attention=True)
    assert got["texts"] == [w["text"] for w in want]
    for a, w, text in zip(got["attention"], want, TEXTS):
        assert a["input_tokens"] == list(text) and a["output_tokens"] == w["output_tokens"]
        weights = np.asarray(a["weights"])
        assert weights.shape == (len(w["output_tokens"]), len(text))
        np.testing.assert_allclose(weights, w["attention"], atol=1e-6)


def test_streamed_tokens_join_to_the_same_text(served):
    ep, model, client = served
    want = model.predict(TEXTS[:3], strategy="greedy")
    events = list(client.stream(NAME, TEXTS[:3], strategy="greedy"))
    pieces = [e for e in events if "token" in e]
    assert len(pieces) > len(TEXTS[:3])  # piece by piece, not one text per input
    assert ["".join(e["token"] for e in pieces if e["index"] == i) for i in range(3)] == want
    assert events[-1] == {"model": NAME, "version": ep.version, "done": True, "texts": want}
    with httpx.stream("POST", f"{ep.url}/predict", json={"inputs": ["eleven"], "strategy": "greedy",
                                                         "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert all(ln.startswith("data: ") for ln in lines)
    assert json.loads(lines[-1][6:])["texts"] == model.predict(["eleven"], strategy="greedy")


def test_bad_input_gets_4xx_naming_the_field_and_the_replica_keeps_serving(served):
    ep, model, client = served
    cases = [({"inputs": ["one", ""]}, 422, "inputs.1"),
             ({"inputs": ["one", 3]}, 422, "inputs.1"),
             ({"inputs": "one"}, 422, "inputs"),
             ({"inputs": []}, 422, "inputs"),
             ({"inputs": ["x" * 51]}, 422, "inputs.0"),  # over the deployment's max_length (50)
             ({"inputs": ["one"], "strategy": "sampling"}, 422, "strategy"),
             ({"inputs": ["one"], "beam_width": 0}, 422, "beam_width"),
             ({"inputs": ["one"], "strategy": "greedy", "beam_width": 2}, 422, "beam_width"),
             ({"inputs": ["one"], "stream": True}, 422, "stream"),  # the model decodes with beam
             ({"inputs": ["one"], "temperature": 0.5}, 422, "temperature")]
    for body, status, field in cases:
        r = httpx.post(f"{ep.url}/predict", json=body, timeout=30)
        assert r.status_code == status, (body, r.text)
        assert field in [p["field"] for p in r.json()["problems"]], (body, r.json())
    with pytest.raises(RequestError) as e:  # a stream refused before it starts is a plain JSON error
        list(client.stream(NAME, [""]))
    assert e.value.status == 422 and e.value.problems[0][0] == "inputs.0"
    r = httpx.post(f"{ep.url}/sessions", timeout=30)
    assert r.status_code == 400 and r.json()["problems"][0]["field"] == "model"
    assert client.predict(NAME, TEXTS[:2])["texts"] == model.predict(TEXTS[:2])
