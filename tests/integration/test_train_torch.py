"""Training on Ray Train with PyTorch: quality bars on real data, DDP consistency, resume after a kill."""

import json
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest

import cellforge as cf

DIGITS = dict(task="classify", cell="lstm", hidden_size=64,
              training={"lr": 0.005, "batch_size": 64, "epochs": 15, "lr_schedule": "cosine", "seed": 0})


@pytest.fixture(scope="module")
def digits_runs(ray_session, tmp_path_factory):
    """The same spec at the same global batch on 1 and on 2 workers."""
    storage = tmp_path_factory.mktemp("digits")
    data = cf.datasets.load("digits")
    return {w: cf.fit(cf.ModelSpec(**DIGITS), data, workers=w, name=f"digits-{w}w", storage_path=storage)
            for w in (1, 2)}


def test_digits_lstm_reaches_95_percent(digits_runs):
    result = digits_runs[2]
    assert result.metrics["test_accuracy"] >= 0.95
    assert result.metrics["test_macro_f1"] >= 0.94
    hist = result.history_frame()
    assert list(hist.index) == list(range(1, 16)) and hist["loss"].iloc[-1] < hist["loss"].iloc[0] / 5
    # the bundle reloads and predicts raw images as the run evaluated them
    model = cf.load(result.bundle)
    data = cf.datasets.load("digits")
    assert (model.predict(data.x) == data.y).mean() >= 0.95


def test_two_workers_match_one_and_stay_in_sync(digits_runs):
    one, two = digits_runs[1], digits_runs[2]
    # same global batch (64 = 2 x 32): quality within 3 accuracy points
    assert abs(one.metrics["test_accuracy"] - two.metrics["test_accuracy"]) <= 0.03
    # every epoch both ranks held the same weights (projected digests agree to float rounding)
    assert all(row["rank_weight_spread"] < 1e-6 for row in two.history)
    # per-epoch validation metrics cover the whole split, not one rank's shard: both runs see all of it
    assert two.history[0]["val_loss"] > 0 and one.history[0]["val_accuracy"] > 0


def test_adding_problem_t100(ray_session, runs):
    # predicting the mean scores MSE ~0.167; an LSTM must find the two marked numbers 100 steps apart
    spec = cf.ModelSpec(task="regress", cell="lstm", hidden_size=32,
                        training={"lr": 0.01, "batch_size": 32, "epochs": 12, "clip_norm": 1.0,
                                  "val_fraction": 0.1, "test_fraction": 0.1, "seed": 0})
    handler = signal.getsignal(signal.SIGINT)
    result = cf.fit(spec, cf.datasets.load("adding", n=5000, length=100), workers=1)
    assert result.metrics["test_rmse"] ** 2 < 0.01
    # Ray Train's own Ctrl-C handler is taken down with its run: Ctrl-C stops the program again, and
    # the run's controller actor (whose handle that handler held) goes away
    assert signal.getsignal(signal.SIGINT) is handler
    from ray.util.state import list_actors

    def controllers():
        return [a for a in list_actors(address=ray_session.get_runtime_context().gcs_address,
                                       filters=[("state", "=", "ALIVE")]) if a.class_name == "TrainController"]

    deadline = time.monotonic() + 30
    while controllers() and time.monotonic() < deadline:
        time.sleep(1)
    assert not controllers()


def test_sunspots_beats_naive_forecast_from_a_ray_dataset(ray_session, runs):
    s = cf.datasets.load("sunspots")
    ds = ray_session.data.from_pandas(pd.DataFrame({"spots": s.values[:, 0]}))  # a Ray Data source
    spec = cf.ModelSpec(task="forecast", cell="gru", hidden_size=32, horizon=1, input={"window": 20},
                        training={"lr": 0.01, "epochs": 40, "batch_size": 16, "seed": 0,
                                  "early_stopping": {"metric": "val_rmse", "patience": 8}})
    result = cf.fit(spec, ds, workers=2)
    assert result.metrics["test_rmse"] < result.metrics["naive_rmse"]
    forecast = cf.load(result.bundle).predict([s.values[-20:, 0]])
    assert forecast.shape == (1, 1) and 0 <= forecast[0, 0] < 300  # (examples, horizon), in sunspot units


RESUME = textwrap.dedent("""
    import sys
    import cellforge as cf
    spec = cf.ModelSpec(task="regress", cell="lstm", hidden_size=32, training={"epochs": 10, "seed": 0})
    cf.fit(spec, cf.datasets.load("adding", n=1500, length=50), name="resume", storage_path=sys.argv[1],
           address=sys.argv[2])
""")


def _last_epoch(run_dir):
    done = -1
    for ckpt in run_dir.glob("checkpoint_*"):
        try:
            done = max(done, json.loads((ckpt / "state.json").read_text())["epoch"])
        except (OSError, ValueError, KeyError):
            pass  # being written
    return done


def test_killed_driver_resumes_from_its_last_checkpoint(ray_session, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(RESUME)
    address = ray_session.get_runtime_context().gcs_address
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path), address], start_new_session=True)
    deadline = time.time() + 300
    while _last_epoch(tmp_path / "resume") < 1 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)  # the driver dies mid-run, with no chance to clean up
    proc.wait()
    killed_after = _last_epoch(tmp_path / "resume") + 1
    assert 2 <= killed_after < 10, f"driver killed after epoch {killed_after}"
    spec = cf.ModelSpec(task="regress", cell="lstm", hidden_size=32, training={"epochs": 10, "seed": 0})
    result = cf.fit(spec, cf.datasets.load("adding", n=1500, length=50), name="resume", storage_path=tmp_path)
    # resumed, not started over: from the last checkpoint Ray had recorded when the driver died (on a
    # busy machine that can trail the newest checkpoint directory on disk by an epoch or two)
    assert result.starts[0] == 0 and 1 <= result.starts[-1] <= killed_after
    assert [row["epoch"] for row in result.history] == list(range(1, 11))
    assert np.isfinite(result.metrics["test_rmse"])
