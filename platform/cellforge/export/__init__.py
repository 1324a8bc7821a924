"""A bundle as a file that runs outside Python and Ray: ONNX (whole sequences, or one step with the
recurrent state as inputs and outputs) or a TensorFlow SavedModel, with its preprocessing beside
it as plain JSON.

    >>> out = export(bundle, "digits.onnx")                             # a digits classifier's bundle
    >>> sorted(p.name for p in out.values())
    ['digits.onnx', 'digits.preprocessing.json']

The ONNX graphs come from :mod:`cellforge.backends.onnx.graph` (why not ``torch.onnx``: see there);
int8 bundles made by ``cellforge compress`` export their own quantized graphs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from cellforge import bundle as _bundle
from cellforge.errors import SpecError

FORMATS = ("onnx", "savedmodel")
GRAPH, STEP_GRAPH = "model.onnx", "model.step.onnx"  # a compressed bundle's own graphs


def export(bundle: str | Path, out: str | Path, format: str = "onnx", step: bool = False) -> dict[str, Path]:
    """Write ``bundle``'s network to ``out`` and its preprocessing to ``<out stem>.preprocessing.json``.

    Args:
        format: 'onnx' or 'savedmodel' (a directory, for TF Serving; whole sequences).
        step: ONNX only: the single-step graph ``(x, state.<layer>.<h|c>) -> (outputs, state_out...)``
            of a unidirectional model, instead of the whole-sequence graph ``(x, lengths) -> outputs``.

    Returns: {"model": the graph file (or SavedModel directory), "preprocessing": the JSON file}.
    Raises: SpecError naming the field (format, step) when the bundle cannot be exported so.
    """
    if format not in FORMATS:
        raise SpecError([("format", f"unknown export format {format!r}; known formats: {list(FORMATS)}")],
                        what="export")
    spec, weights, state, metrics = _bundle.read(bundle)
    problems = []
    if step and format != "onnx":
        problems.append(("step", f"a single-step graph is an ONNX export; format {format!r} exports whole sequences"))
    if step and spec.bidirectional:
        problems.append(("step", "a bidirectional model cannot be exported as a single-step graph: its backward "
                                 "direction reads the whole sequence; export it without --step"))
    if spec.task == "seq2seq":
        problems.append(("bundle", "a seq2seq model cannot be exported yet: its decoder's search runs in Python"))
    if problems:
        raise SpecError(problems, what="export")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if format == "onnx":
        own = Path(bundle) / (STEP_GRAPH if step else GRAPH)
        if own.exists():  # a compressed bundle: its quantized graph, as measured
            shutil.copyfile(own, out)
        else:
            from cellforge.backends.onnx.graph import sequence_graph, step_graph

            out.write_bytes((step_graph if step else sequence_graph)(spec, weights).SerializeToString())
    else:
        savedmodel(spec, weights, out)
    pre = out.with_name(out.stem + ".preprocessing.json")
    pre.write_text(json.dumps(describe(spec, state, format, step, metrics), indent=1))
    return {"model": out, "preprocessing": pre}


def describe(spec, state: dict[str, Any], format: str, step: bool, metrics: dict[str, Any]) -> dict[str, Any]:
    """What a non-Python caller needs beside the graph: its inputs and outputs, and the bundle's preprocessing
    (``preprocessing``: scaler, vocabulary and tokenizer, class labels, window — see cellforge.data.preprocess)."""
    from cellforge.backends.onnx.graph import state_names

    text = spec.input.type == "text"
    x = "token ids (batch, time) int64" if text else f"(batch, time, {spec.input.num_features}) float32, scaled"
    if step:
        io = {"inputs": {"x": x.replace("time", "steps"),
                         **{n: f"(batch, {spec.hidden_size}) float32, zeros to start" for n in state_names(spec)}},
              "outputs": {"outputs": f"(batch, steps, {spec.output_size}) float32: each step's answer so far",
                          **{"state_out" + n[len("state"):]: "feed back as " + n for n in state_names(spec)}}}
    else:
        out = "(batch, time, classes)" if spec.task == "tag" else f"(batch, {spec.output_size})"
        io = {"inputs": {"x": x + "; padding after each length is ignored", "lengths": "(batch,) int64"},
              "outputs": {"outputs": out + " float32: logits (classify/tag) or scaled values"}}
    return {"format": format, "single_step": step, "task": spec.task, "cell": spec.cell, **io,
            "preprocessing": state, "compression": metrics.get("compression")}


def savedmodel(spec, weights, out: Path) -> Path:
    """A TensorFlow SavedModel with a ``serve`` signature ``(x, lengths) -> outputs``, via Keras 3's export."""
    import keras
    import tensorflow as tf

    from cellforge.backends.keras.model import build

    net = build(spec, weights)
    text = spec.input.type == "text"
    net(np.zeros((1, 1) if text else (1, 1, spec.input.num_features), np.int64 if text else np.float32),
        np.ones(1, np.int64))  # Keras exports built models only
    dtype = tf.int64 if spec.input.type == "text" else tf.float32
    x_shape = [None, None] if spec.input.type == "text" else [None, None, spec.input.num_features]
    archive = keras.export.ExportArchive()
    archive.track(net)
    archive.add_endpoint("serve", lambda x, lengths: net(x, lengths, training=False),
                         input_signature=[tf.TensorSpec(x_shape, dtype, name="x"),
                                          tf.TensorSpec([None], tf.int64, name="lengths")])
    if out.exists():
        shutil.rmtree(out)
    archive.write_out(str(out), verbose=False)
    return out
