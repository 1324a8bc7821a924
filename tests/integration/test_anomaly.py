"""Anomaly detection on Ray Train, both methods in both frameworks: detectors trained on CO2's
seasonal cycle (believed normal) find anomalies of every kind injected after it, at the threshold
they calibrated themselves; on the UCR archive's InternalBleeding16 the top score meets the UCR rule.
The runs are small (24-step windows, GRU 24, 12 epochs, one worker) and shared (_anomaly_runs.py)."""

import _anomaly_runs
import numpy as np
import pytest

import cellforge as cf
from cellforge.data.anomalies import co2_seasonal, inject, internal_bleeding

pytestmark = pytest.mark.integration
anomaly_runs = _anomaly_runs.anomaly_runs  # a session fixture, shared with the job test below
CUT, WINDOW = _anomaly_runs.CUT, _anomaly_runs.WINDOW


# Keras' two detectors add ~2 min to make test on 2 cores: in make test-all (Keras' anomaly networks are
# held to numpy's and torch's by tests/unit/test_anomaly_unit.py)
@pytest.mark.parametrize("framework", ["torch", pytest.param("tensorflow", marks=pytest.mark.slow)])
@pytest.mark.parametrize("method", ["forecast", "reconstruct"])
def test_injected_anomalies_of_every_kind_are_found(anomaly_runs, method, framework):
    result = anomaly_runs(method, framework)
    model = cf.load(result.bundle)
    assert result.metrics["test_flag_rate"] < 0.05  # the normal test split is rarely flagged
    injected, where = inject(co2_seasonal(), start=CUT, seed=0)
    tail = slice(CUT - WINDOW, None)  # the first scored step is the first after the training weeks
    found = model.detect(injected.values[tail])
    m = found.metrics(injected.labels[tail])  # interval-wise, each interval owning the window after it
    print(method, framework, {k: round(v, 3) for k, v in m.items()}, found.threshold)
    assert m["event_recall"] >= 0.9 and m["event_precision"] >= 0.8, m
    assert m["auroc"] > 0.5 and np.isfinite(m["average_precision"])
    # the bundle holds everything detect needs, and the other runtime agrees
    other = cf.load(result.bundle, framework="numpy").score(injected.values[tail])
    np.testing.assert_allclose(other, found.scores, rtol=1e-3, atol=1e-3, equal_nan=True)


@pytest.mark.slow  # make test-all: a quality run on a real UCR series (make test finds injected anomalies above)
def test_the_real_labelled_anomaly_meets_the_ucr_rule(anomaly_runs):
    result = anomaly_runs("forecast", "torch", "internal_bleeding")
    test = internal_bleeding("test")
    found = cf.load(result.bundle).detect(test)
    m = found.metrics(test.labels)
    print({k: round(v, 3) for k, v in m.items()}, "top step", int(np.nanargmax(found.scores)))
    assert m["ucr"] == 1.0  # the top-scoring step within 100 of steps 4187-4198
    assert 0 <= m["f1"] <= 1 and m["auroc"] > 0.5
