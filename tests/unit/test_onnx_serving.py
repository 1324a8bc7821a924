"""The serving engine with ``runtime: onnx``: answers and session steps equal the numpy runtime's."""

import numpy as np
import pytest

import cellforge as cf
from cellforge import bundle
from cellforge.backends import numpy as ref
from cellforge.data import prepare
from cellforge.serving.config import DeployConfig
from cellforge.serving.engine import Engine


@pytest.fixture(scope="module")
def digits_bundle(tmp_path_factory):
    data = cf.datasets.load("digits")
    spec, prepared = prepare(cf.ModelSpec(task="classify", cell="lstm", num_layers=2, hidden_size=8), data)
    path = bundle.save(tmp_path_factory.mktemp("b") / "digits", spec, ref.init_params(spec, 5),
                       prepared.preprocessor.state, {})
    return path, data.x[:10]


def test_onnx_engine_answers_and_streams_as_the_numpy_one(digits_bundle):
    path, images = digits_bundle
    engines = {rt: Engine(DeployConfig(bundle=str(path), name="d", runtime=rt)) for rt in ("numpy", "onnx")}
    x, lengths = engines["onnx"].prepare(images.tolist())
    got = engines["onnx"].respond(engines["onnx"].run([(x, lengths)])[0], lengths)
    want = cf.load(path).predict_proba(images)
    np.testing.assert_allclose(got["probabilities"], want, atol=1e-5)
    assert got["labels"] == cf.load(path).predict(images).tolist()
    assert engines["onnx"].info("d")["runtime"] == "onnx"
    answers = {}
    for rt, engine in engines.items():  # a session fed 3 + 1 + 4 steps
        state, outs = None, []
        for a, b in ((0, 3), (3, 4), (4, 8)):
            out, state = engine.step(engine.step_inputs(images[0][a:b].tolist()), state)
            outs.append(out["probabilities"])
        answers[rt] = np.concatenate(outs)
    np.testing.assert_allclose(answers["onnx"], answers["numpy"], atol=1e-5)
    np.testing.assert_allclose(answers["onnx"], cf.load(path).predict_proba([images[0][: t + 1] for t in range(8)]),
                               atol=1e-5)


def test_unknown_runtime_names_the_known_ones(digits_bundle):
    from cellforge.errors import SpecError

    with pytest.raises(SpecError, match="runtime.*'numpy', 'torch' or 'onnx'"):
        DeployConfig(bundle=str(digits_bundle[0]), name="d", runtime="tensorrt")
