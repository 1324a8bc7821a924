"""Attention score functions, each written once against the ops namespace (like the cells).

A decoder step attends with its top layer's output ``q`` (batch, Q) over the encoder's outputs,
the memory (batch, S, K). An attention splits the work in two so a decoder pays for the memory's
projection once per sequence, not once per step:

- ``keys(op, p, memory)`` -> what ``score`` compares against (batch, S, anything), once;
- ``score(op, p, keys, q)`` -> one score per memory step (batch, S), every step.

The decoder then masks padded steps, takes a softmax and averages the memory with those weights
(:func:`cellforge.seq2seq.attend`). ``p`` maps the attention's parameter names to arrays; shape
symbols are ``Q`` (the decoder's hidden size), ``K`` (the memory's width: encoder hidden size x
directions), ``A`` (the attention's own size, the decoder's hidden size) and ``1``.

    >>> import numpy as np
    >>> from cellforge.backends.numpy import OPS
    >>> memory, q = np.ones((2, 3, 4)), np.ones((2, 4))
    >>> ATTENTIONS["dot"].score(OPS, {}, ATTENTIONS["dot"].keys(OPS, {}, memory), q).shape
    (2, 3)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Attention:
    """A score function defined once for every backend.

    Example (scaled dot product, Vaswani et al. 2017, for a memory as wide as the decoder):

        >>> import math
        >>> def scaled(op, p, keys, q):
        ...     return op.squeeze(op.matmul(keys, op.expand(q, -1)), -1) * (1.0 / math.sqrt(q.shape[-1]))
        >>> att = Attention("scaled", keys=lambda op, p, memory: memory, score=scaled, params={},
        ...                 same_width=True)
    """

    name: str
    keys: Callable[..., Any]
    score: Callable[..., Any]
    params: dict[str, tuple[str, ...]]  # parameter name -> shape in symbols Q, K, A, 1
    # True when the score compares q with the memory directly, so Q must equal K
    same_width: bool = False
    doc: str = field(default="", compare=False)

    def shapes(self, query: int, memory: int) -> dict[str, tuple[int, ...]]:
        dims = {"Q": query, "K": memory, "A": query, "1": 1}
        try:
            return {name: tuple(dims[s] for s in shape) for name, shape in self.params.items()}
        except KeyError as e:
            raise ValueError(f"attention {self.name!r}: unknown dimension symbol {e.args[0]!r}; "
                             "use 'Q', 'K', 'A' or '1'") from None


def _dot_score(op, p, keys, q):
    return op.squeeze(op.matmul(keys, op.expand(q, -1)), -1)


def _general_keys(op, p, memory):
    return op.linear(memory, p["w"])  # Luong's W_a applied to the memory once: (B, S, Q)


def _additive_keys(op, p, memory):
    return op.linear(memory, p["w_k"])  # Bahdanau's U_a h_s, once per sequence: (B, S, A)


def _additive_score(op, p, keys, q):
    hidden = op.tanh(keys + op.expand(op.linear(q, p["w_q"], p["b"]), 1))
    return op.squeeze(op.linear(hidden, p["v"]), -1)  # v_a^T tanh(W_a q + U_a h_s + b)


ATTENTIONS: dict[str, Attention] = {
    "additive": Attention("additive", _additive_keys, _additive_score,
                          {"w_k": ("A", "K"), "w_q": ("A", "Q"), "b": ("A",), "v": ("1", "A")},
                          doc="Bahdanau et al. 2015 (concat score)"),
    "dot": Attention("dot", lambda op, p, memory: memory, _dot_score, {}, same_width=True,
                     doc="Luong et al. 2015, dot score"),
    "general": Attention("general", _general_keys, _dot_score, {"w": ("Q", "K")},
                         doc="Luong et al. 2015, general (bilinear) score"),
}


def get_attention(name: str) -> Attention:
    try:
        return ATTENTIONS[name]
    except KeyError:
        raise ValueError(f"unknown attention {name!r}; known: {['none', *sorted(ATTENTIONS)]}") from None


def register_attention(attention: Attention, *, overwrite: bool = False) -> Attention:
    """Make ``attention`` usable by name in a ModelSpec (``attention: <name>``)."""
    if attention.name == "none" or (attention.name in ATTENTIONS and not overwrite
                                    and ATTENTIONS[attention.name] is not attention):
        raise ValueError(f"an attention named {attention.name!r} already exists; pass overwrite=True to replace it")
    attention.shapes(1, 1)  # fail now on a bad shape symbol
    ATTENTIONS[attention.name] = attention
    return attention
