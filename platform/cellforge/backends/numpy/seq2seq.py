"""seq2seq in numpy, the reference: this backend's encoder, then the decoder of
:mod:`cellforge.seq2seq` with numpy's ops. A net is the spec and its canonical weights (``Net``).

    >>> from cellforge import ModelSpec
    >>> spec = ModelSpec(task="seq2seq", cell="lstm", hidden_size=4, input={"type": "text", "vocab_size": 7},
    ...                  target={"vocab_size": 6})
    >>> net = build(spec)
    >>> logits(net, np.array([[3, 4, 5], [3, 0, 0]]), np.array([3, 1]), np.array([[2, 4], [2, 5]])).shape
    (2, 2, 6)
"""

from __future__ import annotations

import numpy as np

from cellforge import seq2seq
from cellforge.backends.numpy.model import OPS, Net, build, features

__all__ = ["Stepper", "build", "encode", "logits"]


def encode(net: Net, x, lengths):
    """The encoder's memory (B, S, K), summary (B, K) and the memory's mask (B, S)."""
    memory, summary = features(net.spec, net.params, x, lengths)
    mask = np.arange(memory.shape[1])[None, :] < np.asarray(lengths)[:, None]
    return memory, summary, mask


def logits(net: Net, x, lengths, y_in, return_attention: bool = False):
    """Teacher-forced logits (B, T, V) float32 (and the attention weights (B, T, S) when asked)."""
    out, weights = seq2seq.teacher_forced(OPS, net.spec, net.params, *encode(net, x, lengths), np.asarray(y_in))
    out = out.astype(np.float32)
    return (out, weights) if return_attention else out


class Stepper:
    """One decoder step at a time over numpy arrays, for :mod:`cellforge.decode`."""

    def __init__(self, net: Net):
        self.net = net

    def start(self, x, lengths) -> dict:
        return seq2seq.start(OPS, self.net.spec, self.net.params, *encode(self.net, x, lengths))

    def step(self, state: dict, tokens: np.ndarray):
        out, state, weights = seq2seq.step(OPS, self.net.spec, self.net.params, state, np.asarray(tokens, np.int64))
        return out.astype(np.float32), state, weights

    def select(self, state: dict, rows: np.ndarray) -> dict:
        return seq2seq.select(OPS, state, np.asarray(rows, np.int64))
