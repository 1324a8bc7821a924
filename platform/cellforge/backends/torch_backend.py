"""PyTorch backend: native nn.RNN/LSTM/GRU (fused kernels) for built-in cells, a generic
loop for cells of your own, converters to and from the canonical weights, and the
per-worker ``Fitter`` that train.py drives.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from cellforge.backends import directions
from cellforge.cells import get_cell
from cellforge.loop import LRSchedule, WorkerInfo
from cellforge.spec import ModelSpec

OPS = SimpleNamespace(
    linear=F.linear,
    sigmoid=torch.sigmoid,
    tanh=torch.tanh,
    relu=torch.relu,
    split=lambda x, n: torch.chunk(x, n, -1),
    concat=lambda xs: torch.cat(xs, -1),
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
    """The network of backends/__init__.py, in PyTorch. ``forward(x, lengths)``."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        cell = get_cell(spec.cell)
        if spec.input.type == "text":
            self.embedding = nn.Embedding(spec.input.vocab_size, spec.input.embedding_dim)
        self.fused = cell.fused in FUSED
        if self.fused:
            self.rnn = FUSED[cell.fused](spec.rnn_input_size, spec.hidden_size, spec.num_layers, batch_first=True,
                                         bidirectional=spec.bidirectional, dropout=spec.dropout if spec.num_layers > 1 else 0.0)
        else:
            self.rnn = CellRNN(spec)
        self.head = nn.Linear(spec.hidden_size * spec.num_directions, spec.output_size)

    def forward(self, x, lengths):
        spec = self.spec
        h = self.embedding(x) if spec.input.type == "text" else x
        steps = h.shape[1]
        if not self.fused:
            seq, finals = self.rnn(h, lengths)
            top = finals[-spec.num_directions:]
        else:
            full = bool((lengths == steps).all())  # skip packing when nothing is padded (faster)
            if full:
                seq, state = self.rnn(h)
            else:
                packed = pack_padded_sequence(h, lengths.cpu(), batch_first=True, enforce_sorted=False)
                seq, state = self.rnn(packed)
                seq, _ = pad_packed_sequence(seq, batch_first=True, total_length=steps)
            h_n = state[0] if isinstance(state, tuple) else state
            top = list(h_n[-spec.num_directions:])
        if spec.task == "tag":
            return self.head(seq)
        return self.head(torch.cat(top, -1))


# canonical <-> torch names -----------------------------------------------------
def _torch_name(net: Net, canonical: str) -> str:
    parts = canonical.split(".")
    if parts[0] != "rnn":
        return canonical
    layer, d, param = parts[1], parts[2], parts[3]
    if not net.fused:
        return f"rnn.params.{layer}_{d}_{param}"
    kind, which = param.split("_")  # w_ih -> weight_ih
    return f"rnn.{'weight' if kind == 'w' else 'bias'}_{which}_l{layer}{'_reverse' if d == 'bwd' else ''}"


def to_canonical(net: Net) -> dict[str, np.ndarray]:
    from cellforge.backends import param_shapes

    state = _unwrap(net).state_dict()
    return {k: state[_torch_name(_unwrap(net), k)].detach().cpu().numpy().astype(np.float32)
            for k in param_shapes(_unwrap(net).spec)}


def from_canonical(net: Net, params: dict[str, np.ndarray]) -> Net:
    inner = _unwrap(net)
    state = inner.state_dict()
    for k, v in params.items():
        name = _torch_name(inner, k)
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
    return np.concatenate(outs) if outs else np.zeros((0, inner.spec.output_size), np.float32)


# training ------------------------------------------------------------------------
def loss_fn(spec: ModelSpec, out, y):
    if spec.task in ("classify", "tag"):
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), ignore_index=-100)
    return F.mse_loss(out, y)


def penalty(spec: ModelSpec, net) -> torch.Tensor | float:
    """L1/L2 on weight matrices (not biases), added to the loss."""
    t = spec.training
    if not (t.l1 or t.l2):
        return 0.0
    ws = [p for p in net.parameters() if p.dim() > 1]
    return t.l1 * sum(w.abs().sum() for w in ws) + t.l2 * sum((w * w).sum() for w in ws)


def make_optimizer(spec: ModelSpec, params):
    t = spec.training
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)


class Fitter:
    """One worker's model, optimizer and schedule; train.py drives it epoch by epoch."""

    def __init__(self, spec: ModelSpec, info: WorkerInfo):
        import ray.train.torch as rt

        # share the node's cores between its workers (Ray sets OMP_NUM_THREADS=1 otherwise)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, info.local_world)))
        torch.manual_seed(spec.training.seed)
        self.spec, self.world = spec, info.world
        self.device = rt.get_device() if info.use_gpu else torch.device("cpu")
        if info.use_gpu:
            full_float32()
        # prepare_model moves to the device and wraps in DDP when there is more than one worker
        self.net = rt.prepare_model(Net(spec)) if info.world > 1 or info.use_gpu else Net(spec)
        self.opt = make_optimizer(spec, self.net.parameters())
        self.lr = LRSchedule(spec)

    def train_epoch(self, epoch: int, batches) -> tuple[float, int]:
        """One pass over this rank's batches (x, lengths, y numpy); returns (loss sum, examples)."""
        self.net.train()
        for g in self.opt.param_groups:
            g["lr"] = self.lr.value
        clip = self.spec.training.clip_norm
        total, count = torch.zeros((), dtype=torch.float64), 0
        for xb, lb, yb in batches:
            xb = torch.as_tensor(xb, device=self.device)
            yb = torch.as_tensor(yb, device=self.device)
            lb = torch.as_tensor(lb)
            out = self.net(xb, lb)
            loss = loss_fn(self.spec, out, yb)
            full = loss + penalty(self.spec, self.net)
            self.opt.zero_grad(set_to_none=True)
            full.backward()
            if clip:
                nn.utils.clip_grad_norm_(self.net.parameters(), clip)
            self.opt.step()
            total += loss.detach().double().cpu() * len(xb)
            count += len(xb)
        return float(total), count

    def predict(self, x, lengths) -> np.ndarray:
        return predict(self.net, x, lengths)

    def allreduce(self, v: np.ndarray) -> np.ndarray:
        if self.world == 1:
            return v
        import torch.distributed as dist

        t = torch.as_tensor(v, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.cpu().numpy()

    def get_weights(self) -> dict[str, np.ndarray]:
        return to_canonical(self.net)

    def set_weights(self, params: dict[str, np.ndarray]) -> None:
        from_canonical(self.net, params)

    def save_state(self, d: Path) -> None:
        """Optimizer and schedule state: tensors to safetensors, the rest to JSON (no pickle)."""
        from safetensors.numpy import save_file

        sd = self.opt.state_dict()
        tensors, scalars = {}, {}
        for pid, st in sd["state"].items():
            for k, v in st.items():
                if torch.is_tensor(v) and v.dim() > 0:
                    tensors[f"{pid}.{k}"] = v.detach().cpu().numpy()
                else:
                    scalars[f"{pid}.{k}"] = float(v)
        save_file(tensors, str(d / "optimizer.safetensors"))
        (d / "optimizer.json").write_text(json.dumps({"scalars": scalars, "groups": sd["param_groups"],
                                                      "lr": self.lr.state()}))

    def load_state(self, d: Path) -> None:
        from safetensors.numpy import load_file

        tensors = load_file(str(d / "optimizer.safetensors"))
        meta = json.loads((d / "optimizer.json").read_text())
        state: dict[int, dict] = {}
        for key, v in tensors.items():
            pid, k = key.split(".", 1)
            state.setdefault(int(pid), {})[k] = torch.from_numpy(v).to(self.device)
        for key, v in meta["scalars"].items():
            pid, k = key.split(".", 1)
            state.setdefault(int(pid), {})[k] = torch.tensor(v)
        self.opt.load_state_dict({"state": state, "param_groups": meta["groups"]})
        self.lr.load(meta["lr"])
