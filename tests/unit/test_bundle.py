"""Bundles: checksummed, no pickle, refused when tampered with or incomplete, replaced atomically."""

import json

import numpy as np
import pytest

import cellforge as cf
from cellforge import bundle
from cellforge.backends import numpy as ref
from cellforge.data import prepare


@pytest.fixture
def saved(tmp_path):
    data = cf.datasets.load("digits")
    spec, prepared = prepare(cf.ModelSpec(task="classify", hidden_size=8), data)
    params = ref.init_params(spec, seed=3)
    path = bundle.save(tmp_path / "b", spec, params, prepared.preprocessor.state, {"test": {}})
    return path, spec, params, data


def test_round_trip_predicts_like_the_reference(saved):
    path, spec, params, data = saved
    model = cf.load(path)
    x, lengths = model.preprocessor.transform(data.x[:20])
    np.testing.assert_allclose(model.outputs(x, lengths), ref.forward(spec, params, x, lengths), atol=1e-5)
    assert cf.load(path, framework="numpy").predict(data.x[:20]).tolist() == model.predict(data.x[:20]).tolist()
    assert set(model.predict(data.x[:20])) <= set(range(10))


def test_no_pickle_in_a_bundle(saved):
    path = saved[0]
    names = sorted(p.name for p in path.iterdir())
    assert names == ["manifest.json", "metrics.json", "preprocessing.json", "spec.json", "weights.safetensors"]
    for p in path.iterdir():
        assert not p.read_bytes().startswith(b"\x80")  # a pickle stream's first byte


@pytest.mark.parametrize("damage", ["flip_weight_byte", "edit_spec", "delete_preprocessing", "drop_manifest"])
def test_tampered_or_incomplete_bundle_is_refused(saved, damage):
    path = saved[0]
    if damage == "flip_weight_byte":
        raw = bytearray((path / "weights.safetensors").read_bytes())
        raw[-1] ^= 0xFF
        (path / "weights.safetensors").write_bytes(bytes(raw))
    elif damage == "edit_spec":
        spec = json.loads((path / "spec.json").read_text())
        spec["hidden_size"] = 9
        (path / "spec.json").write_text(json.dumps(spec))
    elif damage == "delete_preprocessing":
        (path / "preprocessing.json").unlink()
    else:
        (path / "manifest.json").unlink()
    with pytest.raises(cf.BundleError) as e:
        cf.load(path)
    assert str(path) in str(e.value)


def test_missing_bundle_is_a_clear_error(tmp_path):
    with pytest.raises(cf.BundleError, match="not found"):
        cf.load(tmp_path / "nope")


def test_save_replaces_atomically_and_checks_weights(saved, tmp_path):
    path, spec, params, _ = saved
    bad = dict(params)
    bad.pop("head.bias")
    with pytest.raises(cf.BundleError, match="head.bias"):
        bundle.save(path, spec, bad, {}, {})
    cf.load(path)  # the old bundle is untouched by the failed save
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no half-written leftovers
