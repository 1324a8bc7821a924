"""Streaming audio sessions without Ray: the streaming featurizer gives the whole clip's frames (<= 1e-5)
whatever the chunking (empty chunks, chunks shorter than a hop, clips shorter than a window); an engine's
audio session answers at every step the greedy decode of the frames so far and at the end predict's
transcript; its state survives Redis' JSON encoding and a real redis-server; torch's logits over the
whole clip equal the numpy reference's streamed ones, and runtime onnx streams the same transcripts;
every refusal names its field; the step route's OpenAPI schema accepts exactly what the engine accepts.
Bundles of seeded random weights: the numbers, not the quality, are under test
(tests/integration/test_audio_sessions.py serves a trained one)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

import cellforge as cf
from cellforge import bundle, ctc
from cellforge.backends.numpy import init_params
from cellforge.backends.numpy import step as reference_step
from cellforge.data import audio, audio_stream, prepare, speech
from cellforge.data.preprocess import scale
from cellforge.serving.config import DeployConfig
from cellforge.serving.engine import Engine
from cellforge.serving.redis_store import decode, encode
from cellforge.serving.schema import ApiError, InputError

PARAMS = {"sample_rate": 8000, "resample": True, "features": "logmel", "frame_length": 200, "hop_length": 80,
          "n_mels": 20, "n_mfcc": 13, "per_utterance": False, "max_seconds": 10.0}
FEATURES = {"type": "audio", "audio": {"frame_length": 640, "hop_length": 320, "n_mels": 16}}


def chunks(y: np.ndarray, rng: np.random.Generator, most: int) -> list[np.ndarray]:
    """``y`` cut at random: empty chunks, one-sample chunks, chunks shorter and longer than a hop."""
    cuts, at = [], 0
    while at < len(y):
        n = int(rng.choice([0, 1, rng.integers(2, 80), rng.integers(80, most)]))
        cuts.append(y[at: at + n])
        at += n
    return cuts


def streamed(y: np.ndarray, params: dict, rng: np.random.Generator, most: int = 700) -> np.ndarray:
    state, out = audio_stream.start(params), []
    for c in chunks(y, rng, most):
        f, state = audio_stream.push(state, c, params)
        out.append(f)
    f, state = audio_stream.push(state, np.zeros(0, np.float32), params, end=True)
    return np.concatenate(out + [f])


@pytest.mark.parametrize("change", [{}, {"features": "mfcc"}, {"frame_length": 201, "hop_length": 201},
                                    {"frame_length": 255, "hop_length": 37}])
@pytest.mark.parametrize("seconds", [1.3, 0.011, 0.02, 0.0002])  # 10,400 samples; 88 and 160 (< a window); 1
def test_streamed_frames_equal_the_whole_clip(change, seconds):
    params = {**PARAMS, **change}
    rng = np.random.default_rng(len(change) + int(seconds * 1e4))
    n = max(1, int(seconds * 8000))
    y = (np.sin(2 * np.pi * 440 * np.arange(n) / 8000) * 0.5 + rng.normal(0, 0.1, n)).astype(np.float32)
    want = audio.features(y, params)
    for trial in range(3):
        got = streamed(y, params, np.random.default_rng(trial))
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_each_frame_comes_as_soon_as_its_window_is_complete_and_the_state_stays_small():
    y = np.random.default_rng(0).normal(0, 0.3, 4000).astype(np.float32)
    state = audio_stream.start(PARAMS)
    for k in range(1, 4001):  # frame t needs samples up to t * 80 + 100 (its window is centred on t * 80)
        f, state = audio_stream.push(state, y[k - 1: k], PARAMS)
        assert state["frames"] == (0 if k < 100 else (k - 100) // 80 + 1)
        assert len(state["buf"]) < 200 and state["received"] == k
    assert audio_stream.push(state, y[:0], PARAMS, end=True)[1]["frames"] == 1 + 4000 // 80
    with pytest.raises(ValueError, match="per_utterance"):
        audio_stream.start({**PARAMS, "per_utterance": True})


# engines: a transcriber and a classifier over spoken digits, untrained ---------------------------
@pytest.fixture(scope="module")
def digits():
    return speech.spoken_digits(voices=3, per_voice=2)


@pytest.fixture(scope="module")
def engines(digits, tmp_path_factory):
    out = {}
    for task, data in (("transcribe", digits), ("classify", cf.data.Sequences(digits.x, [t.split()[0] for t in digits.y]))):
        spec, prepared = prepare(cf.ModelSpec(task=task, hidden_size=8, input=FEATURES), data)
        path = bundle.save(tmp_path_factory.mktemp(task) / task, spec, init_params(spec, 3), prepared.preprocessor.state, {})
        out[task] = Engine(DeployConfig(bundle=str(path), name=task))
    return out


def run_session(engine, pieces: list, end_alone: bool = False):
    """Step ``pieces`` (request ``inputs``), the last with end (or an empty end step after them)."""
    state, answers = None, []
    for i, p in enumerate(pieces):
        end = i == len(pieces) - 1 and not end_alone
        answer, state = engine.step(engine.step_inputs(p, end if end else None), state, end)
        answers.append(answer)
    if end_alone:
        answer, state = engine.step(engine.step_inputs([], True), state, True)
        answers.append(answer)
    return answers, state


def test_transcriber_session_answers_greedy_so_far_and_predict_at_the_end(engines, digits):
    engine = engines["transcribe"]
    rng = np.random.default_rng(1)
    for clip in digits.x[:3]:
        y, sr = sf.read(clip, dtype="float32")
        x, lengths = engine.pre.transform([y])
        whole = engine.model.outputs(x, lengths)[0]  # what predict decodes
        want = engine.respond(whole[None], lengths)["texts"][0]
        pieces = [c.tolist() for c in chunks(y, rng, 4000)]
        answers, state = run_session(engine, pieces, end_alone=bool(rng.integers(2)))
        for a in answers:  # every partial answer is the greedy decode of the frames it has seen
            assert a["text"] == ctc.greedy(engine.state["target"], ctc.log_softmax(whole[: a["frames"]].astype(np.float64)))
            assert want.startswith(a["text"])
        assert answers[-1]["end"] and answers[-1]["frames"] == lengths[0] and answers[-1]["text"] == want
        assert not any(a["end"] for a in answers[:-1])
        assert [a["frames"] for a in answers] == sorted(a["frames"] for a in answers)
        with pytest.raises(ApiError) as e:  # the clip has ended
            engine.step(engine.step_inputs([0.0]), state)
        assert e.value.status == 409
        again, same = engine.step(engine.step_inputs([], True), state, True)  # a retried end: the same answer
        assert again == answers[-1] and same == state
    assert any(a["text"] for a in answers)  # random weights still emit labels: the test sees text


def test_classifier_session_ends_on_predicts_label(engines, digits):
    engine = engines["classify"]
    y, sr = sf.read(digits.x[0], dtype="float32")
    half = len(y) // 2
    wav = {"wav": audio.encode_wav(y[:half], sr)}
    answers, state = run_session(engine, [wav, {"samples": y[half:].tolist(), "sample_rate": sr}])
    y16 = np.concatenate([audio.samples_of(wav, sr)[0], y[half:]])  # the WAV chunk's samples are 16-bit
    x, lengths = engine.pre.transform([y16])
    want = engine.respond(engine.model.outputs(x, lengths), lengths)
    assert sum(len(a["labels"]) for a in answers) == lengths[0] == answers[-1]["frames"]
    assert answers[-1]["labels"][-1] == want["labels"][0]
    assert engine.step(engine.step_inputs([], True), state, True)[0] == {"frames": lengths[0], "end": True, "labels": [],
                                                                       "probabilities": [], "classes": want["classes"]}
    np.testing.assert_allclose(answers[-1]["probabilities"][-1], want["probabilities"][0], atol=1e-5)


def test_streamed_reference_logits_equal_torch_over_the_whole_clip(engines, digits):
    engine = engines["transcribe"]
    params, pre = engine.state["audio"], engine.state
    y, _ = sf.read(digits.x[1], dtype="float32")
    feats = streamed(y, params, np.random.default_rng(5), most=5000)
    state, outs = None, []
    for part in np.array_split(scale(feats, pre["scaler"]).astype(np.float32), 7):
        out, state = reference_step(engine.spec, engine.model.weights, part[None], state)
        outs.append(out[0])
    x, lengths = engine.pre.transform([y])
    torch_logits = cf.load(engine.cfg.bundle, framework="torch").outputs(x, lengths)[0]
    np.testing.assert_allclose(np.concatenate(outs), torch_logits, atol=1e-5, rtol=0)


def test_state_survives_redis_encoding_and_a_real_redis_server(engines, digits, tmp_path):
    from _redis_server import RedisServer

    from cellforge.serving.redis_store import RedisSessions

    engine = engines["transcribe"]
    y, _ = sf.read(digits.x[2], dtype="float32")
    pieces = [c.tolist() for c in chunks(y, np.random.default_rng(3), 6000)]
    want, _ = run_session(engine, pieces)
    server = RedisServer(tmp_path / "redis").start()

    async def go():
        st = RedisSessions(server.url)
        sid = await st.create("t", "v", 60)
        for i, p in enumerate(pieces):
            s = await st.get(sid, "t")
            end = i == len(pieces) - 1
            x = engine.step_inputs(p, end if end else None)
            answer, state = engine.step(x, s["state"], end)
            assert answer == want[i]
            assert decode(encode(state)).keys() == state.keys()
            assert await st.advance(sid, s["steps"], state, s["steps"] + x.shape[1], "t") == "ok"
        s = await st.get(sid, "t")
        await st.close()
        return s

    try:
        s = asyncio.run(go())
    finally:
        server.stop()
    assert s["steps"] == len(y) and s["state"]["end"] and s["state"]["features"]["received"] == len(y)


def test_bad_chunks_and_steps_name_their_field(engines, digits, tmp_path):
    engine = engines["transcribe"]
    sr = engine.state["audio"]["sample_rate"]
    bad = [("clip.wav", "inputs"), ([[0.1, 0.2]], "inputs"), ([True], "inputs"), ({"samples": [0.1], "x": 1}, "inputs"),
           ({"samples": [0.1], "sample_rate": 22050}, "inputs.sample_rate"), ({"samples": "abc"}, "inputs.samples"),
           ({"wav": "@@"}, "inputs.wav"), ({"wav": audio.encode_wav(np.zeros(100), 8000)}, "inputs.wav"),
           ([1e16], "inputs"), ({"samples": [0.0, -2e15]}, "inputs.samples")]
    for raw, field in bad:
        with pytest.raises(InputError) as e:
            engine.step_inputs(raw)
        assert [p.field for p in e.value.problems] == [field], raw
    assert engine.step_inputs({"samples": [0.5], "sample_rate": float(sr)}).shape == (1, 1)
    with pytest.raises(InputError) as e:  # an end with nothing received: predict refuses empty audio too
        engine.step(engine.step_inputs([], True), None, True)
    assert [p.field for p in e.value.problems] == ["inputs"]
    _, state = engine.step(engine.step_inputs([0.0] * 1000), None)
    long = np.zeros(int(engine.state["audio"]["max_seconds"] * sr), np.float32).tolist()
    with pytest.raises(InputError, match="max_seconds"):
        engine.step(engine.step_inputs(long), state)
    # "end" belongs to audio models; per-utterance features cannot stream
    digits_like = cf.ModelSpec(task="classify", hidden_size=4, num_classes=2, input={"num_features": 2})
    path = bundle.save(tmp_path / "n", digits_like, init_params(digits_like, 0),
                       {"kind": "sequences", "task": "classify", "input_type": "numeric", "num_features": 2,
                        "max_length": None, "scaler": {"shift": [0.0, 0.0], "scale": [1.0, 1.0]}, "classes": [0, 1]}, {})
    numeric = Engine(DeployConfig(bundle=str(path), name="n"))
    with pytest.raises(InputError) as e:
        numeric.step_inputs([[0.0, 1.0]], False)
    assert [p.field for p in e.value.problems] == ["end"]
    spec, prepared = prepare(cf.ModelSpec(task="transcribe", hidden_size=4, input={
        "type": "audio", "audio": {**FEATURES["audio"], "per_utterance": True}}), digits)
    cmvn = Engine(DeployConfig(bundle=str(bundle.save(tmp_path / "c", spec, init_params(spec, 0),
                                                      prepared.preprocessor.state, {})), name="c"))
    assert not cmvn.streams and "input.audio.per_utterance" in cmvn.no_sessions
    assert engine.streams and engine.info("t")["sessions"]


def test_step_schema_accepts_exactly_what_the_engine_accepts(engines, digits, tmp_path):
    import jsonschema

    from cellforge.serving.app import model_api

    engine = engines["transcribe"]
    doc = model_api(SimpleNamespace(cfg=engine.cfg, engine=engine)).openapi()
    step = doc["components"]["schemas"]["StepRequest"]
    assert step["properties"]["end"]["type"] == "boolean" and "/sessions/{session_id}/step" in doc["paths"]
    inputs = jsonschema.Draft202012Validator(step["properties"]["inputs"])
    y, sr = sf.read(digits.x[0], dtype="float32")
    cases = [[], [0.5, -1], {"samples": []}, {"samples": [0.1], "sample_rate": sr}, {"samples": [0.1], "sample_rate": 8000},
             {"wav": audio.encode_wav(y[:100], sr)}, {"samples": [0.1], "x": 1}, {"wav": "QUJD", "samples": [1]},
             [[0.1]], ["a"], "text", [1e16], {"sample_rate": sr}, {"samples": [0.1], "sample_rate": 16000.0}]
    for raw in cases:
        try:
            engine.step_inputs(raw)
            accepted = True
        except InputError:
            accepted = False
        assert inputs.is_valid(raw) == accepted, raw


def test_onnx_runtime_streams_the_same_transcripts(engines, digits):
    numpy_engine = engines["transcribe"]
    onnx_engine = Engine(DeployConfig(bundle=numpy_engine.cfg.bundle, name="t", runtime="onnx"))
    y, _ = sf.read(digits.x[0], dtype="float32")
    pieces = [c.tolist() for c in chunks(y, np.random.default_rng(7), 5000)]
    got, want = run_session(onnx_engine, pieces)[0], run_session(numpy_engine, pieces)[0]
    x, lengths = onnx_engine.prepare([y])
    assert got == want and got[-1]["text"] == onnx_engine.respond(onnx_engine.run([(x, lengths)])[0], lengths)["texts"][0]
