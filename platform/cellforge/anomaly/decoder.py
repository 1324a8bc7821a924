"""reconstruct's decoder, written once against the ops namespace (every backend runs this code).

The encoder (the spec's recurrent stack) reads the window; its summary (the top layer's last state)
is fed to a one-layer decoder of the same cell at every step — the "repeat vector" LSTM
autoencoder — and a linear layer maps each decoder state to the step's features. The decoder
rebuilds the window backwards, its last step first (Malhotra et al. 2016, EncDec-AD), and the
output is returned in the input's order.

Canonical weights (besides the encoder's ``rnn.*``):

- ``decoder.rnn.0.<param>``  the cell's parameters; input: the summary (hidden * directions)
- ``decoder.out.weight`` (features, hidden), ``decoder.out.bias`` (features,)

    >>> from cellforge import ModelSpec
    >>> spec = ModelSpec(task="anomaly", cell="gru", hidden_size=4, input={"num_features": 2},
    ...                  anomaly={"method": "reconstruct"})
    >>> shapes(spec)["decoder.out.weight"]
    (2, 4)
"""

from __future__ import annotations

from cellforge.cells import get_cell
from cellforge.spec import ModelSpec


def shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    cell = get_cell(spec.cell)
    out = {f"decoder.rnn.0.{name}": shape for name, shape in cell.shapes(spec.memory_size, spec.hidden_size).items()}
    out["decoder.out.weight"] = (spec.output_size, spec.hidden_size)
    out["decoder.out.bias"] = (spec.output_size,)
    return out


def reconstruct(ops, spec: ModelSpec, p: dict, summary, steps: int):
    """(B, steps, features) rebuilt from the encoder's ``summary`` (B, hidden * directions)."""
    cell = get_cell(spec.cell)
    dec = {name: p[f"decoder.rnn.0.{name}"] for name in cell.params}
    state = tuple(ops.zeros(summary, spec.hidden_size) for _ in cell.state)
    outs = []
    for _ in range(steps):
        h, state = cell.step(ops, dec, summary, state)
        outs.append(ops.linear(h, p["decoder.out.weight"], p["decoder.out.bias"]))
    return ops.stack(outs[::-1], 1)  # decoded last step first: back in the input's order
