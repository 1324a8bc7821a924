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
from cellforge.backends.keras import model, train
from cellforge.backends.keras.model import OPS
from cellforge.backends.network import decoder_shapes, encoder_shapes
from cellforge.backends.numpy.model import init_params
from cellforge.data.targets import IGNORE, teacher_inputs
from cellforge.spec import ModelSpec
from cellforge.train.worker import WorkerInfo

__all__ = ["Fitter", "Net", "Stepper", "build", "from_canonical", "logits", "to_canonical"]


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

    def call(self, x, lengths, y_in, training=False, truth=None):
        """Teacher-forced logits; with ``truth`` (B, T) bool, scheduled sampling (seq2seq.scheduled)."""
        if truth is None:
            return seq2seq.teacher_forced(OPS, self.spec, self.p, *self.encode(x, lengths, training), y_in)[0]
        return seq2seq.scheduled(OPS, self.spec, self.p, *self.encode(x, lengths, training), y_in, truth,
                                 lambda z: keras.ops.cast(keras.ops.argmax(z, axis=-1), "int64"))


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


STEPS = 16  # a compiled step unrolls the decoder over a fixed number of target steps: targets are
# padded up to a multiple of 16 (loss-masked), so a run traces a few graphs, not one per length


def loss_fn(out, y):
    """The torch backend's: cross-entropy per real target token (IGNORE skipped), their mean."""
    valid = tf.cast(y != IGNORE, out.dtype)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.where(y == IGNORE, tf.zeros_like(y), y),
                                                        logits=out)
    return tf.reduce_sum(ce * valid) / tf.maximum(tf.reduce_sum(valid), 1.0)


class Fitter(train.Fitter):
    """The Keras Fitter for an encoder-decoder: the same compiled step and gradient all-reduce
    (``train.Fitter``), each batch's targets, decoder inputs and scheduled-sampling choices packed
    into one (B, 3, T) array so the compiled step keeps one signature per padded length T."""

    def __init__(self, spec: ModelSpec, info: WorkerInfo):
        self.rng = np.random.default_rng([spec.training.seed, info.rank])  # scheduled sampling's draws
        super().__init__(spec, info)

    def make_net(self, spec: ModelSpec) -> Net:
        return Net(spec)

    def train_epoch(self, epoch: int, batches) -> tuple[float, int]:
        return super().train_epoch(epoch, ((xb, lb, self.pack(yb)) for xb, lb, yb in batches))

    def pack(self, y: np.ndarray) -> np.ndarray:
        steps = -(-y.shape[1] // STEPS) * STEPS
        y = np.pad(y, ((0, 0), (0, steps - y.shape[1])), constant_values=IGNORE)
        truth = self.rng.random(y.shape) < self.spec.training.teacher_forcing
        return np.stack([y, teacher_inputs(y), truth.astype(np.int64)], 1)

    def _compiled(self, xb, yb, full: bool):
        key = ("seq2seq", xb.dtype.name, xb.ndim, yb.shape[2])
        if key not in self._fns:
            sig = [tf.TensorSpec([None] * xb.ndim, tf.as_dtype(xb.dtype)), tf.TensorSpec([None], tf.int64),
                   tf.TensorSpec([None, 3, yb.shape[2]], tf.int64)]
            self._fns[key] = self._concrete(lambda x, lengths, y: self._step(x, lengths, y, False), sig)
        return self._fns[key]

    def _grads(self, x, lengths, y, full):
        t = self.spec.training
        truth = None if t.teacher_forcing >= 1 else y[:, 2] > 0
        with tf.GradientTape() as tape:
            loss = loss_fn(self.net(x, lengths, y[:, 1], training=True, truth=truth), y[:, 0])
            total = loss
            if t.l1:
                total += t.l1 * tf.add_n([tf.reduce_sum(tf.abs(w)) for w in self.penalized])
            if t.l2:
                total += t.l2 * tf.add_n([tf.reduce_sum(tf.square(w)) for w in self.penalized])
        return loss, [tf.convert_to_tensor(g) for g in tape.gradient(total, self.vars)]

    def predict(self, x, lengths, y) -> np.ndarray:
        """Teacher-forced logits (B, T, V) for targets ``y`` (B, T)."""
        return logits(self.net, x, lengths, teacher_inputs(y))

    def stepper(self) -> Stepper:
        return Stepper(self.net)

    def get_weights(self) -> dict[str, np.ndarray]:
        return to_canonical(self.net)

    def set_weights(self, params: dict[str, np.ndarray]) -> None:
        from_canonical(self.net, params)
