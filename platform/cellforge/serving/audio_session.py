"""An audio model's streaming session: chunks of a clip in, the transcript so far (greedy) out — or, for
``classify``/``tag``/``regress`` over audio, one answer per new frame, as a numeric session answers per step.

A step's chunk takes the forms ``predict`` takes for a clip (samples, ``{"samples", "sample_rate"}``,
``{"wav": base64}``) at the model's sample rate, and may be empty; a step with ``"end": true`` ends the
clip. The state kept between steps is exactly what the rest of the clip's frames need:

- ``features``: the streaming featurizer's (``cellforge.data.audio_stream``): the samples of the next
  frame's window not yet complete, the samples received, the frames computed;
- ``net``: the network's recurrent state after the frames fed (None before the first);
- ``last``, ``ids``: transcribe's CTC greedy decoder, the last frame's best class and the labels so far;
- ``end``: whether the clip has ended (a session then takes no more audio; an empty step with ``end``
  answers the final transcript again, so a client may retry an end whose answer it lost).

Ints, lists and numpy arrays only: the store actor carries it as it is, Redis as JSON with base64 arrays
(``redis_store.encode``). The final answer is what ``predict`` answers for the whole clip (transcribe:
greedy), since every frame is the whole clip's (``audio_stream``) and a unidirectional network stepped
through frames equals it run over them (``tests/unit/test_streaming.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cellforge import ctc
from cellforge.data import audio, audio_stream
from cellforge.data.preprocess import scale
from cellforge.errors import SpecError
from cellforge.serving.contract import MAX_ABS
from cellforge.serving.schema import ApiError, InputError, Problem

FORMS = "a list of samples, {'samples': [...], 'sample_rate': Hz} or {'wav': base64 audio}"
RATE_ONLY = ("a session's chunks must be at the model's sample rate, {sr} Hz (a chunk resampled alone differs "
             "from the clip resampled whole): resample the stream first, or send the whole clip to predict")


def _refuse(field: str, message: str) -> InputError:
    return InputError([Problem(field=field, message=message)])


def chunk(raw: Any, params: dict[str, Any]) -> np.ndarray:
    """A step's ``inputs`` -> mono float32 samples at the model's rate (possibly none), or a 422 naming the
    field: exactly what the step route's OpenAPI document (``contract.clip``) accepts. Another sample rate
    is refused, not resampled: a chunk resampled alone is not its share of the whole clip resampled."""
    sr = params["sample_rate"]
    if isinstance(raw, dict) and set(raw) == {"wav"}:
        try:
            samples, got = audio.samples_of(raw, sr, "inputs")
        except SpecError as e:
            raise InputError([Problem(field=f, message=m) for f, m in e.problems]) from None
        if got != sr:
            raise _refuse("inputs.wav", f"audio at {got} Hz: {RATE_ONLY.format(sr=sr)}")
        if not np.isfinite(samples).all():
            raise _refuse("inputs.wav", "audio contains NaN or infinity")
        return np.asarray(samples, np.float32)
    where, values = "inputs", raw
    if isinstance(raw, dict):
        if "samples" not in raw or not set(raw) <= {"samples", "sample_rate"}:
            raise _refuse("inputs", f"expected {FORMS}, got keys {sorted(raw)}")
        rate = raw.get("sample_rate", sr)
        rate = int(rate) if isinstance(rate, float) and rate.is_integer() else rate  # JSON Schema's integer
        if rate != sr or isinstance(rate, bool):
            raise _refuse("inputs.sample_rate", f"got {rate!r}: {RATE_ONLY.format(sr=sr)}")
        where, values = "inputs.samples", raw["samples"]
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                               for v in values):
        raise _refuse(where, f"expected a list of numbers (mono samples at {sr} Hz); a chunk is {FORMS}; file "
                             "paths are not read over HTTP")
    samples = np.asarray(values, np.float64)
    if not np.isfinite(samples).all() or (samples.size and np.abs(samples).max() > MAX_ABS):
        raise _refuse(where, f"samples must be finite numbers with |value| <= {MAX_ABS:g}")
    return samples.astype(np.float32)


def start(params: dict[str, Any]) -> dict[str, Any]:
    return {"features": audio_stream.start(params), "net": None, "last": ctc.BLANK, "ids": [], "end": False}


def step(engine, samples: np.ndarray, state: dict[str, Any] | None, end: bool) -> tuple[dict[str, Any], dict]:
    """One step of ``engine``'s audio model from ``state`` (None: a new session) -> the answer and the new
    state (``state`` itself is not changed: a replica's cache may hold it)."""
    params, pre = engine.state["audio"], engine.state
    state = start(params) if state is None else state
    if state["end"]:
        if not end or len(samples):
            raise ApiError(409, "conflict", "session_id", "the session's clip has ended (a step with \"end\": true); "
                                                          "start a new session for the next clip")
        # a retried end (its answer lost): nothing new, the same final answer again
        feats, new = np.zeros((0, audio_stream.width(params)), np.float32), dict(state)
    else:
        received = state["features"]["received"] + len(samples)
        if received > params["max_seconds"] * params["sample_rate"]:
            raise _refuse("inputs", f"{received / params['sample_rate']:.1f} s of audio in this session would be "
                                    f"longer than the maximum {params['max_seconds']:g} s (input.audio.max_seconds)")
        if end and received == 0:
            raise _refuse("inputs", "empty audio: the session received no samples before \"end\"")
        feats, fstate = audio_stream.push(state["features"], samples, params, end)
        new = {**state, "features": fstate, "end": bool(end)}
    cap = pre.get("max_length") or new["features"]["frames"]  # predict keeps a clip's first max_length frames
    before, frames = min(state["features"]["frames"], cap), min(new["features"]["frames"], cap)
    feats = feats[: max(0, frames - before)]
    out = np.zeros((1, 0, engine.model.weights["head.bias"].shape[0]), np.float32)
    if len(feats):
        x = scale(feats, pre["scaler"]).astype(np.float32)[None]
        out, new["net"] = engine.step_net(x, state["net"])
    head = {"frames": frames, "end": new["end"]}
    if engine.spec.task == "transcribe":
        more, new["last"] = ctc.greedy_more(ctc.log_softmax(np.asarray(out[0], np.float64)), state["last"])
        new["ids"] = state["ids"] + more
        return {**head, "text": ctc.text(pre["target"], new["ids"])}, new
    return {**head, **engine.step_answer(out)}, new
