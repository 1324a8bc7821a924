"""seq2seq in Keras 3: this backend's encoder (Keras' fused RNN layers for built-in cells), then the
decoder of :mod:`cellforge.seq2seq` with Keras' ops. The decoder's weights keep their canonical
names and layout.

    >>> from cellforge import ModelSpec
    >>> spec = ModelSpec(task="seq2seq", cell="gru", hidden_size=4, input={"type": "text", "vocab_size": 7},
    ...                  target={"vocab_size": 6})
    >>> logits(build(spec), np.array([[3, 4], [5, 0]]), np.array([2, 1]), np.array([[2], [2]])).shape
    (2, 1, 6)
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from cellforge import seq2seq
from cellforge.backends.keras import model
from cellforge.backends.keras.model import OPS
from cellforge.backends.network import decoder_shapes, encoder_shapes
from cellforge.backends.numpy.model import init_params
from cellforge.spec import ModelSpec

__all__ = ["Net", "Stepper", "build", "from_canonical", "logits", "to_canonical"]


class Net(keras.Model):
    """Encoder and decoder. ``net(x, lengths, y_in)`` -> teacher-forced logits (B, T, V)."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.encoder = model.Net(spec)
        # the reference's random init, so a fresh net starts where numpy's would for the same seed
        start = init_params(spec, spec.training.seed)
        self.p = {n: self.add_weight(shape=shape, name=n.replace(".", "__"),
                                     initializer=keras.initializers.Constant(start[n]))
                  for n, shape in decoder_shapes(spec).items()}
        self.built = True  # every weight exists now (Keras warns when it cannot tell)

    def encode(self, x, lengths, training=False):
        lengths = tf.cast(lengths, tf.int32)
        memory, summary = self.encoder.encode(x, lengths, training=training)
        return memory, summary, tf.sequence_mask(lengths, tf.shape(memory)[1])

    def call(self, x, lengths, y_in, training=False):
        return seq2seq.teacher_forced(OPS, self.spec, self.p, *self.encode(x, lengths, training), y_in)[0]


def to_canonical(net: Net) -> dict[str, np.ndarray]:
    out = model.to_canonical(net.encoder)
    out.update({n: np.asarray(v.numpy(), np.float32) for n, v in net.p.items()})
    return out


def from_canonical(net: Net, params: dict[str, np.ndarray]) -> Net:
    encoder = encoder_shapes(net.spec)
    model.from_canonical(net.encoder, {k: v for k, v in params.items() if k in encoder})
    for k, v in params.items():
        if k in encoder:
            continue
        if k not in net.p:
            raise ValueError(f"weight {k}: not a parameter of this model; expected {sorted(net.p)}")
        if tuple(net.p[k].shape) != tuple(v.shape):
            raise ValueError(f"weight {k}: expected shape {tuple(net.p[k].shape)}, got {tuple(v.shape)}")
        net.p[k].assign(np.asarray(v, np.float32))
    return net


def build(spec: ModelSpec, params: dict[str, np.ndarray] | None = None) -> Net:
    net = Net(spec)
    if params is not None:
        from_canonical(net, params)
    return net


def logits(net: Net, x, lengths, y_in) -> np.ndarray:
    """Teacher-forced logits (B, T, V) for numpy inputs, in float32 numpy (eager)."""
    x = np.asarray(x)
    x = x.astype(np.float32) if x.dtype.kind == "f" else x.astype(np.int64)
    return np.asarray(net(x, np.asarray(lengths, np.int64), np.asarray(y_in, np.int64)), np.float32)


class Stepper:
    """One decoder step at a time, TensorFlow tensors inside, numpy at the edges (for cellforge.decode)."""

    def __init__(self, net: Net):
        self.net = net

    def start(self, x, lengths) -> dict:
        x = np.asarray(x)
        x = x.astype(np.float32) if x.dtype.kind == "f" else x.astype(np.int64)
        return seq2seq.start(OPS, self.net.spec, self.net.p, *self.net.encode(x, np.asarray(lengths, np.int64)))

    def step(self, state: dict, tokens: np.ndarray):
        out, state, weights = seq2seq.step(OPS, self.net.spec, self.net.p, state, np.asarray(tokens, np.int64))
        return np.asarray(out, np.float32), state, None if weights is None else np.asarray(weights, np.float32)

    def select(self, state: dict, rows: np.ndarray) -> dict:
        return seq2seq.select(OPS, state, np.asarray(rows, np.int64))
