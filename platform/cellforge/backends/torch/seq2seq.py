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
from torch import nn

from cellforge import seq2seq
from cellforge.backends.network import decoder_shapes, encoder_shapes
from cellforge.backends.numpy.model import init_params
from cellforge.backends.torch import model
from cellforge.backends.torch.model import OPS
from cellforge.spec import ModelSpec

__all__ = ["Net", "Stepper", "build", "from_canonical", "logits", "to_canonical"]


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

    def forward(self, x, lengths, y_in):
        return seq2seq.teacher_forced(OPS, self.spec, self.params(), *self.encode(x, lengths), y_in)[0]


def to_canonical(net: Net) -> dict[str, np.ndarray]:
    out = model.to_canonical(net.encoder)
    out.update({n: v.detach().cpu().numpy().astype(np.float32) for n, v in net.params().items()})
    return out


def from_canonical(net: Net, params: dict[str, np.ndarray]) -> Net:
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
