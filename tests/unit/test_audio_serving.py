"""An audio model's endpoint engine, without Serve: base64 WAV, samples and a dict with another sample
rate give the bundle's own predictions; paths and bad audio are 422 naming the field; a transcriber
answers texts. Bundles of untrained (seeded) weights: the numbers, not the quality, are under test."""

import numpy as np
import pytest
import soundfile as sf

import cellforge as cf
from cellforge import bundle
from cellforge.backends.numpy import init_params
from cellforge.data import audio, prepare, speech
from cellforge.serving.config import DeployConfig
from cellforge.serving.engine import Engine
from cellforge.serving.schema import InputError

FEATURES = {"type": "audio", "audio": {"frame_length": 640, "hop_length": 320, "n_mels": 16}}


@pytest.fixture(scope="module")
def words():
    return speech.spoken_words(voices=3, repeats=1, words=("yes", "no", "up"))


def engine_for(tmp_path, task, data):
    spec, prepared = prepare(cf.ModelSpec(task=task, hidden_size=8, input=FEATURES), data)
    path = bundle.save(tmp_path / task, spec, init_params(spec, 3), prepared.preprocessor.state, {})
    return Engine(DeployConfig(bundle=str(path), name=task)), cf.load(path)


def answer(engine, inputs):
    x, lengths = engine.prepare(inputs)
    return engine.respond(engine.run([(x, lengths)])[0], lengths)


def test_classifier_engine_takes_wav_and_samples(tmp_path, words):
    engine, model = engine_for(tmp_path, "classify", words)
    clips = [sf.read(p, dtype="float32") for p in words.x[:4]]
    want = model.predict_proba(words.x[:4])
    import librosa
    y22 = librosa.resample(clips[3][0], orig_sr=16000, target_sr=22050)
    got = answer(engine, [{"wav": audio.encode_wav(*clips[0])}, clips[1][0].tolist(),
                          {"samples": clips[2][0].tolist(), "sample_rate": 16000},
                          {"samples": y22.tolist(), "sample_rate": 22050}])
    np.testing.assert_allclose(got["probabilities"][:3], want[:3], atol=1e-5)
    np.testing.assert_allclose(got["probabilities"][3], want[3], atol=2e-2)  # resampled twice: close, not equal
    assert got["labels"][:3] == model.predict(words.x[:3]).tolist()
    assert engine.info("classify")["input"]["audio"]["n_mels"] == 16 and engine.streams  # per_utterance off
    for bad, field in ((words.x[0], "inputs.0"), (["x"], "inputs.0"), ({"wav": "@@"}, "inputs.0.wav"),
                       ({"samples": [0.0] * 10, "sample_rate": 0}, "inputs.0.sample_rate"),
                       ({"samples": [[]] * 3}, "inputs.0")):
        with pytest.raises(InputError) as e:
            engine.prepare([bad])
        assert [p.field for p in e.value.problems] == [field], bad


def test_transcriber_engine_answers_texts(tmp_path):
    digits = speech.spoken_digits(voices=3, per_voice=2)
    engine, model = engine_for(tmp_path, "transcribe", digits)
    samples, sr = sf.read(digits.x[0], dtype="float32")
    got = answer(engine, [{"wav": audio.encode_wav(samples, sr)}, samples.tolist()])
    assert got["texts"] == model.predict([digits.x[0]] * 2)
    assert engine.info("t")["output"]["vocab"][0] == "<blank>"
