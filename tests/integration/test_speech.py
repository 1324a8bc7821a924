"""Speech on real Ray Train: spoken-word classification and spoken digit strings (CTC) on the synthesised
corpora (cellforge.data.speech), voices held out of training; features at predict time equal training's;
a WAV path, a sample array and base64 WAV give the same prediction."""

import numpy as np
import pytest
import soundfile as sf

import cellforge as cf
from cellforge.data import audio
from cellforge.data.preprocess import prepare, split_groups

# make test-all: two quality runs on synthesised corpora (~4 min with the synthesis); the audio front end
# (librosa), CTC decoding and loss are checked against their references in tests/unit
pytestmark = pytest.mark.slow

# 20 ms hop, 32 log-mels, each clip normalised on its own (voices differ in loudness and timbre)
FEATURES = {"type": "audio", "audio": {"frame_length": 640, "hop_length": 320, "n_mels": 32, "per_utterance": True}}
WORDS = {"task": "classify", "cell": "gru", "hidden_size": 64, "bidirectional": True, "input": FEATURES,
         "training": {"epochs": 12, "batch_size": 32, "lr": 3e-3, "lr_schedule": "cosine", "seed": 0}}
# 36 voices (1,296 clips): test accuracy 0.978 on 6 held-out voices (24 voices, constant lr: 0.951, one clip
# above the bar), 65 s at load 4-6
WORD_VOICES = {"voices": 36}
# CTC over word tokens; a 30 ms hop (~90 frames for 2-5 digits) keeps an epoch at ~2.5 s on a quiet 2-core machine
DIGIT_STRINGS = {"task": "transcribe", "cell": "gru", "hidden_size": 64, "bidirectional": True,
                 "input": {"type": "audio", "audio": {"frame_length": 960, "hop_length": 480, "n_mels": 32,
                                                      "per_utterance": True}},
                 "target": {"tokenizer": "word"},
                 "training": {"epochs": 24, "batch_size": 32, "lr": 3e-3, "lr_schedule": "cosine", "clip_norm": 5.0,
                              "seed": 0}}
DIGIT_VOICES = {"voices": 36, "per_voice": 40}  # 1,440 clips; voice variety is what generalises


def held_out_voices(data, spec):
    t = spec.training
    parts = split_groups(data.groups, t.val_fraction, t.test_fraction, t.seed)
    voices = {k: {data.groups[i] for i in v} for k, v in parts.items()}
    assert voices["test"] and not voices["test"] & (voices["train"] | voices["val"])
    return parts


@pytest.fixture(scope="module")
def words(ray_session, tmp_path_factory):
    data = cf.datasets.load("spoken_words", **WORD_VOICES)
    result = cf.fit(WORDS, data, name="spoken-words", storage_path=tmp_path_factory.mktemp("speech"))
    return data, result


def test_spoken_words_on_held_out_voices(words, tmp_path):
    data, result = words
    spec = cf.ModelSpec.parse(WORDS)
    parts = held_out_voices(data, spec)
    assert result.metrics["test_accuracy"] >= 0.95, result.metrics
    model = cf.load(result.bundle)
    test = [data.x[i] for i in parts["test"]]
    predicted = model.predict(test)
    assert np.mean(predicted == np.asarray([data.y[i] for i in parts["test"]])) == pytest.approx(result.metrics["test_accuracy"])
    # the bundle's features from raw audio are the training features
    _, prepared = prepare(spec, data)
    x, lengths = model.preprocessor.transform(test[:8])
    want = prepared.splits["test"]
    np.testing.assert_allclose(x, want["x"][:8, : x.shape[1]], atol=1e-5, rtol=0)
    assert (lengths == want["lengths"][:8]).all()
    # a WAV path, its samples, a dict with another sample rate (resampled) and base64 WAV agree
    samples, sr = sf.read(test[0], dtype="float32")
    sf.write(tmp_path / "c.flac", samples, sr)
    same = model.predict([test[0], samples, {"wav": audio.encode_wav(samples, sr)}, str(tmp_path / "c.flac")])
    assert same.tolist() == [predicted[0]] * 4
    proba = model.predict_proba([test[0], samples])
    np.testing.assert_allclose(proba[0], proba[1], atol=1e-6)
    import librosa
    resampled = librosa.resample(samples, orig_sr=sr, target_sr=22050)
    assert model.predict([{"samples": resampled.tolist(), "sample_rate": 22050}])[0] == predicted[0]


@pytest.fixture(scope="module")
def digit_strings(ray_session, tmp_path_factory):
    data = cf.datasets.load("spoken_digits", **DIGIT_VOICES)
    result = cf.fit(DIGIT_STRINGS, data, name="spoken-digits", storage_path=tmp_path_factory.mktemp("speech"))
    return data, result


def test_spoken_digit_strings_ctc_on_held_out_voices(digit_strings):
    import jiwer

    data, result = digit_strings
    parts = held_out_voices(data, cf.ModelSpec.parse(DIGIT_STRINGS))
    m = result.metrics
    assert m["test_cer"] <= 0.05 and m["test_wer"] <= 0.10, m
    model = cf.load(result.bundle)
    test = [data.x[i] for i in parts["test"]]
    truth = [data.y[i] for i in parts["test"]]
    greedy = model.predict(test)
    assert jiwer.cer(truth, greedy) == pytest.approx(m["test_cer"]) and jiwer.wer(truth, greedy) == pytest.approx(
        m["test_wer"])
    beam = model.transcribe(test[:40], strategy="beam", beam_width=4)
    assert jiwer.wer(truth[:40], beam) <= jiwer.wer(truth[:40], greedy[:40]) + 0.05
    # the same transcripts and logits (<= 1e-5) in every runtime from the bundle
    x, lengths = model.preprocessor.transform(test[:16])
    logits = {fw: cf.load(result.bundle, framework=fw).outputs(x, lengths) for fw in ("numpy", "tensorflow")}
    for fw, out in logits.items():
        valid = np.arange(x.shape[1])[None, :] < lengths[:, None]
        np.testing.assert_allclose(out[valid], model.outputs(x, lengths)[valid], atol=1e-5, rtol=0, err_msg=fw)
        assert cf.load(result.bundle, framework=fw).predict(test[:16]) == greedy[:16]


def test_served_over_http_base64_wav_and_samples_agree_bad_audio_is_4xx(words, serve_module):
    from cellforge.client import RequestError

    data, result = words
    model = cf.load(result.bundle)
    test = [data.x[i] for i in held_out_voices(data, cf.ModelSpec.parse(WORDS))["test"][:6]]
    want = model.predict(test).tolist()
    # audio is bulky: ~0.3 MB of JSON per second of samples (base64 16-bit WAV: 43 kB), over the 1 MiB default
    client = cf.Client(cf.deploy(result.bundle, "spoken-words", num_replicas=1, max_body_bytes=8 << 20).base_url)
    clips = [sf.read(p, dtype="float32") for p in test]
    by_wav = client.predict("spoken-words", [{"wav": audio.encode_wav(s, sr)} for s, sr in clips])
    by_samples = client.predict("spoken-words", [s.tolist() for s, _ in clips[:3]] +
                                [{"samples": s.tolist(), "sample_rate": sr} for s, sr in clips[3:]])
    assert by_wav["labels"] == by_samples["labels"] == want
    np.testing.assert_allclose(by_wav["probabilities"], model.predict_proba(test), atol=1e-5)
    assert client.info("spoken-words")["input"]["audio"]["hop_length"] == 320
    bad = [({"wav": "not base64!"}, "inputs.0.wav"), ({"wav": audio.encode_wav(np.zeros(0), 16000)}, "inputs.0"),
           ({"samples": []}, "inputs.0"), (test[0], "inputs.0"), ({"samples": [0.0] * 100, "sample_rate": 3}, "inputs.0"),
           (["a", 1.0], "inputs.0")]
    for clip, field in bad:
        with pytest.raises(RequestError) as e:
            client.predict("spoken-words", [clip])
        assert e.value.status == 422 and [f for f, _ in e.value.problems] == [field], (clip, e.value)
