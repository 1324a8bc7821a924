"""A loaded bundle: raw inputs in, predictions out, in the framework of your choice.

    >>> model = cf.load(bundle)                       # a digits classifier's bundle
    >>> model.predict(images[:3]).shape               # one label per raw 8x8 image
    (3,)
    >>> model.predict_proba(images[:3]).shape
    (3, 10)
    >>> cf.load(bundle, framework="torch").outputs(*model.preprocessor.transform(images[:3])).shape
    (3, 10)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cellforge import bundle as _bundle
from cellforge import decode
from cellforge.anomaly import scores as anomaly_scores
from cellforge.backends import get_backend
from cellforge.data import Preprocessor
from cellforge.errors import SpecError


class Model:
    """Predict from a bundle. ``framework``: the runtime — 'torch', 'tensorflow', 'numpy' or 'onnx'
    (default: the framework it was trained in). ``net`` is that runtime's network."""

    def __init__(self, path: str | Path, framework: str | None = None, verify_key: str | Path | None = None):
        self.path = Path(path)
        self.spec, self.weights, state, self.metrics = _bundle.read(self.path, verify_key)
        self.preprocessor = Preprocessor(state)
        self.framework = framework or self.spec.framework
        self.backend = get_backend(self.framework)
        self.net = (self.backend.build(self.spec, self.weights) if self.spec.task != "seq2seq"
                    else decode.runtime(self.framework).build(self.spec, self.weights))
        if self.framework == "onnx" and (self.path / "model.onnx").exists():
            self.net.graph_file = self.path / "model.onnx"  # a compressed bundle runs its own (int8) graph

    def __repr__(self) -> str:
        s = self.spec
        return f"Model({self.path.name}: {s.task} {s.cell} x{s.num_layers} h={s.hidden_size}, runtime={self.framework})"

    def outputs(self, x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Raw network outputs (logits / scaled values) for model-ready arrays."""
        return self.backend.predict(self.net, x, lengths)

    def predict_details(self, inputs: Any) -> dict[str, Any]:
        """Labels and probabilities (classify/tag) or values (regress/forecast), for raw inputs."""
        x, lengths = self.preprocessor.transform(inputs)
        return self.preprocessor.decode(self.outputs(x, lengths), lengths)

    def predict(self, inputs: Any, **options):
        """Class labels, per-step tags, or values in the data's own units; transcribe: transcripts
        (greedy CTC decoding; ``transcribe`` for beam search); seq2seq: strings
        (``options``: ``return_attention``, ``strategy``, ``beam_width``; see ``translate``)."""
        if self.spec.task == "seq2seq":
            return self.translate(inputs, **options)
        out = self.predict_details(inputs)
        if "texts" in out:  # transcribe
            return out["texts"]
        if "values" in out:
            return out["values"]
        return out["labels"] if self.spec.task == "tag" else np.asarray(out["labels"])

    def translate(self, inputs: list[str], *, return_attention: bool = False, strategy: str | None = None,
                  beam_width: int | None = None) -> list:
        """seq2seq: decoded strings, or with ``return_attention`` a dict per input with the text and
        its (output tokens x input tokens) attention matrix (:func:`cellforge.decode.translate`)."""
        stepper = decode.runtime(self.framework).Stepper(self.net)
        return decode.translate(self.spec, self.preprocessor, stepper, inputs, return_attention=return_attention,
                                strategy=strategy, beam_width=beam_width)

    def transcribe(self, inputs: Any, strategy: str = "greedy", beam_width: int = 8) -> list[str]:
        """transcribe: one transcript per clip, decoded greedily or by CTC prefix beam search."""
        from cellforge import ctc

        if self.spec.task != "transcribe":
            raise SpecError([("task", f"transcribing needs a model of task 'transcribe', this one's is "
                                      f"{self.spec.task!r}")], what="model")
        if strategy not in ("greedy", "beam"):
            raise SpecError([("strategy", f"expected 'greedy' or 'beam', got {strategy!r}")], what="model")
        x, lengths = self.preprocessor.transform(inputs)
        return ctc.transcripts(self.preprocessor.state["target"], self.outputs(x, lengths), lengths, strategy,
                               beam_width)

    # anomaly: cellforge.anomaly.scores ------------------------------------------------------
    def score(self, series: Any, per_feature: bool = False):
        """One anomaly score per step of ``series`` ((T,) or (T, F) values, a Series or a DataFrame),
        aligned with it; NaN on the warm-up steps before the first full window. ``per_feature``:
        also each feature's standardised error, (T, F)."""
        scores, features = anomaly_scores.score_series(self.outputs, self.anomaly_state(), series)
        return (scores, features) if per_feature else scores

    def detect(self, series: Any, threshold: float | None = None) -> anomaly_scores.Detection:
        """Scores, flags (score above the calibrated threshold, or ``threshold``) and the flagged
        intervals of ``series``: a ``Detection`` (``.frame()``, ``.metrics(labels)``)."""
        return anomaly_scores.detect(self.outputs, self.anomaly_state(), series, threshold)

    def anomaly_state(self) -> dict[str, Any]:
        """The preprocessing state of an anomaly model (refuses any other)."""
        if self.spec.task != "anomaly":
            raise SpecError([("task", f"scoring anomalies needs a model of task 'anomaly', this one's is "
                                      f"{self.spec.task!r}")], what="model")
        return self.preprocessor.state

    def predict_proba(self, inputs: Any):
        return self.predict_details(inputs)["probabilities"]

    # interpretability: cellforge.interpret -------------------------------------------------
    def explain(self, inputs: Any, method: str = "integrated_gradients", **options):
        """Attributions per step and feature (per token for text) for raw ``inputs``: an
        ``Explanation`` (``.plot()``). Methods: 'integrated_gradients', 'gradient_x_input',
        'occlusion'; computed with Captum on the PyTorch runtime whatever this model's runtime."""
        from cellforge.interpret import explain_model

        return explain_model(self, inputs, method, **options)

    def trace(self, inputs: Any):
        """Hidden states and gate activations per layer and step (the numpy reference): a ``Trace``."""
        from cellforge.interpret import trace_model

        return trace_model(self, inputs)


def load(path: str | Path, framework: str | None = None, verify_key: str | Path | None = None) -> Model:
    """Verify and load a bundle; refuses one that is tampered with or incomplete, and with a verify key
    (``verify_key``, a public key PEM, or ``$CELLFORGE_VERIFY_KEY``) one that is not signed by its owner."""
    return Model(path, framework, verify_key)
