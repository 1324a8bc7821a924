"""Interpretability: attributions (:mod:`.explain`, Captum on the PyTorch runtime), hidden states
and gates step by step (:mod:`.trace`, the numpy reference), and their plots (:mod:`.plots`,
also ``cf.plot``). ``Model.explain`` and ``Model.trace`` take raw inputs and call these.

    >>> model = cf.load(bundle)                                   # doctest: +SKIP
    >>> model.explain(images[:1], method="integrated_gradients").plot()   # doctest: +SKIP
    >>> cf.plot.states(model.trace(images[:4]))                    # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from cellforge.interpret.explain import METHODS, N_STEPS, Explanation, explain
from cellforge.interpret.trace import Trace, input_tokens, trace


def explain_model(model, inputs: Any, method: str = "integrated_gradients", **options) -> Explanation:
    """``model.explain``: attributions for raw ``inputs`` (what ``model.predict`` takes); a
    ``baseline`` in ``options`` is raw too, one per input, preprocessed like them."""
    x, lengths = model.preprocessor.transform(inputs)
    if options.get("baseline") is not None:
        base, base_lengths = model.preprocessor.transform(options["baseline"])
        if base.shape != x.shape or (base_lengths != lengths).any():
            raise ValueError(f"baseline: expected one per input with the same lengths {lengths.tolist()}, "
                             f"got lengths {base_lengths.tolist()}")
        options["baseline"] = base
    ex = explain(model.spec, model.weights, x, lengths, method, **options)
    ex.tokens = input_tokens(model, inputs, lengths)
    ex.prediction = model.preprocessor.decode(model.outputs(x, lengths), lengths)
    return ex


def trace_model(model, inputs: Any) -> Trace:
    """``model.trace``: hidden states and gate activations for raw ``inputs``."""
    x, lengths = model.preprocessor.transform(inputs)
    t = trace(model.spec, model.weights, x, lengths)
    t.tokens = input_tokens(model, inputs, lengths)
    if t.outputs is not None:
        t.prediction = model.preprocessor.decode(t.outputs, lengths)
    return t


__all__ = ["METHODS", "N_STEPS", "Explanation", "Trace", "explain", "explain_model", "input_tokens", "trace",
           "trace_model"]
