"""The seq2seq decoder, written once against the ops namespace: every backend runs these functions
with its own ``op`` and its own tensors, after its own (fused) encoder.

The encoder (the recurrent stack of every task) reads the input and gives the memory (batch, S,
K), its outputs at every step, zero at padding, and the summary (batch, K), its top layer's last
``h`` forward and backward (what the other tasks' heads read). The decoder then (Luong et al.
2015, with the score of the spec's attention):

1. starts from the bridge: ``tanh(W summary + b)`` per layer and state tensor, or zeros;
2. each step embeds the previous token (``<bos>`` first), appends the previous attentional vector
   when input feeding, runs the stacked decoder cells, and with its top output ``h``:
3. attends: scores over the memory, padded steps masked, softmax, the weighted average of the
   memory is the context ``c``; the attentional vector is ``tanh(W_c [h, c])`` (without
   attention it is ``h`` itself);
4. projects it to the target vocabulary's logits.

``p`` maps canonical weight names (:mod:`cellforge.backends.network`) to the backend's tensors.
A decoder state is a dict of tensors whose first axis is the batch, so :func:`select` can pick,
repeat and reorder rows (beam search).

    >>> import numpy as np
    >>> from cellforge import ModelSpec
    >>> from cellforge.backends.numpy import OPS, init_params
    >>> spec = ModelSpec(task="seq2seq", cell="gru", hidden_size=4, input={"num_features": 2},
    ...                  target={"vocab_size": 9, "embedding_dim": 3})
    >>> p = init_params(spec)
    >>> memory, mask = np.ones((2, 5, 4), np.float32), np.array([[True] * 5, [True] * 2 + [False] * 3])
    >>> state = start(OPS, spec, p, memory, memory[:, -1], mask)
    >>> logits, state, weights = step(OPS, spec, p, state, np.array([2, 2]))
    >>> logits.shape, weights.shape, float(weights[1, 2:].sum())
    ((2, 9), (2, 5), 0.0)
"""

from __future__ import annotations

from typing import Any

from cellforge.attention import get_attention
from cellforge.cells import get_cell
from cellforge.spec import ModelSpec

PAD, UNK, BOS, EOS = 0, 1, 2, 3  # the target vocabulary's first four tokens
SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")
MASKED = -1e9  # a padded step's score: exp() of it is exactly 0 in float32, and never NaN


def sub(p: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The parameters under ``prefix``, without it: ``sub(p, "attention.")``."""
    return {k[len(prefix):]: v for k, v in p.items() if k.startswith(prefix)}


def start(op, spec: ModelSpec, p: dict[str, Any], memory, summary, mask) -> dict[str, Any]:
    """The decoder's state before its first step, from the encoder's memory, summary and mask (B, S)."""
    cell, hidden = get_cell(spec.decoder_cell), spec.decoder_hidden
    layers = []
    for layer in range(spec.decoder_layers):
        if spec.decoder.bridge == "linear":
            layers.append(tuple(op.tanh(op.linear(summary, p[f"bridge.{layer}.{s}.weight"],
                                                  p[f"bridge.{layer}.{s}.bias"])) for s in cell.state))
        else:
            layers.append(tuple(op.zeros(summary, hidden) for _ in cell.state))
    state: dict[str, Any] = {"layers": layers, "memory": memory, "mask": mask}
    if spec.attention != "none":
        state["keys"] = get_attention(spec.attention).keys(op, sub(p, "attention."), memory)
    if spec.input_feeding:
        state["feed"] = op.zeros(summary, hidden)
    return state


def attend(op, spec: ModelSpec, p: dict[str, Any], state: dict[str, Any], q):
    """Attention weights (B, S) over the memory and the context (B, K) for the query ``q`` (B, Q)."""
    scores = get_attention(spec.attention).score(op, sub(p, "attention."), state["keys"], q)
    weights = op.softmax(op.where(state["mask"], scores, MASKED))
    context = op.squeeze(op.matmul(op.expand(weights, 1), state["memory"]), 1)
    return weights, context


def attentional(op, spec: ModelSpec, p: dict[str, Any], state: dict[str, Any], tokens):
    """One decoder step for the previous tokens (B,) -> (the attentional vector (B, H) that the
    output layer reads, new state, weights (B, S) or None)."""
    cell = get_cell(spec.decoder_cell)
    # a backend may run a built-in cell with its framework's own kernel (the same equations, one op
    # with one backward instead of a dozen small ones: torch's decoder trains ~10% faster with it)
    fused = getattr(op, "fused_cell", None) if cell.fused else None
    x = op.take(p["decoder.embedding.weight"], tokens)
    if spec.input_feeding:
        x = op.concat([x, state["feed"]])
    layers = []
    for layer, s in enumerate(state["layers"]):
        weights = sub(p, f"decoder.rnn.{layer}.")
        x, s = fused(cell.fused, weights, x, s) if fused else cell.step(op, weights, x, s)
        layers.append(s)
    state = {**state, "layers": layers}
    weights = None
    if spec.attention != "none":
        weights, context = attend(op, spec, p, state, x)
        x = op.tanh(op.linear(op.concat([x, context]), p["decoder.combine.weight"]))
    if spec.input_feeding:
        state["feed"] = x
    return x, state, weights


def project(op, p: dict[str, Any], x):
    """The target vocabulary's logits (..., V) for attentional vectors (..., H)."""
    return op.linear(x, p["decoder.out.weight"], p["decoder.out.bias"])


def step(op, spec: ModelSpec, p: dict[str, Any], state: dict[str, Any], tokens):
    """One decoder step for the previous tokens (B,) -> (logits (B, V), new state, weights (B, S) or None)."""
    x, state, weights = attentional(op, spec, p, state, tokens)
    return project(op, p, x), state, weights


def teacher_forced(op, spec: ModelSpec, p: dict[str, Any], memory, summary, mask, y_in):
    """Logits (B, T, V) and attention weights (B, T, S) (None without attention) when step t is
    fed the true token ``y_in[:, t]`` (``<bos>`` then the target). The output layer runs once over
    all steps (one (B*T, H) x (H, V) product, forward and backward, instead of T small ones)."""
    state = start(op, spec, p, memory, summary, mask)
    xs, weights = [], []
    for t in range(y_in.shape[1]):
        x, state, w = attentional(op, spec, p, state, y_in[:, t])
        xs.append(x)
        weights.append(w)
    return project(op, p, op.stack(xs, 1)), (None if weights[0] is None else op.stack(weights, 1))


def select(op, state: dict[str, Any], rows) -> dict[str, Any]:
    """The state of the batch rows ``rows`` (an index: to pick, repeat or reorder hypotheses)."""
    return {k: ([tuple(op.take(t, rows) for t in s) for s in v] if k == "layers" else op.take(v, rows))
            for k, v in state.items()}


def scheduled(op, spec: ModelSpec, p: dict[str, Any], memory, summary, mask, y_in, truth, argmax):
    """Logits (B, T, V) under scheduled sampling (Bengio et al. 2015, ``training.teacher_forcing`` < 1):
    step t reads the true token ``y_in[:, t]`` where ``truth[:, t]`` (a bool (B, T)), else the
    previous step's own most likely token (``argmax``, the backend's, over the last axis)."""
    state = start(op, spec, p, memory, summary, mask)
    logits = []
    for t in range(y_in.shape[1]):
        tokens = y_in[:, t] if t == 0 else op.where(truth[:, t], y_in[:, t], argmax(logits[-1]))
        out, state, _ = step(op, spec, p, state, tokens)
        logits.append(out)
    return op.stack(logits, 1)
