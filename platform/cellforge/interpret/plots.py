"""Plots for notebooks (matplotlib, imported when a plot is drawn): attributions, hidden-state
trajectories and gate saturation, seq2seq attention maps. Each returns its matplotlib Figure.

    >>> import numpy as np, cellforge as cf
    >>> from cellforge.backends import numpy as ref
    >>> spec = cf.ModelSpec(task="classify", num_classes=3, cell="lstm", hidden_size=4, input={"num_features": 2})
    >>> t = cf.interpret.trace(spec, ref.init_params(spec), np.ones((3, 5, 2), np.float32), np.array([5, 4, 3]))
    >>> saturation(t)["rnn.0.fwd"].keys()
    dict_keys(['i', 'f', 'o'])
    >>> fig = states(t)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

SATURATED = 0.1  # a gate below 0.1 or above 0.9 is saturated (closed or open); the usual cut (Karpathy et al. 2015)


def _pyplot():
    import matplotlib.pyplot as plt  # here, not at import: matplotlib takes ~0.5 s to load

    return plt


def _prediction_text(ex, index: int) -> str:
    p = ex.prediction
    lines = [f"{ex.method.replace('_', ' ')}", f"output[{ex.target[index]}] = {ex.output[index]:.3g}"]
    if ex.baseline_output is not None:
        lines.append(f"baseline: {ex.baseline_output[index]:.3g}")
    if isinstance(p, dict):
        if "labels" in p:
            label = p["labels"][index]
            lines.insert(0, f"prediction: {label if not isinstance(label, list) else ' '.join(map(str, label))}")
            prob = np.asarray(p["probabilities"][index])
            lines.insert(1, f"p = {prob.max(-1).ravel()[-1]:.2f}")
        elif "values" in p:
            lines.insert(0, f"prediction: {np.round(np.asarray(p['values'][index], float), 3).tolist()}")
    return "\n".join(lines)


def plot_explanation(ex, index: int = 0, ax=None):
    """Sequence ``index``'s attributions: steps (tokens) across, features down, red = pushes the
    explained output up, blue = down; the prediction and explained output beside it."""
    plt = _pyplot()
    n = int(ex.lengths[index])
    a = np.asarray(ex.attributions[index][:n], float)
    grid = a[None, :] if a.ndim == 1 else a.T
    if ax is None:
        fig, (ax, side) = plt.subplots(1, 2, figsize=(min(3 + 0.35 * n, 16), 1.2 + 0.35 * len(grid)),
                                       gridspec_kw={"width_ratios": [5, 1.4]})
    else:
        fig, side = ax.figure, None
    lim = float(np.abs(grid).max()) or 1.0
    im = ax.imshow(grid, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    if ex.tokens is not None:
        ax.set_xticks(range(n), ex.tokens[index][:n], rotation=60, ha="right")
        ax.set_yticks([])
    else:
        ax.set_xlabel("step")
        ax.set_yticks(range(len(grid)), ["step"] if a.ndim == 1 else [f"x{i}" for i in range(len(grid))])
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01)
    ax.set_title(f"attributions ({ex.method})")
    text = _prediction_text(ex, index)
    if side is not None:
        side.axis("off")
        side.text(0, 0.5, text, va="center", fontsize=9, family="monospace")
    else:
        ax.text(1.15, 0.5, text, transform=ax.transAxes, va="center", fontsize=9, family="monospace")
    fig.tight_layout()
    return fig


def gate_names(t) -> tuple[str, ...]:
    """The cell's declared gates or, for a cell that declares none, the named values in (0, 1)."""
    if t.gates:
        return t.gates
    values = next(iter(t.layers.values()))
    return tuple(k for k, v in values.items() if k != "h" and np.nanmin(v) >= 0 and np.nanmax(v) <= 1)


def saturation(t) -> dict[str, dict[str, float]]:
    """Per layer direction and gate: the share of activations (valid steps) below 0.1 or above 0.9."""
    out = {}
    for key, values in t.layers.items():
        out[key] = {}
        for g in gate_names(t):
            v = values[g][~np.isnan(values[g])]
            out[key][g] = float(((v < SATURATED) | (v > 1 - SATURATED)).mean())
    return out


def states(t, layer: int = -1, max_sequences: int = 20):
    """Hidden states of ``layer`` (both directions) projected on their two principal components,
    one trajectory per sequence (o start, x end); beside it each gate's saturation per layer."""
    from sklearn.decomposition import PCA

    plt = _pyplot()
    h = t.hidden(layer)[:max_sequences]
    lengths = t.lengths[:max_sequences]
    flat = np.concatenate([s[:n] for s, n in zip(h, lengths)])
    pca = PCA(n_components=min(2, flat.shape[1], len(flat))).fit(flat)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    for i, (s, n) in enumerate(zip(h, lengths)):
        z = pca.transform(s[:n])
        z = np.pad(z, ((0, 0), (0, 2 - z.shape[1])))
        line, = ax.plot(z[:, 0], z[:, 1], "-", lw=1, alpha=0.8)
        ax.plot(z[0, 0], z[0, 1], "o", color=line.get_color(), ms=4)
        ax.plot(z[-1, 0], z[-1, 1], "x", color=line.get_color(), ms=6)
        if t.tokens is not None and i == 0:
            for (a, b), tok in zip(z, t.tokens[0]):
                ax.annotate(tok, (a, b), fontsize=7)
    ev = pca.explained_variance_ratio_
    ax.set_xlabel(f"PC1 ({ev[0]:.0%})")
    ax.set_ylabel(f"PC2 ({ev[1]:.0%})" if len(ev) > 1 else "PC2")
    ax.set_title(f"hidden states, layer {layer % t.spec.num_layers} (o start, x end)")
    sat = saturation(t)
    gates = gate_names(t)
    if gates:
        keys = list(sat)
        width = 0.8 / len(keys)
        for j, key in enumerate(keys):
            bx.bar(np.arange(len(gates)) + j * width, [sat[key][g] for g in gates], width, label=key)
        bx.set_xticks(np.arange(len(gates)) + 0.4 - width / 2, gates)
        bx.set_ylim(0, 1)
        bx.set_ylabel(f"share saturated (<{SATURATED} or >{1 - SATURATED})")
        bx.legend(fontsize=7)
    else:
        bx.text(0.5, 0.5, f"cell {t.spec.cell!r}: no gates", ha="center", va="center")
    bx.set_title("gate saturation")
    fig.tight_layout()
    return fig


@dataclass
class AttentionMap:
    """A seq2seq prediction's attention: ``weights[i, j]`` = how much output token i read input token j
    (each row sums to 1); the last row is ``<eos>``'s when decoding ended there."""

    weights: np.ndarray
    inputs: list[str]
    outputs: list[str]
    prediction: str

    def plot(self, ax=None):
        return plot_attention(self, ax)


def attention(model, text: Any) -> AttentionMap:
    """The attention of ``model`` (a seq2seq bundle with attention, ``cf.load``) decoding one input
    greedily with the numpy reference decoder (:func:`cellforge.decode.greedy`)."""
    from cellforge import decode
    from cellforge.backends.numpy import seq2seq as ref_seq2seq
    from cellforge.data import targets
    from cellforge.interpret.trace import input_tokens

    spec = model.spec
    if spec.task != "seq2seq" or spec.attention == "none":
        raise ValueError(f"attention: needs a seq2seq model with attention, got task {spec.task!r}"
                         f"{'' if spec.task != 'seq2seq' else ', attention none'}")
    batch = [text]
    x, lengths = model.preprocessor.transform(batch)
    state = model.preprocessor.state["target"]
    max_length = spec.decode.max_length or state["max_length"]
    out = decode.greedy(ref_seq2seq.Stepper(ref_seq2seq.build(spec, model.weights)), x, lengths, max_length,
                        return_attention=True)[0]
    vocab = state["vocab"]
    words = [vocab[i] for i in out.tokens]
    if len(out.attention) > len(words):
        words.append("<eos>")
    inputs = input_tokens(model, batch, lengths)
    inputs = inputs[0] if inputs else [f"x{i}" for i in range(int(lengths[0]))]
    return AttentionMap(out.attention, inputs, words, targets.decode(state, out.tokens))


def plot_attention(m: AttentionMap, ax=None):
    """Rows = output tokens, columns = input tokens."""
    plt = _pyplot()
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.5 + 0.3 * len(m.inputs), 1 + 0.3 * len(m.outputs)))
    else:
        fig = ax.figure
    im = ax.imshow(m.weights, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks(range(len(m.inputs)), m.inputs, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(m.outputs)), m.outputs, fontsize=8)
    ax.set_xlabel("input")
    ax.set_ylabel("output")
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.01)
    fig.tight_layout()
    return fig
