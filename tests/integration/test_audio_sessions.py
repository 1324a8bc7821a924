"""An audio model's streaming session over real HTTP through Ray Serve: a unidirectional transcriber,
trained on Ray Train on synthesised spoken digit strings, gets a held-out voice's clip in chunks of
random sizes (HTTP steps, then the WebSocket with WAV chunks). Every step answers the greedy decode of
the frames whose windows are complete (so each transcript extends the one before); the step with
"end": true answers predict's transcript of the whole clip. The streaming featurizer's exactness
(<= 1e-5), the stores' state and the refusals are tested without Ray in tests/unit/test_audio_stream.py.

The model trains for two epochs only (make test's budget): it has not left CTC's early all-blank phase
by far, so its weights are near their random start and its transcripts are wrong but not empty, which
is what a test of streaming equals whole-clip needs."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

import cellforge as cf
from cellforge import ctc
from cellforge.data import audio
from cellforge.data.preprocess import split_groups

SPEC = {"task": "transcribe", "cell": "gru", "hidden_size": 16,
        "input": {"type": "audio", "audio": {"frame_length": 640, "hop_length": 320, "n_mels": 16}},
        "target": {"tokenizer": "word"}, "training": {"epochs": 2, "batch_size": 8, "lr": 1e-4, "seed": 0}}


@pytest.fixture(scope="module")
def served(ray_session, serve_module, tmp_path_factory):
    data = cf.datasets.load("spoken_digits", voices=4, per_voice=6)
    result = cf.fit(SPEC, data, name="audio-sessions", storage_path=tmp_path_factory.mktemp("audio"), workers=1)
    t = cf.ModelSpec.parse(SPEC).training
    held_out = split_groups(data.groups, t.val_fraction, t.test_fraction, t.seed)["test"]
    url = cf.deploy(result.bundle, "audio-sessions", num_replicas=1, num_cpus=0.25).base_url
    return url, cf.Client(url), cf.load(result.bundle), [data.x[i] for i in held_out]


def check_stream(answers, model, y):
    """Each answer is the greedy decode of the whole clip's first ``frames`` frames; the last, predict's."""
    x, lengths = model.preprocessor.transform([y])
    logits = ctc.log_softmax(model.outputs(x, lengths)[0].astype(np.float64))
    target = model.preprocessor.state["target"]
    for before, a in zip([{"text": ""}, *answers], answers):
        assert a["text"] == ctc.greedy(target, logits[: a["frames"]]) and a["text"].startswith(before["text"])
    assert answers[-1]["end"] and answers[-1]["frames"] == lengths[0]


def test_a_streamed_clip_answers_the_transcript_so_far_and_predicts_at_the_end(served):
    import httpx

    from cellforge.client import RequestError

    url, client, model, clips = served
    assert client.info("audio-sessions")["sessions"]
    doc = httpx.get(f"{url}/v1/models/audio-sessions/openapi.json").json()["components"]["schemas"]
    chunk = doc["StepRequest"]["properties"]["inputs"]["oneOf"]  # what a step takes: a chunk at 16 kHz only
    assert chunk[1]["properties"]["sample_rate"] == {"type": "integer", "enum": [16000]} and chunk[0]["minItems"] == 0
    assert doc["StepRequest"]["properties"]["end"]["type"] == "boolean" and "text" in doc["StepResponse"]["properties"]
    y, sr = sf.read(clips[0], dtype="float32")
    want = client.predict("audio-sessions", [y.tolist()])["texts"][0]
    rng = np.random.default_rng(0)
    cuts = np.sort(rng.choice(np.arange(1, len(y)), 12, replace=False))
    pieces = np.split(y, cuts)
    with client.session("audio-sessions") as s:
        answers = [s.step(p) for p in pieces[:-1]] + [s.step({"samples": pieces[-1].tolist(), "sample_rate": sr},
                                                             end=True)]
        check_stream(answers, model, y)
        assert answers[-1]["text"] == want and want and answers[-1]["steps"] == len(y)
        with pytest.raises(RequestError) as e:  # the clip has ended
            s.step([0.0])
        assert e.value.status == 409
        assert s.step([], end=True)["text"] == want  # an end asked again answers the same
    with client.session("audio-sessions") as s, pytest.raises(RequestError) as e:
        s.step({"samples": y[:100].tolist(), "sample_rate": 8000})
    assert e.value.status == 422 and [f for f, _ in e.value.problems] == ["inputs.sample_rate"]


def test_a_clip_streamed_as_wav_chunks_over_the_websocket(served):
    _, client, model, clips = served
    y, sr = sf.read(clips[1], dtype="float32")
    pieces = [audio.samples_of({"wav": audio.encode_wav(p, sr)}, sr)[0] for p in np.array_split(y, 5)]
    with client.session("audio-sessions") as s, s.socket() as ws:
        answers = [ws.step({"wav": audio.encode_wav(p, sr)}) for p in pieces] + [ws.step([], end=True)]
    y16 = np.concatenate(pieces)  # the WAV chunks' 16-bit samples
    check_stream(answers, model, y16)
    assert answers[-1]["text"] == model.predict([y16])[0]


# Steps of one real session (a random session id only ever gets 404). A base64 string that is not audio
# is a 422 no JSON Schema can foresee (predict's "wav" too), and once a step with "end": true has ended the
# clip the rest get 409; every other answer is held to the document: a chunk at the model's rate only,
# "end" a boolean, and every 4xx naming its field (_fuzz_hooks)
FUZZ_CONFIG = """
[[operations]]
include-path-regex = "/step$"
parameters = {{ session_id = "{sid}" }}
checks.positive_data_acceptance.expected-statuses = ["2xx", "409", "422"]
"""


@pytest.mark.slow  # make test-all: 168 generated steps against the audio model's own document (~10 s)
def test_schemathesis_holds_audio_steps_to_their_document(served, tmp_path):
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    url, client = served[:2]
    here = Path(__file__).resolve().parent
    (tmp_path / "schemathesis.toml").write_text(FUZZ_CONFIG.format(sid=client.session("audio-sessions").id))
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "_fuzz_hooks",
           "PYTHONPATH": f"{here}{os.pathsep}" + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([str(Path(sys.executable).with_name("schemathesis")), "--config-file",
                        str(tmp_path / "schemathesis.toml"), "run", f"{url}/v1/models/audio-sessions/openapi.json",
                        "--checks", "all", "--max-examples", "80", "--seed", "14", "--no-color", "--workers", "1",
                        "--generation-database", "none", "--include-path-regex", "/step$"],
                       capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    out = r.stdout + r.stderr
    counts = re.search(r"(\d+) generated, (\d+) passed", out)
    assert r.returncode == 0 and counts and counts.group(1) == counts.group(2), out[-6000:]


# A unidirectional transcriber that transcribes: no per-utterance normalisation (it cannot stream), the
# training split's global scaling only. 16 voices x 30 strings; 90 epochs measured test CER 2.8%, WER
# 3.6% on 3 held-out voices (CER 2.1% by epoch 40, where this stops), an epoch ~1 s on a quiet machine
QUALITY = {**SPEC, "hidden_size": 96, "num_layers": 2,
           "input": {"type": "audio", "audio": {"frame_length": 960, "hop_length": 480, "n_mels": 32}},
           "training": {"epochs": 40, "batch_size": 16, "lr": 3e-3, "lr_schedule": "cosine", "clip_norm": 5.0,
                        "seed": 0}}


@pytest.mark.slow  # make test-all: a 40-epoch fit on 480 synthesised clips: 7.5 min here at load 4-5
def test_streamed_transcripts_of_held_out_voices_meet_the_issues_bars(ray_session, serve_module, tmp_path):
    import jiwer

    data = cf.datasets.load("spoken_digits", voices=16, per_voice=30)
    result = cf.fit(QUALITY, data, name="audio-sessions-quality", storage_path=tmp_path, workers=1)
    t = cf.ModelSpec.parse(QUALITY).training
    held_out = split_groups(data.groups, t.val_fraction, t.test_fraction, t.seed)["test"][:12]
    client = cf.Client(cf.deploy(result.bundle, "audio-sessions-quality", num_replicas=1, num_cpus=0.25,
                                 max_body_bytes=8 << 20).base_url)  # 12 clips as JSON samples: ~4 MB
    model, rng, finals = cf.load(result.bundle), np.random.default_rng(1), []
    for i in held_out:
        y, sr = sf.read(data.x[i], dtype="float32")
        with client.session("audio-sessions-quality") as s:
            answers = [s.step(p) for p in np.array_split(y, np.sort(rng.choice(len(y), 6, replace=False)))]
            answers.append(s.step([], end=True))
        check_stream(answers, model, y)
        finals.append(answers[-1]["text"])
    assert finals == client.predict("audio-sessions-quality", [sf.read(data.x[i], dtype="float32")[0].tolist()
                                                               for i in held_out])["texts"]
    truth = [data.y[i] for i in held_out]
    assert jiwer.cer(truth, finals) <= 0.05 and jiwer.wer(truth, finals) <= 0.10, list(zip(truth, finals))
