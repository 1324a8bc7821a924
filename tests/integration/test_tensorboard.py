"""TensorBoard event files (``fit(..., tensorboard=True)``): rank 0 writes every epoch's scalars as
the result's history, a histogram of every canonical weight and of the gradients, read back with
TensorBoard's own EventAccumulator."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

import cellforge as cf
from cellforge.backends.network import param_shapes

pytestmark = pytest.mark.integration


def read(directory):
    # TensorBoard reads event files without TensorFlow when its "notf" marker module exists (its own
    # switch for builds without TF): importing TF here would cost ~10 s and change nothing read
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return EventAccumulator(str(directory), size_guidance={"scalars": 0, "histograms": 0}).Reload()


def test_a_fit_writes_its_history_and_weight_and_gradient_histograms(ray_session, runs):
    spec = cf.ModelSpec(task="classify", cell="gru", hidden_size=16,
                        training={"lr": 0.01, "batch_size": 128, "epochs": 2, "seed": 0})
    result = cf.fit(spec, cf.datasets.load("digits"), name="tb", verbose=False, tensorboard=True)
    acc = read(runs / "tb" / "tensorboard")
    tags = acc.Tags()
    for key in [k for k, v in result.history[0].items() if k != "epoch" and isinstance(v, float)]:
        logged = {s.step: s.value for s in acc.Scalars(key)}
        assert logged == {r["epoch"]: pytest.approx(r[key], rel=1e-6) for r in result.history}, key
    model = cf.load(result.bundle)
    names = sorted(param_shapes(model.spec))
    assert sorted(t[len("weights/"):] for t in tags["histograms"] if t.startswith("weights/")) == names
    last = {t: acc.Histograms(t)[-1] for t in tags["histograms"]}
    for name in names:  # the last epoch's histogram is of the bundle's weights
        h = last[f"weights/{name}"].histogram_value
        w = model.weights[name]
        assert last[f"weights/{name}"].step == 2 and h.num == w.size
        assert h.min == pytest.approx(float(w.min()), rel=1e-6) and h.sum == pytest.approx(float(w.sum()), abs=1e-4)
    grads = [t for t in tags["histograms"] if t.startswith("gradients/")]
    assert grads and all(np.isfinite(last[t].histogram_value.sum) for t in grads)
