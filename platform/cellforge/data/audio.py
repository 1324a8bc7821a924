"""Audio in: clips (WAV/FLAC/OGG paths, sample arrays, base64 WAV) -> feature sequences, by librosa.

The parameters are the spec's ``input.audio`` (``cellforge.spec.AudioSpec``) and travel in the bundle's
preprocessing state, so a model computes at predict (and serving) time exactly the features it was
trained on. Features are computed once per clip in ``prepare`` (the training loop then reads the
arrays, so an epoch never recomputes them); librosa and soundfile are imported on first use.

    >>> import numpy as np
    >>> params = {"sample_rate": 8000, "resample": True, "features": "logmel", "frame_length": 200,
    ...           "hop_length": 80, "n_mels": 20, "n_mfcc": 13, "per_utterance": False, "max_seconds": 10.0}
    >>> tone = np.sin(2 * np.pi * 440 * np.arange(8000) / 8000).astype(np.float32)
    >>> featurize([tone], params)[0].shape        # 1 s at a 10 ms hop: 101 frames of 20 log-mels
    (101, 20)
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np

from cellforge.errors import SpecError

LOG_FLOOR = 1e-6  # log(mel power + floor): silence is finite
# frames are centred: the clip is padded by frame_length // 2 zeros each side (librosa's default since 0.10,
# 'reflect' before it: named here so a bundle's features do not change with librosa's default, and so
# cellforge.data.audio_stream pads a stream exactly as this pads the whole clip)
PAD_MODE = "constant"


def _bad(where: str, message: str) -> SpecError:
    return SpecError([(where, message)], what="input")


def load(clip: Any, params: dict[str, Any], where: str = "inputs.0") -> np.ndarray:
    """One clip -> mono float32 samples at ``params['sample_rate']``.

    ``clip``: a path (str/Path) to a WAV/FLAC/OGG file; a 1-D sample array (at the model's sample rate);
    a dict ``{"samples": [...], "sample_rate": sr}``; or ``{"wav": base64}`` / ``{"audio": base64}`` (any
    format soundfile reads). Unreadable, empty, 0-channel, too long, or another sample rate with
    ``resample`` off -> a SpecError naming ``where``."""
    sr_model = params["sample_rate"]
    audio, sr = samples_of(clip, sr_model, where)
    if audio.size == 0:
        raise _bad(where, "empty audio: no samples")
    if not np.isfinite(audio).all():
        raise _bad(where, "audio contains NaN or infinity")
    seconds = audio.size / sr
    if seconds > params["max_seconds"]:
        raise _bad(where, f"{seconds:.1f} s of audio is longer than the maximum {params['max_seconds']:g} s "
                          "(input.audio.max_seconds)")
    if sr != sr_model:
        if not params["resample"]:
            raise _bad(where, f"sample rate {sr} Hz, the model's is {sr_model} Hz and input.audio.resample is off")
        import librosa

        audio = librosa.resample(audio, orig_sr=sr, target_sr=sr_model)
    return np.asarray(audio, np.float32)


def samples_of(clip: Any, sr_model: int, where: str = "inputs.0") -> tuple[np.ndarray, int]:
    """One clip (as ``load`` takes it) -> its mono samples (possibly none) and their sample rate, unchecked
    otherwise (``load`` refuses empty, non-finite and too long audio; a session's chunk may be empty)."""
    if isinstance(clip, (str, Path)):
        audio, sr = _read(clip, where)
    elif isinstance(clip, dict):
        audio, sr = _from_dict(clip, sr_model, where)
    else:
        audio, sr = _array(clip, where), sr_model
    if audio.ndim == 2:  # (samples, channels), soundfile's layout
        if audio.shape[1] == 0:
            raise _bad(where, "audio with 0 channels")
        audio = audio.mean(1)
    if audio.ndim != 1:
        raise _bad(where, f"expected mono samples (a 1-D array) or (samples, channels), got shape {audio.shape}")
    return audio, sr


def features(audio: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """Mono samples -> (frames, features) float32: log-mel power or MFCC, optionally normalised per
    utterance (each feature's mean and variance over the clip)."""
    n_fft = params["frame_length"]
    y = np.asarray(audio, np.float32)
    if y.size < n_fft:  # librosa warns and centres on a too-short frame: pad to one whole frame
        y = np.pad(y, (0, n_fft - y.size))
    f = frames(y, params, center=True).astype(np.float64)
    if params["per_utterance"]:
        sd = f.std(0)
        f = (f - f.mean(0)) / np.where(sd > 0, sd, 1.0)
    return f.astype(np.float32)


def frames(y: np.ndarray, params: dict[str, Any], center: bool) -> np.ndarray:
    """Samples -> (frames, features) float32, log-mel or MFCC, each frame from its own window alone.
    ``center``: frame t's window is centred on sample t * hop (the clip padded by ``PAD_MODE``); off, it
    starts there (what a stream computes from samples it holds: ``cellforge.data.audio_stream``)."""
    import librosa

    mel = librosa.feature.melspectrogram(y=y, sr=params["sample_rate"], n_fft=params["frame_length"],
                                         hop_length=params["hop_length"], n_mels=params["n_mels"], center=center,
                                         pad_mode=PAD_MODE)
    f = np.log(mel + LOG_FLOOR)
    if params["features"] == "mfcc":  # a DCT over each frame's log-mels
        f = librosa.feature.mfcc(S=f, n_mfcc=params["n_mfcc"])
    return f.T


def featurize(clips: Any, params: dict[str, Any]) -> list[np.ndarray]:
    """A batch of clips (a list; or a 2-D array, one clip per row) -> one (frames, features) array each."""
    if isinstance(clips, (str, Path, dict)) or (isinstance(clips, np.ndarray) and clips.ndim == 1
                                                and clips.dtype != object):
        raise _bad("inputs", "expected a list of clips (paths, sample arrays or base64 audio), got one clip")
    try:
        clips = list(clips)
    except TypeError:
        raise _bad("inputs", f"expected a list of clips, got {type(clips).__name__}") from None
    if not clips:
        raise _bad("inputs", "empty batch: send at least one clip")
    return [features(load(c, params, f"inputs.{i}"), params) for i, c in enumerate(clips)]


def _read(path: str | Path, where: str) -> tuple[np.ndarray, int]:
    import soundfile as sf

    if not Path(path).is_file():
        raise _bad(where, f"no such audio file: {str(path)!r}")
    try:
        audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise _bad(where, f"not readable as audio (WAV, FLAC or OGG): {e}") from None
    return audio, sr


def _from_dict(clip: dict, sr_model: int, where: str) -> tuple[np.ndarray, int]:
    import soundfile as sf

    encoded = [k for k in ("wav", "audio") if k in clip]
    if encoded:
        try:
            data = base64.b64decode(clip[encoded[0]], validate=True)
        except (ValueError, TypeError):
            raise _bad(f"{where}.{encoded[0]}", "not valid base64") from None
        try:
            return sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
            raise _bad(f"{where}.{encoded[0]}", f"not readable as audio (WAV, FLAC or OGG): {e}") from None
    if "samples" not in clip:
        raise _bad(where, "expected {'samples': [...], 'sample_rate': Hz} or {'wav': base64}, "
                          f"got keys {sorted(clip)}")
    sr = clip.get("sample_rate", sr_model)
    if not isinstance(sr, int) or isinstance(sr, bool) or sr <= 0:
        raise _bad(f"{where}.sample_rate", f"expected a positive integer (Hz), got {sr!r}")
    return _array(clip["samples"], f"{where}.samples"), sr


def _array(samples: Any, where: str) -> np.ndarray:
    try:
        a = np.asarray(samples, np.float32)
    except (TypeError, ValueError):
        raise _bad(where, "expected a path, a sample array, {'samples': [...]} or {'wav': base64}") from None
    return a


def encode_wav(samples: np.ndarray, sample_rate: int) -> str:
    """Samples -> base64 16-bit WAV, what the HTTP endpoint takes as ``{"wav": ...}``."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.asarray(samples, np.float32), sample_rate, format="WAV", subtype="PCM_16")
    return base64.b64encode(buf.getvalue()).decode()


def from_request(inputs: list[Any]) -> list[Any]:
    """An HTTP request's clips, checked: ``{"wav": base64}`` (any format soundfile reads), ``{"samples":
    [...], "sample_rate": Hz}`` or a plain list of samples. Paths are refused: a server reads no files
    named by its callers."""
    clips = []
    for i, clip in enumerate(inputs):
        if isinstance(clip, str):
            raise _bad(f"inputs.{i}", "expected {'wav': base64 audio}, {'samples': [...], 'sample_rate': Hz} or "
                                      "a list of samples; file paths are not read over HTTP")
        if isinstance(clip, list) and not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in clip):
            raise _bad(f"inputs.{i}", "expected a list of numbers (mono samples at the model's sample rate)")
        clips.append(np.asarray(clip, np.float32) if isinstance(clip, list) else clip)
    return clips
