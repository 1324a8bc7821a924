"""Recurrent cells, each written once against a tiny ops namespace.

A cell's ``step(op, p, x, state)`` takes one time step ``x`` (batch, in) and the
state tuple, and returns ``(h, new_state)``. ``op`` is a backend's ops namespace
(numpy, torch or keras); arrays support ``+ - *`` natively. ``p`` maps the
cell's parameter names to arrays in canonical layout:

- ``w_ih`` (gates * hidden, input), ``w_hh`` (gates * hidden, hidden),
  ``b_ih`` and ``b_hh`` (gates * hidden) — ``y = x @ w.T + b``.
- Gate order is PyTorch's: LSTM ``i, f, g, o``; GRU ``r, z, n`` with the reset
  gate applied after the recurrent matmul (Keras' ``reset_after=True``).

Register your own cell with :func:`register_cell`; see ``Cell`` for an example.

Tracing (:func:`recording`) shows a step's intermediate values by the names the cell gives them
(its local variables), so write a gate you want to see as its own name, e.g. ``f = op.sigmoid(...)``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Cell:
    """A recurrent cell defined once for every backend.

    Example (the Elman cell, ``h = tanh(W_xh x + W_hh h + b)``):

        >>> def elman(op, p, x, state):
        ...     (h,) = state
        ...     h = op.tanh(op.linear(x, p["w_ih"], p["b_ih"]) + op.linear(h, p["w_hh"]))
        ...     return h, (h,)
        >>> cell = Cell("elman", elman, params={"w_ih": ("H", "I"), "w_hh": ("H", "H"), "b_ih": ("H",)})
    """

    name: str
    step: Callable[..., Any]
    # parameter name -> shape in symbols: "H" hidden, "I" input, or "<k>H" (k gates)
    params: dict[str, tuple[str, ...]]
    state: tuple[str, ...] = ("h",)  # state tensors, each (batch, hidden); h comes first
    fused: str | None = None  # the framework's native layer kind, when the cell is built in
    doc: str = field(default="", compare=False)
    gates: tuple[str, ...] = ()  # names of the step's sigmoid gates, for tracing plots (gate saturation)

    def shapes(self, input_size: int, hidden: int) -> dict[str, tuple[int, ...]]:
        def dim(sym: str) -> int:
            if sym == "I":
                return input_size
            if sym.endswith("H"):
                return int(sym[:-1] or 1) * hidden
            raise ValueError(f"cell {self.name!r}: unknown dimension symbol {sym!r}; use 'I', 'H' or '<k>H'")

        return {name: tuple(dim(s) for s in shape) for name, shape in self.params.items()}


def _gates(k: int) -> dict[str, tuple[str, ...]]:
    g = f"{k}H" if k > 1 else "H"
    return {"w_ih": (g, "I"), "w_hh": (g, "H"), "b_ih": (g,), "b_hh": (g,)}


def rnn_step(op, p, x, state):
    (h,) = state
    h = op.tanh(op.linear(x, p["w_ih"], p["b_ih"]) + op.linear(h, p["w_hh"], p["b_hh"]))
    return h, (h,)


def lstm_step(op, p, x, state):
    h, c = state
    gates = op.linear(x, p["w_ih"], p["b_ih"]) + op.linear(h, p["w_hh"], p["b_hh"])
    i, f, g, o = op.split(gates, 4)
    i, f, g, o = op.sigmoid(i), op.sigmoid(f), op.tanh(g), op.sigmoid(o)  # named: tracing records them
    c = f * c + i * g
    h = o * op.tanh(c)
    return h, (h, c)


def gru_step(op, p, x, state):
    (h,) = state
    xr, xz, xn = op.split(op.linear(x, p["w_ih"], p["b_ih"]), 3)
    hr, hz, hn = op.split(op.linear(h, p["w_hh"], p["b_hh"]), 3)
    r = op.sigmoid(xr + hr)
    z = op.sigmoid(xz + hz)
    n = op.tanh(xn + r * hn)
    h = (1.0 - z) * n + z * h
    return h, (h,)


CELLS: dict[str, Cell] = {
    "rnn": Cell("rnn", rnn_step, _gates(1), ("h",), fused="rnn", doc="Elman RNN with tanh"),
    "lstm": Cell("lstm", lstm_step, _gates(4), ("h", "c"), fused="lstm", doc="LSTM (Hochreiter & Schmidhuber)",
                 gates=("i", "f", "o")),
    "gru": Cell("gru", gru_step, _gates(3), ("h",), fused="gru", doc="GRU, reset gate after the matmul",
                gates=("r", "z")),
}


def get_cell(name: str) -> Cell:
    try:
        return CELLS[name]
    except KeyError:
        raise ValueError(f"unknown cell {name!r}; known cells: {sorted(CELLS)}") from None


def register_cell(cell: Cell, *, overwrite: bool = False) -> Cell:
    """Make ``cell`` usable by name in a ModelSpec (``cell: <name>``)."""
    if cell.name in CELLS and not overwrite and CELLS[cell.name] is not cell:
        raise ValueError(f"a cell named {cell.name!r} is already registered; pass overwrite=True to replace it")
    if "h" != cell.state[0]:
        raise ValueError(f"cell {cell.name!r}: state must start with 'h', got {cell.state}")
    cell.shapes(1, 1)  # fail now on a bad shape symbol
    CELLS[cell.name] = cell
    return cell


BUILTIN = frozenset(CELLS)


def custom_cells() -> dict[str, Cell]:
    """Cells registered in this process, to ship to Ray workers.

    Ray pickles a cell written in ``__main__`` (a notebook) by value; a cell from a module of
    your own would be pickled by reference, and a worker that cannot import that module would
    fail, so such modules are registered to be pickled by value too.
    """
    cells = {name: cell for name, cell in CELLS.items() if name not in BUILTIN}
    for cell in cells.values():
        _pickle_by_value(cell.step)
    return cells


def _pickle_by_value(fn: Callable[..., Any]) -> None:
    import sys

    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    if module is None or module.__name__ == "__main__" or module.__name__.split(".")[0] in ("cellforge", "builtins"):
        return
    try:
        from ray import cloudpickle
    except ImportError:  # no Ray in this process: nothing will be shipped
        return
    cloudpickle.register_pickle_by_value(module)


def load_cells(cells: dict[str, Cell]) -> None:
    """Register cells shipped from the driver (on a Ray worker)."""
    for cell in cells.values():
        register_cell(cell, overwrite=True)


@contextlib.contextmanager
def recording() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Record every registered cell's steps run in this thread inside the block: a list, in call
    order, of ``(cell name, {local name: array})`` with the values each step named (its arguments
    left out), taken as the step returns.

    Nothing changes in the cells or the backends: a profile hook (``sys.setprofile``) is set only
    for the block, so running a cell outside it costs nothing extra. A step that is not a plain
    Python function (a callable object, a partial) is not recorded.

        >>> import numpy as np
        >>> from cellforge.backends.numpy import OPS
        >>> p = {"w_ih": np.ones((8, 1)), "w_hh": np.zeros((8, 2)), "b_ih": np.zeros(8), "b_hh": np.zeros(8)}
        >>> with recording() as steps:
        ...     h, _ = lstm_step(OPS, p, np.zeros((1, 1)), (np.zeros((1, 2)), np.zeros((1, 2))))
        >>> steps[0][0], sorted(steps[0][1])
        ('lstm', ['c', 'f', 'g', 'gates', 'h', 'i', 'o'])
        >>> steps[0][1]["f"]
        array([[0.5, 0.5]])
    """
    codes = {c.step.__code__: c.name for c in CELLS.values() if hasattr(c.step, "__code__")}
    steps: list[tuple[str, dict[str, Any]]] = []
    previous = sys.getprofile()

    def hook(frame, event, arg):
        if event == "return" and frame.f_code in codes:
            code = frame.f_code
            args = code.co_varnames[: code.co_argcount]
            steps.append((codes[code], {k: v for k, v in frame.f_locals.items()
                                        if k not in args and hasattr(v, "shape")}))

    sys.setprofile(hook)
    try:
        yield steps
    finally:
        sys.setprofile(previous)
