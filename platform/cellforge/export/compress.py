"""Smaller bundles: magnitude pruning (with optional fine-tuning on Ray Train) and int8 quantization.

    cellforge compress runs/quickstart/bundle --data digits --quantize int8 --prune 0.5 --finetune 2 --out runs/digits-small

The result is a new bundle: its float weights (pruned, when asked), its preprocessing, and with
``quantize: int8`` the int8 ONNX graphs ``model.onnx`` (whole sequences) and ``model.step.onnx``
(unidirectional models), which the ``onnx`` runtime runs. ``metrics.json`` records what was done
under ``compression``, with the original's and the new bundle's metrics on the same test split.

Quantization is ONNX Runtime's dynamic quantization (``quantize_dynamic``: int8 weights, activations
quantized on the fly), which has int8 kernels for its LSTM and MatMul; PyTorch's eager
``quantize_dynamic`` is deprecated. Pruning zeroes each weight matrix's smallest-magnitude entries
(biases are kept); fine-tuning then trains every weight for a few epochs from the pruned ones and
the result is pruned again to the target sparsity, so the bundle is exactly that sparse.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from cellforge import bundle as _bundle
from cellforge.errors import SpecError
from cellforge.export import GRAPH, STEP_GRAPH
from cellforge.log import log

QUANTIZE = ("int8",)


def prune_weights(weights: dict[str, np.ndarray], sparsity: float) -> dict[str, np.ndarray]:
    """Zero the ``sparsity`` fraction of smallest-magnitude entries of every weight matrix (ndim >= 2).

        >>> w = prune_weights({"head.weight": np.arange(1.0, 9.0).reshape(2, 4), "head.bias": np.ones(2)}, 0.5)
        >>> w["head.weight"].tolist(), w["head.bias"].tolist()
        ([[0.0, 0.0, 0.0, 0.0], [5.0, 6.0, 7.0, 8.0]], [1.0, 1.0])
    """
    out = {}
    for name, w in weights.items():
        w = np.asarray(w, np.float32)
        if w.ndim >= 2 and sparsity > 0:
            k = int(round(sparsity * w.size))
            order = np.argsort(np.abs(w), axis=None, kind="stable")[:k]
            w = w.copy()
            w.flat[order] = 0.0
        out[name] = w
    return out


def sparsity_of(weights: dict[str, np.ndarray]) -> float:
    mats = [w for w in weights.values() if w.ndim >= 2]
    return float(sum((w == 0).sum() for w in mats) / max(1, sum(w.size for w in mats)))


def quantize_int8(model) -> bytes:
    """An ONNX ModelProto quantized by ONNX Runtime (dynamic, int8 weights); returns the new model's bytes."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / "float.onnx", Path(d) / "int8.onnx"
        src.write_bytes(model.SerializeToString())
        # the quantizer logs a "consider pre-processing" hint to the root logger on every call (for
        # image models: shape inference + graph fusion; our graphs are already in fused form)
        logging.disable(logging.WARNING)
        try:
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
        finally:
            logging.disable(logging.NOTSET)
        return dst.read_bytes()


def check(source: str | Path, quantize: str | None, prune: float | None, finetune: int) -> None:
    """Refuse, before anything runs, what cannot be done (every problem named by its field)."""
    problems = []
    if quantize is None and not prune:
        problems.append(("quantize", "nothing to do: give quantize: int8 and/or prune: <sparsity in (0, 1)>"))
    if quantize is not None and quantize not in QUANTIZE:
        problems.append(("quantize", f"unknown quantization {quantize!r}; known: {list(QUANTIZE)}"))
    if prune is not None and not 0 <= prune < 1:
        problems.append(("prune", f"expected a sparsity in [0, 1), got {prune!r}"))
    if finetune and not prune:
        problems.append(("finetune", "fine-tuning follows pruning: give prune too"))
    _, _, _, metrics = _bundle.read(source)
    done = (metrics.get("compression") or {}).get("quantize")
    if quantize is not None and (done or (Path(source) / GRAPH).exists()):
        problems.append(("quantize", f"bundle {source} is already quantized ({done or 'int8'}): quantize its "
                                     f"original, {(metrics.get('compression') or {}).get('source', 'the float bundle')}"))
    if problems:
        raise SpecError(problems, what="compress")


def compress(source: str | Path, data: Any, out: str | Path, quantize: str | None = None, prune: float | None = None,
             finetune: int = 0, workers: int = 1, address: str | None = None) -> dict[str, Any]:
    """Prune and/or quantize ``source`` into a new bundle at ``out``; returns its ``compression`` record.

    Args:
        data: the data the bundle was trained on (a built-in data set, a file...): the test split it was
            scored on measures both bundles, and fine-tuning trains on its training split.
        quantize: 'int8', or None.
        prune: the fraction of each weight matrix to zero (0.5 = half), or None.
        finetune: epochs of training after pruning, on Ray Train with ``workers`` workers.
    """
    import onnx

    from cellforge.backends.onnx.graph import sequence_graph, step_graph
    from cellforge.evaluate import evaluate

    check(source, quantize, prune, finetune)
    spec, weights, state, metrics = _bundle.read(source)
    source_digest = _bundle.digest(source)
    record: dict[str, Any] = {"source": str(source), "source_version": source_digest[:12],
                              "quantize": quantize, "prune": prune, "finetune": finetune}
    # the compressed bundle comes from the same run and data as its source, and says which bundle it was
    provenance = {**_bundle.verify(source, signature=False).get("provenance", {}), "compressed_from": source_digest}
    if prune:
        weights = prune_weights(weights, prune)
        if finetune:
            weights = _finetune(spec, weights, data, finetune, workers, address)
            weights = prune_weights(weights, prune)
        record["sparsity"] = round(sparsity_of(weights), 4)
    extra = {}
    if quantize:
        float_graph = sequence_graph(spec, weights)
        extra[GRAPH] = quantize_int8(float_graph)
        if not spec.bidirectional:
            extra[STEP_GRAPH] = quantize_int8(step_graph(spec, weights))
        record["quantizer"] = "onnxruntime.quantization.quantize_dynamic (QInt8 weights)"
        record["size_bytes"] = {"float32": len(float_graph.SerializeToString()), "int8": len(extra[GRAPH])}
        # what ORT turned into int8 kernels: LSTM and MatMul (a GRU/RNN layer or a Scan cell stays float)
        record["int8_ops"] = sorted({n.op_type for n in onnx.load_from_string(extra[GRAPH]).graph.node
                                     if "Integer" in n.op_type or n.op_type.startswith("DynamicQuantize")})
    out = Path(out)
    _bundle.save(out, spec, weights, state, {**metrics, "compression": record}, extra, provenance)
    before = evaluate(source, data, "test", "onnx")
    after = evaluate(out, data, "test", "onnx")
    record["test"] = {"original": before, "compressed": after}
    # metrics.json records the measurement: rewrite the bundle with it (same weights and graphs)
    _bundle.save(out, spec, weights, state, {**metrics, "test": after, "compression": record}, extra, provenance)
    log.info("compressed %s -> %s: %s", source, out, "  ".join(
        f"{k} {before[k]:.4g} -> {after[k]:.4g}" for k in after if k in before))
    return record


def _finetune(spec, weights, data, epochs: int, workers: int, address: str | None) -> dict[str, np.ndarray]:
    """A few epochs on Ray Train starting from ``weights`` (the spec's own optimizer and schedule)."""
    from cellforge.train.fit import fit

    with tempfile.TemporaryDirectory() as d:
        result = fit(spec, data, workers=workers, epochs=epochs, name="finetune", storage_path=d,
                     bundle_path=Path(d) / "bundle", address=address, init_weights=weights)
        return _bundle.read(result.bundle)[1]
