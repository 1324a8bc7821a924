"""cellforge.tracking against a real MLflow SQLite store (no Ray): runs reopened by id or tags, epochs
filled in once, tracking off or a server that is down never raising."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from cellforge import tracking


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One store for the module: creating a SQLite store runs MLflow's migrations (~5 s)."""
    path = tmp_path_factory.mktemp("store")
    return path, f"sqlite:///{path}/mlflow.db"


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_resolve_prefers_the_setting_then_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("CELLFORGE_TRACKING", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve(None, tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://team:5000")
    assert tracking.resolve(None, tmp_path) == "http://team:5000"
    assert tracking.resolve("http://other:5000", tmp_path) == "http://other:5000"
    assert tracking.resolve("none", tmp_path) is None
    monkeypatch.setenv("CELLFORGE_TRACKING", "none")
    assert tracking.resolve(None, tmp_path) is None


def test_tracking_off_costs_nothing(monkeypatch, tmp_path):
    run = tracking.start("none", tmp_path, run_name="x", params={"a": 1}, tags={})
    assert not run.active and run.ref() is None
    run.log_epoch({"loss": 1.0}, 1)
    run.finish([{"epoch": 1, "loss": 1.0}])
    assert not (tmp_path / "mlflow.db").exists()


def test_fingerprint_changes_with_the_data():
    splits = {"train": {"x": np.zeros((4, 3), np.float32), "y": np.arange(4)}}
    a = tracking.fingerprint_of(splits, {"vocab": []})
    assert a == tracking.fingerprint_of({"train": {"x": np.zeros((4, 3), np.float32), "y": np.arange(4)}}, {"vocab": []})
    splits["train"]["x"][0, 0] = 1e-6
    assert tracking.fingerprint_of(splits, {"vocab": []}) != a
    assert len(a) == 16


def test_a_run_is_reopened_by_its_id_file_and_epochs_are_logged_once(store):
    tmp_path, uri = store
    id_file = tmp_path / "fit" / "tracking.json"
    history = [{"epoch": 1, "loss": 0.5, "val_accuracy": 0.7, "stopped_early": False},
               {"epoch": 2, "loss": 0.25, "val_accuracy": 0.8, "stopped_early": False}]
    run = tracking.start(uri, tmp_path, run_name="fit", params=tracking.flatten({"training": {"lr": 0.1}}),
                         tags={"cellforge.kind": "fit"}, id_file=id_file)
    assert run.active
    tracking.Run.of(run.ref()).log_epoch(history[0], 1)  # rank 0 logs epoch 1, then the driver is killed
    again = tracking.start(uri, tmp_path, run_name="fit", params={"training.lr": 0.2}, tags={}, id_file=id_file)
    assert again.run_id == run.run_id
    again.finish(history, {"test_accuracy": 0.9})  # epoch 2 filled in, epoch 1 not logged twice
    c = _client(uri)
    assert [(m.step, m.value) for m in c.get_metric_history(run.run_id, "loss")] == [(1, 0.5), (2, 0.25)]
    got = c.get_run(run.run_id)
    assert got.data.params == {"training.lr": "0.1"} and got.data.metrics["test_accuracy"] == 0.9
    assert got.info.status == "FINISHED"
    assert len(c.search_runs([got.info.experiment_id], "tags.`cellforge.kind` = 'fit'")) == 1


def test_a_child_run_is_found_again_by_its_tags(store):
    tmp_path, uri = store
    parent = tracking.start(uri, tmp_path, run_name="sweep", params={}, tags={})
    find = {"cellforge.parent": parent.run_id, "cellforge.trial_id": "t_00001"}
    tags = {"mlflow.parentRunId": parent.run_id}
    one = tracking.start(uri, tmp_path, run_name="t1", params={}, tags=tags, find=find)
    two = tracking.start(uri, tmp_path, run_name="t1", params={}, tags=tags, find=find)
    other = tracking.start(uri, tmp_path, run_name="t2", params={}, tags=tags, find={**find, "cellforge.trial_id": "t2"})
    assert one.run_id == two.run_id != other.run_id


def test_a_server_that_is_down_warns_once_and_never_raises(tmp_path, caplog):
    with socket_closed() as url:
        messages = []
        handler = logging.Handler()
        handler.emit = lambda r: messages.append(r.getMessage())
        logging.getLogger("cellforge").addHandler(handler)
        try:
            run = tracking.start(url, tmp_path, run_name="x", params={"a": 1}, tags={})
            run.log_epoch({"loss": 1.0}, 1)
            run.finish([{"epoch": 1, "loss": 1.0}])
            worker = tracking.Run(url, "abc")
            worker.log_epoch({"loss": 1.0}, 1)
            worker.log_epoch({"loss": 1.0}, 2)
        finally:
            logging.getLogger("cellforge").removeHandler(handler)
    assert len([m for m in messages if m.startswith("tracking:")]) == 1, messages
    assert not run.active and not worker.active


class socket_closed:
    """A URL on 127.0.0.1 where nothing listens."""

    def __enter__(self):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        tracking.forget_warnings()
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc):
        tracking.forget_warnings()


def test_a_password_never_reaches_the_log():
    assert tracking.redact("https://me:s3cret@mlflow.example/x") == "https://me:***@mlflow.example/x"


def test_a_deleted_run_or_another_store_gets_a_new_run(store):
    tmp_path, uri = store
    id_file = tmp_path / "again" / "tracking.json"
    first = tracking.start(uri, tmp_path, run_name="again", params={}, tags={}, id_file=id_file)
    _client(uri).delete_run(first.run_id)
    second = tracking.start(uri, tmp_path, run_name="again", params={}, tags={}, id_file=id_file)
    assert second.active and second.run_id != first.run_id
    assert tracking.start(uri, tmp_path, run_name="again", params={}, tags={}, id_file=id_file).run_id == second.run_id
    other = f"sqlite:///{tmp_path}/other.db"
    moved = tracking.start(other, tmp_path, run_name="again", params={}, tags={}, id_file=id_file)
    assert moved.active and moved.uri == other and moved.run_id != second.run_id


def test_long_params_are_cut_to_what_mlflow_takes(store):
    tmp_path, uri = store
    run = tracking.start(uri, tmp_path, run_name="long", params={"classes": list(range(5000)), "lr": 0.1}, tags={})
    assert run.active
    params = _client(uri).get_run(run.run_id).data.params
    assert len(params["classes"]) == tracking.PARAM_MAX and params["lr"] == "0.1"
