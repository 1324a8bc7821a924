"""MLflow tracking on the session's Ray: one run per fit and per trial (also after a resume), every
epoch's metrics as the result's history, the bundle artifact verified; a real tracking server that
stops mid-run makes training warn once and finish."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import cellforge as cf
from cellforge import bundle as _bundle

pytestmark = pytest.mark.tracking  # the default MLflow store is on here (tests/conftest.py)

TINY = dict(task="classify", cell="gru", hidden_size=16,
            training={"lr": 0.01, "batch_size": 128, "epochs": 1, "seed": 0})


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _runs(client, query):
    exp = client.get_experiment_by_name("cellforge")
    return client.search_runs([exp.experiment_id], query, max_results=100)


def _assert_history_logged(client, run_id, history):
    """Every epoch's every metric logged once, at its epoch, with the result's value."""
    keys = [k for k in history[0] if k not in ("epoch", "stopped_early", "time_s")]
    for key in keys:
        logged = client.get_metric_history(run_id, key)
        steps = [m.step for m in logged]
        assert sorted(steps) == [r["epoch"] for r in history], (key, steps)
        by_step = {m.step: m.value for m in logged}
        for r in history:
            assert by_step[r["epoch"]] == pytest.approx(float(r[key]), rel=1e-12), (key, r["epoch"])


def _assert_artifact_verifies(client, run_id, tmp_path):
    local = client.download_artifacts(run_id, "bundle", str(tmp_path / f"dl-{run_id}"))
    manifest = _bundle.verify(local)
    return manifest


@pytest.mark.slow  # make test-all: a fit, its resume and a 4-trial sweep (~150 s); make test tracks a fit to a real server below
def test_fit_resume_and_sweep_are_one_run_each(ray_session, runs, tmp_path):
    uri = f"sqlite:///{runs}/mlflow.db"
    digits = cf.datasets.load("digits")
    first = cf.fit(cf.ModelSpec(**TINY), digits, name="tracked", verbose=False)
    resumed = cf.fit(cf.ModelSpec(**TINY), digits, name="tracked", epochs=2, verbose=False)
    assert resumed.starts == [0, 1] and len(resumed.history) == 2  # a resume, not a new run
    c = _client(uri)
    fits = _runs(c, "tags.`cellforge.kind` = 'fit'")
    assert len(fits) == 1
    run = fits[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["training.epochs"] == "1"  # the params the run began with; not logged again
    assert run.data.tags["cellforge.data"] == "digits" and run.data.tags["cellforge.data_fingerprint"]
    assert run.data.metrics["test_accuracy"] == pytest.approx(resumed.metrics["test_accuracy"])
    _assert_history_logged(c, run.info.run_id, resumed.history)
    manifest = _assert_artifact_verifies(c, run.info.run_id, tmp_path)
    prov = manifest["provenance"]
    assert prov["run_id"] == run.info.run_id
    assert prov["data_fingerprint"] == run.data.tags["cellforge.data_fingerprint"]
    assert _bundle.verify(first.bundle)["provenance"]["run_id"] == run.info.run_id

    space = {"hidden_size": cf.choice([8, 16]), "training.lr": cf.choice([0.01, 0.02])}
    args = dict(trials=4, scheduler="fifo", search="grid", epochs=2, name="tracked-sweep", verbose=False)
    s = cf.sweep(cf.ModelSpec(**TINY), digits, space, **args)
    s.best_bundle  # noqa: B018 - builds the best bundle, which the sweep's run keeps
    again = cf.sweep(cf.ModelSpec(**TINY), digits, space, **args)  # resumes: every trial had finished
    assert [t["history"] for t in again.trials] == [t["history"] for t in s.trials]
    parents = _runs(c, "tags.`cellforge.kind` = 'sweep'")
    assert len(parents) == 1
    parent = parents[0].info.run_id
    children = _runs(c, f"tags.`mlflow.parentRunId` = '{parent}'")
    assert sorted(r.data.tags["cellforge.trial_id"] for r in children) == sorted(t["trial_id"] for t in s.trials)
    by_trial = {r.data.tags["cellforge.trial_id"]: r for r in children}
    for t in s.trials:
        assert len(t["history"]) == 2
        _assert_history_logged(c, by_trial[t["trial_id"]].info.run_id, t["history"])
    chosen = _assert_artifact_verifies(c, parent, tmp_path)  # the sweep's run keeps the bundle it chose,
    best = next(t for t in s.trials if t["trial"] == s.best["trial"])  # made by the best trial's run
    assert chosen["provenance"]["run_id"] == by_trial[best["trial_id"]].info.run_id
    assert parents[0].data.tags["cellforge.best_trial"] == str(best["trial"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real ``mlflow server`` on 127.0.0.1 at a free port, in its own process group."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--artifacts-destination", str(tmp_path / "art")],
        stdout=open(tmp_path / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
        time.sleep(0.5)
    else:
        pytest.fail("mlflow server did not start: " + (tmp_path / "server.log").read_text()[-2000:])

    def stop():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)

    proc.url, proc.stop = url, stop
    yield proc
    stop()


def test_a_real_server_gets_the_run_and_its_loss_warns_once(ray_session, runs, mlflow_server):
    warnings: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.WARNING:
                warnings.append(record.getMessage())

    handler = Catch()
    logging.getLogger("cellforge").addHandler(handler)
    c = _client(mlflow_server.url)
    out: dict = {}

    def train():
        try:
            out["result"] = cf.fit(cf.ModelSpec(**TINY), cf.datasets.load("digits"), name="served", epochs=10,
                                   tracking=mlflow_server.url, verbose=False)
        except BaseException as e:  # noqa: BLE001 - asserted below
            out["error"] = e

    thread = threading.Thread(target=train)
    thread.start()
    try:
        run_id, deadline = None, time.time() + 300
        while time.time() < deadline and thread.is_alive():  # the server gets epochs as they end...
            found = _runs(c, "tags.`cellforge.kind` = 'fit'") if c.get_experiment_by_name("cellforge") else []
            if found:
                run_id = found[0].info.run_id
                if c.get_metric_history(run_id, "loss"):
                    break
            time.sleep(0.2)
        assert run_id and c.get_metric_history(run_id, "loss"), "no epoch reached the server"
        seen = c.get_run(run_id)
        assert seen.data.tags["cellforge.data"] == "digits"
        mlflow_server.stop()  # ...until it goes away mid-run
    finally:
        thread.join(600)
        logging.getLogger("cellforge").removeHandler(handler)
    assert "error" not in out, out.get("error")
    result = out["result"]
    assert len(result.history) == 10 and Path(result.bundle).is_dir()
    tracking_warnings = [w for w in warnings if w.startswith("tracking:")]
    assert len(tracking_warnings) == 1, warnings  # the driver's one line (rank 0 warns in its own process)
    assert mlflow_server.url in tracking_warnings[0]
