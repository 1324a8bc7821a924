"""The numpy reference network: the definition the other backends are tested against.

It is also a dependency-light runtime for small models (serving, sessions): a "net" here is
the spec and its canonical weights, run by ``forward``.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from cellforge.anomaly.decoder import reconstruct
from cellforge.backends.network import check_shapes, directions, param_shapes
from cellforge.cells import get_cell
from cellforge.spec import ModelSpec


def _linear(x, w, b=None):
    y = x @ w.T
    return y if b is None else y + b


def _sigmoid(x):
    return 0.5 * (np.tanh(0.5 * x) + 1.0)  # stable for large |x|


def _split(x, n):
    """``np.split(x, n, axis=-1)`` as views by slicing: the same arrays, without np.split's Python overhead
    (a quarter of an LSTM step's time at batch 1, h=64)."""
    k = x.shape[-1] // n
    if k * n != x.shape[-1]:
        raise ValueError(f"array split does not result in an equal division: {x.shape[-1]} by {n}")
    return [x[..., i * k:(i + 1) * k] for i in range(n)]


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# every backend's OPS has these names with these meanings (cells, attention and the decoder use them)
OPS = SimpleNamespace(
    linear=_linear,
    sigmoid=_sigmoid,
    tanh=np.tanh,
    relu=lambda x: np.maximum(x, 0),
    split=_split,
    concat=lambda xs: np.concatenate(xs, axis=-1),
    softmax=_softmax,  # over the last axis
    matmul=np.matmul,  # batched over leading axes
    expand=np.expand_dims,  # (x, axis)
    squeeze=np.squeeze,  # (x, axis)
    where=np.where,  # (condition, x, y)
    take=lambda x, index: x[index],  # rows of x along axis 0 (embedding lookup, beam reordering)
    stack=lambda xs, axis: np.stack(xs, axis),
    zeros=lambda like, width: np.zeros((like.shape[0], width), like.dtype),  # (like's rows, width), like's dtype/device
)


def init_params(spec: ModelSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """Random parameters, uniform(-1/sqrt(H), 1/sqrt(H)) like PyTorch's RNNs."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in param_shapes(spec).items():
        fan = shape[-1]
        if name.startswith("rnn."):
            fan = spec.hidden_size
        elif name.startswith("decoder.rnn."):
            fan = spec.decoder_hidden if spec.task == "seq2seq" else spec.hidden_size
        bound = 1.0 / np.sqrt(fan)
        if name in ("embedding.weight", "decoder.embedding.weight"):
            out[name] = rng.normal(0, 1, shape).astype(np.float32)
        else:
            out[name] = rng.uniform(-bound, bound, shape).astype(np.float32)
    return out


def reverse_index(lengths: np.ndarray, steps: int) -> np.ndarray:
    """(B, T) index that reverses each sequence's valid part and keeps padding in place."""
    t = np.arange(steps)[None, :]
    ln = np.asarray(lengths)[:, None]
    return np.where(t < ln, ln - 1 - t, t)


def run_direction(cell, p, x, mask, state=None):
    """Run ``cell`` over (B, T, I) ``x``; masked steps keep the state and output zeros.

    Returns outputs (B, T, H) and the final state tuple.
    """
    batch, steps = x.shape[:2]
    hidden = p["w_hh"].shape[-1] if "w_hh" in p else None
    if state is None:
        hidden = hidden or _hidden_of(cell, p)
        state = tuple(np.zeros((batch, hidden), x.dtype) for _ in cell.state)
    outs = []
    valid = mask.all(axis=0)  # steps where no sequence is padding: nothing to mask (one request, equal lengths)
    for t in range(steps):
        h, new = cell.step(OPS, p, x[:, t], state)
        if valid[t]:
            state = new
            outs.append(h)
            continue
        m = mask[:, t, None]
        state = tuple(np.where(m, n, s) for n, s in zip(new, state))
        outs.append(np.where(m, h, 0.0))
    return np.stack(outs, 1).astype(x.dtype), state


def _hidden_of(cell, p):
    for name, shape in cell.params.items():
        if shape[-1] == "H":
            return p[name].shape[-1]
    raise ValueError(f"cell {cell.name!r}: cannot tell the hidden size from its parameters")


def layer_params(params, layer, direction):
    prefix = f"rnn.{layer}.{direction}."
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


def features(spec: ModelSpec, params, x, lengths):
    """Top-layer outputs (B, T, H*dirs) and the sequence summary (B, H*dirs)."""
    cell = get_cell(spec.cell)
    lengths = np.asarray(lengths, dtype=np.int64)
    if spec.input.type == "text":
        h = params["embedding.weight"][np.asarray(x, dtype=np.int64)]
    else:
        h = np.asarray(x, dtype=np.float32)
    steps = h.shape[1]
    mask = np.arange(steps)[None, :] < lengths[:, None]
    rev = reverse_index(lengths, steps)
    rows = np.arange(h.shape[0])[:, None]
    for layer in range(spec.num_layers):
        outs = []
        for d in directions(spec):
            p = layer_params(params, layer, d)
            if d == "fwd":
                o, _ = run_direction(cell, p, h, mask)
            else:
                o, _ = run_direction(cell, p, h[rows, rev], mask)
                o = o[rows, rev]
            outs.append(o)
        h = np.concatenate(outs, -1)
    last = h[np.arange(h.shape[0]), np.maximum(lengths - 1, 0), : spec.hidden_size]
    summary = [last]
    if spec.bidirectional:
        summary.append(h[:, 0, spec.hidden_size :])
    return h, np.concatenate(summary, -1)


def forward(spec: ModelSpec, params: dict[str, np.ndarray], x, lengths) -> np.ndarray:
    """Network outputs: (B, out) for sequence tasks, (B, T, classes) for tag."""
    seq, summary = features(spec, params, x, lengths)
    if spec.reconstructs:
        return np.asarray(reconstruct(OPS, spec, params, summary, seq.shape[1]), np.float32)
    z = seq if spec.per_step else summary
    return (z @ params["head.weight"].T + params["head.bias"]).astype(np.float32)


def step(spec: ModelSpec, params, x, state=None):
    """Stream steps through a unidirectional network, carrying state between calls.

    Args:
        x: (B, t, F) new steps (token ids (B, t) for text).
        state: what the previous call returned, or None to start.

    Returns:
        (outputs for each new step — (B, t, out) —, the new state: a list per layer).
    """
    if spec.bidirectional:
        raise ValueError("bidirectional models cannot be streamed step by step: they read the whole sequence")
    cell = get_cell(spec.cell)
    h = params["embedding.weight"][np.asarray(x, np.int64)] if spec.input.type == "text" else np.asarray(x, np.float32)
    mask = np.ones(h.shape[:2], bool)
    new_state = []
    for layer in range(spec.num_layers):
        h, s = run_direction(cell, layer_params(params, layer, "fwd"), h, mask, None if state is None else state[layer])
        new_state.append(s)
    return (h @ params["head.weight"].T + params["head.bias"]).astype(np.float32), new_state


class Net:
    """The numpy runtime's network: a spec and its canonical weights (float32)."""

    def __init__(self, spec: ModelSpec, params: dict[str, np.ndarray]):
        self.spec, self.params = spec, params


def build(spec: ModelSpec, params: dict[str, np.ndarray] | None = None) -> Net:
    if params is None:
        return Net(spec, init_params(spec))
    check_shapes(spec, params)
    return Net(spec, {k: np.asarray(v, np.float32) for k, v in params.items()})


def predict(net: Net, x, lengths) -> np.ndarray:
    return forward(net.spec, net.params, x, lengths)


def to_canonical(net: Net) -> dict[str, np.ndarray]:
    return dict(net.params)


def from_canonical(net: Net, params: dict[str, np.ndarray]) -> Net:
    check_shapes(net.spec, params)
    net.params.update({k: np.asarray(v, np.float32) for k, v in params.items()})
    return net
