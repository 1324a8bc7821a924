"""The network every backend computes, and its canonical, framework-neutral weights.

Canonical weight names (what a bundle stores):

- ``embedding.weight``            (vocab_size, embedding_dim)      text input only
- ``rnn.<layer>.<fwd|bwd>.<param>`` each cell parameter, canonical layout (see cellforge.cells)
- ``head.weight`` (outputs, hidden * directions), ``head.bias`` (outputs,)     not seq2seq

seq2seq replaces the head with a decoder (see :mod:`cellforge.seq2seq` for what it computes):

- ``bridge.<layer>.<state>.weight`` (Hd, hidden * directions), ``.bias`` (Hd,)  bridge 'linear'
- ``decoder.embedding.weight``  (target vocab, target embedding_dim)
- ``decoder.rnn.<layer>.<param>`` the decoder cell's parameters; layer 0 reads the token's
  embedding, then the previous attentional vector when input feeding
- ``attention.<param>``          the attention's parameters (see cellforge.attention)
- ``decoder.combine.weight``     (Hd, Hd + hidden * directions)  with attention: Luong's W_c
- ``decoder.out.weight`` (target vocab, Hd), ``decoder.out.bias`` (target vocab,)

The network:

1. text: token ids -> embedding; numeric: features as they are.
2. each layer runs forward over the valid steps of each sequence (padding sits at the
   end) and, when bidirectional, backward over the same steps; outputs are concatenated
   ``[fwd, bwd]``; padded steps output zeros. Dropout between layers in training only.
3. classify/regress/forecast read ``[h_fwd at the last valid step, h_bwd at step 0]``
   of the top layer; tag reads every step. A linear head maps that to the outputs.

    >>> from cellforge import ModelSpec
    >>> spec = ModelSpec(task="regress", cell="gru", hidden_size=4, input={"num_features": 2})
    >>> param_shapes(spec)["rnn.0.fwd.w_ih"]
    (12, 2)
"""

from __future__ import annotations

import os

from cellforge.anomaly import decoder as reconstruct_decoder
from cellforge.attention import get_attention
from cellforge.cells import get_cell
from cellforge.spec import ModelSpec


def param_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Canonical name -> shape for every parameter of the network ``spec`` describes."""
    if spec.reconstructs:  # anomaly's encoder-decoder: cellforge.anomaly.decoder
        return {**encoder_shapes(spec), **reconstruct_decoder.shapes(spec)}
    return {**encoder_shapes(spec), **(decoder_shapes(spec) if spec.task == "seq2seq" else head_shapes(spec))}


def encoder_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """The embedding (text input) and the recurrent stack: every task's encoder."""
    cell = get_cell(spec.cell)
    shapes: dict[str, tuple[int, ...]] = {}
    if spec.input.type == "text":
        if spec.input.vocab_size is None:
            raise ValueError("input.vocab_size is not set: fit() fills it in from the data")
        shapes["embedding.weight"] = (spec.input.vocab_size, spec.input.embedding_dim)
    in_size = spec.rnn_input_size
    for layer in range(spec.num_layers):
        for d in directions(spec):
            for name, shape in cell.shapes(in_size, spec.hidden_size).items():
                shapes[f"rnn.{layer}.{d}.{name}"] = shape
        in_size = spec.hidden_size * spec.num_directions
    return shapes


def head_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    return {"head.weight": (spec.output_size, spec.memory_size), "head.bias": (spec.output_size,)}


def decoder_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """seq2seq's bridge, decoder, attention and output projection."""
    cell, hidden, memory = get_cell(spec.decoder_cell), spec.decoder_hidden, spec.memory_size
    shapes: dict[str, tuple[int, ...]] = {}
    if spec.decoder.bridge == "linear":
        for layer in range(spec.decoder_layers):
            for state in cell.state:
                shapes[f"bridge.{layer}.{state}.weight"] = (hidden, memory)
                shapes[f"bridge.{layer}.{state}.bias"] = (hidden,)
    if spec.target.vocab_size is None:
        raise ValueError("target.vocab_size is not set: fit() fills it in from the data")
    vocab, emb = spec.target.vocab_size, spec.target.embedding_dim
    shapes["decoder.embedding.weight"] = (vocab, emb)
    in_size = emb + (hidden if spec.input_feeding else 0)
    for layer in range(spec.decoder_layers):
        for name, shape in cell.shapes(in_size, hidden).items():
            shapes[f"decoder.rnn.{layer}.{name}"] = shape
        in_size = hidden
    if spec.attention != "none":
        for name, shape in get_attention(spec.attention).shapes(hidden, memory).items():
            shapes[f"attention.{name}"] = shape
        shapes["decoder.combine.weight"] = (hidden, hidden + memory)
    shapes["decoder.out.weight"] = (vocab, hidden)
    shapes["decoder.out.bias"] = (vocab,)
    return shapes


def directions(spec: ModelSpec) -> tuple[str, ...]:
    return ("fwd", "bwd") if spec.bidirectional else ("fwd",)


def check_shapes(spec: ModelSpec, params: dict) -> None:
    """Raise ValueError naming the first weight that is not a parameter of ``spec`` or has the wrong shape."""
    shapes = param_shapes(spec)
    for name, v in params.items():
        if name not in shapes:
            raise ValueError(f"weight {name}: not a parameter of this model; expected {sorted(shapes)}")
        if tuple(v.shape) != shapes[name]:
            raise ValueError(f"weight {name}: expected shape {shapes[name]}, got {tuple(v.shape)}")


def thread_share(local_world: int) -> int:
    """Intra-op threads for one of ``local_world`` training workers on this node: its share of the
    cores (Ray sets OMP_NUM_THREADS=1 in workers otherwise)."""

    return max(1, (os.cpu_count() or 1) // max(1, local_world))
