"""transcribe's CTC (Graves et al. 2006): the output vocabulary (blank first), targets, greedy and
prefix-beam decoding, and the loss in numpy (the reference the torch and Keras losses are tested against).

    >>> from cellforge.spec import TargetSpec
    >>> state = fit(TargetSpec(tokenizer="word"), ["one two", "two"])
    >>> state["vocab"]
    ['<blank>', 'two', 'one']
    >>> encode(state, ["two one", "one"]).tolist()
    [[1, 2], [2, -1]]
    >>> log_p = np.log(np.eye(3)[[2, 2, 0, 1, 1, 0, 1]] * 0.97 + 0.01)  # one one _ two two _ two
    >>> greedy(state, log_p), beam(state, log_p, width=4)
    ('one two two', 'one two two')
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cellforge.data import targets
from cellforge.data.targets import tokenize
from cellforge.spec import TargetSpec

BLANK = 0
PAD = -1  # a target row's padding (the losses read each row's length)


def fit(target: TargetSpec, texts: list[str]) -> dict[str, Any]:
    """The vocabulary of the training transcripts: ``<blank>``, then tokens by count (ties by name),
    with seq2seq's tokenizer (cellforge.data.targets)."""
    return targets.fit(target, texts, specials=("<blank>",))


def encode(state: dict[str, Any], texts: list[str]) -> np.ndarray:
    """(N, L) token ids padded with PAD; tokens the vocabulary lacks (unseen in training) are dropped."""
    index = {t: i for i, t in enumerate(state["vocab"])}
    rows = [[index[tok] for tok in tokenize(state, t) if tok in index][: state["max_length"]] for t in texts]
    out = np.full((len(rows), max(1, max(map(len, rows), default=1))), PAD, np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def text(state: dict[str, Any], ids) -> str:
    vocab = state["vocab"]
    return ("" if state["tokenizer"] == "char" else " ").join(vocab[i] for i in ids)


def greedy_ids(log_p: np.ndarray) -> list[int]:
    """Best path: the most likely class per step, repeats merged, blanks dropped."""
    return greedy_more(log_p)[0]


def greedy_more(log_p: np.ndarray, last: int = BLANK) -> tuple[list[int], int]:
    """``greedy_ids`` of steps that follow steps whose best class was ``last`` (a stream's: a blank before
    the first step merges nothing): the labels they add, and their own last best class.

        >>> log_p = np.log(np.eye(3)[[2, 2, 0, 1, 1, 0, 1]] * 0.97 + 0.01)
        >>> a, last = greedy_more(log_p[:4])
        >>> b, last = greedy_more(log_p[4:], last)
        >>> a + b == greedy_ids(log_p), a, b
        (True, [2, 1], [1])
    """
    best = [int(c) for c in np.asarray(log_p).argmax(-1)]
    ids = [c for c, before in zip(best, [last, *best]) if c != BLANK and c != before]
    return ids, best[-1] if best else last


def greedy(state: dict[str, Any], log_p: np.ndarray) -> str:
    return text(state, greedy_ids(log_p))


def beam_ids(log_p: np.ndarray, width: int = 8) -> list[int]:
    """Prefix beam search: the ``width`` most likely label prefixes, each summing every alignment that
    yields it (p ending in blank, p ending in its last label), in log space."""
    log_p = np.asarray(log_p, np.float64)
    beams: dict[tuple, tuple[float, float]] = {(): (0.0, -np.inf)}  # prefix -> (log p blank-ended, label-ended)
    for row in log_p:
        nxt: dict[tuple, tuple[float, float]] = {}

        def add(prefix, blank, label, nxt=nxt):
            b, nb = nxt.get(prefix, (-np.inf, -np.inf))
            nxt[prefix] = (np.logaddexp(b, blank), np.logaddexp(nb, label))

        for prefix, (b, nb) in beams.items():
            total = np.logaddexp(b, nb)
            add(prefix, total + row[BLANK], -np.inf)
            for c in range(1, len(row)):
                if prefix and prefix[-1] == c:  # a repeat needs a blank between; without one it merges
                    add(prefix + (c,), -np.inf, b + row[c])
                    add(prefix, -np.inf, nb + row[c])
                else:
                    add(prefix + (c,), -np.inf, total + row[c])
        beams = dict(sorted(nxt.items(), key=lambda kv: -np.logaddexp(*kv[1]))[:width])
    return list(max(beams.items(), key=lambda kv: np.logaddexp(*kv[1]))[0])


def beam(state: dict[str, Any], log_p: np.ndarray, width: int = 8) -> str:
    return text(state, beam_ids(log_p, width))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def transcripts(state: dict[str, Any], logits: np.ndarray, lengths: np.ndarray, strategy: str = "greedy",
                width: int = 8) -> list[str]:
    """(N, T, V) logits and each row's steps -> one transcript per row."""
    log_p = log_softmax(np.asarray(logits, np.float64))
    if strategy == "beam":
        return [beam(state, lp[:n], width) for lp, n in zip(log_p, lengths)]
    return [greedy(state, lp[:n]) for lp, n in zip(log_p, lengths)]


def losses(logits: np.ndarray, lengths: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each row's -log p(target | input) / target length, by the forward algorithm over the
    blank-interleaved target: the reference both frameworks' CTC losses are tested against."""
    log_p = log_softmax(np.asarray(logits, np.float64))
    out = []
    for lp, n, row in zip(log_p, lengths, y):
        labels = [int(c) for c in row if c != PAD]
        ext = np.full(2 * len(labels) + 1, BLANK)
        ext[1::2] = labels
        # a label may be reached from two states back unless it repeats the label there
        skip = np.zeros(len(ext), bool)
        skip[2:] = (ext[2:] != BLANK) & (ext[2:] != ext[:-2])
        alpha = np.full(len(ext), -np.inf)
        alpha[: min(2, len(ext))] = lp[0, ext[:2]]
        for t in range(1, int(n)):
            a = alpha.copy()
            a[1:] = np.logaddexp(a[1:], alpha[:-1])
            a[2:] = np.where(skip[2:], np.logaddexp(a[2:], alpha[:-2]), a[2:])
            alpha = a + lp[t, ext]
        total = np.logaddexp(alpha[-1], alpha[-2]) if len(ext) > 1 else alpha[-1]
        out.append(-total / max(1, len(labels)))
    return np.asarray(out)


def loss(logits: np.ndarray, lengths: np.ndarray, y: np.ndarray) -> float:
    """The mean of ``losses`` over rows: torch's ``CTCLoss(reduction='mean')``."""
    return float(np.mean(losses(logits, lengths, y)))


def edit_stats(truth: list[str], predicted: list[str]) -> np.ndarray:
    """[character edits, reference characters, word edits, reference words] (jiwer), summable over
    shards; rows with an empty reference are skipped (jiwer refuses them)."""
    import jiwer

    pairs = [(t, p) for t, p in zip(truth, predicted) if t.strip()]
    if not pairs:
        return np.zeros(4)
    ref, hyp = [t for t, _ in pairs], [p for _, p in pairs]
    c, w = jiwer.process_characters(ref, hyp), jiwer.process_words(ref, hyp)
    return np.array([c.substitutions + c.deletions + c.insertions, c.substitutions + c.deletions + c.hits,
                     w.substitutions + w.deletions + w.insertions, w.substitutions + w.deletions + w.hits], np.float64)


def error_rates(truth: list[str], predicted: list[str]) -> dict[str, float]:
    """Character and word error rates (jiwer) over a corpus."""
    import jiwer

    pairs = [(t, p) for t, p in zip(truth, predicted) if t.strip()]
    if not pairs:
        return {"cer": float("nan"), "wer": float("nan")}
    ref, hyp = [t for t, _ in pairs], [p for _, p in pairs]
    return {"cer": float(jiwer.cer(ref, hyp)), "wer": float(jiwer.wer(ref, hyp))}
