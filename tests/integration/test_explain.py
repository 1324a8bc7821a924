"""Attributions of trained models: the adding problem's LSTM (cf.fit on the session's Ray) attributes
its output to the two marked values; the explain endpoint over real HTTP equals model.explain."""

from __future__ import annotations

import numpy as np
import pytest

import cellforge as cf

# short sequences keep the training to seconds; the attribution question is the same at any length
ADDING = dict(n=4000, length=10)


@pytest.fixture(scope="module")
def adding_model(ray_session, tmp_path_factory):
    spec = cf.ModelSpec(task="regress", cell="lstm", hidden_size=32,
                        training={"lr": 0.01, "batch_size": 32, "epochs": 25, "clip_norm": 1.0,
                                  "lr_schedule": "cosine", "seed": 0})
    result = cf.fit(spec, cf.datasets.load("adding", **ADDING), workers=1, name="adding-explain",
                    storage_path=tmp_path_factory.mktemp("adding"))
    print(f"adding: test_rmse {result.metrics['test_rmse']:.4f}")
    assert result.metrics["test_rmse"] ** 2 < 0.01  # it solved the task: the attributions mean something
    return cf.load(result.bundle)


def test_adding_problem_attributions_fall_on_the_two_marked_values(adding_model):
    test = cf.datasets.load("adding", n=50, length=ADDING["length"], seed=7)
    marks = test.x[..., 1] == 1
    no_values = test.x.copy()
    no_values[..., 0] = 0.0  # the same markers, nothing to add
    shares = {}
    for name, base in (("zeros", None), ("no values", no_values)):
        ex = adding_model.explain(test.x, baseline=base)
        value = np.abs(ex.attributions[..., 0])
        shares[name] = (value * marks).sum() / value.sum()
        gap = ex.output - ex.baseline_output
        print(f"adding, baseline {name}: {shares[name]:.1%} of the value feature's |attribution| on the marked "
              f"steps (per sequence min {((value * marks).sum(1) / value.sum(1)).min():.1%}); completeness "
              f"max |delta| / |gap| {np.abs(ex.delta / gap).max():.2e}")
        np.testing.assert_allclose(ex.attributions.sum((1, 2)), gap, rtol=0.01)
    # Measured (length 10, test RMSE 0.004): 98.8% with "no values", 57.4% with the default. The default
    # baseline is every feature at its training mean, a marker of ~2/length on every step: along the
    # path each step looks partly marked, so unmarked values take a share. "Which values were added?"
    # asks for the same markers and no values (both baselines are printed; completeness holds for both)
    assert shares["no values"] >= 0.9


# over HTTP -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served_digits(serve_module, digits_runs):
    """The session's digits LSTM (torch, 2 workers) deployed as 'digits-explain' on the session's Serve."""
    from cellforge.serving.deploy import base_url

    bundle = digits_runs("torch", 2).bundle
    cf.deploy(bundle, "digits-explain", num_replicas=1, num_cpus=0.5)
    yield base_url(), bundle


def test_explain_endpoint_equals_model_explain_and_limits_the_request(served_digits):
    import httpx

    base, bundle = served_digits
    images = cf.datasets.load("digits").x[:3].astype(np.float64)
    url = f"{base}/v1/models/digits-explain/explain"
    model = cf.load(bundle)
    for method in ("integrated_gradients", "occlusion"):
        r = httpx.post(url, json={"inputs": images.tolist(), "method": method}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        local = model.explain(images, method=method)
        np.testing.assert_allclose(np.asarray(body["attributions"]), local.attributions, atol=1e-5)
        assert body["target"] == local.target and body["labels"] == list(local.prediction["labels"])
        if method == "integrated_gradients":  # complete: the attributions add up to the output's change
            np.testing.assert_allclose(np.asarray(body["attributions"]).sum((1, 2)),
                                       np.asarray(body["output"]) - np.asarray(body["baseline_output"]),
                                       rtol=0.01)
    # 30 inputs x 50 interpolation steps is over the limit: 413 naming it
    r = httpx.post(url, json={"inputs": images[[0] * 30].tolist()}, timeout=60)
    assert r.status_code == 413 and "explain limit is 1024" in r.json()["message"]
    r = httpx.post(url, json={"inputs": images.tolist(), "target": 12}, timeout=60)
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "target"
    r = httpx.post(url, json={"inputs": images.tolist(), "method": "shap"}, timeout=60)
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "method"
    doc = httpx.get(f"{base}/openapi.json", timeout=30).json()["paths"]["/v1/models/{name}/explain"]["post"]
    assert "1024 sequence forward passes" in doc["description"]
