"""seq2seq's output text: its own vocabulary (fitted on the training split's targets), targets as
token ids for training, and decoded ids back into text. The state is plain JSON, kept in the
bundle's ``preprocessing.json`` under ``target``.

    >>> from cellforge.spec import TargetSpec
    >>> state = fit(TargetSpec(tokenizer="word"), ["quatre mille douze", "mille"])
    >>> state["vocab"]
    ['<pad>', '<unk>', '<bos>', '<eos>', 'mille', 'douze', 'quatre']
    >>> y = encode(state, ["mille douze", "six"])
    >>> y.tolist(), teacher_inputs(y).tolist()
    ([[4, 5, 3], [1, 3, -100]], [[2, 4, 5], [2, 1, 0]])
    >>> decode(state, [4, 5, 3, 6])
    'mille douze'
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from cellforge.seq2seq import BOS, EOS, PAD, SPECIALS, UNK
from cellforge.spec import TargetSpec

IGNORE = -100  # a padded target step: the loss and the metrics skip it (as the tag task's do)


def tokenize(state: dict[str, Any], text: str) -> list[str]:
    """Characters, or words split on whitespace (so decoding joins them back into the same text)."""
    text = text.lower() if state["lowercase"] else text
    return list(text) if state["tokenizer"] == "char" else text.split()


def fit(target: TargetSpec, texts: list[str], specials: tuple[str, ...] = SPECIALS) -> dict[str, Any]:
    """The target vocabulary of ``texts`` (the training split's): the ``specials`` (seq2seq's four;
    CTC's blank), then tokens by count (ties by name)."""
    state = {"tokenizer": target.tokenizer, "lowercase": target.lowercase, "max_length": target.max_length}
    counts = Counter(tok for t in texts for tok in tokenize(state, t))
    kept = sorted((c for c in counts.items() if c[1] >= target.min_freq), key=lambda c: (-c[1], c[0]))
    state["vocab"] = [*specials, *[tok for tok, _ in kept[: target.max_vocab - len(specials)]]]
    return state


def encode(state: dict[str, Any], texts: list[str]) -> np.ndarray:
    """Targets (N, T): each text's token ids then ``<eos>``, cut to max_length, padded with IGNORE."""
    index = {t: i for i, t in enumerate(state["vocab"])}
    rows = [[index.get(tok, UNK) for tok in tokenize(state, t)][: state["max_length"] - 1] + [EOS] for t in texts]
    out = np.full((len(rows), max(map(len, rows), default=1)), IGNORE, np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def teacher_inputs(y: np.ndarray) -> np.ndarray:
    """What the decoder reads when taught: ``<bos>`` then the targets, shifted right (padding 0)."""
    y_in = np.concatenate([np.full((len(y), 1), BOS, np.int64), y[:, :-1]], 1)
    return np.where((y_in == IGNORE) | (y_in == EOS), PAD, y_in)


def decode(state: dict[str, Any], ids) -> str:
    """Token ids -> text, up to the first ``<eos>``; ``<pad>`` and ``<bos>`` are dropped, ``<unk>`` kept."""
    vocab, out = state["vocab"], []
    for i in ids:
        if i == EOS:
            break
        if i == UNK or i >= len(SPECIALS):
            out.append(vocab[i])
    return ("" if state["tokenizer"] == "char" else " ").join(out)
