"""Attributions with Captum on the PyTorch runtime: which steps and features drove a prediction.

Any bundle: its canonical weights load into the torch network whatever framework trained it. The
network is attributed from its first recurrent layer's input: the features as the model sees them
(scaled) or, for text, each token's embedding (summed over the embedding, one number per token).

- ``integrated_gradients``: Captum's IntegratedGradients from an all-zero baseline, every
  interpolation step in one batch (one forward and one backward); the attributions of a sequence
  sum to f(x) - f(baseline) (``delta`` is what is left).
- ``gradient_x_input``: gradient times input, one forward and backward.
- ``occlusion``: each step in turn replaced by the baseline; its attribution is how much the output
  drops (one number per step). Model-agnostic: it only runs the network forward.

The output explained is one number per sequence: the predicted class's logit (classify), the
first output value, scaled (regress, forecast), or for tag the predicted tag's logit at one step.

    >>> import numpy as np, cellforge as cf
    >>> from cellforge.backends import numpy as ref
    >>> spec = cf.ModelSpec(task="regress", cell="gru", hidden_size=4, input={"num_features": 2})
    >>> x = np.random.default_rng(0).normal(size=(1, 6, 2)).astype(np.float32)
    >>> ex = explain(spec, ref.init_params(spec), x, np.array([6]))
    >>> ex.attributions.shape
    (1, 6, 2)
    >>> bool(abs(ex.attributions.sum() - (ex.output - ex.baseline_output)[0]) < 1e-4)
    True
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cellforge.spec import ModelSpec

METHODS = ("integrated_gradients", "gradient_x_input", "occlusion")
N_STEPS = 50  # interpolation steps (Gauss-Legendre): completeness within 1% on every task we test


@dataclass
class Explanation:
    """Attributions for a batch of sequences.

    ``attributions``: (batch, steps, features) for numeric input with integrated gradients or
    gradient x input; (batch, steps) per token for text and per step for occlusion. Zero at padded
    steps. ``output`` is the explained output for each sequence and ``target`` its index in the
    network's outputs; ``baseline_output`` the same output for the baseline (integrated gradients,
    occlusion: the all-baseline input); ``delta`` = sum of attributions - (output - baseline_output).
    """

    method: str
    spec: ModelSpec
    attributions: np.ndarray
    inputs: np.ndarray  # model-ready: scaled features (B, T, F) or token ids (B, T)
    lengths: np.ndarray
    target: list[int]
    output: np.ndarray
    baseline_output: np.ndarray | None = None
    delta: np.ndarray | None = None
    tokens: list[list[str]] | None = None
    prediction: Any = field(default=None, repr=False)  # the decoded prediction, for display

    @property
    def per_step(self) -> np.ndarray:
        """(batch, steps): each step's (token's) total attribution."""
        return self.attributions if self.attributions.ndim == 2 else self.attributions.sum(-1)

    def plot(self, index: int = 0, ax=None):
        """A heatmap of sequence ``index``'s attributions over its input, its prediction beside it."""
        from cellforge.interpret.plots import plot_explanation

        return plot_explanation(self, index, ax)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: what the HTTP endpoint returns (padded steps cut off)."""
        out = {"method": self.method, "target": list(self.target), "output": self.output.tolist(),
               "attributions": [a[: n].tolist() for a, n in zip(self.attributions, self.lengths)]}
        if self.baseline_output is not None:
            out["baseline_output"] = self.baseline_output.tolist()
        if self.delta is not None:
            out["delta"] = self.delta.tolist()
        if self.tokens is not None:
            out["tokens"] = self.tokens
        return out

    def __repr__(self) -> str:
        return f"Explanation({self.method}, {self.spec.task}, attributions {self.attributions.shape})"


def explain(spec: ModelSpec, params: dict[str, np.ndarray], x, lengths, method: str = "integrated_gradients",
            target: int | list[int] | None = None, step: int | None = None, n_steps: int = N_STEPS,
            baseline=None, device: str | None = None) -> Explanation:
    """Attribute the network's output for model-ready ``x`` (see the module's docstring).

    Args:
        target: the output to explain — a class index (classify, tag) or output index (regress,
            forecast), one for all sequences or one per sequence; default the predicted class / 0.
        step: tag only, the step whose tag is explained (default each sequence's last step).
        n_steps: integrated gradients' interpolation steps, all run as one batch.
        baseline: integrated gradients' and occlusion's reference input, model-ready like ``x``
            (token ids for text); default all zeros (the features' training mean when they are
            standard-scaled; for text, a zero embedding).
        device: 'cpu' (default) or 'cuda'.
    """
    import torch
    from captum.attr import InputXGradient, IntegratedGradients, Occlusion

    if method not in METHODS:
        raise ValueError(f"method: unknown {method!r}; expected one of {list(METHODS)}")
    if spec.task == "seq2seq":
        raise ValueError("task: attributions explain one output per sequence; seq2seq is not supported "
                         "(see its attention maps: cellforge.interpret.plots.attention)")
    if not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps: expected a positive integer, got {n_steps!r}")
    lengths = np.asarray(lengths, np.int64)
    net, inputs = _feature_net(spec, params, x)
    device = torch.device(device or "cpu")
    net = net.to(device)
    inp = torch.as_tensor(inputs, device=device)
    ln = torch.as_tensor(lengths)
    batch, steps = inp.shape[:2]

    def f(h, lens):  # the network from its first recurrent layer's input; tag flattened to (B, T * classes)
        out = net(h, lens)
        return out.reshape(len(out), -1)

    with torch.no_grad():
        raw = net(inp, ln).cpu().numpy()
    index = _targets(spec, raw, lengths, target, step)
    base = torch.zeros_like(inp) if baseline is None else torch.as_tensor(_baseline(spec, params, x, baseline),
                                                                            device=device)
    with _rnn_backward_ok(device):
        if method == "integrated_gradients":
            attr, delta = IntegratedGradients(f).attribute(
                inp, base, target=index, additional_forward_args=(ln,), n_steps=n_steps,
                internal_batch_size=None, return_convergence_delta=True)  # None: all steps in one batch
        elif method == "gradient_x_input":
            inp.requires_grad_()
            attr, delta = InputXGradient(f).attribute(inp, target=index, additional_forward_args=(ln,)), None
        else:  # one window per step, across all its features
            attr = Occlusion(f).attribute(inp, sliding_window_shapes=(1, inp.shape[-1]),
                                          strides=(1, inp.shape[-1]), baselines=base, target=index,
                                          additional_forward_args=(ln,))[..., 0:1]
            delta = None
        with torch.no_grad():
            flat = f(inp.detach(), ln).cpu().numpy()
            base_out = f(base, ln).cpu().numpy()[np.arange(batch), index]
    attr = attr.detach().cpu().numpy().astype(np.float32)
    attr[np.arange(steps)[None, :] >= lengths[:, None]] = 0.0
    if spec.input.type == "text" or method == "occlusion":
        attr = attr.sum(-1)
    output = flat[np.arange(batch), index]
    return Explanation(method, spec, attr, np.asarray(x), lengths, list(index), output,
                       None if method == "gradient_x_input" else base_out,
                       None if delta is None else delta.detach().cpu().numpy())


def _feature_net(spec: ModelSpec, params: dict[str, np.ndarray], x):
    """The torch network from the first recurrent layer's input, and that input for ``x``: text's
    embeddings are looked up here, and the rest of the network is the same network on
    ``embedding_dim`` numeric features."""
    from cellforge.backends import torch as backend

    if spec.input.type != "text":
        return backend.build(spec, params), np.asarray(x, np.float32)
    emb = params["embedding.weight"]
    numeric = spec.updated(**{"input.type": "numeric", "input.num_features": emb.shape[1], "input.vocab_size": None})
    rest = {k: v for k, v in params.items() if k != "embedding.weight"}
    return backend.build(numeric, rest), np.asarray(emb, np.float32)[np.asarray(x, np.int64)]


def _baseline(spec: ModelSpec, params, x, baseline) -> np.ndarray:
    b = np.asarray(baseline)
    if b.shape != np.asarray(x).shape:
        raise ValueError(f"baseline: expected the inputs' shape {np.asarray(x).shape}, got {b.shape}")
    if spec.input.type == "text":
        return np.asarray(params["embedding.weight"], np.float32)[b.astype(np.int64)]
    return b.astype(np.float32)


def _targets(spec: ModelSpec, raw: np.ndarray, lengths: np.ndarray, target, step) -> list[int]:
    """Each sequence's explained output, as an index into the flattened outputs."""
    batch = len(raw)
    width = raw.shape[-1]
    if target is None:
        chosen = [0] * batch
    elif isinstance(target, (int, np.integer)):
        chosen = [int(target)] * batch
    else:
        chosen = [int(t) for t in target]
        if len(chosen) != batch:
            raise ValueError(f"target: expected one per sequence ({batch}), got {len(chosen)}")
    if step is not None and spec.task != "tag":
        raise ValueError(f"step: only for task 'tag' (which output step to explain), not {spec.task!r}")
    if spec.task == "tag":
        steps = lengths - 1 if step is None else np.full(batch, int(step))
        if ((steps < 0) | (steps >= lengths)).any():
            raise ValueError(f"step: expected 0 <= step < each sequence's length {lengths.tolist()}, got {step}")
        if target is None:
            chosen = [int(raw[i, s].argmax()) for i, s in enumerate(steps)]
        _check(chosen, width, "class")
        return [int(s) * width + c for s, c in zip(steps, chosen)]
    if spec.task == "classify" and target is None:
        chosen = raw.argmax(-1).tolist()
    _check(chosen, width, "class" if spec.task == "classify" else "output")
    return chosen


def _check(chosen: list[int], width: int, what: str) -> None:
    bad = [t for t in chosen if not 0 <= t < width]
    if bad:
        raise ValueError(f"target: {what} index {bad[0]} out of range; expected 0 <= target < {width}")


@contextlib.contextmanager
def _rnn_backward_ok(device):
    """cuDNN's RNN backward refuses a network in eval mode ("cudnn RNN backward can only be called in
    training mode"); train mode would turn dropout on. On a GPU the attribution runs with cuDNN off
    (PyTorch's own RNN kernels), keeping eval mode and the same outputs."""
    if device.type != "cuda":
        yield
        return
    import torch

    with torch.backends.cudnn.flags(enabled=False):
        yield
