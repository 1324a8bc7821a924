"""Greedy and beam-search decoding, written once over a backend's ``Stepper`` (numpy, torch and
Keras each have one in ``backends/<name>/seq2seq.py``): ``start(x, lengths)`` encodes a padded
batch, ``step(state, tokens)`` runs one decoder step and returns numpy logits, ``select(state,
rows)`` picks, repeats or reorders rows of the decoder's state.

Rows are decoded together (padded batch decoding): a finished row leaves the batch, and beam search
keeps ``width`` hypotheses per row in one batch of ``rows x width``. Scores are summed in float64
from each runtime's float32 logits, so every runtime picks the same tokens.

    >>> import numpy as np
    >>> from cellforge import ModelSpec
    >>> from cellforge.backends.numpy import seq2seq
    >>> spec = ModelSpec(task="seq2seq", cell="gru", hidden_size=8, input={"type": "text", "vocab_size": 9},
    ...                  target={"vocab_size": 7})
    >>> stepper = seq2seq.Stepper(seq2seq.build(spec))
    >>> x, lengths = np.array([[4, 5, 6], [7, 8, 0]]), np.array([3, 2])
    >>> [len(d.tokens) <= 5 for d in greedy(stepper, x, lengths, max_length=5)]
    [True, True]
    >>> beam(stepper, x, lengths, width=1, max_length=5)[0].tokens == greedy(stepper, x, lengths, 5)[0].tokens
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cellforge.seq2seq import BOS, EOS


@dataclass
class Decoded:
    """One row's output: its tokens (without ``<bos>`` and ``<eos>``), their summed log-probability
    (``<eos>``'s included when it was reached), and when asked for, the attention weights: one row
    per decoded step (``<eos>``'s included), one column per input step."""

    tokens: list[int]
    score: float
    attention: np.ndarray | None = None


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def length_penalty(length: int, alpha: float) -> float:
    """GNMT's (Wu et al. 2016) ((5 + length) / 6) ** alpha: a beam's score is divided by it."""
    return ((5.0 + length) / 6.0) ** alpha


def greedy(stepper, x, lengths, max_length: int, return_attention: bool = False,
           bos: int = BOS, eos: int = EOS) -> list[Decoded]:
    """The most likely token at each step, until ``<eos>`` or ``max_length`` tokens (``<eos>`` included)."""
    steps = greedy_steps(stepper, x, lengths, max_length, return_attention, bos, eos)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def greedy_steps(stepper, x, lengths, max_length: int, return_attention: bool = False,
                 bos: int = BOS, eos: int = EOS):
    """:func:`greedy` one step at a time (what a server streams): yields each step's new tokens as
    ``[(row, token), ...]`` (``<eos>`` included), and returns the ``Decoded`` rows at the end."""
    lengths = np.asarray(lengths)
    n = len(lengths)
    state = stepper.start(x, lengths)
    rows = np.arange(n)  # which input row each state row decodes
    tokens, scores = [[] for _ in range(n)], np.zeros(n)
    attention: list[list[np.ndarray]] = [[] for _ in range(n)]
    prev = np.full(n, bos, np.int64)
    for _ in range(max_length):
        logits, state, weights = stepper.step(state, prev)
        logp = log_softmax(logits)
        prev = logp.argmax(-1)
        scores[rows] += logp[np.arange(len(rows)), prev]
        for i, r in enumerate(rows):
            if return_attention and weights is not None:
                attention[r].append(weights[i, : lengths[r]])
            if prev[i] != eos:
                tokens[r].append(int(prev[i]))
        yield [(int(r), int(t)) for r, t in zip(rows, prev)]
        going = prev != eos
        if not going.any():
            break
        if not going.all():  # finished rows leave the batch
            keep = np.flatnonzero(going)
            state, rows, prev = stepper.select(state, keep), rows[keep], prev[keep]
    return [Decoded(tokens[r], float(scores[r]), np.stack(attention[r]) if attention[r] else None)
            for r in range(n)]


def beam(stepper, x, lengths, width: int, max_length: int, alpha: float = 1.0, return_attention: bool = False,
         bos: int = BOS, eos: int = EOS) -> list[Decoded]:
    """Beam search: ``width`` hypotheses per row; a row is done when ``width`` hypotheses have ended
    with ``<eos>`` and no hypothesis still going scores better (or at ``max_length`` tokens); the
    best by score / length_penalty wins."""
    lengths = np.asarray(lengths)
    n, k = len(lengths), width
    state = stepper.select(stepper.start(x, lengths), np.repeat(np.arange(n), k))
    scores = np.full((n, k), -np.inf)
    scores[:, 0] = 0.0  # one live hypothesis to start with, not k copies of it
    prev = np.full(n * k, bos, np.int64)
    history: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []  # (tokens, parents, weights) per step
    finished: list[list[tuple[float, float, int, int]]] = [[] for _ in range(n)]  # (score / penalty, score, step, parent * vocab + token)
    done = np.zeros(n, bool)
    for t in range(max_length):
        logits, state, weights = stepper.step(state, prev)
        logp = log_softmax(logits).reshape(n, k, -1)
        vocab = logp.shape[-1]
        total = (scores[:, :, None] + logp).reshape(n, k * vocab)
        order = np.argsort(-total, axis=1, kind="stable")[:, : 2 * k]  # k that go on, even if k end here
        new_tokens, parents = np.full((n, k), eos, np.int64), np.tile(np.arange(k), (n, 1))
        new_scores = np.full((n, k), -np.inf)
        for b in range(n):
            if done[b]:
                continue
            live = 0
            for rank, c in enumerate(order[b]):
                parent, token, score = c // vocab, c % vocab, total[b, c]
                if not np.isfinite(score):
                    break
                if token == eos or t == max_length - 1:
                    if rank < k:  # an ending counts only when it ranks among the best k
                        finished[b].append((score / length_penalty(t + 1, alpha), score, t, int(c)))
                    if token == eos:
                        continue
                if live < k:
                    new_tokens[b, live], parents[b, live], new_scores[b, live] = token, parent, score
                    live += 1
            # done when width hypotheses have ended and none still going scores better now (Hugging
            # Face's rule when early_stopping is off). Stopping at width endings alone lost the best
            # one: two weak hypotheses ended early while it was still being spelled out (numbers
            # en->fr at exact match 0.995 greedy decoded at 0.50 with beam width 3)
            going = new_scores[b].max()
            best = max(e[0] for e in finished[b]) if finished[b] else -np.inf
            done[b] = (t == max_length - 1 or (finished[b] and not np.isfinite(going))
                       or (len(finished[b]) >= k and best >= going / length_penalty(t + 1, alpha)))
        history.append((new_tokens, parents, None if weights is None else weights.reshape(n, k, -1)))
        if done.all():
            break
        scores = new_scores
        rows = (np.arange(n)[:, None] * k + parents).reshape(-1)
        state, prev = stepper.select(state, rows), new_tokens.reshape(-1)
    out = []
    for b in range(n):
        _, score, t, c = max(finished[b], key=lambda e: e[0])
        tokens, attention = trace(history, b, t, *divmod(c, logp.shape[-1]), return_attention)
        if tokens[-1] == eos:
            tokens = tokens[:-1]
        out.append(Decoded(tokens, float(score), attention[:, : lengths[b]] if attention is not None else None))
    return out


def trace(history, b: int, t: int, row: int, token: int, return_attention: bool):
    """The tokens (and attention) of the hypothesis that ``row`` of row group ``b`` extended with
    ``token`` at step ``t``, read back through each step's (tokens, parents, weights)."""
    tokens, weights = [int(token)], [history[t][2][b, row] if return_attention and history[t][2] is not None else None]
    for s in range(t - 1, -1, -1):
        step_tokens, parents, step_weights = history[s]
        tokens.append(int(step_tokens[b, row]))
        row = parents[b, row]
        weights.append(step_weights[b, row] if weights[0] is not None else None)
    return tokens[::-1], (np.stack(weights[::-1]) if weights[0] is not None else None)


def runtime(framework: str):
    """The seq2seq module of a runtime ('numpy', 'torch', 'tensorflow'/'keras'):
    ``build``, ``logits``, ``Stepper`` and, for those that train, ``Fitter``."""
    import importlib

    from cellforge.backends import get_backend

    return importlib.import_module(f"{get_backend(framework).__name__}.seq2seq")


def run(spec, stepper, x, lengths, *, strategy: str | None = None, beam_width: int | None = None,
        return_attention: bool = False, batch_size: int = 256) -> list[Decoded]:
    """Decode model-ready inputs as ``spec.decode`` says (``strategy``/``beam_width`` override it),
    ``batch_size`` rows at a time."""
    d = spec.decode
    strategy = strategy or d.strategy
    width = beam_width or (d.width if strategy == d.strategy else 5)
    max_length = d.max_length or spec.target.max_length
    lengths = np.asarray(lengths)
    out: list[Decoded] = []
    for s in range(0, len(lengths), batch_size):
        lb = lengths[s: s + batch_size]
        xb = x[s: s + batch_size][:, : int(lb.max())]
        if strategy == "beam":
            out += beam(stepper, xb, lb, width, max_length, d.alpha, return_attention)
        else:
            out += greedy(stepper, xb, lb, max_length, return_attention)
    return out


def check_texts(inputs) -> list[str]:
    """A seq2seq model's inputs: a list of non-empty strings. Raises SpecError naming ``inputs.<i>``."""
    from cellforge.errors import SpecError

    if isinstance(inputs, str) or not isinstance(inputs, (list, tuple)):
        raise SpecError([("inputs", f"expected a list of strings, got {type(inputs).__name__}")], what="input")
    if not inputs:
        raise SpecError([("inputs", "expected at least one string, got an empty list")], what="input")
    problems = []
    for i, t in enumerate(inputs):
        if not isinstance(t, str):
            problems.append((f"inputs.{i}", f"expected a string, got {type(t).__name__}"))
        elif not t.strip():
            problems.append((f"inputs.{i}", "expected a non-empty string, got an empty one"))
    if problems:
        raise SpecError(problems, what="input")
    return list(inputs)


def prepare(spec, preprocessor, inputs) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Checked strings and their model arrays (x, lengths). Raises SpecError naming ``inputs.<i>``
    for a wrong type, an empty string or one over ``input.max_length`` tokens."""
    from cellforge.errors import SpecError

    texts = check_texts(inputs)
    limit = spec.input.max_length
    if limit is not None:
        long = [(f"inputs.{i}", f"{len(preprocessor.tokenize(t))} tokens, over input.max_length ({limit})")
                for i, t in enumerate(texts) if len(preprocessor.tokenize(t)) > limit]
        if long:
            raise SpecError(long, what="input")
    x, lengths = preprocessor.transform(texts)
    return texts, x, lengths


def piece(target_state, token: int, first: bool) -> str:
    """What ``token`` adds to the decoded text (:func:`cellforge.data.targets.decode`'s join), so
    a stream's pieces join to the same text: '' for ``<eos>``/``<pad>``/``<bos>``, a word after the
    first with its space."""
    from cellforge.seq2seq import SPECIALS, UNK

    if token != UNK and token < len(SPECIALS):
        return ""
    word = target_state["vocab"][token]
    return word if first or target_state["tokenizer"] == "char" else " " + word


def answers(preprocessor, texts: list[str], lengths, decoded: list[Decoded], return_attention: bool) -> list:
    """Decoded rows -> strings, or with ``return_attention`` one dict per input (see :func:`translate`)."""
    from cellforge.data import targets

    state = preprocessor.state["target"]
    if not return_attention:
        return [targets.decode(state, d.tokens) for d in decoded]
    out = []
    for text, n, d in zip(texts, lengths, decoded):
        words = [state["vocab"][t] for t in d.tokens] + ["<eos>"]
        rows = 0 if d.attention is None else len(d.attention)
        out.append({"text": targets.decode(state, d.tokens), "input_tokens": preprocessor.tokenize(text)[: int(n)],
                    "output_tokens": words[: rows or len(d.tokens)],
                    "attention": d.attention if d.attention is not None else np.zeros((0, int(n)), np.float32)})
    return out


def translate(spec, preprocessor, stepper, inputs, *, return_attention: bool = False, strategy: str | None = None,
              beam_width: int | None = None) -> list:
    """Raw strings in, decoded strings out (``spec.decode`` unless overridden); with
    ``return_attention`` one dict per input: ``text``, ``input_tokens``, ``output_tokens`` (the
    decoded tokens, ``<eos>`` when reached) and ``attention``, (output tokens x input tokens)."""
    texts, x, lengths = prepare(spec, preprocessor, inputs)
    decoded = run(spec, stepper, x, lengths, strategy=strategy, beam_width=beam_width,
                  return_attention=return_attention)
    return answers(preprocessor, texts, lengths, decoded, return_attention)
