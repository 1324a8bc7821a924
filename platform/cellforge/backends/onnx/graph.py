"""The network as an ONNX graph, built from the spec and the canonical weights.

Two graphs per model:

- ``sequence_graph``: inputs ``x`` (batch, time, features) float32 — token ids (batch, time) int64
  for text — and ``lengths`` (batch,) int64; output ``outputs`` (batch, out), or (batch, time,
  classes) for tag. Batch and time are dynamic; padding past ``lengths`` is ignored.
- ``step_graph`` (unidirectional): inputs ``x`` (batch, t, features) for t >= 1 new steps and the
  recurrent state ``state.<layer>.<h|c|...>`` (batch, hidden) each; outputs ``outputs`` (batch, t,
  out) — step i's answer for the sequence so far — and ``state_out.<layer>.<name>``.

Built-in cells become ONNX's own RNN/LSTM/GRU operators (``sequence_lens`` handles padding, both
directions), which ONNX Runtime runs fused and its quantizer turns into int8 kernels. A cell of
your own becomes a ``Scan`` whose body is the cell's ``step`` run against :data:`OPS`-like graph
ops (:class:`Ops`) — the same definition every other backend runs.

Why not ``torch.onnx.export`` of the torch net: with torch 2.13, the TorchScript exporter crashes on
its packed LSTM (``vector::_M_range_check``) and the dynamo exporter stops in ``torch.export`` at the
data-dependent ``(lengths == steps).all()`` / ``pack_padded_sequence``; without packing, padding
would leak into the state, and dynamo unrolls recurrent loops over a fixed time length.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cellforge.backends.network import directions
from cellforge.cells import get_cell
from cellforge.spec import ModelSpec

OPSET = 18
# canonical gate order (PyTorch's) -> ONNX's: LSTM i,f,g,o -> i,o,f,c; GRU r,z,n -> z,r,h
GATE_ORDER = {"lstm": [0, 3, 1, 2], "gru": [1, 0, 2], "rnn": [0]}
NATIVE = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}


class V:
    """A value in the graph being built; ``+ - *`` with values or Python numbers add nodes."""

    def __init__(self, g: Builder, name: str):
        self.g, self.name = g, name

    def _bin(self, op, other, swap=False):
        other = other if isinstance(other, V) else self.g.const(np.float32(other))
        a, b = (other, self) if swap else (self, other)
        g = other.g if other.g is not other.g.root else self.g  # a Scan body's value puts the node in the body
        return g.node(op, [a, b])

    def __add__(self, o): return self._bin("Add", o)
    def __radd__(self, o): return self._bin("Add", o, True)
    def __sub__(self, o): return self._bin("Sub", o)
    def __rsub__(self, o): return self._bin("Sub", o, True)
    def __mul__(self, o): return self._bin("Mul", o)
    def __rmul__(self, o): return self._bin("Mul", o, True)
    def __truediv__(self, o): return self._bin("Div", o)
    def __neg__(self): return self.g.node("Neg", [self])


class Builder:
    """Nodes and initializers of one graph (a Scan body shares its parent's initializers)."""

    def __init__(self, parent: Builder | None = None):
        self.nodes: list[onnx.NodeProto] = []
        self.root = parent.root if parent else self
        if parent is None:
            self.inits: dict[str, onnx.TensorProto] = {}
            self.consts: dict[str, np.ndarray] = {}
            self.count = 0

    def fresh(self, hint: str) -> str:
        self.root.count += 1
        return f"{hint}_{self.root.count}"

    def init(self, name: str, value: np.ndarray) -> V:
        r = self.root
        if name not in r.inits:
            r.inits[name] = numpy_helper.from_array(np.ascontiguousarray(value), name)
            r.consts[name] = value
        return V(self, name)

    def const(self, value) -> V:
        value = np.asarray(value)
        return self.init(f"const_{value.dtype}_{'x'.join(map(str, value.shape))}_{value.tobytes().hex()[:32]}", value)

    def node(self, op: str, inputs, outputs: int = 1, **attrs):
        names = [self.fresh(op.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op, [i.name if isinstance(i, V) else i for i in inputs], names, **attrs))
        vs = [V(self, n) for n in names]
        return vs[0] if outputs == 1 else vs


class Ops:
    """The ops namespace of :mod:`cellforge.cells` (see the numpy backend's ``OPS``), building nodes."""

    def __init__(self, g: Builder):
        self.g = g

    def linear(self, x, w, b=None):
        g = self.g
        const = g.root.consts.get(w.name)  # a weight: transpose it once, so the quantizer sees MatMul(x, W)
        wt = g.init(w.name + ".T", const.T) if const is not None else g.node("Transpose", [w], perm=[1, 0])
        y = g.node("MatMul", [x, wt])
        return y if b is None else g.node("Add", [y, b])

    def sigmoid(self, x): return self.g.node("Sigmoid", [x])
    def tanh(self, x): return self.g.node("Tanh", [x])
    def relu(self, x): return self.g.node("Relu", [x])
    def split(self, x, n): return self.g.node("Split", [x], outputs=n, axis=-1, num_outputs=n)
    def concat(self, xs): return self.g.node("Concat", list(xs), axis=-1)
    def softmax(self, x): return self.g.node("Softmax", [x], axis=-1)
    def matmul(self, a, b): return self.g.node("MatMul", [a, b])
    def expand(self, x, axis): return self.g.node("Unsqueeze", [x, self.g.const(np.array([axis], np.int64))])
    def squeeze(self, x, axis): return self.g.node("Squeeze", [x, self.g.const(np.array([axis], np.int64))])
    def where(self, c, x, y): return self.g.node("Where", [c, x, y])
    def take(self, x, index): return self.g.node("Gather", [x, index], axis=0)
    def stack(self, xs, axis): return self.g.node("Concat", [self.expand(x, axis) for x in xs], axis=axis)

    def zeros(self, like, width):
        g = self.g
        rows = g.node("Slice", [g.node("Shape", [like]), g.const(np.array([0], np.int64)), g.const(np.array([1], np.int64))])
        shape = g.node("Concat", [rows, g.const(np.array([width], np.int64))], axis=0)
        return g.node("ConstantOfShape", [shape], value=numpy_helper.from_array(np.zeros(1, np.float32)))


def _i64(g: Builder, *v: int) -> V:
    return g.const(np.array(v, np.int64))


def _layer(p: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix):]: v for k, v in p.items() if k.startswith(prefix)}


def _native(g: Builder, spec: ModelSpec, params, layer: int, h: V, lengths32: V | None, init_state=None):
    """One layer through ONNX's RNN/LSTM/GRU: (B, T, I) -> (B, T, H*dirs), final states (dirs, B, H) each."""
    cell, H = get_cell(spec.cell), spec.hidden_size
    dirs = directions(spec)
    order = GATE_ORDER[cell.fused]

    def gates(w):  # reorder gate blocks along axis 0
        return np.concatenate([np.split(w, len(order))[i] for i in order])

    ps = [_layer(params, f"rnn.{layer}.{d}.") for d in dirs]
    W = g.init(f"rnn.{layer}.W", np.stack([gates(p["w_ih"]) for p in ps]))
    R = g.init(f"rnn.{layer}.R", np.stack([gates(p["w_hh"]) for p in ps]))
    B = g.init(f"rnn.{layer}.B", np.stack([np.concatenate([gates(p["b_ih"]), gates(p["b_hh"])]) for p in ps]))
    xt = g.node("Transpose", [h], perm=[1, 0, 2])  # time-major, ONNX's default layout
    inputs = [xt, W, R, B, lengths32 if lengths32 is not None else ""]
    if init_state is not None:
        inputs += [g.node("Unsqueeze", [s, _i64(g, 0)]) for s in init_state]
    attrs = {"hidden_size": H, "direction": "bidirectional" if spec.bidirectional else "forward"}
    if cell.fused == "gru":
        attrs["linear_before_reset"] = 1  # PyTorch's (and Keras' reset_after) GRU
    outs = g.node(NATIVE[cell.fused], inputs, outputs=1 + len(cell.state), **attrs)
    y = g.node("Transpose", [outs[0]], perm=[2, 0, 1, 3])  # (T, dirs, B, H) -> (B, T, dirs, H)
    y = g.node("Reshape", [y, _i64(g, 0, 0, -1)])
    return y, outs[1:]


def _scan(g: Builder, spec: ModelSpec, params, layer: int, d: str, h: V, mask: V | None, init_state):
    """One direction of one layer of any cell as a Scan over time: (B, T, I) -> (B, T, H), final state."""
    cell = get_cell(spec.cell)
    body = Builder(g)
    ops = Ops(body)
    p = {k: g.init(f"rnn.{layer}.{d}.{k}", v) for k, v in _layer(params, f"rnn.{layer}.{d}.").items()}
    state_in = [V(body, body.fresh(f"state_{s}")) for s in cell.state]
    x_t = V(body, body.fresh("x_t"))
    m_t = V(body, body.fresh("m_t")) if mask is not None else None
    out, new = cell.step(ops, p, x_t, tuple(state_in))
    if m_t is not None:  # padded steps keep the state and output zeros
        new = [body.node("Where", [m_t, n, s]) for n, s in zip(new, state_in)]
        out = body.node("Where", [m_t, out, g.const(np.float32(0))])
    outs = [body.node("Identity", [n]) for n in new] + [body.node("Identity", [out])]
    f32 = TensorProto.FLOAT
    ins = [helper.make_tensor_value_info(s.name, f32, None) for s in state_in]
    ins.append(helper.make_tensor_value_info(x_t.name, f32, None))
    if m_t is not None:
        ins.append(helper.make_tensor_value_info(m_t.name, TensorProto.BOOL, None))
    graph = helper.make_graph(body.nodes, body.fresh("body"), ins,
                              [helper.make_tensor_value_info(o.name, f32, None) for o in outs])
    n_scan = 1 + (mask is not None)
    res = g.node("Scan", [*init_state, h, *([mask] if mask is not None else [])], outputs=len(outs), body=graph,
                 num_scan_inputs=n_scan, scan_input_axes=[1] * n_scan, scan_output_axes=[1])
    return res[-1], res[:-1]


def _encoder_input(g: Builder, spec: ModelSpec, params, x: V) -> V:
    if spec.input.type == "text":
        return g.node("Gather", [g.init("embedding.weight", params["embedding.weight"]), x], axis=0)
    return x


def _head(g: Builder, params, z: V) -> V:
    return Ops(g).linear(z, g.init("head.weight", params["head.weight"]), g.init("head.bias", params["head.bias"]))


def _x_info(spec: ModelSpec, time: str = "time"):
    if spec.input.type == "text":
        return helper.make_tensor_value_info("x", TensorProto.INT64, ["batch", time])
    return helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", time, spec.input.num_features])


def _check(spec: ModelSpec, params) -> None:
    if spec.task == "seq2seq":
        raise ValueError("task 'seq2seq' cannot be exported to ONNX yet: its decoder searches (greedy/beam) "
                         "in Python; export a classify, regress, forecast or tag model")


def _model(g: Builder, inputs, outputs, name: str) -> onnx.ModelProto:
    graph = helper.make_graph(g.nodes, name, inputs, outputs, initializer=list(g.inits.values()))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="cellforge")
    model.ir_version = 9  # what onnxruntime 1.17+ reads
    onnx.checker.check_model(model)
    return model


def sequence_graph(spec: ModelSpec, params: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The whole-sequence graph: (x, lengths) -> outputs, as the numpy reference's ``forward``."""
    _check(spec, params)
    g = Builder()
    cell = get_cell(spec.cell)
    x, lengths = V(g, "x"), V(g, "lengths")
    h = _encoder_input(g, spec, params, x)
    steps = g.node("Gather", [g.node("Shape", [h]), _i64(g, 1)], axis=0)
    t = g.node("Range", [g.const(np.int64(0)), steps, g.const(np.int64(1))])
    ln = g.node("Unsqueeze", [lengths, _i64(g, 1)])  # (B, 1)
    mask = g.node("Less", [g.node("Unsqueeze", [t, _i64(g, 0)]), ln])  # (B, T)
    if cell.fused in NATIVE:
        lengths32 = g.node("Cast", [lengths], to=TensorProto.INT32)
        for layer in range(spec.num_layers):
            h, finals = _native(g, spec, params, layer, h, lengths32)
        # final h: (dirs, B, H) -> (B, dirs*H), i.e. [h_fwd at the last valid step, h_bwd at step 0]
        summary = g.node("Reshape", [g.node("Transpose", [finals[0]], perm=[1, 0, 2]), _i64(g, 0, -1)])
    else:
        rev = g.node("Where", [mask, g.node("Sub", [g.node("Sub", [ln, _i64(g, 1)]), t]),
                               g.node("Expand", [t, g.node("Shape", [mask])])])  # reverses each valid part
        rev = g.node("Unsqueeze", [rev, _i64(g, 2)])  # (B, T, 1) for GatherND over the batch
        m3 = g.node("Unsqueeze", [mask, _i64(g, 2)])
        ops = Ops(g)
        for layer in range(spec.num_layers):
            outs, finals = [], []
            for d in directions(spec):
                inp = h if d == "fwd" else g.node("GatherND", [h, rev], batch_dims=1)
                init = [ops.zeros(h, spec.hidden_size) for _ in cell.state]
                o, state = _scan(g, spec, params, layer, d, inp, m3, init)
                outs.append(o if d == "fwd" else g.node("GatherND", [o, rev], batch_dims=1))
                finals.append(state[0])
            h = outs[0] if len(outs) == 1 else ops.concat(outs)
        summary = finals[0] if len(finals) == 1 else ops.concat(finals)
    y = _head(g, params, h if spec.per_step else summary)
    g.nodes.append(helper.make_node("Identity", [y.name], ["outputs"]))
    out_shape = ["batch", "time", spec.output_size] if spec.per_step else ["batch", spec.output_size]
    return _model(g, [_x_info(spec), helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch"])],
                  [helper.make_tensor_value_info("outputs", TensorProto.FLOAT, out_shape)], "cellforge_sequence")


def state_names(spec: ModelSpec) -> list[str]:
    """The step graph's state inputs, layer by layer: ``state.<layer>.<name>`` (outputs: ``state_out...``)."""
    return [f"state.{layer}.{s}" for layer in range(spec.num_layers) for s in get_cell(spec.cell).state]


def step_graph(spec: ModelSpec, params: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The single-step graph: (x (B, t, F), state) -> (outputs (B, t, out), state'), as numpy's ``step``."""
    _check(spec, params)
    if spec.bidirectional:
        raise ValueError("a bidirectional model cannot be exported as a single-step graph: its backward direction "
                         "reads the whole sequence; export it without --step (whole sequences)")
    g = Builder()
    cell = get_cell(spec.cell)
    names = state_names(spec)
    per = len(cell.state)
    h = _encoder_input(g, spec, params, V(g, "x"))
    new_state = []
    for layer in range(spec.num_layers):
        init = [V(g, n) for n in names[layer * per:(layer + 1) * per]]
        if cell.fused in NATIVE:
            h, finals = _native(g, spec, params, layer, h, None, init)
            finals = [g.node("Squeeze", [f, _i64(g, 0)]) for f in finals]
        else:
            h, finals = _scan(g, spec, params, layer, "fwd", h, None, init)
        new_state += finals
    y = _head(g, params, h)
    g.nodes.append(helper.make_node("Identity", [y.name], ["outputs"]))
    for n, v in zip(names, new_state):
        g.nodes.append(helper.make_node("Identity", [v.name], ["state_out" + n[len("state"):]]))
    f32 = TensorProto.FLOAT
    ins = [_x_info(spec, "steps")] + [helper.make_tensor_value_info(n, f32, ["batch", spec.hidden_size]) for n in names]
    outs = [helper.make_tensor_value_info("outputs", f32, ["batch", "steps", spec.output_size])]
    outs += [helper.make_tensor_value_info("state_out" + n[len("state"):], f32, ["batch", spec.hidden_size])
             for n in names]
    return _model(g, ins, outs, "cellforge_step")
