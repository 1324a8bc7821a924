"""``cellforge export``: the files it writes answer as the bundle does; bad requests are refused clearly."""

import json
import subprocess
import sys

import numpy as np
import pytest

import cellforge as cf
from cellforge import bundle
from cellforge.backends import numpy as ref
from cellforge.data import prepare


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Seeded digits classifiers (untrained: parity, not accuracy): unidirectional LSTM, bidirectional GRU."""
    data = cf.datasets.load("digits")
    out = {}
    for name, extra in {"uni": {"cell": "lstm", "num_layers": 2}, "bi": {"cell": "gru", "bidirectional": True}}.items():
        spec, prepared = prepare(cf.ModelSpec(task="classify", hidden_size=8, **extra), data)
        out[name] = bundle.save(tmp_path_factory.mktemp("b") / name, spec, ref.init_params(spec, 3),
                                prepared.preprocessor.state, {})
    return out, data.x[:20]


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "cellforge.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_export_command_writes_graphs_that_answer_as_the_bundle(bundles, tmp_path):
    import onnxruntime as ort

    paths, images = bundles
    model = cf.load(paths["uni"], framework="numpy")
    x, lengths = model.preprocessor.transform(images)
    out = cli("export", str(paths["uni"]), "--format", "onnx", "--out", "digits.onnx", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    got = ort.InferenceSession(str(tmp_path / "digits.onnx")).run(None, {"x": x, "lengths": lengths})[0]
    np.testing.assert_allclose(got, model.outputs(x, lengths), atol=1e-5, rtol=0)
    pre = json.loads((tmp_path / "digits.preprocessing.json").read_text())
    assert pre["preprocessing"] == model.preprocessor.state and pre["inputs"]["lengths"]
    assert cli("export", str(paths["uni"]), "--step", "--out", "step.onnx", cwd=tmp_path).returncode == 0
    sess = ort.InferenceSession(str(tmp_path / "step.onnx"))
    state = {i.name: np.zeros((len(x), 8), np.float32) for i in sess.get_inputs() if i.name != "x"}
    assert sorted(state) == ["state.0.c", "state.0.h", "state.1.c", "state.1.h"]
    for t in range(x.shape[1]):  # digits: every sequence is 8 steps
        y, *new = sess.run(None, {"x": x[:, t:t + 1], **state})
        state = {o.name.replace("state_out", "state"): v for o, v in zip(sess.get_outputs()[1:], new)}
    np.testing.assert_allclose(y[:, 0], model.outputs(x, lengths), atol=1e-5, rtol=0)


@pytest.mark.parametrize("args,message", [
    (["--step"], "step: a bidirectional model cannot be exported as a single-step graph"),
    (["--format", "tflite"], "invalid choice: 'tflite'"),
])
def test_export_refuses_what_it_cannot_do(bundles, tmp_path, args, message):
    out = cli("export", str(bundles[0]["bi"]), "--out", "m.onnx", *args, cwd=tmp_path)
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "m.onnx").exists()


def test_export_function_names_the_known_formats(bundles, tmp_path):
    from cellforge.errors import SpecError
    from cellforge.export import export

    with pytest.raises(SpecError, match=r"format: unknown export format 'tflite'; known formats: \['onnx', 'savedmodel'\]"):
        export(bundles[0]["bi"], tmp_path / "m", format="tflite")


def test_savedmodel_answers_as_the_bundle(bundles, tmp_path):
    import tensorflow as tf

    from cellforge.export import export

    paths, images = bundles
    model = cf.load(paths["bi"], framework="numpy")
    x, lengths = model.preprocessor.transform(images)
    lengths = lengths.copy()
    lengths[::3] = 5  # padding honoured
    files = export(paths["bi"], tmp_path / "digits_sm", format="savedmodel")
    served = tf.saved_model.load(str(files["model"]))
    got = served.serve(tf.constant(x), tf.constant(lengths)).numpy()
    np.testing.assert_allclose(got, model.outputs(x, lengths), atol=1e-5, rtol=0)
