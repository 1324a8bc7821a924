"""Backends: numpy (the reference), torch and keras, each exposing the same few functions.

Canonical, framework-neutral weight names (what a bundle stores):

- ``embedding.weight``            (vocab_size, embedding_dim)      text input only
- ``rnn.<layer>.<fwd|bwd>.<param>`` each cell parameter, canonical layout (see cells)
- ``head.weight`` (outputs, hidden * directions), ``head.bias`` (outputs,)

The network every backend computes:

1. text: token ids -> embedding; numeric: features as they are.
2. each layer runs forward over the valid steps of each sequence (padding sits at the
   end) and, when bidirectional, backward over the same steps; outputs are concatenated
   ``[fwd, bwd]``; padded steps output zeros. Dropout between layers in training only.
3. classify/regress/forecast read ``[h_fwd at the last valid step, h_bwd at step 0]``
   of the top layer; tag reads every step. A linear head maps that to the outputs.
"""

from __future__ import annotations

from cellforge.cells import get_cell
from cellforge.spec import ModelSpec

BACKENDS = ("numpy", "torch", "tensorflow")


def param_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Canonical name -> shape for every parameter of the network ``spec`` describes."""
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
    shapes["head.weight"] = (spec.output_size, spec.hidden_size * spec.num_directions)
    shapes["head.bias"] = (spec.output_size,)
    return shapes


def directions(spec: ModelSpec) -> tuple[str, ...]:
    return ("fwd", "bwd") if spec.bidirectional else ("fwd",)


def get_backend(name: str):
    """The backend module for ``name`` ('numpy', 'torch' or 'tensorflow')."""
    if name == "numpy":
        from cellforge.backends import numpy_backend as mod
    elif name == "torch":
        from cellforge.backends import torch_backend as mod
    elif name in ("tensorflow", "keras"):
        from cellforge.backends import keras_backend as mod
    else:
        raise ValueError(f"unknown framework {name!r}; known: {list(BACKENDS)}")
    return mod
