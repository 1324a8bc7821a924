"""The ONNX Runtime backend: a bundle's network as an ONNX graph, run by onnxruntime.

A "net" here holds the spec, the canonical weights and two lazily made sessions: the whole-sequence
graph (``predict``) and, for unidirectional models, the single-step graph (``step``, for streaming
sessions). ``Net.from_file`` runs a graph file instead, such as a bundle's int8 ``model.onnx``.

    >>> from cellforge import ModelSpec
    >>> spec = ModelSpec(task="regress", cell="gru", hidden_size=8, input={"num_features": 3})
    >>> net = build(spec)
    >>> predict(net, np.zeros((2, 5, 3), np.float32), np.array([5, 2])).shape
    (2, 1)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cellforge.backends.network import check_shapes
from cellforge.backends.numpy import model as reference
from cellforge.backends.onnx.graph import sequence_graph, state_names, step_graph
from cellforge.cells import get_cell
from cellforge.spec import ModelSpec


def session(model, threads: int | None = None):
    """An onnxruntime InferenceSession for a ModelProto, serialized bytes or a file path, on the CPU."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # users see cellforge's log, not ORT's graph-optimizer warnings
    if threads:
        opts.intra_op_num_threads = opts.inter_op_num_threads = threads
    data = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


class Net:
    """The ONNX runtime's network: spec, canonical weights and ORT sessions made on first use."""

    threads: int | None = None  # intra-op threads (the serving engine sets its CPU share)

    def __init__(self, spec: ModelSpec, params: dict[str, np.ndarray], graph_file: Path | None = None):
        self.spec, self.params, self.graph_file = spec, params, graph_file
        self._seq = self._step = None

    @property
    def sequence(self):
        if self._seq is None:
            self._seq = session(self.graph_file or sequence_graph(self.spec, self.params), self.threads)
        return self._seq

    @property
    def stepper(self):
        if self._step is None:
            step_file = self.graph_file and self.graph_file.with_name(self.graph_file.stem + ".step.onnx")
            self._step = session(step_file if step_file and step_file.exists() else step_graph(self.spec, self.params),
                                 self.threads)
        return self._step


def build(spec: ModelSpec, params: dict[str, np.ndarray] | None = None) -> Net:
    """The numpy reference's weights (checked, float32; initialised when None) under an ONNX Net."""
    if spec.reconstructs:  # graph.py builds encoder + head graphs; reconstruct's decoder is not among them
        raise ValueError("runtime 'onnx' does not run anomaly's 'reconstruct' network; use 'torch', "
                         "'tensorflow' or 'numpy' (a 'forecast' detector runs on onnx)")
    return Net(spec, reference.build(spec, params).params)


def predict(net: Net, x, lengths) -> np.ndarray:
    dtype = np.int64 if net.spec.input.type == "text" else np.float32
    feed = {"x": np.asarray(x, dtype), "lengths": np.asarray(lengths, np.int64)}
    return net.sequence.run(["outputs"], feed)[0]


def step(net: Net, x, state: list | None = None):
    """Stream steps through the single-step graph, as ``cellforge.backends.numpy.step`` does.

    ``state``: what the previous call returned (a list per layer of the cell's state arrays), or None.
    Returns (outputs (B, t, out), the new state).
    """
    spec = net.spec
    dtype = np.int64 if spec.input.type == "text" else np.float32
    x = np.asarray(x, dtype)
    per = len(get_cell(spec.cell).state)
    names = state_names(spec)
    flat = ([np.zeros((x.shape[0], spec.hidden_size), np.float32)] * len(names) if state is None
            else [np.asarray(s, np.float32) for layer in state for s in layer])
    res = net.stepper.run(["outputs"] + ["state_out" + n[len("state"):] for n in names],
                          {"x": x, **dict(zip(names, flat))})
    new = res[1:]
    return res[0], [tuple(new[i:i + per]) for i in range(0, len(new), per)]


def to_canonical(net: Net) -> dict[str, np.ndarray]:
    return dict(net.params)


def from_canonical(net: Net, params: dict[str, np.ndarray]) -> Net:
    check_shapes(net.spec, params)
    net.params.update({k: np.asarray(v, np.float32) for k, v in params.items()})
    net._seq = net._step = None
    return net
