"""The PyTorch network: native nn.RNN/LSTM/GRU (fused kernels) for built-in cells, a generic
loop for cells of your own, and converters to and from the canonical weights.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from cellforge.anomaly.decoder import reconstruct
from cellforge.anomaly.decoder import shapes as reconstruct_shapes
from cellforge.backends.network import directions, encoder_shapes, param_shapes
from cellforge.cells import get_cell
from cellforge.spec import ModelSpec


def _fused_cell(kind: str, p, x, state):
    """A built-in cell's step with torch's own kernel (nn.GRUCell's and nn.LSTMCell's): the canonical
    layout and gate order are PyTorch's, so the weights go in as they are. -> (h, new state)."""
    if kind == "lstm":
        h, c = torch.lstm_cell(x, state, p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"])
        return h, (h, c)
    fn = torch.gru_cell if kind == "gru" else torch.rnn_tanh_cell
    h = fn(x, state[0], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"])
    return h, (h,)


OPS = SimpleNamespace(
    fused_cell=_fused_cell,  # seq2seq's decoder runs built-in cells with it (cellforge.seq2seq.attentional)
    linear=F.linear,
    sigmoid=torch.sigmoid,
    tanh=torch.tanh,
    relu=torch.relu,
    split=lambda x, n: torch.chunk(x, n, -1),
    concat=lambda xs: torch.cat(xs, -1),
    softmax=lambda x: torch.softmax(x, -1),
    matmul=torch.matmul,
    expand=torch.unsqueeze,
    squeeze=torch.squeeze,
    where=torch.where,
    take=lambda x, index: x[index],
    stack=lambda xs, axis: torch.stack(xs, axis),
    zeros=lambda like, width: like.new_zeros(like.shape[0], width),
)
FUSED = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class CellRNN(nn.Module):
    """Any registered cell, run step by step (used for cells without a fused kernel)."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec, self.cell = spec, get_cell(spec.cell)
        self.params = nn.ParameterDict()
        in_size = spec.rnn_input_size
        bound = 1.0 / np.sqrt(spec.hidden_size)
        for layer in range(spec.num_layers):
            for d in directions(spec):
                for name, shape in self.cell.shapes(in_size, spec.hidden_size).items():
                    w = torch.empty(shape).uniform_(-bound, bound)
                    self.params[f"{layer}_{d}_{name}"] = nn.Parameter(w)
            in_size = spec.hidden_size * spec.num_directions
        self.dropout = nn.Dropout(spec.dropout)

    def forward(self, x, lengths):
        spec, cell = self.spec, self.cell
        batch, steps = x.shape[:2]
        t = torch.arange(steps, device=x.device)[None, :]
        ln = lengths.to(x.device)[:, None]
        mask = t < ln
        rev = torch.where(mask, ln - 1 - t, t)[..., None]
        h = x
        finals = []
        for layer in range(spec.num_layers):
            if layer:
                h = self.dropout(h)
            outs = []
            for d in directions(spec):
                p = {n: self.params[f"{layer}_{d}_{n}"] for n in cell.params}
                inp = h if d == "fwd" else torch.gather(h, 1, rev.expand(-1, -1, h.shape[-1]))
                state = tuple(x.new_zeros(batch, spec.hidden_size) for _ in cell.state)
                seq = []
                for s in range(steps):
                    out, new = cell.step(OPS, p, inp[:, s], state)
                    m = mask[:, s, None]
                    state = tuple(torch.where(m, n, o) for n, o in zip(new, state))
                    seq.append(torch.where(m, out, torch.zeros_like(out)))
                o = torch.stack(seq, 1)
                if d == "bwd":
                    o = torch.gather(o, 1, rev.expand(-1, -1, o.shape[-1]))
                outs.append(o)
                finals.append(state[0])
            h = torch.cat(outs, -1)
        return h, finals


class Net(nn.Module):
    """The network of cellforge.backends.network, in PyTorch. ``forward(x, lengths)``."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        cell = get_cell(spec.cell)
        if spec.input.type == "text":
            self.embedding = nn.Embedding(spec.input.vocab_size, spec.input.embedding_dim)
        self.in_drop, self.head_drop = nn.Dropout(spec.input.dropout), nn.Dropout(spec.head_dropout)  # training only
        self.fused = cell.fused in FUSED
        if self.fused:
            self.rnn = FUSED[cell.fused](spec.rnn_input_size, spec.hidden_size, spec.num_layers, batch_first=True,
                                         bidirectional=spec.bidirectional, dropout=spec.dropout if spec.num_layers > 1 else 0.0)
        else:
            self.rnn = CellRNN(spec)
        # seq2seq: this net is the encoder; its decoder replaces the head (backends/torch/seq2seq.py)
        self.head = None if spec.task == "seq2seq" or spec.reconstructs else nn.Linear(spec.memory_size, spec.output_size)
        if spec.reconstructs and self.fused:
            # anomaly's decoder on the fused kernel: its input is the summary at every step, so one
            # nn.GRU/LSTM call over the repeated summary equals cellforge.anomaly.decoder's step loop
            # (test_anomaly_unit holds it to the numpy reference); the step loop trained ~10x slower
            self.dec_rnn = FUSED[cell.fused](spec.memory_size, spec.hidden_size, 1, batch_first=True)
            self.dec_out = nn.Linear(spec.hidden_size, spec.output_size)
        elif spec.reconstructs:  # a cell of your own: the decoder's step loop, PyTorch's RNN init
            bound = 1.0 / np.sqrt(spec.hidden_size)
            self.dec = nn.ParameterDict({n.replace(".", "__"): nn.Parameter(torch.empty(s).uniform_(-bound, bound))
                                         for n, s in reconstruct_shapes(spec).items()})

    def forward(self, x, lengths):
        seq, summary = self.encode(x, lengths)
        if self.spec.reconstructs and self.fused:
            out, _ = self.dec_rnn(summary[:, None, :].expand(-1, x.shape[1], -1).contiguous())
            return torch.flip(self.dec_out(out), [1])  # decoded last step first: back in the input's order
        if self.spec.reconstructs:
            p = {n.replace("__", "."): v for n, v in self.dec.items()}
            return reconstruct(OPS, self.spec, p, summary, x.shape[1])
        return self.head(self.head_drop(seq if self.spec.per_step else summary))

    def encode(self, x, lengths):
        """The top layer's outputs (B, T, H*dirs), zero at padding, and the summary (B, H*dirs)."""
        spec = self.spec
        h = self.in_drop(self.embedding(x) if spec.input.type == "text" else x)
        steps = h.shape[1]
        if not self.fused:
            seq, finals = self.rnn(h, lengths)
            top = finals[-spec.num_directions:]
        else:
            full = bool((lengths == steps).all())  # skip packing when nothing is padded (faster)
            if full:
                seq, state = self.rnn(h)
            elif spec.num_directions == 1:
                # one direction: padding comes after a sequence's steps, so the outputs at its own steps
                # are exact; the top layer's final state is its output at the last one. torch's packed
                # kernel runs a step at a time on a CPU: 24 s vs 3 s an epoch (LSTM h=128, lengths
                # 10-400, benchmarks/train_throughput.py --only bucketing)
                seq, _ = self.rnn(h)
                n = lengths.to(seq.device)
                summary = seq[torch.arange(seq.shape[0], device=seq.device), (n - 1).clamp(min=0)]
                mask = torch.arange(steps, device=seq.device)[None, :] < n[:, None]
                return seq * mask[..., None], summary
            else:
                packed = pack_padded_sequence(h, lengths.cpu(), batch_first=True, enforce_sorted=False)
                seq, state = self.rnn(packed)
                seq, _ = pad_packed_sequence(seq, batch_first=True, total_length=steps)
            h_n = state[0] if isinstance(state, tuple) else state
            top = list(h_n[-spec.num_directions:])
        return seq, torch.cat(top, -1)


# canonical <-> torch names -----------------------------------------------------
def torch_name(net: Net, canonical: str) -> str:
    """The name in ``net``'s state dict of a canonical weight of its encoder or head."""
    parts = canonical.split(".")
    if parts[0] == "decoder" and not net.fused:  # anomaly's reconstruct decoder, a cell of your own
        return "dec." + canonical.replace(".", "__")
    if parts[0] == "decoder":  # decoder.rnn.0.w_ih -> dec_rnn.weight_ih_l0; decoder.out.* -> dec_out.*
        if parts[1] == "out":
            return f"dec_out.{parts[2]}"
        kind, which = parts[3].split("_")
        return f"dec_rnn.{'weight' if kind == 'w' else 'bias'}_{which}_l0"
    if parts[0] != "rnn":
        return canonical
    layer, d, param = parts[1], parts[2], parts[3]
    if not net.fused:
        return f"rnn.params.{layer}_{d}_{param}"
    kind, which = param.split("_")  # w_ih -> weight_ih
    return f"rnn.{'weight' if kind == 'w' else 'bias'}_{which}_l{layer}{'_reverse' if d == 'bwd' else ''}"


def to_canonical(net: Net) -> dict[str, np.ndarray]:
    inner = _unwrap(net)
    state = inner.state_dict()
    names = encoder_shapes(inner.spec) if inner.spec.task == "seq2seq" else param_shapes(inner.spec)
    return {k: state[torch_name(inner, k)].detach().cpu().numpy().astype(np.float32) for k in names}


def from_canonical(net: Net, params: dict[str, np.ndarray]) -> Net:
    inner = _unwrap(net)
    state = inner.state_dict()
    for k, v in params.items():
        name = torch_name(inner, k)
        if tuple(state[name].shape) != tuple(v.shape):
            raise ValueError(f"weight {k}: expected shape {tuple(state[name].shape)}, got {tuple(v.shape)}")
        state[name] = torch.from_numpy(np.asarray(v, np.float32))
    inner.load_state_dict(state)
    return net


def _unwrap(net):
    return net.module if hasattr(net, "module") else net


def build(spec: ModelSpec, params: dict[str, np.ndarray] | None = None) -> Net:
    net = Net(spec)
    if params is not None:
        from_canonical(net, params)
    return net.eval()


def full_float32() -> None:
    """Keep cuDNN's RNN kernels in IEEE float32. PyTorch lets them use TF32 by default on Ampere and
    newer GPUs, which moved our outputs by up to 2e-3 from the CPU/numpy reference on an H100; a
    bundle must answer the same on every device (and match Keras, where TF32 is off too)."""
    torch.backends.cudnn.allow_tf32 = False


def to_cuda(net: Net) -> Net:
    full_float32()
    return net.cuda()


def predict(net: Net, x: np.ndarray, lengths: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Network outputs for numpy inputs, in float32 numpy."""
    inner = _unwrap(net)
    device = next(inner.parameters()).device
    outs = []
    inner.eval()
    with torch.inference_mode():
        for s in range(0, len(x), batch_size):
            xb = torch.as_tensor(x[s: s + batch_size], device=device)
            lb = torch.as_tensor(lengths[s: s + batch_size])
            outs.append(inner(xb, lb).float().cpu().numpy())
    return np.concatenate(outs) if outs else np.zeros((0, *x.shape[1:-1][:int(inner.spec.reconstructs)],
                                                       inner.spec.output_size), np.float32)
