"""``cellforge compress`` on the session's trained digits LSTM: int8 and pruning + fine-tuning on Ray Train
stay within a point of accuracy of the float32 original on the same test split."""

import json

import pytest

import cellforge as cf


@pytest.fixture(scope="module")
def digits(digits_runs):
    return digits_runs("torch", 2).bundle


@pytest.mark.slow  # make test-all: int8 through ONNX Runtime on the test split (~45 s); make test compresses with the command below
def test_int8_is_within_a_point_and_3x_smaller(digits, tmp_path):
    from cellforge.export.compress import compress

    record = compress(digits, cf.datasets.load("digits"), tmp_path / "int8", quantize="int8")
    before, after = (record["test"][k]["test_accuracy"] for k in ("original", "compressed"))
    assert before > 0.9 and abs(after - before) <= 0.01, record["test"]
    assert record["size_bytes"]["float32"] / record["size_bytes"]["int8"] >= 3, record["size_bytes"]
    small = cf.load(tmp_path / "int8", framework="onnx")
    assert small.metrics["test"]["test_accuracy"] == after
    images = cf.datasets.load("digits").x[:5]  # a session on the int8 step graph answers as its sequence graph
    x, _ = small.preprocessor.transform(images)
    steps, _ = small.backend.step(small.net, x)
    assert (steps[:, -1].argmax(-1) == small.predict(images)).all()
    # it keeps its source's provenance (run, data fingerprint, code) and names the bundle it came from
    from cellforge import bundle

    source, out = bundle.verify(digits)["provenance"], bundle.verify(tmp_path / "int8")["provenance"]
    assert source and out == {**source, "compressed_from": bundle.digest(digits)}


def test_prune_half_and_finetune_two_epochs_with_the_command(digits, tmp_path, capsys):
    from cellforge.cli import main

    assert main(["compress", str(digits), "--data", "digits", "--prune", "0.5", "--finetune", "2",
                 "--out", str(tmp_path / "pruned")]) == 0
    record = json.loads((tmp_path / "pruned" / "metrics.json").read_text())["compression"]
    before, after = (record["test"][k]["test_accuracy"] for k in ("original", "compressed"))
    assert abs(after - before) <= 0.01 and record["sparsity"] == pytest.approx(0.5, abs=1e-3), record
    assert record["finetune"] == 2 and record["quantize"] is None
    assert cf.load(tmp_path / "pruned").predict(cf.datasets.load("digits").x[:3]).shape == (3,)
