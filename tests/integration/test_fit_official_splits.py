"""``cf.fit(spec, train, validation=..., test=...)`` on real Ray Train keeps a benchmark's own splits: the
preprocessing is fitted on the training images only, early stopping reads the given validation set and
the test metrics are the given test set's (cf.evaluate on it alone gives the same numbers)."""

import numpy as np
import pytest

import cellforge as cf
from cellforge.data.preprocess import fit_scaler
from cellforge.evaluate import evaluate

pytestmark = pytest.mark.integration


def test_official_splits_reach_only_their_own_roles(ray_session, tmp_path):
    d = cf.datasets.load("digits")
    x, y = d.x, d.y
    train, val, test = slice(0, 1200), slice(1200, 1500), slice(1500, None)
    # the test images brightened: were they in training or early stopping, the scaler and val metrics would show it
    x_test = x[test] * 3.0 + 5.0
    spec = {"cell": "gru", "hidden_size": 32, "training": {"epochs": 3, "batch_size": 64, "lr": 5e-3,
                                                            "early_stopping": {"metric": "val_accuracy", "mode": "max"}}}
    r = cf.fit(spec, (x[train], y[train]), validation=(x[val], y[val]), test=(x_test, y[test]),
               name="official", storage_path=tmp_path, tracking="none", verbose=False)
    model = cf.load(r.bundle)
    want = fit_scaler(x[train].reshape(-1, 8).astype(np.float64), "standard")
    np.testing.assert_allclose(model.preprocessor.state["scaler"]["shift"], want["shift"], rtol=1e-9)
    np.testing.assert_allclose(model.preprocessor.state["scaler"]["scale"], want["scale"], rtol=1e-9)
    on_test = evaluate(r.bundle, (x_test, y[test]), split="all")
    assert r.metrics["test_accuracy"] == pytest.approx(on_test["all_accuracy"])
    best = max(h["val_accuracy"] for h in r.history)
    assert evaluate(r.bundle, (x[val], y[val]), split="all")["all_accuracy"] == pytest.approx(best) and best > 0.5


@pytest.mark.slow  # make test-all: a sweep (the fit above checks the same splits reach their roles)
def test_a_sweep_keeps_the_official_splits(ray_session, tmp_path):
    """``cf.sweep(..., validation=, test=)``: every trial's preprocessing is fitted on the training images
    only and ranks by the given validation set (the best trial's last val_accuracy is cf.evaluate's on it)."""
    d = cf.datasets.load("digits")
    x, y = d.x, d.y
    train, val, test = slice(0, 1200), slice(1200, 1500), slice(1500, None)
    x_val = x[val] * 2.0 + 3.0  # shifted: were these images in the scaler's fit, its statistics would show it
    spec = {"cell": "gru", "hidden_size": 16, "training": {"epochs": 2, "batch_size": 64, "lr": 5e-3}}
    s = cf.sweep(spec, (x[train], y[train]), {"hidden_size": {"grid": [8, 16]}}, search="grid", scheduler="fifo",
                 validation=(x_val, y[val]), test=(x[test], y[test]), name="official-sweep", storage_path=tmp_path,
                 tracking="none", verbose=False)
    assert len(s.trials) == 2 and all(t["status"] == "completed" for t in s.trials)
    model = cf.load(s.best_bundle)
    want = fit_scaler(x[train].reshape(-1, 8).astype(np.float64), "standard")
    np.testing.assert_allclose(model.preprocessor.state["scaler"]["shift"], want["shift"], rtol=1e-9)
    on_val = evaluate(s.best_bundle, (x_val, y[val]), split="all")["all_accuracy"]
    assert on_val == pytest.approx(s.best["metrics"]["val_accuracy"])
