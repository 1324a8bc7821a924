"""A clip's features computed while its samples arrive (an audio model's streaming session): exactly the
frames ``audio.features`` gives the whole clip, each as soon as its window is complete.

``features`` centres frame t's window (``frame_length`` samples) on sample ``t * hop``: the clip is
padded with ``frame_length // 2`` zeros each side (``audio.PAD_MODE``; a clip shorter than one window is
first padded with zeros to one). A stream therefore keeps, in padded coordinates, the samples from the
next frame's window on (at the start: the left padding); ``push`` appends a chunk and computes the
frames whose windows it completed; ``end=True`` appends the clip's end padding and computes the rest.
The state holds one window and a hop at most (plus the chunk being consumed) and is JSON-able with
numpy arrays (the Redis session store's ``encode``).

    >>> import numpy as np
    >>> from cellforge.data.audio import features
    >>> params = {"sample_rate": 8000, "resample": True, "features": "logmel", "frame_length": 200,
    ...           "hop_length": 80, "n_mels": 20, "n_mfcc": 13, "per_utterance": False, "max_seconds": 10.0}
    >>> tone = np.sin(2 * np.pi * 440 * np.arange(8000) / 8000).astype(np.float32)
    >>> state = start(params)
    >>> first, state = push(state, tone[:1000], params)               # frames 0-11: windows inside 1,000 samples
    >>> rest, state = push(state, tone[1000:], params, end=True)      # the other 89, the last on the end padding
    >>> len(first), len(rest), bool(np.abs(np.concatenate([first, rest]) - features(tone, params)).max() < 1e-5)
    (12, 89, True)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cellforge.data import audio


def start(params: dict[str, Any]) -> dict[str, Any]:
    """A stream before its first sample: the left padding, no frame computed."""
    if params["per_utterance"]:  # each feature normalised by the whole clip's mean and variance
        raise ValueError("input.audio.per_utterance: features normalised over the whole clip cannot be streamed")
    return {"buf": np.zeros(params["frame_length"] // 2, np.float32), "received": 0, "frames": 0}


def width(params: dict[str, Any]) -> int:
    """Features per frame."""
    return params["n_mfcc"] if params["features"] == "mfcc" else params["n_mels"]


def push(state: dict[str, Any], samples: np.ndarray, params: dict[str, Any],
         end: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """Append ``samples`` (mono, at the model's rate; may be empty) -> the (k, features) float32 frames
    completed, and the new state (``state`` is not changed). ``end``: the clip ends here; every frame
    ``features`` gives the whole clip has then been returned."""
    n, hop = params["frame_length"], params["hop_length"]
    buf = np.concatenate([state["buf"], np.asarray(samples, np.float32).reshape(-1)])
    received = state["received"] + int(np.size(samples))
    if end:  # a clip shorter than a window is padded to one (audio.features), then the end padding
        buf = np.concatenate([buf, np.zeros(max(0, n - received) + n // 2, np.float32)])
    # buf[0] is frame t0's window's first (padded) sample: frames t0 .. t1-1 have their whole window
    t0 = state["frames"]
    t1 = t0 + (len(buf) - n) // hop + 1 if len(buf) >= n else t0
    if t1 == t0:
        return np.zeros((0, width(params)), np.float32), {**state, "buf": buf, "received": received}
    done = (t1 - t0) * hop  # the next window starts here
    out = audio.frames(buf[: (t1 - t0 - 1) * hop + n], params, center=False)
    return out, {"buf": buf[done:].copy(), "received": received, "frames": t1}
