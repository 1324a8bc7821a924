"""The anomaly detectors of the integration tests, trained once per test session on Ray Train (both
methods, both frameworks, a few epochs) and shared by every test that asks (``RUNS``, as in
_seq2seq_runs.py: a fixture imported into two modules would train twice)."""

from __future__ import annotations

import pytest

import cellforge as cf
from cellforge.data.anomalies import co2_seasonal, internal_bleeding

RUNS: dict[tuple, cf.FitResult] = {}
CUT = 1500  # CO2: weeks 0-1499 (believed normal) train; anomalies are injected after it
WINDOW = 24


def co2_spec(method: str, framework: str, epochs: int = 12) -> cf.ModelSpec:
    return cf.ModelSpec(task="anomaly", framework=framework, cell="gru", hidden_size=24, input={"window": WINDOW},
                        anomaly={"method": method, "threshold": "auto"},
                        training={"epochs": epochs, "batch_size": 32, "lr": 3e-3, "seed": 0, "val_fraction": 0.2,
                                  "test_fraction": 0.1})


@pytest.fixture(scope="session")
def anomaly_runs(ray_session, tmp_path_factory):
    """``anomaly_runs(method, framework)``: a detector trained on CO2's first 1,500 weeks (a FitResult);
    ``anomaly_runs("forecast", "torch", "internal_bleeding")``: one trained on that series' 1,200
    normal steps."""

    def get(method: str, framework: str, data: str = "co2") -> cf.FitResult:
        key = (method, framework, data)
        if key not in RUNS:
            if data == "co2":
                spec, series = co2_spec(method, framework), cf.Series(co2_seasonal().values[:CUT], ["co2"])
            else:
                spec, series = co2_spec(method, framework).updated(**{"input.window": 64}), internal_bleeding("train")
            RUNS[key] = cf.fit(spec, series, workers=1, name=f"anomaly-{method}-{framework}-{data}",
                               storage_path=tmp_path_factory.mktemp("anomaly"))
        return RUNS[key]

    return get
