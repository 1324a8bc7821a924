"""int8 quantization and pruning without Ray (fine-tuning runs in tests/integration/test_compress_digits.py)."""

import numpy as np
import pytest

import cellforge as cf
from cellforge import bundle
from cellforge.backends import numpy as ref
from cellforge.data import prepare
from cellforge.errors import SpecError
from cellforge.export.compress import compress, prune_weights, sparsity_of


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    data = cf.datasets.load("digits")
    spec, prepared = prepare(cf.ModelSpec(task="classify", cell="lstm", hidden_size=64), data)
    path = bundle.save(tmp_path_factory.mktemp("b") / "digits", spec, ref.init_params(spec, 5),
                       prepared.preprocessor.state, {})
    return path, data


def test_int8_bundle_is_smaller_answers_close_and_records_what_was_done(digits, tmp_path):
    path, data = digits
    record = compress(path, data, tmp_path / "small", quantize="int8", prune=0.25)
    sizes = record["size_bytes"]
    assert sizes["float32"] / sizes["int8"] >= 3, sizes
    assert record["int8_ops"] == ["DynamicQuantizeLSTM", "DynamicQuantizeLinear", "MatMulInteger"]
    assert (tmp_path / "small" / "model.onnx").stat().st_size == sizes["int8"]
    assert record["sparsity"] == pytest.approx(0.25, abs=1e-3) and set(record["test"]) == {"original", "compressed"}
    small = cf.load(tmp_path / "small", framework="onnx")
    assert small.metrics["compression"] == record and small.net.graph_file.name == "model.onnx"
    x, lengths = small.preprocessor.transform(data.x[:50])
    pruned = ref.forward(small.spec, small.weights, x, lengths)
    assert np.abs(small.outputs(x, lengths) - pruned).max() < 0.05  # int8 rounding, not another model
    assert sparsity_of(small.weights) == pytest.approx(0.25, abs=1e-3)
    with pytest.raises(SpecError, match="quantize: bundle .* is already quantized"):
        compress(tmp_path / "small", data, tmp_path / "again", quantize="int8")


@pytest.mark.parametrize("kwargs,message", [
    ({}, "quantize: nothing to do"),
    ({"quantize": "int4"}, "quantize: unknown quantization 'int4'"),
    ({"prune": 1.5}, r"prune: expected a sparsity in \[0, 1\)"),
    ({"quantize": "int8", "finetune": 2}, "finetune: fine-tuning follows pruning"),
])
def test_bad_requests_name_the_field(digits, tmp_path, kwargs, message):
    with pytest.raises(SpecError, match=message):
        compress(digits[0], digits[1], tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_pruning_keeps_biases_and_hits_the_target_per_matrix():
    rng = np.random.default_rng(0)
    w = prune_weights({"a": rng.normal(size=(10, 10)), "b": rng.normal(size=10)}, 0.3)
    assert (w["a"] == 0).sum() == 30 and (w["b"] != 0).all()
