"""Fuzzing the served HTTP contract: schemathesis, with all its checks (and one of ours: every 4xx names
its field), against the OpenAPI document of each route over real HTTP through real Ray Serve — the
session's trained digits LSTM, a unidirectional text classifier behind a bearer token, and the index.

Each model's document carries its own input schema (features per step, lengths, text or numbers) and
every status its routes answer, so schemathesis' positive and negative data checks hold it to exactly
what the server accepts. Afterwards the replicas still answer what ``cf.load`` answers.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cellforge as cf
from cellforge import bundle as B
from cellforge.backends.numpy import init_params

KEY = "fuzz-key-12345"
HERE = Path(__file__).resolve().parent
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
# JSON Schema cannot state two rules of explain: its cost (inputs x n_steps <= 1024 sequence passes, else
# 413) and "target" holding one entry per input (else 422). Both answers name their field (our check).
CONFIG = """
[[operations]]
include-path-regex = "/explain$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "404", "409", "413", "422"]
"""
# The index's document describes the model routes for names no application claims (404, whatever the body):
# schemathesis must not take the deployed names from GET /v1/models (each is fuzzed against its own document)
INDEX_CONFIG = "".join(f"[phases.{p}.extra-data-sources]\nresponses = false\n" for p in ("examples", "coverage",
                                                                                           "fuzzing"))


def text_bundle(path):
    """A unidirectional GRU over words (random weights: the contract, not the accuracy, is tested)."""
    vocab = ["<pad>", "<unk>", "good", "bad", "movie", "plot", "the", "was"]
    spec = cf.ModelSpec(task="classify", cell="gru", hidden_size=8, num_classes=2,
                        input={"type": "text", "vocab_size": len(vocab), "embedding_dim": 5})
    state = {"kind": "sequences", "task": "classify", "input_type": "text", "max_length": None,
             "tokenizer": "word", "lowercase": True, "vocab": vocab, "classes": ["neg", "pos"]}
    return B.save(path, spec, init_params(spec, 3), state, {})


@pytest.fixture(scope="module")
def served(ray_session, serve_module, digits_runs, tmp_path_factory):
    from cellforge.serving.deploy import base_url

    bundle = digits_runs("torch", 2).bundle
    small = dict(num_replicas=1, num_cpus=0.25, max_inputs=8, max_length=32)  # small generated bodies: fast
    cf.deploy(bundle, "fuzz-digits", **small)
    cf.deploy(text_bundle(tmp_path_factory.mktemp("fuzz") / "text"), "fuzz-text", api_key=KEY, **small)
    return base_url(), bundle


def schemathesis_run(url: str, tmp_path: Path, examples: int, *extra: str, config_text: str = CONFIG) -> tuple[int, str]:
    config = tmp_path / "schemathesis.toml"
    config.write_text(config_text)
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "_fuzz_hooks", "PYTHONPATH": f"{HERE}{os.pathsep}"
           + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([str(SCHEMATHESIS), "--config-file", str(config), "run", url, "--checks", "all",
                        "--max-examples", str(examples), "--seed", "16", "--no-color", "--workers", "1",
                        "--generation-database", "none", *extra],
                       capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    out = r.stdout + r.stderr
    counts = re.search(r"(\d+) generated, (\d+) passed", out)  # (warnings, e.g. the index's 404s, are fine)
    assert r.returncode == 0 and counts and counts.group(1) == counts.group(2), out[-6000:]
    return int(counts.group(1)), out


@pytest.mark.slow  # make test-all: 1,000+ generated requests (~80 s); make test checks every model's document below
def test_schemathesis_finds_no_5xx_and_no_contract_failure_on_any_route(served, tmp_path):
    base, bundle = served
    counts = {
        "digits": schemathesis_run(f"{base}/v1/models/fuzz-digits/openapi.json", tmp_path, 80)[0],
        "text": schemathesis_run(f"{base}/v1/models/fuzz-text/openapi.json", tmp_path, 60,
                                 "-H", f"Authorization: Bearer {KEY}")[0],
        "index": schemathesis_run(f"{base}/openapi.json", tmp_path, 15, "--phases", "examples,coverage,fuzzing",
                                  config_text=INDEX_CONFIG)[0],
    }
    print("schemathesis requests per document:", counts)
    assert sum(counts.values()) >= 1000, counts

    # the replicas still serve, and still answer what cf.load answers
    x = cf.datasets.load("digits").x[:4].astype(np.float64)
    client = cf.Client(base)
    got = client.predict("fuzz-digits", x.tolist())
    np.testing.assert_allclose(got["probabilities"], cf.load(bundle).predict_proba(x), atol=1e-5)
    with client.session("fuzz-digits") as s:
        assert s.step(x[0][:3])["steps"] == 3
    assert cf.Client(base, api_key=KEY).predict("fuzz-text", ["good movie"])["labels"][0] in ("neg", "pos")


def test_each_model_document_carries_its_input_schema(served):
    import httpx

    base, _ = served
    digits = httpx.get(f"{base}/v1/models/fuzz-digits/openapi.json").json()
    assert "" not in digits["paths"] and "/" in digits["paths"]
    inputs = digits["components"]["schemas"]["PredictRequest"]["properties"]["inputs"]
    assert inputs["maxItems"] == 8 and inputs["items"]["maxItems"] == 32
    assert inputs["items"]["items"]["minItems"] == inputs["items"]["items"]["maxItems"] == 8  # features per step
    assert "strategy" not in digits["components"]["schemas"]["PredictRequest"]["properties"]  # seq2seq only
    step = digits["paths"]["/sessions/{session_id}/step"]["post"]["responses"]
    assert {"404", "409", "422"} <= set(step) and step["404"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"}
    text = httpx.get(f"{base}/v1/models/fuzz-text/openapi.json").json()
    step_text = text["components"]["schemas"]["StepRequest"]["properties"]["inputs"]
    assert step_text["type"] == "string" and step_text["pattern"].endswith("{1,32}$")  # 1 to 32 word tokens
    assert text["security"] == [{"bearer": []}]
