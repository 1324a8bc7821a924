"""seq2seq in PyTorch: this backend's encoder (fused cuDNN/oneDNN RNNs for built-in cells), then
the decoder of :mod:`cellforge.seq2seq` with torch's ops. The decoder's weights keep their
canonical names (dots become ``__`` in the state dict).

    >>> import numpy as np
    >>> from cellforge import ModelSpec
    >>> spec = ModelSpec(task="seq2seq", cell="gru", hidden_size=4, input={"type": "text", "vocab_size": 7},
    ...                  target={"vocab_size": 6})
    >>> logits(build(spec), np.array([[3, 4], [5, 0]]), np.array([2, 1]), np.array([[2], [2]])).shape
    (2, 1, 6)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cellforge import seq2seq
from cellforge.backends.network import decoder_shapes, encoder_shapes, thread_share
from cellforge.backends.numpy.model import init_params
from cellforge.backends.torch import model, train
from cellforge.backends.torch.model import OPS, full_float32
from cellforge.data.targets import IGNORE, teacher_inputs
from cellforge.spec import ModelSpec
from cellforge.train.worker import LRSchedule, WorkerInfo

__all__ = ["Fitter", "Net", "Stepper", "build", "from_canonical", "logits", "to_canonical"]


def key(canonical: str) -> str:
    return canonical.replace(".", "__")  # ParameterDict keys cannot hold dots


class Net(nn.Module):
    """Encoder and decoder. ``forward(x, lengths, y_in)`` -> teacher-forced logits (B, T, V)."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.encoder = model.Net(spec)
        # the reference's random init, so a fresh net starts where numpy's would for the same seed
        start = init_params(spec, spec.training.seed)
        self.decoder = nn.ParameterDict({key(n): nn.Parameter(torch.from_numpy(start[n]))
                                         for n in decoder_shapes(spec)})

    def params(self) -> dict[str, torch.Tensor]:
        return {n: self.decoder[key(n)] for n in decoder_shapes(self.spec)}

    def encode(self, x, lengths):
        memory, summary = self.encoder.encode(x, lengths)
        mask = torch.arange(memory.shape[1], device=memory.device)[None, :] < lengths.to(memory.device)[:, None]
        return memory, summary, mask

    def forward(self, x, lengths, y_in, truth=None):
        """Teacher-forced logits; with ``truth`` (B, T) bool, scheduled sampling (seq2seq.scheduled)."""
        if truth is None:
            return seq2seq.teacher_forced(OPS, self.spec, self.params(), *self.encode(x, lengths), y_in)[0]
        return seq2seq.scheduled(OPS, self.spec, self.params(), *self.encode(x, lengths), y_in, truth,
                                 lambda z: z.argmax(-1))


def to_canonical(net: Net) -> dict[str, np.ndarray]:
    net = net.module if hasattr(net, "module") else net  # DDP
    out = model.to_canonical(net.encoder)
    out.update({n: v.detach().cpu().numpy().astype(np.float32) for n, v in net.params().items()})
    return out


def from_canonical(net: Net, params: dict[str, np.ndarray]) -> Net:
    net = net.module if hasattr(net, "module") else net  # DDP
    encoder = encoder_shapes(net.spec)
    model.from_canonical(net.encoder, {k: v for k, v in params.items() if k in encoder})
    with torch.no_grad():
        for k, v in params.items():
            if k in encoder:
                continue
            if key(k) not in net.decoder:
                raise ValueError(f"weight {k}: not a parameter of this model; expected {sorted(decoder_shapes(net.spec))}")
            target = net.decoder[key(k)]
            if tuple(target.shape) != tuple(v.shape):
                raise ValueError(f"weight {k}: expected shape {tuple(target.shape)}, got {tuple(v.shape)}")
            target.copy_(torch.from_numpy(np.asarray(v, np.float32)))
    return net


def build(spec: ModelSpec, params: dict[str, np.ndarray] | None = None) -> Net:
    net = Net(spec)
    if params is not None:
        from_canonical(net, params)
    return net.eval()


def logits(net: Net, x, lengths, y_in) -> np.ndarray:
    """Teacher-forced logits (B, T, V) for numpy inputs, in float32 numpy."""
    device = next(net.parameters()).device
    with torch.inference_mode():
        out = net(torch.as_tensor(x, device=device), torch.as_tensor(lengths), torch.as_tensor(y_in, device=device))
    return out.float().cpu().numpy()


class Stepper:
    """One decoder step at a time, torch tensors inside, numpy at the edges (for cellforge.decode)."""

    def __init__(self, net: Net):
        self.net = net.eval()
        self.device = next(net.parameters()).device

    def start(self, x, lengths) -> dict:
        with torch.inference_mode():
            enc = self.net.encode(torch.as_tensor(x, device=self.device), torch.as_tensor(lengths))
            return seq2seq.start(OPS, self.net.spec, self.net.params(), *enc)

    def step(self, state: dict, tokens: np.ndarray):
        with torch.inference_mode():
            ids = torch.as_tensor(np.asarray(tokens, np.int64), device=self.device)
            out, state, weights = seq2seq.step(OPS, self.net.spec, self.net.params(), state, ids)
        return out.float().cpu().numpy(), state, None if weights is None else weights.float().cpu().numpy()

    def select(self, state: dict, rows: np.ndarray) -> dict:
        return seq2seq.select(OPS, state, torch.as_tensor(np.asarray(rows, np.int64), device=self.device))


def loss_fn(out, y):
    """Cross-entropy per target token, padding (IGNORE) skipped: the mean over real tokens."""
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), ignore_index=IGNORE)


class Fitter(train.Fitter):
    """The torch Fitter (``cellforge.train.loop`` drives it) for an encoder-decoder: teacher-forced
    (or scheduled-sampling) steps, loss over real target tokens; ``predict`` gives teacher-forced
    logits and ``stepper`` decodes with the worker's current weights."""

    def __init__(self, spec: ModelSpec, info: WorkerInfo):
        torch.set_num_threads(thread_share(info.local_world))
        torch.manual_seed(spec.training.seed)
        self.spec, self.world = spec, info.world
        rt = train.ray_train_torch() if info.world > 1 or info.use_gpu else None  # not imported in process
        self.device = rt.get_device() if info.use_gpu else torch.device("cpu")
        if info.use_gpu:
            full_float32()
        self.model = Net(spec)
        # prepare_model moves to the device and wraps in DDP when there is more than one worker
        self.net = rt.prepare_model(self.model) if info.world > 1 or info.use_gpu else self.model
        self.opt = train.make_optimizer(spec, self.net.parameters())
        self.lr = LRSchedule(spec)
        self.rng = np.random.default_rng([spec.training.seed, info.rank])  # scheduled sampling's draws

    def train_epoch(self, epoch: int, batches) -> tuple[float, int]:
        self.net.train()
        for g in self.opt.param_groups:
            g["lr"] = self.lr.value
        t = self.spec.training
        total, count = torch.zeros((), dtype=torch.float64), 0
        for xb, lb, yb in batches:
            y_in = torch.as_tensor(teacher_inputs(yb), device=self.device)
            truth = None
            if t.teacher_forcing < 1:
                truth = torch.as_tensor(self.rng.random(yb.shape) < t.teacher_forcing, device=self.device)
            out = self.net(torch.as_tensor(xb, device=self.device), torch.as_tensor(lb), y_in, truth)
            yt = torch.as_tensor(yb, device=self.device)
            loss = loss_fn(out, yt)
            full = loss + train.penalty(self.spec, self.net)
            self.opt.zero_grad(set_to_none=True)
            full.backward()
            if t.clip_norm:
                nn.utils.clip_grad_norm_(self.net.parameters(), t.clip_norm)
            self.opt.step()
            total += loss.detach().double().cpu() * len(xb)
            count += len(xb)
        return float(total), count

    def predict(self, x, lengths, y) -> np.ndarray:
        """Teacher-forced logits (B, T, V) for targets ``y`` (B, T)."""
        self.model.eval()
        return logits(self.model, x, lengths, teacher_inputs(y))

    def stepper(self) -> Stepper:
        return Stepper(self.model)

    def get_weights(self) -> dict[str, np.ndarray]:
        return to_canonical(self.model)

    def set_weights(self, params: dict[str, np.ndarray]) -> None:
        from_canonical(self.model, params)
