"""The Keras 3 (TensorFlow) network: keras LSTM/GRU/SimpleRNN for built-in cells, a generic
keras RNN cell for cells of your own, and converters to and from the canonical weights.

    >>> from cellforge.backends import get_backend
    >>> spec = ModelSpec(task="regress", cell="gru", hidden_size=8, input={"num_features": 3})
    >>> kb = get_backend("tensorflow")
    >>> kb.predict(kb.build(spec, kb.init_params(spec)), np.zeros((2, 5, 3), np.float32), np.array([5, 2])).shape
    (2, 1)
"""

from __future__ import annotations

import logging
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TF's C++ chatter, "failed call to cuInit" on CPUs too

from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402

from cellforge.log import TF_STARTUP, native_stderr_without  # noqa: E402

with native_stderr_without(TF_STARTUP):  # TF's start-up lines on stderr (see there); a real error still shows
    import keras
    import tensorflow as tf
    from keras import ops

    tf.config.list_physical_devices()  # the GPU search, and its "failed call to cuInit" on CPUs, happen now

from cellforge.backends.network import check_shapes, directions, encoder_shapes, param_shapes  # noqa: E402
from cellforge.cells import get_cell  # noqa: E402
from cellforge.spec import ModelSpec  # noqa: E402

if keras.backend.backend() != "tensorflow":
    raise ImportError(f"framework 'tensorflow' needs Keras on the TensorFlow backend, but Keras was imported with "
                      f"KERAS_BACKEND={keras.backend.backend()!r}; set KERAS_BACKEND=tensorflow before importing keras")

# full float32 matmuls on GPUs too (TF would use TF32 on Ampere and later): the 1e-5 parity with
# the numpy reference and torch needs them
tf.config.experimental.enable_tensor_float_32_execution(False)


class _NotRetracing(logging.Filter):
    """Drops TensorFlow's "N out of the last M calls to <function ...> triggered tf.function retracing".
    Each network compiles its inference function once and keeps it (``forward_fn``); the warning counts
    functions of different networks together, so a process that trains and evaluates several models
    (a notebook, a fit in the driver's process) saw it after every few fits, with nothing to fix."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


tf.get_logger().addFilter(_NotRetracing())


def _linear(x, w, b=None):
    y = ops.matmul(x, ops.transpose(w))  # canonical layout: y = x @ w.T + b
    return y if b is None else y + b


OPS = SimpleNamespace(
    linear=_linear,
    sigmoid=ops.sigmoid,
    tanh=ops.tanh,
    relu=ops.relu,
    split=lambda x, n: ops.split(x, n, axis=-1),
    concat=lambda xs: ops.concatenate(xs, axis=-1),
    softmax=lambda x: ops.softmax(x, axis=-1),
    matmul=ops.matmul,
    expand=ops.expand_dims,
    squeeze=ops.squeeze,
    where=ops.where,
    take=lambda x, index: ops.take(x, index, axis=0),
    stack=lambda xs, axis: ops.stack(xs, axis),
    zeros=lambda like, width: ops.zeros((ops.shape(like)[0], width), like.dtype),
)
GRU_ORDER = [1, 0, 2]  # canonical (r, z, n) <-> Keras (z, r, h); the permutation is its own inverse


class GenericCell(keras.layers.Layer):
    """A registered cell as a Keras RNN cell; its weights keep the canonical names and layout."""

    def __init__(self, cell_name: str, input_size: int, hidden: int, **kwargs):
        super().__init__(**kwargs)
        self.cell = get_cell(cell_name)
        self.state_size = [hidden] * len(self.cell.state)
        self.output_size = hidden
        bound = 1.0 / np.sqrt(hidden)  # PyTorch's RNN init
        self.p = {name: self.add_weight(shape=shape, name=name, initializer=keras.initializers.RandomUniform(-bound, bound))
                  for name, shape in self.cell.shapes(input_size, hidden).items()}

    def call(self, x, states):
        h, new = self.cell.step(OPS, self.p, x, tuple(states if isinstance(states, (list, tuple)) else [states]))
        return h, list(new)


def make_rnn(cell_name: str, input_size: int, hidden: int, sequences: bool = True) -> keras.layers.RNN:
    """One direction of one layer; masked steps keep the state and output zeros. ``sequences=False``:
    only the output at each sequence's last step (masked steps carry the last output on), for a top
    layer whose outputs at the other steps nothing reads: Keras then keeps one step's output, not all
    of them, and a training step ran ~5% faster (LSTM h=128, T=50, batch 64, on 2 CPU cores)."""
    kw = {"return_sequences": sequences, "zero_output_for_mask": sequences}
    fused = get_cell(cell_name).fused
    if fused == "lstm":
        layer = keras.layers.LSTM(hidden, **kw)
    elif fused == "gru":
        layer = keras.layers.GRU(hidden, reset_after=True, **kw)
    elif fused == "rnn":
        layer = keras.layers.SimpleRNN(hidden, **kw)
    else:
        layer = keras.layers.RNN(GenericCell(cell_name, input_size, hidden), **kw)
    layer.build((None, None, input_size))
    return layer


class Net(keras.Model):
    """The network of cellforge.backends.network in Keras. ``net(x, lengths, training, full)``;
    ``full=True`` promises every sequence fills all steps (no masking: faster)."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.embedding = None
        if spec.input.type == "text":
            self.embedding = keras.layers.Embedding(spec.input.vocab_size, spec.input.embedding_dim)
            self.embedding.build((None, None))
        self.rnns = []
        in_size = spec.rnn_input_size
        # the top layer keeps only its last output where that is all the network reads (see make_rnn)
        self.summary_only = not (spec.per_step or spec.bidirectional or spec.task == "seq2seq")
        for layer in range(spec.num_layers):
            top = layer == spec.num_layers - 1
            self.rnns.append([make_rnn(spec.cell, in_size, spec.hidden_size, not (top and self.summary_only))
                              for _ in directions(spec)])
            in_size = spec.hidden_size * spec.num_directions
        self.drop = keras.layers.Dropout(spec.dropout)
        self.in_drop, self.head_drop = keras.layers.Dropout(spec.input.dropout), keras.layers.Dropout(spec.head_dropout)
        self.head = None  # seq2seq: this net is the encoder; its decoder replaces the head (seq2seq.py)
        if spec.reconstructs:
            # anomaly's decoder (cellforge.anomaly.decoder): its input is the summary at every step, so
            # one RNN layer over the repeated summary computes its step loop (on the fused kernel)
            self.dec_rnn = make_rnn(spec.cell, spec.memory_size, spec.hidden_size)
            self.dec_out = keras.layers.Dense(spec.output_size)
            self.dec_out.build((None, spec.hidden_size))
        elif spec.task != "seq2seq":
            self.head = keras.layers.Dense(spec.output_size)
            self.head.build((None, in_size))

    def call(self, x, lengths, training=False, full=False):
        seq, summary = self.encode(x, lengths, training, full)
        if self.spec.reconstructs:
            repeated = tf.repeat(summary[:, None, :], tf.shape(x)[1], axis=1)
            return tf.reverse(self.dec_out(self.dec_rnn(repeated, training=training)), [1])  # last step first
        return self.head(self.head_drop(seq if self.spec.per_step else summary, training=training))

    def encode(self, x, lengths, training=False, full=False):
        """The top layer's outputs (B, T, H*dirs), zero at padding, and the summary (B, H*dirs); the
        outputs are None where the network keeps only the summary (``summary_only``)."""
        spec, hidden = self.spec, self.spec.hidden_size
        h = self.embedding(x) if self.embedding is not None else x
        if spec.input.dropout:
            h = self.in_drop(h, training=training)
        steps = tf.shape(h)[1]
        lengths = tf.cast(lengths, tf.int32)
        mask = None if full else tf.sequence_mask(lengths, steps)
        if not full:  # reverse each sequence's valid part, keep padding in place
            t = tf.range(steps)[None, :]
            rev = tf.where(mask, lengths[:, None] - 1 - t, t)
        for layer, rnns in enumerate(self.rnns):
            if layer and spec.dropout:
                h = self.drop(h, training=training)
            outs = [rnns[0](h, mask=mask, training=training)]
            if spec.bidirectional:
                if full:
                    outs.append(tf.reverse(rnns[1](tf.reverse(h, [1]), training=training), [1]))
                else:
                    o = rnns[1](tf.gather(h, rev, batch_dims=1), mask=mask, training=training)
                    outs.append(tf.gather(o, rev, batch_dims=1))
            h = tf.concat(outs, -1) if len(outs) > 1 else outs[0]
        if self.summary_only:  # the top layer's output at each sequence's last step
            return None, h
        last = h[:, -1, :hidden] if full else tf.gather(h[..., :hidden], tf.maximum(lengths - 1, 0), batch_dims=1)
        return h, (tf.concat([last, h[:, 0, hidden:]], -1) if spec.bidirectional else last)


# canonical <-> Keras ----------------------------------------------------------------
def _blocks(a: np.ndarray, order: list[int]) -> np.ndarray:
    return np.concatenate([np.split(a, len(order), axis=0)[i] for i in order], axis=0)


def _rnn_weights(net: Net, canonical: str):
    if canonical.startswith("decoder.rnn."):  # anomaly's reconstruct decoder
        return net.dec_rnn.cell
    layer, d = int(canonical.split(".")[1]), canonical.split(".")[2]
    return net.rnns[layer][directions(net.spec).index(d)].cell


def to_canonical(net: Net) -> dict[str, np.ndarray]:
    """The network's weights under canonical names, layout and gate order (float32 numpy)."""
    out, fused = {}, get_cell(net.spec.cell).fused
    for name in encoder_shapes(net.spec) if net.spec.task == "seq2seq" else param_shapes(net.spec):
        param = name.split(".")[-1]
        if name.startswith("decoder.out."):
            v = net.dec_out.kernel.numpy().T if param == "weight" else net.dec_out.bias.numpy()
        elif name == "embedding.weight":
            v = net.embedding.embeddings.numpy()
        elif name == "head.weight":
            v = net.head.kernel.numpy().T
        elif name == "head.bias":
            v = net.head.bias.numpy()
        elif fused is None:
            v = _rnn_weights(net, name).p[param].numpy()
        else:
            v = _fused_canonical(_rnn_weights(net, name), fused, param)
        out[name] = np.ascontiguousarray(v, np.float32)
    return out


def _fused_canonical(c, fused: str, param: str) -> np.ndarray:
    """One canonical parameter from a Keras LSTM/GRU/SimpleRNN cell."""
    gates = c.kernel.shape[1] // c.units
    order = GRU_ORDER if fused == "gru" else list(range(gates))
    bias = c.bias.numpy()
    if param in ("w_ih", "w_hh"):
        return _blocks((c.kernel if param == "w_ih" else c.recurrent_kernel).numpy().T, order)
    if fused == "gru":  # Keras' reset_after GRU keeps [input bias, recurrent bias]
        return _blocks(bias[0 if param == "b_ih" else 1], order)
    return bias if param == "b_ih" else np.zeros_like(bias)  # one Keras bias: all of it goes to b_ih


def from_canonical(net: Net, params: dict[str, np.ndarray]) -> Net:
    """Load canonical weights into ``net`` (shapes checked against the spec)."""
    check_shapes(net.spec, params)
    fused = get_cell(net.spec.cell).fused
    p = {k: np.asarray(v, np.float32) for k, v in params.items()}
    if net.embedding is not None:
        net.embedding.embeddings.assign(p["embedding.weight"])
    if net.head is not None:
        net.head.kernel.assign(p["head.weight"].T)
        net.head.bias.assign(p["head.bias"])
    prefixes = [f"rnn.{layer}.{d}." for layer in range(net.spec.num_layers) for d in directions(net.spec)]
    if net.spec.reconstructs:
        net.dec_out.kernel.assign(p["decoder.out.weight"].T)
        net.dec_out.bias.assign(p["decoder.out.bias"])
        prefixes.append("decoder.rnn.0.")
    for pre in prefixes:  # one cell's weights each: the encoder's layers, then reconstruct's decoder
        c = _rnn_weights(net, pre)
        if fused is None:
            for param, var in c.p.items():
                var.assign(p[pre + param])
            continue
        order = GRU_ORDER if fused == "gru" else list(range(p[pre + "w_ih"].shape[0] // net.spec.hidden_size))
        c.kernel.assign(_blocks(p[pre + "w_ih"], order).T)
        c.recurrent_kernel.assign(_blocks(p[pre + "w_hh"], order).T)
        b_ih, b_hh = _blocks(p[pre + "b_ih"], order), _blocks(p[pre + "b_hh"], order)
        c.bias.assign(np.stack([b_ih, b_hh]) if fused == "gru" else b_ih + b_hh)
    return net


def build(spec: ModelSpec, params: dict[str, np.ndarray] | None = None) -> Net:
    net = Net(spec)
    if params is not None:
        from_canonical(net, params)
    return net


def forward_fn(net: Net, x_dtype, x_rank: int, full: bool):
    """A compiled inference function for inputs of this dtype and rank (cached on the net)."""
    cache = net.__dict__.setdefault("_cf_predict", {})
    key = (np.dtype(x_dtype).name, x_rank, full)
    if key not in cache:
        sig = [tf.TensorSpec([None] * x_rank, tf.as_dtype(np.dtype(x_dtype))), tf.TensorSpec([None], tf.int64)]
        cache[key] = tf.function(lambda x, lengths: net(x, lengths, training=False, full=full), input_signature=sig)
    return cache[key]


def predict(net: Net, x: np.ndarray, lengths: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Network outputs for numpy inputs, in float32 numpy."""
    x = np.asarray(x)
    x = x.astype(np.float32) if x.dtype.kind == "f" else x.astype(np.int64)
    lengths = np.asarray(lengths, np.int64)
    outs = []
    for s in range(0, len(x), batch_size):
        xb, lb = x[s: s + batch_size], lengths[s: s + batch_size]
        fn = forward_fn(net, xb.dtype, xb.ndim, bool((lb == xb.shape[1]).all()))
        outs.append(fn(xb, lb).numpy().astype(np.float32))
    return np.concatenate(outs) if outs else np.zeros((0, *x.shape[1:-1][:int(net.spec.reconstructs)],
                                                       net.spec.output_size), np.float32)
