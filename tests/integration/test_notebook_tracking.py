"""notebooks/10_tracking.ipynb runs top to bottom with tracking on (papermill, as test_notebooks.py runs
the others): an LSTM sweep and a GRU sweep of two trials each on digits, compared with ``cf.runs()``,
the winner registered with the alias ``production``, served from ``models:/NAME@production`` and called,
then removed. Checked in the MLflow store it leaves: one parent run per sweep with its trials as
children, and the alias on a version made by the best trial of both sweeps; and in its outputs: the
server named that version and run, and answered what the bundle does."""

import re
import uuid

import nbformat
import papermill
import pytest
import test_notebooks
from _ray_cluster import free_port

pytestmark = pytest.mark.tracking  # the default MLflow store is on here (tests/conftest.py)

NOTEBOOK = test_notebooks.NOTEBOOKS / "10_tracking.ipynb"
kernel_env = test_notebooks.kernel_env  # a fixture: kernels join this session's Ray, write to a fresh runs dir
TRIALS, EPOCHS = 2, 2
CELLS = ("lstm", "gru")


def test_tracking_notebook_is_committed_clean_and_parameterised():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert not any(c.outputs or c.execution_count for c in nb.cells if c.cell_type == "code")
    assert set(papermill.inspect_notebook(str(NOTEBOOK))) >= {"trials", "epochs", "hidden_sizes", "metric", "name",
                                                              "port"}


@pytest.mark.slow
def test_tracking_notebook_compares_two_sweeps_and_serves_the_winner(kernel_env, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the embedded store under the runs dir
    name = f"nb-tracked-{uuid.uuid4().hex[:6]}"
    nb = test_notebooks.execute("10_tracking.ipynb", tmp_path, trials=TRIALS, epochs=EPOCHS, hidden_sizes=[8, 16],
                                name=name, port=free_port())
    out = test_notebooks.texts(nb)
    assert test_notebooks.images(nb) == 1  # the two best trials' validation curves

    c = MlflowClient(f"sqlite:///{kernel_env}/mlflow.db")
    exp = c.get_experiment_by_name("cellforge").experiment_id
    parents, trials = {}, {}
    for cell in CELLS:
        found = c.search_runs([exp], f"tags.`cellforge.kind` = 'sweep' and attributes.run_name = '{name}-{cell}'")
        assert len(found) == 1, [r.info.run_name for r in found]  # one parent run per sweep
        parents[cell] = found[0]
        children = c.search_runs([exp], f"tags.`mlflow.parentRunId` = '{found[0].info.run_id}'")
        assert len(children) == TRIALS and {r.data.tags["cellforge.kind"] for r in children} == {"trial"}
        for r in children:  # each trial's every epoch, logged once
            assert r.info.status == "FINISHED"
            assert sorted(m.step for m in c.get_metric_history(r.info.run_id, "val_accuracy")) == [1, 2]
        trials.update({r.info.run_id: (cell, r) for r in children})
    assert len(c.search_runs([exp], "tags.`cellforge.kind` = 'trial'")) == 2 * TRIALS  # and no other

    # the alias: a version made by the trial with the best val_accuracy of both sweeps
    mv = c.get_model_version_by_alias(name, "production")
    assert mv.run_id in trials
    cell, run = trials[mv.run_id]
    top = max(r.data.metrics["val_accuracy"] for _, r in trials.values())
    assert run.data.metrics["val_accuracy"] == pytest.approx(top, rel=1e-12)
    assert parents[cell].data.metrics["best_val_accuracy"] == pytest.approx(top, rel=1e-12)
    assert re.search(rf"^winner: {cell} \(val_accuracy ", out, re.M), out[-3000:]
    assert f"registered {name} version {mv.version} from run {mv.run_id} as @production" in out

    # served from models:/NAME@production: GET /v1/models named that version and run; it answered as the bundle
    assert f"serving {name}: version {mv.version}, run {mv.run_id}, source models:/{name}/{mv.version}" in out
    assert "served == local: True" in out
    assert repr(name) not in re.search(r"^still served: (\[.*\])", out, re.M).group(1)  # it removed its app
