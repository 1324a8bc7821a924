"""Audio input (cellforge.data.audio) and transcribe's CTC (cellforge.ctc): features against librosa
called directly, bad audio -> a SpecError naming the field, the CTC loss in torch and Keras against
the numpy reference, decoding, and the transcribe head's parity through the numpy/torch/Keras nets."""

import base64
import json

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch
from test_parity import check_parity, padded_batch

import cellforge as cf
from cellforge import ctc
from cellforge.data import audio
from cellforge.errors import SpecError

PARAMS = cf.ModelSpec(input={"type": "audio"}).input.audio.model_dump()
SR = PARAMS["sample_rate"]


def tone(seconds=0.5, sr=SR, freq=440.0):
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def fields(err) -> list[str]:
    return [f for f, _ in err.value.problems]


def test_features_are_librosa_s(tmp_path):
    y = tone() + 0.01 * np.random.default_rng(0).standard_normal(SR // 2).astype(np.float32)
    got = audio.featurize([y], PARAMS)[0]
    want = np.log(librosa.feature.melspectrogram(y=y, sr=SR, n_fft=400, hop_length=160, n_mels=40) + 1e-6).T
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    mfcc = audio.featurize([y], {**PARAMS, "features": "mfcc"})[0]
    want = librosa.feature.mfcc(S=np.log(librosa.feature.melspectrogram(
        y=y, sr=SR, n_fft=400, hop_length=160, n_mels=40) + 1e-6), n_mfcc=13).T
    np.testing.assert_allclose(mfcc, want, atol=1e-4, rtol=1e-5)
    # a WAV file (float, lossless), a sample array, a dict and base64 WAV: the same features
    sf.write(tmp_path / "a.wav", y, SR, subtype="FLOAT")
    b64 = base64.b64encode((tmp_path / "a.wav").read_bytes()).decode()
    same = audio.featurize([str(tmp_path / "a.wav"), {"samples": y.tolist(), "sample_rate": SR}, {"wav": b64}],
                           PARAMS)
    for f in same:
        np.testing.assert_allclose(f, got, atol=1e-5, rtol=0)


def test_resampling_and_stereo(tmp_path):
    y8 = tone(sr=8000)
    sf.write(tmp_path / "s.flac", np.stack([y8, y8], 1), 8000)  # stereo FLAC at 8 kHz
    got = audio.load(str(tmp_path / "s.flac"), PARAMS)
    np.testing.assert_allclose(got, librosa.resample(y8, orig_sr=8000, target_sr=SR), atol=1e-3)
    assert len(got) == SR // 2


@pytest.mark.parametrize("clip, field, words", [
    ("not-there.wav", "inputs.0", "no such audio file"),
    ({"samples": []}, "inputs.0", "empty"),
    ({"samples": np.zeros((100, 0)).tolist()}, "inputs.0", "0 channels"),
    ({"samples": [0.0, float("nan")]}, "inputs.0", "NaN"),
    ({"samples": [0.0] * 10, "sample_rate": 8000}, "inputs.0", "resample is off"),
    ({"samples": np.zeros(SR * 31).tolist()}, "inputs.0", "longer than the maximum 30"),
    ({"wav": "%%%"}, "inputs.0.wav", "base64"),
    ({"wav": base64.b64encode(b"not audio at all").decode()}, "inputs.0.wav", "not readable as audio"),
    ({"sample": [1.0]}, "inputs.0", "expected"),
])
def test_bad_audio_names_the_field(clip, field, words):
    with pytest.raises(SpecError) as err:
        audio.featurize([clip], {**PARAMS, "resample": False})
    assert fields(err) == [field] and words in str(err.value)


def test_not_audio_file(tmp_path):
    (tmp_path / "x.wav").write_text("hello")
    with pytest.raises(SpecError, match="not readable as audio") as err:
        audio.featurize([str(tmp_path / "x.wav")], PARAMS)
    assert fields(err) == ["inputs.0"]
    with pytest.raises(SpecError, match="one clip"):
        audio.featurize(str(tmp_path / "x.wav"), PARAMS)


def test_audio_spec_fields():
    spec = cf.ModelSpec(input={"type": "audio", "audio": {"features": "mfcc", "n_mfcc": 20}})
    assert cf.ModelSpec.from_yaml(spec.to_yaml()) == spec and spec.input.audio.n_mels == 40
    assert "audio" not in cf.ModelSpec().model_dump()["input"]  # other specs are what they were
    with pytest.raises(SpecError) as err:
        cf.ModelSpec(input={"audio": {}})
    assert fields(err) == ["input.audio"]
    with pytest.raises(SpecError) as err:
        cf.ModelSpec(input={"type": "audio", "audio": {"hop_length": 500, "n_mfcc": 80, "features": "mfcc"}})
    assert sorted(fields(err)) == ["input.audio.hop_length", "input.audio.n_mfcc"]
    with pytest.raises(SpecError) as err:
        cf.ModelSpec(task="transcribe", num_classes=3)
    assert fields(err) == ["num_classes"]


TARGET = ctc.fit(cf.ModelSpec(task="transcribe").target, ["abc", "bba", "cab"])


def ctc_batch(seed=0):
    rng = np.random.default_rng(seed)
    lengths = np.array([9, 4, 7, 2])
    logits = rng.normal(size=(4, 9, len(TARGET["vocab"]))).astype(np.float32) * 2
    y = ctc.encode(TARGET, ["abba", "c", "aab", "ca"])  # 'abba' and 'aab' need blanks between repeats
    return logits, lengths, y


def test_ctc_loss_torch_keras_numpy():
    from cellforge.backends.keras.train import loss_fn as keras_loss
    from cellforge.backends.torch.train import loss_fn as torch_loss

    logits, lengths, y = ctc_batch()
    spec = cf.ModelSpec(task="transcribe", input={"num_features": 3})
    want = ctc.loss(logits, lengths, y)
    got_t = torch_loss(spec, torch.from_numpy(logits), torch.from_numpy(y), torch.from_numpy(lengths)).item()
    got_k = float(keras_loss(spec, logits, y, lengths))
    assert np.isfinite(want)
    np.testing.assert_allclose([got_t, got_k], [want, want], rtol=1e-5, atol=1e-5)
    # brute force on a tiny case: the sum over every alignment that collapses to the target
    import itertools
    lp = ctc.log_softmax(logits[3, :2].astype(np.float64))
    paths = [p for p in itertools.product(range(4), repeat=2) if ctc.greedy_ids(np.eye(4)[list(p)]) == [3, 2]]  # c a
    want_ca = -np.logaddexp.reduce([lp[0, a] + lp[1, b] for a, b in paths]) / 2
    np.testing.assert_allclose(ctc.losses(logits[3:], lengths[3:], y[3:]), [want_ca], rtol=1e-12)


def test_decoding():
    v = {c: i for i, c in enumerate(TARGET["vocab"])}
    path = ["a", "a", "<blank>", "a", "b", "b", "<blank>", "<blank>"]
    log_p = np.log(np.eye(len(v))[[v[c] for c in path]] * 0.9 + 0.1 / len(v))
    assert ctc.greedy(TARGET, log_p) == ctc.beam(TARGET, log_p, 4) == "aab"
    # beam search sums alignments (vocab: blank, b, a, c, by count)
    p = np.array([[0.5, 0.4, 0.1, 0.0], [0.5, 0.4, 0.1, 0.0]]) + 1e-9
    # greedy: blank blank -> ''; the prefix 'b' sums 0.4*0.4 + 0.5*0.4 + 0.4*0.5 = 0.56 > 0.25
    assert ctc.greedy(TARGET, np.log(p)) == "" and ctc.beam(TARGET, np.log(p), 4) == TARGET["vocab"][1]
    logits, lengths, y = ctc_batch()
    # beam decoding never scores worse than greedy's path under the model
    for row, n in zip(logits, lengths):
        lp = ctc.log_softmax(row[:n].astype(np.float64))
        enc = lambda ids: np.asarray([list(ids) or [ctc.PAD]])  # noqa: E731
        g, b = ctc.greedy_ids(lp), ctc.beam_ids(lp, 16)
        assert ctc.losses(row[None, :n], [n], enc(b))[0] * max(1, len(b)) <= \
            ctc.losses(row[None, :n], [n], enc(g))[0] * max(1, len(g)) + 1e-9


def test_error_rates_are_jiwer_s():
    import jiwer

    truth, found = ["one two three", "four five"], ["one too three", "four five six"]
    s = ctc.edit_stats(truth, found)
    assert s[0] / s[1] == pytest.approx(jiwer.cer(truth, found))
    assert s[2] / s[3] == pytest.approx(jiwer.wer(truth, found))


@pytest.mark.parametrize("cell, bidirectional", [("lstm", True), ("gru", False)])
def test_transcribe_head_parity(cell, bidirectional):
    spec = cf.ModelSpec(task="transcribe", cell=cell, bidirectional=bidirectional, hidden_size=7,
                        input={"num_features": 5}, target={"vocab_size": 6})
    check_parity(spec, *padded_batch(spec), compiled=False)


def test_prepared_features_are_what_the_bundle_computes_from_raw_audio():
    from cellforge.data import Preprocessor, prepare, speech

    data = speech.spoken_words(voices=4, repeats=1, words=("yes", "no", "stop"))
    spec = cf.ModelSpec(input={"type": "audio", "audio": {"hop_length": 320, "frame_length": 640, "n_mels": 24}},
                        training={"val_fraction": 0.25, "test_fraction": 0.25})
    spec, prepared = prepare(spec, data)
    assert spec.input.num_features == 24 and spec.num_classes == 3
    test_voices = {data.groups[i] for i in range(len(data.x)) if data.x[i] in prepared.raw_test}
    train_voices = set(data.groups) - test_voices
    assert len(test_voices) == 1 and len(train_voices) == 3  # held out by voice
    pre = Preprocessor(json.loads(json.dumps(prepared.preprocessor.state)))  # as a bundle stores it
    x, lengths = pre.transform(prepared.raw_test)
    np.testing.assert_allclose(x, prepared.splits["test"]["x"][:, : x.shape[1]], atol=1e-5, rtol=0)
    assert (lengths == prepared.splits["test"]["lengths"]).all()
    t = spec.updated(task="transcribe", num_classes=None)
    t, p = prepare(t, data)
    assert t.target.vocab_size == len(p.preprocessor.state["target"]["vocab"]) and p.splits["train"]["y"].ndim == 2
