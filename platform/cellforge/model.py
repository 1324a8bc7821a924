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
from cellforge.backends import get_backend
from cellforge.data import Preprocessor


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
        """Class labels, per-step tags, or values in the data's own units; seq2seq: strings
        (``options``: ``return_attention``, ``strategy``, ``beam_width``; see ``translate``)."""
        if self.spec.task == "seq2seq":
            return self.translate(inputs, **options)
        out = self.predict_details(inputs)
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
