"""Training on Ray Train in both frameworks (PyTorch, Keras 3 on TensorFlow): the quality bars on real
data, workers that stay in sync, custom cells on Ray workers, bundles that cross frameworks, and a
run resumed after its driver is killed.

The digits runs are trained once per session (tests/conftest.py ``digits_runs``) and shared with
the serving tests."""

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
from cellforge.cells import CELLS

FRAMEWORKS = ["torch", "tensorflow"]
SUNSPOTS = dict(task="forecast", hidden_size=32, horizon=1, input={"window": 20},
                training={"lr": 0.01, "epochs": 40, "batch_size": 16, "seed": 0,
                          "early_stopping": {"metric": "val_rmse", "patience": 8}})


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_digits_reach_95_percent_on_one_and_two_workers(digits_runs, framework):
    runs = {w: digits_runs(framework, w) for w in (1, 2)}
    for result in runs.values():
        assert result.spec.framework == framework
        assert result.metrics["test_accuracy"] >= 0.95
        hist = result.history_frame()
        assert list(hist.index) == list(range(1, 16)) and hist["loss"].iloc[-1] < hist["loss"].iloc[0] / 5
    if framework == "torch":
        assert runs[2].metrics["test_macro_f1"] >= 0.94
    # same global batch (64 = 2 x 32): 2-worker quality within 3 accuracy points of 1-worker quality
    assert abs(runs[1].metrics["test_accuracy"] - runs[2].metrics["test_accuracy"]) <= 0.03
    # the bundle reloads and predicts raw images as the run evaluated them
    data = cf.datasets.load("digits")
    assert (cf.load(runs[2].bundle).predict(data.x) == data.y).mean() >= 0.95


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_two_workers_stay_in_sync(digits_runs, framework):
    two = digits_runs(framework, 2)
    # every epoch each rank's weights, projected on one random vector, were all-reduced: torch's DDP
    # replicas agree to float rounding; Keras' (one averaged update applied by every worker) exactly
    spreads = [row["rank_weight_spread"] for row in two.history]
    assert len(spreads) == 15
    assert all(s < 1e-6 for s in spreads) if framework == "torch" else all(s == 0.0 for s in spreads)
    # per-epoch validation metrics cover the whole split, not one rank's shard: both runs see all of it
    assert two.history[0]["val_loss"] > 0 and digits_runs(framework, 1).history[0]["val_accuracy"] > 0


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_fits_timings_add_up_to_its_wall_time(digits_runs, framework):
    """``FitResult.timings`` splits the call's wall time into its phases (train.fit.Stopwatch): the
    epochs are the history's, nothing is left out, and only Ray Train's actors take time to start (one
    worker trains in this process)."""
    for workers in (1, 2):
        result = digits_runs(framework, workers)
        t = result.timings
        assert list(t) == ["prepare", "ray", "tracking", "imports", "workers", "setup", "epochs", "checkpoints",
                           "test", "bundle"]
        assert all(v >= 0 for v in t.values())
        assert t["epochs"] == pytest.approx(sum(row["time_s"] for row in result.history))
        assert sum(t.values()) == pytest.approx(digits_runs.walls[framework, workers], abs=0.05)
    assert digits_runs(framework, 1).timings["workers"] < 0.5 < digits_runs(framework, 2).timings["workers"]


def test_keras_bundle_predicts_the_same_in_torch_and_numpy(digits_runs):
    data = cf.datasets.load("digits")
    bundle = digits_runs("tensorflow", 2).bundle
    models = {fw: cf.load(bundle, framework=fw) for fw in ("tensorflow", "torch", "numpy")}
    x, lengths = models["tensorflow"].preprocessor.transform(data.x[:300])
    # also a padded batch of variable length: rows cut from the bottom of each image
    cut = np.random.default_rng(0).integers(1, 9, 300)
    xc = np.where(np.arange(8)[None, :, None] < cut[:, None, None], x, 0.0).astype(np.float32)
    for xb, lb in ((x, lengths), (xc, cut)):
        want = models["tensorflow"].outputs(xb, lb)
        for fw in ("torch", "numpy"):
            np.testing.assert_allclose(models[fw].outputs(xb, lb), want, atol=1e-5, rtol=0)
    assert (models["torch"].predict(data.x) == models["tensorflow"].predict(data.x)).all()


# predicting the mean scores MSE ~0.167; the network must find the two marked numbers 100 steps apart.
# Keras: the cheapest reliable config found is a GRU (learns the markers faster than an LSTM here) on
# 1600 training sequences, lr 0.01 with clipping
ADDING = {
    "torch": (dict(cell="lstm", epochs=12), 5000),
    "tensorflow": (dict(cell="gru", epochs=6), 2000),
}


# make test-all for torch: 12 epochs on 5,000 sequences of 100 steps (Keras learns it in 6 on 2,000)
@pytest.mark.parametrize("framework", [pytest.param("torch", marks=pytest.mark.slow), "tensorflow"])
def test_adding_problem_t100(ray_session, runs, framework, monkeypatch):
    # on Ray Train's actors, not in this process (cellforge.train.fit.in_process): their run's Ctrl-C
    # handler and controller are what the end of this test checks
    monkeypatch.setenv("CELLFORGE_TRAIN_IN_PROCESS", "0")
    arch, n = ADDING[framework]
    spec = cf.ModelSpec(framework=framework, task="regress", cell=arch["cell"], hidden_size=32,
                        training={"lr": 0.01, "batch_size": 32, "epochs": arch["epochs"], "clip_norm": 1.0,
                                  "val_fraction": 0.1, "test_fraction": 0.1, "seed": 0})
    handler = signal.getsignal(signal.SIGINT)
    result = cf.fit(spec, cf.datasets.load("adding", n=n, length=100), workers=1)
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
    result = cf.fit(spec, ds)  # one worker (in this process): the digits runs cover two
    assert result.metrics["test_rmse"] < result.metrics["naive_rmse"]
    forecast = cf.load(result.bundle).predict([s.values[-20:, 0]])
    assert forecast.shape == (1, 1) and 0 <= forecast[0, 0] < 300  # (examples, horizon), in sunspot units


MGU_MODULE = '''
import cellforge as cf

def mgu_step(op, p, x, state):
    (h,) = state
    xf, xh = op.split(op.linear(x, p["w_ih"], p["b_ih"]), 2)
    f = op.sigmoid(xf + op.linear(h, p["w_fh"]))
    h = (1.0 - f) * h + f * op.tanh(xh + op.linear(f * h, p["w_hh"]))
    return h, (h,)

cf.register_cell(cf.Cell("mgu_ray", mgu_step,
                         params={"w_ih": ("2H", "I"), "b_ih": ("2H",), "w_fh": ("H", "H"), "w_hh": ("H", "H")}),
                 overwrite=True)
'''


@pytest.mark.slow  # make test-all: the torch custom cell below crosses to Ray workers by value too
def test_sunspots_keras_custom_cell_from_a_module_beats_naive(ray_session, runs, tmp_path, monkeypatch):
    # the cell lives in a module only this process can import: it must travel to the workers by value
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "user_cells_mgu.py").write_text(MGU_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    import user_cells_mgu  # noqa: F401

    try:
        result = cf.fit(cf.ModelSpec(framework="tensorflow", cell="mgu_ray", **SUNSPOTS),
                        cf.datasets.load("sunspots"), workers=2)
        assert result.metrics["test_rmse"] < result.metrics["naive_rmse"]
        assert all(row["rank_weight_spread"] == 0.0 for row in result.history)
        _same_outputs_everywhere(result.bundle, cf.datasets.load("sunspots").values[:, 0])
    finally:
        CELLS.pop("mgu_ray", None)
        sys.modules.pop("user_cells_mgu", None)
    with pytest.raises(cf.BundleError, match="register_cell"):
        cf.load(result.bundle)


def elman_step(op, p, x, state):
    (h,) = state
    h = op.tanh(op.linear(x, p["w_ih"], p["b_ih"]) + op.linear(h, p["w_hh"]))
    return h, (h,)


def test_custom_cell_trains_in_torch_and_its_bundle_runs_in_keras(ray_session, runs):
    # defined in this test module, which Ray workers cannot import by name
    cf.register_cell(cf.Cell("elman_ray", elman_step, params={"w_ih": ("H", "I"), "w_hh": ("H", "H"),
                                                               "b_ih": ("H",)}), overwrite=True)
    try:
        result = cf.fit(cf.ModelSpec(framework="torch", cell="elman_ray", **SUNSPOTS),
                        cf.datasets.load("sunspots"), workers=2)
        assert result.metrics["test_rmse"] < result.metrics["naive_rmse"]
        _same_outputs_everywhere(result.bundle, cf.datasets.load("sunspots").values[:, 0])
    finally:
        CELLS.pop("elman_ray", None)


def _same_outputs_everywhere(bundle, series):
    """A forecast bundle gives the same raw outputs in torch, tensorflow and numpy, on real windows."""
    windows = np.stack([series[s: s + 20] for s in range(0, len(series) - 20, 3)])
    models = {fw: cf.load(bundle, framework=fw) for fw in ("torch", "tensorflow", "numpy")}
    x, lengths = models["numpy"].preprocessor.transform(windows)
    want = models["numpy"].outputs(x, lengths)
    for fw in ("torch", "tensorflow"):
        np.testing.assert_allclose(models[fw].outputs(x, lengths), want, atol=1e-5, rtol=0)


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


# "1": trained in the driver's process, which keeps its own checkpoints (cellforge.train.checkpoint.keep);
# "0": on Ray Train's worker actors, which persist theirs (make test-all)
@pytest.mark.parametrize("in_process", ["1", pytest.param("0", marks=pytest.mark.slow)])
def test_killed_driver_resumes_from_its_last_checkpoint(ray_session, tmp_path, monkeypatch, in_process):
    monkeypatch.setenv("CELLFORGE_TRAIN_IN_PROCESS", in_process)
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
