"""Hidden states and gate activations per layer and step, from the numpy reference runtime.

The reference network runs as it always does; :func:`cellforge.cells.recording` collects what each
cell step named (LSTM ``i f g o c h``, GRU ``r z n h``, a custom cell's own names) and this module
lays those values out as (batch, steps, width) arrays per layer and direction, in input time order.

    >>> import numpy as np, cellforge as cf
    >>> from cellforge.backends import numpy as ref
    >>> spec = cf.ModelSpec(task="regress", cell="gru", hidden_size=4, input={"num_features": 2})
    >>> t = trace(spec, ref.init_params(spec), np.zeros((3, 5, 2), np.float32), np.array([5, 5, 2]))
    >>> sorted(t.layers["rnn.0.fwd"]), t.hidden().shape
    (['h', 'hn', 'hr', 'hz', 'n', 'r', 'xn', 'xr', 'xz', 'z'], (3, 5, 4))
    >>> bool(np.isnan(t.hidden()[2, 2:]).all())     # padded steps hold no value
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cellforge.backends import numpy as ref
from cellforge.backends.network import directions
from cellforge.backends.numpy.model import reverse_index
from cellforge.cells import get_cell, recording
from cellforge.spec import ModelSpec


@dataclass
class Trace:
    """What the network computed, step by step.

    ``layers["rnn.<layer>.<fwd|bwd>"][name]``: (batch, steps, width) per named value, NaN at padded
    steps; ``outputs``: the reference network's outputs (None for seq2seq, whose encoder is traced);
    ``gates``: the names of the cell's sigmoid gates; ``tokens``: each text input's tokens.
    """

    spec: ModelSpec
    lengths: np.ndarray
    layers: dict[str, dict[str, np.ndarray]]
    outputs: np.ndarray | None
    gates: tuple[str, ...] = ()
    tokens: list[list[str]] | None = None
    prediction: Any = field(default=None, repr=False)

    def hidden(self, layer: int = -1, direction: str | None = None) -> np.ndarray:
        """(batch, steps, hidden) of one direction, or both concatenated [fwd, bwd] when None."""
        layer = layer % self.spec.num_layers
        ds = directions(self.spec) if direction is None else (direction,)
        return np.concatenate([self.layers[f"rnn.{layer}.{d}"]["h"] for d in ds], -1)

    def __repr__(self) -> str:
        names = sorted(next(iter(self.layers.values())))
        return (f"Trace({self.spec.cell} x{self.spec.num_layers}, {len(self.lengths)} sequences, "
                f"{len(self.layers)} layer directions, values {names})")


def trace(spec: ModelSpec, params: dict[str, np.ndarray], x, lengths) -> Trace:
    """Run the reference network on model-ready ``x`` (B, T, F) or token ids (B, T), recording each step."""
    lengths = np.asarray(lengths, np.int64)
    with recording() as steps:
        if spec.task == "seq2seq":
            ref.features(spec, params, x, lengths)
            outputs = None
        else:
            outputs = ref.forward(spec, params, x, lengths)
    cell = get_cell(spec.cell)
    batch, total = len(lengths), np.asarray(x).shape[1]
    valid = np.arange(total)[None, :] < lengths[:, None]
    rows, rev = np.arange(batch)[:, None], reverse_index(lengths, total)
    if len(steps) != spec.num_layers * spec.num_directions * total or any(n != cell.name for n, _ in steps):
        raise RuntimeError(f"trace: expected {spec.num_layers * spec.num_directions * total} steps of cell "
                           f"{cell.name!r}, recorded {len(steps)}")
    layers, it = {}, iter(steps)
    for layer in range(spec.num_layers):
        for d in directions(spec):
            chunk = [next(it)[1] for _ in range(total)]
            values = {}
            for name in chunk[0]:
                v = np.stack([np.asarray(s[name], np.float32) for s in chunk], 1)
                if v.shape[:2] != (batch, total):  # a constant the step kept in a local, not a per-row value
                    continue
                if d == "bwd":  # the backward pass ran each sequence reversed: back to input order
                    v = v[rows, rev]
                v = v.copy()
                v[~valid] = np.nan
                values[name] = v
            layers[f"rnn.{layer}.{d}"] = values
    return Trace(spec, lengths, layers, outputs, cell.gates)


def input_tokens(model, inputs: Any, lengths) -> list[list[str]] | None:
    """Each text input's tokens as the model read them (None for numeric input)."""
    if model.spec.input.type != "text":
        return None
    return [(model.preprocessor.tokenize(text) or ["<unk>"])[: int(n)] for text, n in zip(inputs, lengths)]
