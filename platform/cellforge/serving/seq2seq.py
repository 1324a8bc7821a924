"""A seq2seq endpoint's part of the engine: strings in, strings out, batched or streamed.

Requests that arrive together are decoded as one padded batch per decoding (strategy, beam width),
beam search included (:func:`cellforge.decode.run`); a streamed request decodes greedily on its own
and sends each piece of text as soon as its step is done.

    >>> tr = Translator(cf.load(bundle), max_length=200)        # a seq2seq bundle   # doctest: +SKIP
    >>> texts, x, lengths = tr.prepare(["thirteen"], {})                              # doctest: +SKIP
    >>> tr.respond(tr.run([(x, lengths, tr.decoding({}), False)])[0], texts, lengths, False)  # doctest: +SKIP
    {'texts': ['treize']}
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import numpy as np

from cellforge import decode
from cellforge.errors import SpecError
from cellforge.serving.schema import InputError, Problem


class Translator:
    """Decoding for one deployment: ``model`` a loaded seq2seq bundle (numpy, torch or Keras runtime),
    ``max_length`` the deployment's longest input in tokens (the spec's ``input.max_length`` too)."""

    def __init__(self, model, max_length: int):
        self.spec, self.pre = model.spec, model.preprocessor
        self.stepper = decode.runtime(model.framework).Stepper(model.net)
        self.max_length = min(max_length, self.spec.input.max_length or max_length)

    def decoding(self, options: dict[str, Any]) -> tuple[str, int]:
        """(strategy, beam width) of a request: its own, else the spec's."""
        d = self.spec.decode
        strategy = options.get("strategy") or d.strategy
        return strategy, options.get("beam_width") or (d.width if strategy == d.strategy else 5)

    def prepare(self, inputs: list[Any], options: dict[str, Any]) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Checked strings and their arrays; InputError (422) names each bad field."""
        problems = []
        strategy = options.get("strategy") or self.spec.decode.strategy
        if options.get("beam_width") and strategy != "beam":
            problems.append(Problem(field="beam_width", message="only used by strategy 'beam', got strategy "
                                                                f"{strategy!r}"))
        if options.get("stream") and strategy != "greedy":
            # a beam's best hypothesis is known only at its end: there is nothing to stream before it
            problems.append(Problem(field="stream", message="streaming decodes greedily; send \"strategy\": "
                                                            f"\"greedy\" (this model decodes with {strategy!r})"))
        for i, t in enumerate(inputs):
            n = len(self.pre.tokenize(t)) if isinstance(t, str) else 0
            if n > self.max_length:
                problems.append(Problem(field=f"inputs.{i}", message=f"{n} tokens is longer than the maximum "
                                                                     f"{self.max_length}"))
        try:
            texts, x, lengths = decode.prepare(self.spec, self.pre, inputs)
        except SpecError as e:
            problems = [Problem(field=f, message=m) for f, m in e.problems] + problems
            texts = x = lengths = None
        if problems:
            raise InputError(problems)
        return texts, x, lengths

    def run(self, items: list[tuple]) -> list[list[decode.Decoded]]:
        """Several requests' ``(x, lengths, (strategy, width), return_attention)``: one padded batch
        per decoding; each request's decoded rows."""
        out: list[Any] = [None] * len(items)
        groups = defaultdict(list)
        for i, (_, _, how, _) in enumerate(items):
            groups[how].append(i)
        for (strategy, width), idx in groups.items():
            steps = max(items[i][0].shape[1] for i in idx)
            x = np.concatenate([np.pad(items[i][0], [(0, 0), (0, steps - items[i][0].shape[1])]) for i in idx])
            lengths = np.concatenate([items[i][1] for i in idx])
            rows = decode.run(self.spec, self.stepper, x, lengths, strategy=strategy, beam_width=width,
                              return_attention=any(items[i][3] for i in idx))
            ends = np.cumsum([len(items[i][1]) for i in idx])
            for i, end in zip(idx, ends):
                out[i] = rows[end - len(items[i][1]): end]
        return out

    def respond(self, rows: list[decode.Decoded], texts: list[str], lengths, return_attention: bool) -> dict[str, Any]:
        """Decoded rows -> the JSON fields of a prediction: ``texts`` (and ``attention``)."""
        answers = decode.answers(self.pre, texts, lengths, rows, return_attention)
        if not return_attention:
            return {"texts": answers}
        return {"texts": [a["text"] for a in answers],
                "attention": [{"input_tokens": a["input_tokens"], "output_tokens": a["output_tokens"],
                               "weights": np.asarray(a["attention"], np.float64).tolist()} for a in answers]}

    def stream(self, texts: list[str], x: np.ndarray, lengths: np.ndarray, return_attention: bool) -> Iterator[dict]:
        """Greedy decoding as events: ``{"index", "token"}`` for each piece of text as its step ends
        (the pieces of an input join to its text), then ``{"done": True, "texts", ...}``."""
        target = self.pre.state["target"]
        limit = self.spec.decode.max_length or self.spec.target.max_length
        steps = decode.greedy_steps(self.stepper, x, lengths, limit, return_attention)
        started = [False] * len(texts)
        while True:
            try:
                new = next(steps)
            except StopIteration as done:
                rows = done.value
                break
            for r, t in new:
                piece = decode.piece(target, t, first=not started[r])
                if piece:
                    started[r] = True
                    yield {"index": r, "token": piece}
        yield {"done": True, **self.respond(rows, texts, lengths, return_attention)}
