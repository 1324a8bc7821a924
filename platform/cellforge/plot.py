"""``cf.plot``: notebook plots of what a model computed (matplotlib, loaded when a plot is drawn).

    >>> cf.plot.states(model.trace(x))          # doctest: +SKIP
    >>> cf.plot.explanation(model.explain(x))   # doctest: +SKIP
    >>> cf.plot.attention(seq2seq_model, "twenty-one")   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any


def states(trace, layer: int = -1, max_sequences: int = 20):
    """PCA trajectories of a ``Trace``'s hidden states and its gates' saturation."""
    from cellforge.interpret.plots import states as draw

    return draw(trace, layer, max_sequences)


def explanation(ex, index: int = 0, ax=None):
    """An ``Explanation``'s heatmap over the input, the prediction beside it."""
    return ex.plot(index, ax)


def attention(model, text: Any, ax=None):
    """A seq2seq model's attention map for one input: rows = output tokens, columns = input tokens."""
    from cellforge.interpret.plots import attention as attention_map

    return attention_map(model, text).plot(ax)
